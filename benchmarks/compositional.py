"""Compositional generalisation on the synthetic scenes: colour–kind pairs never seen in training
(Nikolaus et al., "Compositional Generalization in Image Captioning", CoNLL 2019).

Trains the ``small`` model with a recipe under a wall-clock budget (``learn_shapes.run_ours``: the
``geo-os pixel-llm train`` command) on scenes that never contain the held-out pairs
(``trainer.synthetic_hold_out``), then captions, greedily, held-out scenes of two kinds: the ordinary
``test`` split (in distribution: no held-out pair) and the ``compositional`` split (every scene holds at
least one held-out pair). Reports exact match overall and per held-out pair::

    python benchmarks/compositional.py --config configs/shapes_small.toml --out benchmarks/results/compositional.json
    python benchmarks/compositional.py --budget-s 120 --num-scenes 5000 --eval-n 200     # a short experiment
    python benchmarks/compositional.py --eval-only runs/compositional-X --generation guidance_scale=2   # re-decode

The default holds out one kind per colour (six pairs, every kind held out for at least one colour).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description
from learn_shapes import _threads, evaluate_checkpoint, run_checkpoints, run_ours, training_summary
from pydantic import ValidationError

from geometry_os.errors import ConfigError, format_validation_error
from geometry_os.fileio import write_json_atomic
from geometry_os.plugins.datasets.shapes import has_pair, parse_pairs
from geometry_os.systems.pixel_llm.config import parse_overrides
from geometry_os.systems.pixel_llm.generation_config import GenerationConfig
from geometry_os.systems.pixel_llm.metrics import normalize

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "shapes_small.toml"
DEFAULT_BUDGET_S = 600.0
DEFAULT_HOLD_OUT = "red circle,green square,blue triangle,yellow diamond,purple circle,white square"


def per_pair(scored: dict[str, Any], pairs: list[str]) -> dict[str, dict[str, float]]:
    """Exact match over the scenes that contain each held-out pair."""
    predictions, test_set = scored["_predictions"], scored["_test_set"]
    out = {}
    for text in pairs:
        pair = parse_pairs(text)
        hits = [
            normalize(p) == normalize(c)
            for p, c, scene in zip(predictions, test_set.captions, test_set.scenes)
            if has_pair(scene, pair)
        ]
        out[text] = {"exact_match": sum(hits) / max(len(hits), 1), "n": len(hits)}
    return out


RUN_FIELDS = {"checkpoint_dir", "max_time_s", "seed", "synthetic_hold_out", "num_scenes"}


def run_settings(run_dir: Path, recipe: str) -> dict[str, Any]:
    """A finished run's held-out pairs, seed, budget and scenes, and as ``set`` the trainer fields where it
    differs from ``recipe``
    (read from its checkpoint's ``trainer_state.json``), as a training run of this script records them."""
    from geometry_os.systems.pixel_llm.checkpoint import read_latest
    from geometry_os.systems.pixel_llm.config import TrainerConfig, load_config

    used = json.loads((read_latest(run_dir) / "trainer_state.json").read_text())["trainer_config"]
    planned = load_config(recipe, (), "small").trainer.model_dump(mode="json")
    defaults = TrainerConfig().model_dump(mode="json")  # fields newer than the run: their defaults
    used = {**{k: v for k, v in defaults.items() if k not in used}, **used}
    changed = [f"trainer.{k}={json.dumps(v)}" for k, v in used.items() if k not in RUN_FIELDS and planned.get(k) != v]
    pairs = sorted(used["synthetic_hold_out"] or [])
    return {
        "hold_out": pairs,
        "seed": used["seed"],
        "budget_s": used["max_time_s"],
        "num_scenes": used.get("num_scenes"),
        "set": [f"trainer.synthetic_hold_out={json.dumps(pairs)}", *changed],
    }


def distinct_checkpoints(run_dir: Path) -> dict[str, Path]:
    """``run_checkpoints(run_dir)`` without ``latest`` when its weights are ``best``'s (the usual end of a
    run whose last validation was its best): the same model is decoded once, its scores kept under both."""
    folders = run_checkpoints(run_dir)
    if "best" in folders and _weights_digest(folders["best"]) == _weights_digest(folders["latest"]):
        del folders["latest"]
    return folders


def _weights_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def curve(run_dir: Path, n: int, seed: int, pairs: list[str], generation: dict[str, Any]) -> list[dict[str, Any]]:
    """Exact match on both splits of every ``step-*`` checkpoint of a run, in step order."""
    points = []
    for folder in sorted(run_dir.glob("step-*")):
        state = json.loads((folder / "trainer_state.json").read_text())
        point = {"step": state["global_step"], "train_time_s": round(state["train_time_s"], 1)}
        for split in ("test", "compositional"):
            scored = evaluate_checkpoint(folder, n, seed, split=split, hold_out=pairs, generation=generation)
            point[split] = scored["exact_match"]
        print(f"curve: {point}", flush=True)
        points.append(point)
    return points


def _setting(result: dict[str, Any]) -> str:
    """The run's own settings: a training budget other than the default 600 s, ``--set`` items past the
    hold-out (and the curve's checkpointing), and decoding options."""
    sets = result["set"] if isinstance(result["set"], list) else []
    budget = result.get("budget_s", DEFAULT_BUDGET_S)
    items = [] if budget == DEFAULT_BUDGET_S else [f"--budget-s {budget:g}" if budget else "no time budget"]
    items += [s.split(".", 1)[-1] for s in sets[1:] if "checkpoint_interval" not in s and "save_total_limit" not in s]
    items += [f"{k}={v}" for k, v in result.get("generation", {}).items()]
    return ", ".join(f"`{item}`" for item in items) or "the recipe"


def table(results: list[str]) -> str:
    """A Markdown table of result JSONs: setting, seed, steps, load, exact match (best checkpoint) in
    distribution and on held-out pairs, and per pair."""
    pairs = json.loads(Path(results[0]).read_text())["hold_out"]
    lines = [
        "| setting | seed | steps | load avg | in distribution | held-out pairs | " + " | ".join(pairs) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(pairs),
    ]
    for path in results:
        r = json.loads(Path(path).read_text())
        comp, test = r["compositional_best"], r["test_best"]
        load = r.get("load_average", {}).get("mean", "")
        per = " | ".join(f"{100 * comp['per_pair'][p]['exact_match']:.0f}" for p in pairs)
        lines.append(
            f"| {_setting(r)} | {r['seed']} | {r.get('steps')} | {load} | {100 * test['exact_match']:.1f} % "
            f"| **{100 * comp['exact_match']:.1f} %** | {per} |"
        )
    return "\n".join(lines)


def plot(results: list[str], out: str, labels: list[str] | None = None) -> None:
    """Exact match against training time of result JSONs with a ``curve``: compositional (solid) and in
    distribution (dashed), one colour per result, labelled by ``labels`` or by their settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for i, path in enumerate(results):
        result = json.loads(Path(path).read_text())
        points = result["curve"]
        label = labels[i] if labels else _setting(result).replace("`", "")
        times = [p["train_time_s"] for p in points]
        ax.plot(
            times, [100 * p["compositional"] for p in points], f"C{i}-o", ms=3, label=f"{label}, seed {result['seed']}"
        )
        ax.plot(times, [100 * p["test"] for p in points], f"C{i}--", lw=1)
    ax.set_xlabel("training time (s), 2 CPU cores")
    ax.set_ylabel("exact match (%)")
    ax.set_title("held-out pairs (solid) and in distribution (dashed)", fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--hold-out",
        help="'COLOUR KIND,...' pairs kept out of training (default: six, one kind per colour; with --eval-only: "
        "the run's own)",
    )
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="training time (trainer.max_time_s)")
    parser.add_argument("--config", default=str(RECIPE), help="the recipe (train --config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to train --set")
    parser.add_argument("--num-scenes", type=int, default=30_000, help="training scenes")
    parser.add_argument("--seed", type=int, default=42, help="trainer.seed")
    parser.add_argument("--eval-n", type=int, default=500, help="scenes of each evaluation split")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--run-dir", help="checkpoint folder (default: runs/compositional-<time>)")
    parser.add_argument(
        "--generation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="GenerationConfig field for every caption (VALUE as JSON, else a string); default greedy",
    )
    parser.add_argument("--eval-only", metavar="RUN_DIR", help="evaluate a finished run's checkpoints; no training")
    parser.add_argument(
        "--curve",
        type=int,
        metavar="N",
        help="keep a checkpoint every N steps and score each on --curve-n scenes of both splits (a curve)",
    )
    parser.add_argument("--curve-n", type=int, default=200, help="scenes of each split per curve point")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--plot", nargs="+", metavar="RESULT.json", help="only draw the curves of these results")
    parser.add_argument("--plot-out", default="docs/images/compositional_curve.png")
    parser.add_argument("--plot-labels", nargs="+", metavar="LABEL", help="legend labels, one per --plot result")
    parser.add_argument("--table", nargs="+", metavar="RESULT.json", help="only print these results as Markdown")
    args = parser.parse_args(argv)
    if args.plot:
        if args.plot_labels and len(args.plot_labels) != len(args.plot):
            parser.error(f"--plot-labels: {len(args.plot_labels)} labels for {len(args.plot)} results")
        plot(args.plot, args.plot_out, args.plot_labels)
        return 0
    if args.table:
        print(table(args.table))
        return 0
    asked = None if args.hold_out is None else sorted(f"{c} {k}" for c, k in parse_pairs(args.hold_out))
    try:
        args.generation = parse_overrides(args.generation, flag="--generation")
        GenerationConfig.model_validate(args.generation)  # refused now, not after the training run
    except ConfigError as error:
        parser.error(str(error))
    except ValidationError as error:
        parser.error(format_validation_error(error, source="--generation"))
    settings: dict[str, Any] = {}
    if args.eval_only:
        run_dir = Path(args.eval_only)
        if not (run_dir / "latest").is_file():
            parser.error(f"--eval-only {run_dir}: not a finished run (no 'latest' pointer)")
        if args.curve or args.run_dir or args.set:
            parser.error("--eval-only decodes a finished run: --curve, --run-dir and --set would train")
        settings = run_settings(run_dir, args.config)
        if asked is not None and asked != settings["hold_out"]:
            parser.error(f"--hold-out {asked} differs from the run's own held-out pairs {settings['hold_out']}")
        pairs = settings["hold_out"]
    else:
        pairs = asked or sorted(f"{c} {k}" for c, k in parse_pairs(DEFAULT_HOLD_OUT))
    args.hold_out = pairs
    args.set = [f"trainer.synthetic_hold_out={json.dumps(pairs)}", *args.set]
    if args.curve:
        args.set += [f"trainer.checkpoint_interval={args.curve}", "trainer.save_total_limit=null"]
    if not args.eval_only:
        run_dir = Path(args.run_dir or f"runs/compositional-{time.strftime('%Y%m%d-%H%M%S')}")
        if run_dir.exists() and any(run_dir.iterdir()):
            parser.error(f"{run_dir} is not empty (the trainer would resume from it)")
    result: dict[str, Any] = {
        "hold_out": pairs,
        "budget_s": args.budget_s,
        "seed": args.seed,
        "num_scenes": args.num_scenes,
        "config": args.config,
        "set": args.set,
        "run_dir": str(run_dir),
        "cpu_threads": _threads(),
        "meta": machine_description(),
        "generation": args.generation,
    }
    if not args.eval_only:
        result.update(run_ours(args, run_dir))  # test_best / test_latest: in distribution (no held-out pair)
    checkpoints = distinct_checkpoints(run_dir)
    result["latest_is_best"] = "latest" not in checkpoints  # then best is decoded once, its scores stand for both
    if args.eval_only:
        result.update(settings)
        result.update(training_summary(run_dir))
        for name, folder in checkpoints.items():
            scored = evaluate_checkpoint(
                folder, args.eval_n, args.eval_seed, hold_out=pairs, generation=args.generation
            )
            result[f"test_{name}"] = {k: v for k, v in scored.items() if not k.startswith("_")}
        result.setdefault("test_latest", result.get("test_best"))
    for name, folder in checkpoints.items():
        scored = evaluate_checkpoint(
            folder, args.eval_n, args.eval_seed, split="compositional", hold_out=pairs, generation=args.generation
        )
        result[f"compositional_{name}"] = {
            **{k: v for k, v in scored.items() if not k.startswith("_")},
            "per_pair": per_pair(scored, pairs),
        }
    result.setdefault("compositional_latest", result.get("compositional_best"))
    if args.curve:
        result["curve"] = curve(run_dir, args.curve_n, args.eval_seed, pairs, args.generation)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    best = result.get("compositional_best") or {}
    if best:
        print(
            f"exact match: compositional {100 * best['exact_match']:.1f} %, in distribution "
            f"{100 * result['test_best']['exact_match']:.1f} %; per pair: "
            + ", ".join(f"{p} {100 * v['exact_match']:.0f} %" for p, v in best["per_pair"].items()),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
