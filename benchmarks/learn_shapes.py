"""How well the ``small`` model learns the synthetic geometry set in a wall-clock budget (docs/learning.md).

Trains with exactly the command users run (a ``geo-os pixel-llm train --preset small`` subprocess with
``trainer.max_time_s`` = ``--budget-s``), then captions 500 held-out scenes of the ``test`` split
greedily and reports exact match, overall and per number of shapes, for the ``best`` (picked on the
``val`` split) and the final (``latest``) checkpoint::

    python benchmarks/learn_shapes.py --config configs/shapes_small.toml --out runs/learn.json
    python benchmarks/learn_shapes.py --budget-s 180 --set trainer.learning_rate=2e-3    # a short experiment
    python benchmarks/learn_shapes.py --reference hf --config configs/shapes_small.toml  # HF peer, same budget

``--reference hf`` trains HF ``VisionEncoderDecoderModel`` (``benchmarks/hf_reference.py``) at the same
sizes on the same scenes, in the same order, with the same optimizer, parameter groups, LR schedule,
clipping and time budget in a minimal plain-PyTorch loop, and scores it the same way (greedy
``generate``). Training time counts the steps only, as the trainer's ``max_time_s`` does (scene
rendering before training is reported separately). The machine's load average is sampled during
training: other processes on the cores slow a run down, so compare runs at similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import PeriodicSampler, machine_description

ROOT = Path(__file__).resolve().parents[1]


class LoadSampler(PeriodicSampler):
    """Samples the 1-minute load average every ``interval`` seconds while running."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__(interval)
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {
            "mean": round(sum(s) / len(s), 2),
            "max": round(max(s), 2),
            "at_end_1_5_15": [round(x, 2) for x in os.getloadavg()],
        }


# ---- evaluation ----------------------------------------------------------------------------------------


def test_scenes(n: int, seed: int, config: Any, split: str = "test", hold_out: list[str] | None = None) -> Any:
    """Held-out scenes at the model's image size and normalisation (``config``: the model's config);
    ``hold_out`` pairs are absent from ``test`` and present in every ``compositional`` scene."""
    from geometry_os.systems.pixel_llm.resolution import get_component

    return get_component("dataset", "shapes").build(
        {"n": n, "seed": seed, "split": split, "hold_out": hold_out or [], **config.image_options()}
    )


def score(predictions: list[str], test_set: Any) -> dict[str, Any]:
    """Exact match overall and per number of shapes, plus a few wrong captions to look at."""
    from geometry_os.plugins.datasets.shapes import exact_match_by_shapes
    from geometry_os.systems.pixel_llm.data import per_image
    from geometry_os.systems.pixel_llm.metrics import caption_metrics, normalize

    metrics = caption_metrics(*per_image(test_set, predictions))
    out: dict[str, Any] = {"exact_match": metrics["exact_match"], "bleu_4": metrics["bleu_4"], "n": len(predictions)}
    for k, (em, n) in exact_match_by_shapes(predictions, test_set.captions).items():
        out[f"exact_match_{k}_shapes"] = em
        out[f"n_{k}_shapes"] = n
    out["errors"] = [
        {"prediction": p, "reference": r}
        for p, r in zip(predictions, test_set.captions)
        if normalize(p) != normalize(r)
    ][:5]
    return out


def images_of(test_set: Any) -> Any:
    import torch

    return torch.stack([test_set[i]["image"] for i in range(len(test_set))])


