"""Caption generation throughput: Pixel LLM vs HuggingFace ``VisionEncoderDecoderModel`` (ViT +
GPT-2 with cross-attention, SDPA) at identical sizes, random weights.

Both generate exactly 24 new tokens per caption (``<eos>`` is banned for 24 tokens in both: our
``min_length``, HF's ``min_new_tokens``), greedy and beam-5, from the same images, alternately in
one process, several repeats; the table gives median captions/s (min-max spread) and ours/HF.

    python benchmarks/bench_generate.py --out bench_generate.json          # small + base presets
    python benchmarks/bench_generate.py --quick                             # tiny preset, smoke test
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_reference import build_hf_model

from geometry_os.fileio import write_json_atomic
from geometry_os.systems.pixel_llm import create_pixel_llm
from geometry_os.systems.pixel_llm.config import PRESETS
from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption

NEW_TOKENS = 24
# Cheap cases repeat beyond ``repeats`` until each model has run this long (capped): on a noisy
# machine a median of 3 short runs moves by 20 %, a median of 20 settles.
MIN_SECONDS = 5.0
MAX_REPEATS = 40
# (preset, decoding, batch) cases; greedy at batch 1 and a large batch, beam-5 at batch 1 and 8
CASES = {
    "tiny": [("greedy", 1), ("greedy", 32), ("beam5", 1), ("beam5", 8)],
    "small": [("greedy", 1), ("greedy", 32), ("beam5", 1), ("beam5", 8)],
    "base": [("greedy", 1), ("greedy", 8), ("beam5", 1), ("beam5", 8)],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def summarise(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1]}


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table and a blank line after it; nothing for no rows."""
    if not rows:
        return []
    body = ["| " + " | ".join(str(c) for c in row) + " |" for row in [header, *rows]]
    return [body[0], "|" + "---|" * len(header), *body[1:], ""]


def run_case(
    ours: Any,
    hf: Any,
    preset: str,
    decoding: str,
    batch: int,
    repeats: int,
    device,
    dtype,
    min_seconds: float = MIN_SECONDS,
) -> dict:
    size = PRESETS[preset]["image_size"]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    beams = 5 if decoding == "beam5" else 1
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, min_length=NEW_TOKENS + 1, num_beams=beams)

    def run_ours() -> torch.Tensor:
        return generate_caption(ours, images, config=config)

    def run_hf() -> torch.Tensor:
        with torch.inference_mode():
            return hf.generate(
                pixel_values=images,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                num_beams=beams,
                do_sample=False,
                use_cache=True,
            )

    for fn in (run_ours, run_hf, run_ours, run_hf):  # warm-up (allocator, kernels, lazy imports)
        _, out = timed(fn, device)
        assert out.shape == (batch, NEW_TOKENS + 1), f"{fn.__name__} gave {tuple(out.shape)}"
    times: dict[str, list[float]] = {"ours": [], "hf": []}

    def more() -> bool:
        n = len(times["ours"])
        return n < max(repeats, 1) or (n < MAX_REPEATS and min(map(sum, times.values())) < min_seconds)

    while more():  # alternate, so drifts (clocks, other load) hit both alike
        times["ours"].append(timed(run_ours, device)[0])
        times["hf"].append(timed(run_hf, device)[0])
    result: dict[str, Any] = {
        "preset": preset,
        "decoding": decoding,
        "batch": batch,
        "new_tokens": NEW_TOKENS,
        "repeats": len(times["ours"]),
    }
    for name, ts in times.items():
        s = summarise([batch / t for t in ts])
        result[name] = {"captions_per_s": s["median"], "min": s["min"], "max": s["max"], "seconds": ts}
    result["ratio"] = result["ours"]["captions_per_s"] / result["hf"]["captions_per_s"]
    return result


