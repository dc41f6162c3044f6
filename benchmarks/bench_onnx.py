"""Greedy captioning: the exported ONNX runner (onnxruntime, CPU) vs PyTorch ``generate_caption``.

The same random-weight model (a preset), exported with ``export_onnx``; both decode exactly 24 new
tokens per caption (``<eos>`` banned until then with ``min_length``) from the same pixel arrays,
alternately in one process, each with the same number of threads; the table gives median captions/s
(min-max spread) and onnx/torch. Both produce the same token ids (checked on every run).

    python benchmarks/bench_onnx.py --threads 1 --out bench_onnx.json     # small preset, batch 1 and 8
    python benchmarks/bench_onnx.py --quick                               # tiny preset, smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import summarise, table

from geometry_os.fileio import write_json_atomic
from geometry_os.plugins.onnx_export.export import export_onnx
from geometry_os.plugins.onnx_export.runtime import OnnxCaptioner
from geometry_os.systems.pixel_llm import create_pixel_llm
from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption
from geometry_os.systems.pixel_llm.models import SimpleVocabulary

NEW_TOKENS = 24
MIN_SECONDS = 5.0
MAX_REPEATS = 40


def run_case(model: Any, vocab: Any, runner: OnnxCaptioner, batch: int, repeats: int, min_seconds: float) -> dict:
    size = model.config.image_size
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    images = torch.from_numpy(x)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, min_length=NEW_TOKENS + 1)

    def run_torch() -> np.ndarray:
        return generate_caption(model, images, config=config, tokenizer=vocab).numpy()  # the runner suppresses
        # the ids the tokenizer cannot decode, as generate_caption does when given it

    def run_onnx() -> np.ndarray:
        return runner.generate(x, config).sequences

    fns: dict[str, Callable[[], np.ndarray]] = {"torch": run_torch, "onnx": run_onnx}
    outs = {name: fn() for name, fn in fns.items()}  # warm-up, and the same ids from both
    assert outs["torch"].shape == (batch, NEW_TOKENS + 1) and np.array_equal(outs["torch"], outs["onnx"])
    times: dict[str, list[float]] = {name: [] for name in fns}
    while len(times["torch"]) < repeats or (
        len(times["torch"]) < MAX_REPEATS and min(map(sum, times.values())) < min_seconds
    ):
        for name, fn in fns.items():  # alternate, so drifts hit both alike
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    result: dict[str, Any] = {"batch": batch, "new_tokens": NEW_TOKENS, "repeats": len(times["torch"])}
    for name, ts in times.items():
        s = summarise([batch / t for t in ts])
        result[name] = {"captions_per_s": s["median"], "min": s["min"], "max": s["max"], "seconds": ts}
    result["ratio"] = result["onnx"]["captions_per_s"] / result["torch"]["captions_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, batch 1, few repeats (smoke test)")
    parser.add_argument("--preset", default=None, choices=["tiny", "small", "base"])
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    preset = args.preset or ("tiny" if args.quick else "small")
    batches = args.batches or ([1] if args.quick else [1, 8])
    repeats = args.repeats or (3 if args.quick else 10)
    torch.manual_seed(0)
    vocab = SimpleVocabulary(["a red circle left of a blue square"])
    model = create_pixel_llm(preset=preset).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "ckpt", tokenizer=vocab)
        start = time.perf_counter()
        export_onnx(Path(tmp) / "ckpt", Path(tmp) / "onnx")
        export_s = time.perf_counter() - start
        runner = OnnxCaptioner(Path(tmp) / "onnx", threads=args.threads)
        results = []
        for batch in batches:
            res = run_case(model, vocab, runner, batch, repeats, 0.0 if args.quick else MIN_SECONDS)
            results.append(res)
            print(
                f"  {preset} greedy batch {batch:2d}: torch {res['torch']['captions_per_s']:8.1f}  "
                f"onnx {res['onnx']['captions_per_s']:8.1f} captions/s  onnx/torch {res['ratio']:.2f}",
                flush=True,
            )
    cpuinfo = Path("/proc/cpuinfo")
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
        if cpuinfo.exists()
        else ""
    )
    machine = {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "threads": args.threads,
    }
    rows = [
        [
            f"{preset} greedy",
            r["batch"],
            r["repeats"],
            f"{r['torch']['captions_per_s']:.3g} ({r['torch']['min']:.3g}-{r['torch']['max']:.3g})",
            f"{r['onnx']['captions_per_s']:.3g} ({r['onnx']['min']:.3g}-{r['onnx']['max']:.3g})",
            f"**{r['ratio']:.2f}x**",
        ]
        for r in results
    ]
    print(
        "\n".join(
            table(
                [
                    f"generation ({NEW_TOKENS} new tokens, fp32, {args.threads} thread(s))",
                    "batch",
                    "runs",
                    "PyTorch captions/s",
                    "onnxruntime captions/s",
                    "onnx/torch",
                ],
                rows,
            )
        )
    )
    print(f"export took {export_s:.1f} s; machine: {machine}")
    if args.out:
        write_json_atomic(
            args.out, {"preset": preset, "export_seconds": export_s, "machine": machine, "results": results}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