def evaluate_checkpoint(
    folder: Path,
    n: int,
    seed: int,
    batch_size: int = 100,
    split: str = "test",
    hold_out: list[str] | None = None,
    generation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Captions of ``n`` scenes of ``split`` by the checkpoint in ``folder``, greedy unless ``generation``
    (``GenerationConfig`` fields) says otherwise; the result also keeps the predictions and the scenes
    (``predictions``, ``test_set``) under private keys for callers."""
    from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption
    from geometry_os.systems.pixel_llm.modeling import PixelLLM

    model, tokenizer = PixelLLM.from_pretrained(folder)
    model.eval()
    c = model.config
    config = GenerationConfig.for_model(c, return_dict_in_generate=True, **(generation or {}))
    test_set = test_scenes(n, seed, c, split, hold_out)
    images = images_of(test_set)
    predictions: list[str] = []
    for start in range(0, len(images), batch_size):
        out = generate_caption(model, images[start : start + batch_size], config=config, tokenizer=tokenizer)
        predictions.extend(out.texts)
    return {**score(predictions, test_set), "_predictions": predictions, "_test_set": test_set}


def run_checkpoints(run_dir: Path) -> dict[str, Path]:
    """A finished run's ``best`` (when it has one) and ``latest`` checkpoint folders."""
    from geometry_os.systems.pixel_llm.checkpoint import read_latest

    best = run_dir / "best"
    return {**({"best": best} if best.is_dir() else {}), "latest": read_latest(run_dir)}


def training_summary(run_dir: Path) -> dict[str, Any]:
    """Steps, training time and images/s from ``metrics.jsonl`` (and the batch size in trainer_state.json)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r and "step" in r]
    vals = [r for r in records if "exact_match" in r]
    last = steps[-1] if steps else {}
    state: dict[str, Any] = {}
    if (run_dir / "latest").is_file():
        pointer = json.loads((run_dir / "latest").read_text())
        state_path = run_dir / pointer["checkpoint"] / "trainer_state.json"
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    batch = state.get("batch_size")
    summary = {
        "steps": state.get("global_step", last.get("step")),
        "train_time_s": round(state.get("train_time_s", last.get("train_time_s") or 0.0), 1),
        "final_logged_loss": last.get("loss"),
        "batch_size": batch,
        "val_exact_match": [(r["step"], round(r["exact_match"], 4)) for r in vals],
        "metrics_jsonl": str(run_dir / "metrics.jsonl"),
    }
    if batch and summary["steps"] and summary["train_time_s"]:
        summary["images_per_s"] = round(summary["steps"] * batch / summary["train_time_s"], 1)
    return summary


# ---- ours: the geo-os command ------------------------------------------------------------------------------


def geo_os() -> str:
    local = Path(sys.executable).with_name("geo-os")
    return str(local) if local.exists() else (shutil.which("geo-os") or "geo-os")


def run_ours(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    command = [
        geo_os(),
        "pixel-llm",
        "train",
        "--preset",
        "small",
        "--out",
        str(run_dir),
        "--quiet",
        "--num-scenes",
        str(args.num_scenes),
    ]
    if args.config:
        command += ["--config", args.config]
    for item in [f"trainer.max_time_s={args.budget_s}", f"trainer.seed={args.seed}", *args.set]:
        command += ["--set", item]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    with LoadSampler() as load:
        subprocess.run(command, check=True)
    result: dict[str, Any] = {
        "command": " ".join(command),
        "wall_s": round(time.perf_counter() - start, 1),
        "load_average": load.summary(),
        **training_summary(run_dir),
    }
    for name, folder in run_checkpoints(run_dir).items():
        scored = evaluate_checkpoint(
            folder,
            args.eval_n,
            args.eval_seed,
            hold_out=getattr(args, "hold_out", None),
            generation=getattr(args, "generation", None),
        )
        result[f"test_{name}"] = {k: v for k, v in scored.items() if not k.startswith("_")}
    return result


# ---- the HF reference: same data, order, optimizer, schedule and budget ----------------------------------------


def run_hf(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hf_reference import build_hf_model

    from geometry_os.plugins.amp_trainer.optim import lr_lambda, param_groups
    from geometry_os.plugins.amp_trainer.sampling import make_dataloader
    from geometry_os.systems.pixel_llm.config import load_config
    from geometry_os.systems.pixel_llm.resolution import get_component
    from geometry_os.systems.pixel_llm.targets import IGNORE_INDEX, next_token_targets

    overrides = [f"trainer.max_time_s={args.budget_s}", f"trainer.seed={args.seed}", *args.set]
    config = load_config(args.config, overrides, "small")
    t = config.trainer
    start = time.perf_counter()
    train_set = get_component("dataset", "shapes").build(
        {"n": args.num_scenes, "seed": t.seed, "split": "train", **config.image_options()}
    )
    tokenizer = train_set.tokenizer
    data_s = time.perf_counter() - start
    torch.manual_seed(t.seed)
    model = build_hf_model({**config.model_dump(), "vocab_size": len(tokenizer)}).train()
    loader = make_dataloader(train_set, t.batch_size, shuffle=True, seed=t.seed)
    optimizer = torch.optim.AdamW(
        param_groups(model, t.weight_decay), lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2)
    )
    clock = {"t": 0.0}
    steps_per_epoch = len(loader)
    total = t.max_steps or t.num_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t, total, elapsed_s=lambda: clock["t"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "metrics.jsonl").open("w")
    step, epoch, t0 = 0, 0, time.perf_counter()
    with LoadSampler() as load:
        while clock["t"] < t.max_time_s and step < total:
            loader.batch_sampler.set_epoch(epoch)
            for batch in loader:
                ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
                logits = model(
                    pixel_values=batch["images"], decoder_input_ids=ids[:, :-1], decoder_attention_mask=mask[:, :-1]
                ).logits
                loss = F.cross_entropy(
                    logits.flatten(0, 1),
                    next_token_targets(labels, mask).flatten(),
                    ignore_index=IGNORE_INDEX,
                    label_smoothing=t.label_smoothing,
                )
                loss.backward()
                if t.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                clock["t"] = time.perf_counter() - t0
                scheduler.step()
                step += 1
                if step % t.log_interval == 0:
                    log.write(
                        json.dumps(
                            {"step": step, "epoch": epoch, "loss": loss.item(), "lr": lr, "train_time_s": clock["t"]}
                        )
                        + "\n"
                    )
                    log.flush()
                if clock["t"] >= t.max_time_s or step >= total:
                    break
            epoch += 1
    log.write(
        json.dumps({"step": step, "epoch": epoch, "loss": loss.item(), "lr": lr, "train_time_s": clock["t"]}) + "\n"
    )
    log.close()
    model.eval()
    test_set = test_scenes(args.eval_n, args.eval_seed, config)
    images = images_of(test_set)
    predictions: list[str] = []
    with torch.inference_mode():
        for s in range(0, len(images), 100):
            out = model.generate(
                pixel_values=images[s : s + 100], max_length=config.max_seq_len, do_sample=False, num_beams=1
            )
            predictions += [tokenizer.decode(row.tolist()) for row in out]
    return {
        "model": "HF VisionEncoderDecoderModel (ViT + GPT-2, sdpa), benchmarks/hf_reference.py",
        "data_s": round(data_s, 1),
        "steps": step,
        "train_time_s": round(clock["t"], 1),
        "batch_size": t.batch_size,
        "images_per_s": round(step * t.batch_size / max(clock["t"], 1e-9), 1),
        "load_average": load.summary(),
        "metrics_jsonl": str(run_dir / "metrics.jsonl"),
        "trainer": t.model_dump(
            include={
                "learning_rate",
                "batch_size",
                "warmup_steps",
                "lr_scheduler",
                "lr_decay_over",
                "weight_decay",
                "adam_beta1",
                "adam_beta2",
                "max_grad_norm",
                "label_smoothing",
                "min_lr_ratio",
            }
        ),
        "test_final": score(predictions, test_set),
    }


def plot(results: list[str], out: str) -> None:
    """Training loss against training time of result JSONs (their ``metrics.jsonl``), one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=80)
    for path in results:
        result = json.loads(Path(path).read_text())
        rows = [json.loads(x) for x in Path(result["metrics_jsonl"]).read_text().splitlines() if x.strip()]
        rows = [r for r in rows if "loss" in r and "train_time_s" in r]
        head = result.get("test_best") or result.get("test_final") or {}
        name = "HF VisionEncoderDecoder" if result["reference"] == "hf" else "Pixel LLM small"
        label = f"{name}, seed {result['seed']}: {100 * head.get('exact_match', 0):.1f} % exact"
        ax.plot([r["train_time_s"] for r in rows], [r["loss"] for r in rows], label=label, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("training time (s), 2 CPU cores")
    ax.set_ylabel("training loss (token CE)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=600, help="training time (trainer.max_time_s)")
    parser.add_argument("--config", help="config file for the train command (e.g. configs/shapes_small.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to train --set")
    parser.add_argument("--num-scenes", type=int, default=30_000, help="training scenes (train --num-scenes)")
    parser.add_argument("--seed", type=int, default=42, help="trainer.seed (training scenes, init, order)")
    parser.add_argument("--eval-n", type=int, default=500, help="held-out test-split scenes")
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--reference", choices=["ours", "hf"], default="ours")
    parser.add_argument("--run-dir", help="checkpoint folder (default: runs/learn-<reference>-<time>)")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--plot", nargs="+", metavar="RESULT.json", help="only draw the loss curves of these results")
    parser.add_argument("--plot-out", default="docs/images/learning_curve.png")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.plot_out)
        return 0
    run_dir = Path(args.run_dir or f"runs/learn-{args.reference}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() and any(run_dir.iterdir()):
        parser.error(f"{run_dir} is not empty (the trainer would resume from it)")
    result = {
        "reference": args.reference,
        "budget_s": args.budget_s,
        "seed": args.seed,
        "num_scenes": args.num_scenes,
        "set": args.set,
        "config": args.config,
        "run_dir": str(run_dir),
        "cpu_threads": _threads(),
        "meta": machine_description(),
    }
    result.update(run_ours(args, run_dir) if args.reference == "ours" else run_hf(args, run_dir))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    head = result.get("test_best") or result.get("test_final") or {}
    if head:
        per = " / ".join(
            f"{100 * head[k]:.0f}" for k in sorted(head) if k.startswith("exact_match_") and k.endswith("_shapes")
        )
        print(
            f"exact match {100 * head['exact_match']:.1f} % ({per} for 1/2/3 shapes), {result.get('steps')} steps, "
            f"{result.get('images_per_s')} img/s, load {result['load_average']['mean']}",
            flush=True,
        )
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
