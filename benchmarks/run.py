"""One entry point for the performance comparison: Pixel LLM vs HuggingFace ``VisionEncoderDecoderModel``
(ViT + GPT-2 with cross-attention, SDPA) built at identical sizes with random weights (no download).

Both models run in the same process, alternately, several repeats; the tables give medians, the
min-max spread and ours/HF. Sections:

- ``train``: images/s of a full training step (forward, loss, backward, AdamW ``fused=True`` for both,
  HF Trainer's default on torch >= 2.8), fp32 and bf16 autocast, 24-token captions; FLOPs per step
  counted with ``torch.utils.flop_counter`` and MFU against this machine's measured matmul peak.
- ``generate``: captions/s, exactly 24 new tokens (``<eos>`` banned in both), greedy and beam-5
  (``bench_generate.run_case``); fp32, and also bf16 weights on CPUs that compute bf16 natively.
- ``memory``: peak RSS of a training run, each model in its own subprocess.

    python benchmarks/run.py                                  # small + base, everything (~15 min, 2 CPU cores)
    python benchmarks/run.py --presets small --only train     # one section
    python benchmarks/run.py --quick                          # tiny preset, a few iterations (smoke test)

Writes JSON (``--out``) and the Markdown table between the markers in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_generate import CASES as GENERATE_CASES  # noqa: E402
from bench_generate import MAX_REPEATS, MIN_SECONDS, run_case, summarise, table  # noqa: E402
from common import machine_description, machine_kind  # noqa: E402, F401 (machine_kind: names this run's table)
from hf_reference import build_hf_model  # noqa: E402

from geometry_os.fileio import atomic_write_text, write_json_atomic  # noqa: E402
from geometry_os.systems.pixel_llm import create_pixel_llm  # noqa: E402
from geometry_os.systems.pixel_llm.config import PRESETS  # noqa: E402
from geometry_os.systems.pixel_llm.cpu_bf16 import EMULATED_BF16  # noqa: E402

CAPTION_TOKENS = 24
TRAIN_BATCH = {"tiny": 8, "small": 32, "base": 8}
# steps per timed repeat, per (preset, dtype): on CPUs without AVX512-BF16/AMX bf16 is emulated and
# HF's runs many times slower than fp32, so bf16 gets the fewest iterations there (base bf16: one step).
TRAIN_STEPS = {
    ("tiny", "fp32"): 3,
    ("tiny", "bf16"): 2 if EMULATED_BF16 else 3,
    ("small", "fp32"): 6,
    ("small", "bf16"): 1 if EMULATED_BF16 else 6,
    ("base", "fp32"): 1,
    ("base", "bf16"): 1 if EMULATED_BF16 else 2,
}
MARKER = "benchmarks/run.py"
DOC = HERE.parent / "docs" / "performance.md"


# ---- models and one training step -----------------------------------------------------------------


def build_models(preset: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ours = create_pixel_llm(preset=preset)
    torch.manual_seed(0)
    hf = build_hf_model(PRESETS[preset])
    return ours, hf


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW as both trainers build it (fused kernel; HF Trainer's default ``adamw_torch_fused``)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)


def train_step_fn(
    model: torch.nn.Module, which: str, batch: int, size: int, vocab: int, amp: torch.dtype | None
) -> Callable[[], float]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    ids = torch.randint(3, vocab, (batch, CAPTION_TOKENS), generator=g)
    ids[:, 0] = 1
    opt = make_optimizer(model)
    model.train()

    def step() -> float:
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            if which == "ours":
                loss = model(images, ids, labels=ids).loss
            else:  # HF shifts labels right into decoder_input_ids: the same 24 positions
                loss = model(pixel_values=images, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return step


def count_flops(step: Callable[[], float]) -> float:
    """FLOPs of one training step (matmuls, attention; forward + backward), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def train_throughput(rates: list[float], flops_per_step: float, batch: int, peak: float) -> dict[str, float]:
    """One model's training speed from its repeats: ``images_per_s`` (the median of ``rates``, images/s)
    with its ``min`` and ``max``, ``flops_per_step`` (of a step of ``batch`` images), ``achieved_flops``
    (FLOP/s at the median) and ``mfu`` (that over ``peak``, the machine's FLOP/s)."""
    s = summarise(rates)
    achieved = flops_per_step / batch * s["median"]
    return {
        "images_per_s": s["median"],
        "min": s["min"],
        "max": s["max"],
        "flops_per_step": flops_per_step,
        "achieved_flops": achieved,
        "mfu": achieved / peak,
    }


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Achieved FLOP/s of a large square matmul: this machine's practical peak for ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        t = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - t))
    return max(rates)