def breakdown(ours: Any, preset: str, beams: int, batch: int, device, dtype, repeats: int = 5) -> dict:
    """Where our time goes: encoder, the bare decoder steps (no strategy), the whole generate call."""
    size = PRESETS[preset]["image_size"]
    images = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, min_length=NEW_TOKENS + 1, num_beams=beams)

    def steps() -> torch.Tensor:
        with torch.inference_mode():
            cache = ours.decoder.init_cache(features, NEW_TOKENS + 1)
            cache.expand(beams)
            ids = torch.ones(batch * beams, 1, dtype=torch.long, device=device)
            for _ in range(NEW_TOKENS):
                logits = ours.decoder.step(ids, cache)
            return logits

    with torch.inference_mode():
        features = ours.encode(images)
    parts = {
        "encode": lambda: ours.encode(images),
        "decoder_steps": steps,
        "generate": lambda: generate_caption(ours, images, config=config),
    }
    out = {}
    for name, fn in parts.items():
        with torch.inference_mode():
            timed(fn, device)
            out[name + "_ms"] = 1e3 * statistics.median(timed(fn, device)[0] for _ in range(repeats))
    out["strategy_overhead_ms"] = out["generate_ms"] - out["encode_ms"] - out["decoder_steps_ms"]
    return out


def profile(ours: Any, hf: Any, preset: str, beams: int, device, dtype, folder: Path) -> None:
    """torch.profiler tables (batch 1) for both models, sorted by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    size = PRESETS[preset]["image_size"]
    images = torch.randn(1, 3, size, size, device=device, dtype=dtype)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, min_length=NEW_TOKENS + 1, num_beams=beams)
    runs = {
        "ours": lambda: generate_caption(ours, images, config=config),
        "hf": lambda: hf.generate(
            pixel_values=images, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=beams, do_sample=False
        ),
    }
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    folder.mkdir(parents=True, exist_ok=True)
    for name, fn in runs.items():
        with torch.inference_mode():
            fn()
            with torch_profile(activities=activities) as prof:
                fn()
                sync(device)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        with open(folder / f"profile_{preset}.txt", "a") as f:
            f.write(f"\n### {preset} beam{beams} batch 1: {name}\n{table}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset only, few repeats (smoke test)")
    parser.add_argument("--presets", nargs="+", default=None, choices=sorted(CASES))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--breakdown", action="store_true", help="also time our encoder / decoder steps / strategy")
    parser.add_argument("--profile", type=Path, default=None, help="write torch.profiler tables (batch 1) here")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dtype = getattr(torch, args.dtype)
    presets = args.presets or (["tiny"] if args.quick else ["small", "base"])
    repeats = args.repeats or (3 if args.quick else 7)

    results, breakdowns = [], []
    for preset in presets:
        torch.manual_seed(0)
        ours = create_pixel_llm(preset=preset).to(device, dtype).eval()
        hf = build_hf_model(PRESETS[preset]).to(device, dtype).eval()
        for decoding, batch in CASES[preset]:
            res = run_case(
                ours, hf, preset, decoding, batch, repeats, device, dtype, 0.0 if args.quick else MIN_SECONDS
            )
            results.append(res)
            print(
                f"  {preset:5s} {decoding:6s} batch {batch:2d}: ours {res['ours']['captions_per_s']:9.1f}  "
                f"hf {res['hf']['captions_per_s']:9.1f} captions/s  ratio {res['ratio']:.2f}",
                flush=True,
            )
            if args.breakdown:
                beams = 5 if decoding == "beam5" else 1
                parts = breakdown(ours, preset, beams, batch, device, dtype)
                breakdowns.append({"preset": preset, "decoding": decoding, "batch": batch, **parts})
                print("        ours: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()), flush=True)
        if args.profile:
            for beams in (1, 5):
                profile(ours, hf, preset, beams, device, dtype, args.profile)
        del ours, hf
        if device.type == "cuda":
            torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"\ncaption generation, {NEW_TOKENS} new tokens, {args.dtype}, {name}, median of >= {repeats} (min-max)")
    rate = "{0[captions_per_s]:.1f} ({0[min]:.1f}-{0[max]:.1f})".format
    print(
        "\n".join(
            table(
                ["preset", "decoding", "batch", "runs", "ours captions/s", "HF captions/s", "ours/HF"],
                [
                    [
                        r["preset"],
                        r["decoding"],
                        r["batch"],
                        r["repeats"],
                        rate(r["ours"]),
                        rate(r["hf"]),
                        f"{r['ratio']:.2f}x",
                    ]
                    for r in results
                ],
            )
        )
    )
    if args.out:
        import transformers

        meta = {
            "device": name,
            "dtype": args.dtype,
            "repeats": repeats,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        }
        write_json_atomic(args.out, {"meta": meta, "results": results, "breakdown": breakdowns})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
