"""GPU figures: Pixel LLM vs HuggingFace ``VisionEncoderDecoderModel`` (ViT + GPT-2 with cross-attention,
SDPA) at identical sizes, random weights, on one CUDA device.

- ``peak``: achieved TFLOP/s of an 8192³ bf16 matmul (the dense bf16 ceiling MFU is measured against).
- ``train``: images/s of a full bf16-autocast training step (forward, loss, backward, fused AdamW) with
  24-token captions; FLOPs counted by ``torch.utils.flop_counter``; MFU = achieved / measured peak.
- ``generate``: captions/s for exactly 24 new tokens (``<eos>`` banned in both), greedy, bf16 weights:
  ours with the dynamic cache, ours with ``cache_implementation="static"`` (decoder step captured in a
  CUDA graph), and HF ``generate()``; batch 1 (latency) and a larger batch (throughput).

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu.json      # on a CUDA machine
    python benchmarks/bench_gpu.py --render benchmarks/results/gpu*.json  # the tables into docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_generate import NEW_TOKENS, summarise, table, timed  # noqa: E402
from run import CAPTION_TOKENS, build_models, count_flops, make_optimizer, train_throughput, write_doc  # noqa: E402

from geometry_os.fileio import write_json_atomic  # noqa: E402
from geometry_os.systems.pixel_llm.config import PRESETS  # noqa: E402
from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption  # noqa: E402

TRAIN_BATCH = {"tiny": 32, "small": 256, "base": 64}
GENERATE_BATCHES = {"tiny": (1, 32), "small": (1, 32), "base": (1, 8)}
CUDA = torch.device("cuda")


def bf16_peak(n: int = 8192, repeats: int = 10) -> float:
    """Median achieved FLOP/s of an n³ bf16 matmul on random data, after warm-ups."""
    a = torch.randn(n, n, device=CUDA, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=CUDA, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(repeats):
        seconds, _ = timed(lambda: a @ b, CUDA)
        rates.append(2 * n**3 / seconds)
    return summarise(rates)["median"]


def train_step(model: torch.nn.Module, which: str, batch: int, size: int, vocab: int) -> Callable[[], float]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(CUDA)
    ids = torch.randint(3, vocab, (batch, CAPTION_TOKENS), generator=g).to(CUDA)
    ids[:, 0] = 1
    opt = make_optimizer(model)
    model.train()

    def step() -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if which == "ours":
                loss = model(images, ids, labels=ids).loss
            else:
                loss = model(pixel_values=images, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def bench_train(preset: str, repeats: int, steps: int, peak: float, batch: int, compile_: bool) -> dict:
    cfg = PRESETS[preset]
    ours, hf = (m.to(CUDA) for m in build_models(preset))
    fns = {
        name: train_step(m, name, batch, cfg["image_size"], cfg["vocab_size"])
        for name, m in (("ours", ours), ("hf", hf))
    }
    flops = {name: count_flops(fn) for name, fn in fns.items()}  # eager, also the first warm-up
    if compile_:  # both models alike: fused element-wise kernels, fewer launches
        fns = {
            name: train_step(torch.compile(m), name, batch, cfg["image_size"], cfg["vocab_size"])
            for name, m in (("ours", ours), ("hf", hf))
        }
        for fn in fns.values():
            fn()  # compiles
    for fn in fns.values():
        fn()
    rates: dict[str, list[float]] = {"ours": [], "hf": []}
    for _ in range(repeats):  # alternate, so clock drifts hit both alike
        for name, fn in fns.items():
            seconds, _ = timed(lambda fn=fn: [fn() for _ in range(steps)], CUDA)
            rates[name].append(steps * batch / seconds)
    out: dict[str, Any] = {
        "preset": preset,
        "batch": batch,
        "compile": compile_,
        "steps_per_repeat": steps,
        "repeats": repeats,
    }
    for name, r in rates.items():
        row = train_throughput(r, flops[name], batch, peak)
        row["achieved_tflops"] = row.pop("achieved_flops") / 1e12
        out[name] = row
    out["ratio"] = out["ours"]["images_per_s"] / out["hf"]["images_per_s"]
    del ours, hf, fns
    torch.cuda.empty_cache()
    return out


def bench_generate(preset: str, repeats: int) -> list[dict]:
    ours, hf = (m.to(CUDA, torch.bfloat16).eval() for m in build_models(preset))
    size = PRESETS[preset]["image_size"]
    results = []
    for batch in GENERATE_BATCHES[preset]:
        images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(CUDA, torch.bfloat16)
        base = dict(max_new_tokens=NEW_TOKENS, min_length=NEW_TOKENS + 1)
        fns = {
            "ours": partial(generate_caption, ours, images, config=GenerationConfig(**base)),
            "ours_static": partial(
                generate_caption, ours, images, config=GenerationConfig(**base, cache_implementation="static")
            ),
            "hf": partial(
                hf.generate,
                pixel_values=images,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                num_beams=1,
                do_sample=False,
                use_cache=True,
            ),
        }
        outputs = {}
        for name, fn in fns.items():  # warm-up (kernels, graph capture, lazy imports)
            with torch.inference_mode():
                for _ in range(2):
                    _, outputs[name] = timed(fn, CUDA)
            assert outputs[name].shape == (batch, NEW_TOKENS + 1), f"{name} gave {tuple(outputs[name].shape)}"
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                with torch.inference_mode():
                    times[name].append(timed(fn, CUDA)[0])
        r: dict[str, Any] = {
            "preset": preset,
            "decoding": "greedy",
            "batch": batch,
            "new_tokens": NEW_TOKENS,
            "repeats": repeats,
            "dtype": "bf16",
            "static_equals_dynamic": bool(torch.equal(outputs["ours"], outputs["ours_static"])),
        }
        for name, ts in times.items():
            s = summarise([batch / t for t in ts])
            r[name] = {
                "captions_per_s": s["median"],
                "min": s["min"],
                "max": s["max"],
                "ms_per_token": 1e3 * sorted(ts)[len(ts) // 2] / NEW_TOKENS,
            }
        r["ratio"] = r["ours"]["captions_per_s"] / r["hf"]["captions_per_s"]
        r["ratio_static"] = r["ours_static"]["captions_per_s"] / r["hf"]["captions_per_s"]
        results.append(r)
        print(
            f"  generate {preset} b{batch}: ours {r['ours']['captions_per_s']:.1f} static "
            f"{r['ours_static']['captions_per_s']:.1f} hf {r['hf']['captions_per_s']:.1f} captions/s",
            flush=True,
        )
    del ours, hf
    torch.cuda.empty_cache()
    return results


def render(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Run of {m['time']} on {m['device']}, torch {m['torch']} (CUDA {m['cuda']}); measured dense bf16 peak "
        f"{data['bf16_peak_tflops']:.0f} TFLOP/s (8192³ matmul). Command: `{data['command']}`.",
        "",
    ]
    rows = [
        [
            r["preset"] + (" (compiled)" if r.get("compile") else ""),
            r["batch"],
            f"{r['ours']['images_per_s']:.0f} ({r['ours']['min']:.0f}–{r['ours']['max']:.0f})",
            f"{r['hf']['images_per_s']:.0f} ({r['hf']['min']:.0f}–{r['hf']['max']:.0f})",
            f"{r['ratio']:.2f}×",
            f"{100 * r['ours']['mfu']:.0f} %",
            f"{100 * r['hf']['mfu']:.0f} %",
        ]
        for r in data["train"]
    ]
    lines += table(
        ["train bf16 autocast", "batch", "ours images/s", "HF images/s", "ours/HF", "ours MFU", "HF MFU"], rows
    )
    rows = [
        [
            r["preset"] + (" (compiled)" if r.get("compile") else ""),
            r["batch"],
            f"{r['ours']['ms_per_token']:.2f}",
            f"{r['ours_static']['ms_per_token']:.2f}",
            f"{r['hf']['ms_per_token']:.2f}",
            f"{r['ratio']:.2f}×",
            f"{r['ratio_static']:.2f}×",
            "yes" if r["static_equals_dynamic"] else "no",
        ]
        for r in data["generate"]
    ]
    lines += table(
        [
            "greedy bf16, 24 tokens",
            "batch",
            "ours ms/token",
            "ours static+graph ms/token",
            "HF ms/token",
            "ours/HF",
            "static/HF",
            "same ids",
        ],
        rows,
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--train-batch", nargs="*", default=[], metavar="PRESET=N", help="training batch per preset")
    parser.add_argument("--compile", action="store_true", help="also train both models under torch.compile")
    parser.add_argument("--only", choices=["train", "generate"])
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--render", type=Path, nargs="+", help="write the tables of these JSON files into docs/performance.md"
    )
    args = parser.parse_args()
    if args.render:
        write_doc(
            "\n".join(render(json.loads(path.read_text())) for path in args.render), name="benchmarks/bench_gpu.py"
        )
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = bf16_peak()
    print(f"bf16 peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    data: dict[str, Any] = {
        "machine": {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "host": platform.node(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "command": "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:]),
        "bf16_peak_tflops": peak / 1e12,
        "train": [],
        "generate": [],
    }
    batches = {**TRAIN_BATCH, **{k: int(v) for k, v in (item.split("=", 1) for item in args.train_batch)}}
    for preset, compile_ in [(p, c) for p in args.presets for c in ([False, True] if args.compile else [False])]:
        if args.only == "generate":
            break
        r = bench_train(preset, args.repeats, args.train_steps, peak, batches[preset], compile_)
        data["train"].append(r)
        print(
            f"  train {preset} b{r['batch']}: ours {r['ours']['images_per_s']:.0f} hf {r['hf']['images_per_s']:.0f} "
            f"images/s, MFU ours {100 * r['ours']['mfu']:.0f} % hf {100 * r['hf']['mfu']:.0f} %",
            flush=True,
        )
    for preset in args.presets if args.only != "train" else []:
        data["generate"] += bench_generate(preset, args.repeats)
    if args.out:
        write_json_atomic(args.out, data)
    print(render(data))


if __name__ == "__main__":
    main()