def bench_train(preset: str, dtype: str, repeats: int, quick: bool, peaks: dict[str, float]) -> dict:
    amp = torch.bfloat16 if dtype == "bf16" else None
    cfg = PRESETS[preset]
    batch = TRAIN_BATCH[preset]
    ours, hf = build_models(preset)
    steps = {
        name: train_step_fn(m, name, batch, cfg["image_size"], cfg["vocab_size"], amp)
        for name, m in (("ours", ours), ("hf", hf))
    }
    n = TRAIN_STEPS[(preset, dtype)]
    rates: dict[str, list[float]] = {"ours": [], "hf": []}
    flops = {}
    for name, fn in steps.items():  # the counted step is also the warm-up
        t = time.perf_counter()
        flops[name] = count_flops(fn)
        if repeats == 0:  # slowest cases (emulated bf16 at base): the counted step is the only one
            rates[name].append(batch / (time.perf_counter() - t))
    if repeats:  # one more warm-up: the first steps after the counted one still allocate (page faults)
        for fn in steps.values():
            fn()
    for _ in range(repeats):  # alternate, so drifts hit both alike
        for name, fn in steps.items():
            t = time.perf_counter()
            for _ in range(n):
                fn()
            rates[name].append(n * batch / (time.perf_counter() - t))
    out: dict[str, Any] = {
        "preset": preset,
        "dtype": dtype,
        "batch": batch,
        "caption_tokens": CAPTION_TOKENS,
        "steps_per_repeat": n,
        "repeats": max(repeats, 1),
    }
    for name in rates:
        out[name] = {**train_throughput(rates[name], flops[name], batch, peaks[dtype]), "all": rates[name]}
    out["ratio"] = out["ours"]["images_per_s"] / out["hf"]["images_per_s"]
    return out


# ---- generation ------------------------------------------------------------------------------------


def bench_generate(preset: str, repeats: int, min_seconds: float, dtype: str = "fp32") -> list[dict]:
    """Every generation case of ``preset`` with both models' weights and images in ``dtype`` ("fp32" or
    "bf16", as ``bench_train``)."""
    weights = torch.bfloat16 if dtype == "bf16" else torch.float32
    ours, hf = build_models(preset)
    ours, hf = ours.to(weights).eval(), hf.to(weights).eval()
    results = []
    for decoding, batch in GENERATE_CASES[preset]:
        results.append(
            {
                **run_case(ours, hf, preset, decoding, batch, repeats, torch.device("cpu"), weights, min_seconds),
                "dtype": dtype,
            }
        )
        r = results[-1]
        print(
            f"  generate {preset:5s} {dtype} {decoding:6s} b{batch:<2d} ours {r['ours']['captions_per_s']:8.1f} "
            f"hf {r['hf']['captions_per_s']:8.1f} captions/s  ours/HF {r['ratio']:.2f}",
            flush=True,
        )
    return results


# ---- memory: each model trains in its own process ------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; unlike ``ru_maxrss`` it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(which: str, preset: str, steps: int) -> None:
    """Runs in a subprocess: ``steps`` fp32 training steps, prints peak RSS (MiB) as JSON."""
    rss0 = peak_rss_mib()
    if which == "ours":
        torch.manual_seed(0)
        model = create_pixel_llm(preset=preset)
    else:
        model = build_hf_model(PRESETS[preset])
    cfg = PRESETS[preset]
    step = train_step_fn(model, which, TRAIN_BATCH[preset], cfg["image_size"], cfg["vocab_size"], None)
    for _ in range(steps):
        step()
    peak = peak_rss_mib()
    print(json.dumps({"peak_rss_mib": peak, "rss_before_model_mib": rss0}))


def bench_memory(preset: str, steps: int) -> dict:
    out: dict[str, Any] = {"preset": preset, "batch": TRAIN_BATCH[preset], "steps": steps}
    for which in ("ours", "hf"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                which,
                "--presets",
                preset,
                "--repeats",
                str(steps),
                "--threads",
                str(torch.get_num_threads()),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["ratio"] = out["ours"]["peak_rss_mib"] / out["hf"]["peak_rss_mib"]
    return out


# ---- report ----------------------------------------------------------------------------------------


def spread(d: dict, key: str) -> str:
    return f"{d[key]:.3g} ({d['min']:.3g}-{d['max']:.3g})"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"Machine: {meta['machine']}; load average before / after: {meta['load_before']} / "
        f"{meta['load_after']}; torch {meta['torch']}, transformers {meta['transformers']}; "
        f"median of {meta['repeats']} alternating repeats (min-max; generation: of the runs in its "
        f"column, cheap cases repeating until each model has run {meta.get('generate_min_seconds', 0):g} s "
        f"or {meta.get('generate_max_repeats', meta['repeats'])} runs).",
        f"Reproduce: `{meta['command']}`",
        "",
    ]
    if results.get("peaks"):
        p = results["peaks"]
        bf16 = meta.get("bf16", "emulated")
        sizes = results.get("peak_sizes", {})
        lines += [
            f"Measured matmul peak: fp32 ({sizes.get('fp32', 2048)}^3) {p['fp32'] / 1e9:.0f} GFLOP/s, "
            f"bf16 ({sizes.get('bf16', 1024)}^3, {bf16}) {p['bf16'] / 1e9:.1f} GFLOP/s.",
            "",
        ]

    def ratio(r: dict) -> str:
        return f"**{r['ratio']:.2f}x**"

    def mfu(r: dict) -> list[str]:
        cells = [f"{100 * r[n]['mfu']:.1f}%" for n in ("ours", "hf")]
        if r["dtype"] == "bf16" and meta.get("bf16", "emulated") == "emulated":  # add fp32's: see the peak
            cells = [
                f"{c} ({100 * r[n]['achieved_flops'] / results['peaks']['fp32']:.0f}% of fp32 peak)"
                for c, n in zip(cells, ("ours", "hf"))
            ]
        return cells

    lines += table(
        ["training", "batch", "ours images/s", "HF images/s", "ours/HF", "MFU ours", "MFU HF"],
        [
            [
                f"{r['preset']} {r['dtype']}",
                r["batch"],
                spread(r["ours"], "images_per_s"),
                spread(r["hf"], "images_per_s"),
                ratio(r),
                *mfu(r),
            ]
            for r in results.get("train", [])
        ],
    )
    for dtype in ("fp32", "bf16"):  # bf16 generation only where the CPU computes it natively
        rows = [r for r in results.get("generate", []) if r.get("dtype", "fp32") == dtype]
        if not rows:
            continue
        lines += table(
            [f"generation (24 new tokens, {dtype})", "batch", "runs", "ours captions/s", "HF captions/s", "ours/HF"],
            [
                [
                    f"{r['preset']} {r['decoding']}",
                    r["batch"],
                    r.get("repeats", meta["repeats"]),
                    spread(r["ours"], "captions_per_s"),
                    spread(r["hf"], "captions_per_s"),
                    ratio(r),
                ]
                for r in rows
            ],
        )
    lines += table(
        ["peak RSS, fp32 training (own process)", "batch", "ours MiB", "HF MiB", "ours/HF"],
        [
            [r["preset"], r["batch"], f"{r['ours']['peak_rss_mib']:.0f}", f"{r['hf']['peak_rss_mib']:.0f}", ratio(r)]
            for r in results.get("memory", [])
        ],
    )
    return "\n".join(lines)


def write_doc(table: str, path: Path = DOC, name: str = MARKER, heading: str | None = None) -> None:
    """Replace what stands between ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->`` in ``path``; a
    name not there yet gets a new section (under ``heading``) after the last one of the same script."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    text = path.read_text() if path.exists() else "# Performance\n"
    if begin not in text:
        section = f"\n{heading}\n\n{begin}\n{end}\n" if heading else f"\n{begin}\n{end}\n"
        script = re.escape(name.split(" ")[0])
        ends = [m.end() for m in re.finditer(rf"<!-- {script}[^>]*: end -->", text)]
        cut = ends[-1] if ends else len(text)
        text = text[:cut] + "\n" + section + text[cut:]
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(path, f"{head}{begin}\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=None, help="comma-separated: tiny,small,base (default small,base)")
    parser.add_argument(
        "--only", choices=["train", "generate", "memory"], action="append", help="run only these sections (repeatable)"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few iterations (smoke test)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    parser.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"Markdown file to update between markers (default {DOC.relative_to(HERE.parent)}; "
        "--quick writes none unless given)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (on a machine shared with other jobs, 1 is far steadier)",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = (args.presets or ("tiny" if args.quick else "small,base")).split(",")

    if args.memory_child:
        memory_child(args.memory_child, presets[0], args.repeats or 3)
        return 0

    sections = args.only or ["train", "generate", "memory"]
    repeats = args.repeats or (2 if args.quick else 5)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[str, Any] = {"train": [], "generate": [], "memory": [], "peaks": {}}
    started = time.perf_counter()
    if "train" in sections:
        n = 512 if args.quick else 2048
        # emulated bf16 is too slow for a large matmul to be timed for long: half the size, three runs
        results["peak_sizes"] = {"fp32": n, "bf16": n // 2 if EMULATED_BF16 else n}
        results["peaks"] = {
            "fp32": matmul_peak(torch.float32, n),
            "bf16": matmul_peak(torch.bfloat16, n // 2, 0.0) if EMULATED_BF16 else matmul_peak(torch.bfloat16, n),
        }
        print(
            f"matmul peak: fp32 {results['peaks']['fp32'] / 1e9:.0f} GFLOP/s, "
            f"bf16 {results['peaks']['bf16'] / 1e9:.0f} GFLOP/s",
            flush=True,
        )
        for preset in presets:
            for dtype in ("fp32", "bf16"):
                slow = preset == "base" and dtype == "bf16" and EMULATED_BF16 and not args.quick
                reps = 0 if slow else repeats
                r = bench_train(preset, dtype, reps, args.quick, results["peaks"])
                results["train"].append(r)
                print(
                    f"  train {preset:5s} {dtype} b{r['batch']:<2d} ours {r['ours']['images_per_s']:8.1f} "
                    f"hf {r['hf']['images_per_s']:8.1f} images/s  ours/HF {r['ratio']:.2f}  "
                    f"MFU {100 * r['ours']['mfu']:.1f}% / {100 * r['hf']['mfu']:.1f}%",
                    flush=True,
                )
    if "train" in sections:  # a busy machine can depress one measurement: peak = the better of two
        n = 512 if args.quick else 2048
        results["peaks"]["fp32"] = max(results["peaks"]["fp32"], matmul_peak(torch.float32, n))
        if not EMULATED_BF16:
            results["peaks"]["bf16"] = max(results["peaks"]["bf16"], matmul_peak(torch.bfloat16, n))
        for r in results["train"]:
            for name in ("ours", "hf"):
                r[name]["mfu"] = r[name]["achieved_flops"] / results["peaks"][r["dtype"]]
    min_seconds = 0.0 if args.quick else MIN_SECONDS
    if "generate" in sections:
        for dtype in ["fp32"] if EMULATED_BF16 else ["fp32", "bf16"]:
            for preset in presets:
                results["generate"] += bench_generate(preset, 2 if args.quick else repeats, min_seconds, dtype)
    if "memory" in sections:
        for preset in presets:
            r = bench_memory(preset, 2 if args.quick or preset == "base" else 5)
            results["memory"].append(r)
            print(
                f"  memory {preset:5s} ours {r['ours']['peak_rss_mib']:.0f} MiB  hf {r['hf']['peak_rss_mib']:.0f} MiB"
                f"  ours/HF {r['ratio']:.2f}",
                flush=True,
            )

    results["meta"] = {
        **machine_description(),
        "bf16": "emulated" if EMULATED_BF16 else "native",
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "repeats": repeats,
        "generate_min_seconds": min_seconds,
        "generate_max_repeats": MAX_REPEATS,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    table = markdown(results)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)
    doc = args.doc if args.doc is not None else (None if args.quick else DOC)
    if doc is not None:  # one table per machine kind
        kind = results["meta"]["kind"]
        write_doc(table, doc, f"{MARKER} {kind}", heading=f"### CPU: {kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
