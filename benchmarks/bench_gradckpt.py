"""Gradient checkpointing: peak memory and time of one training step (forward + backward), with and without.

Each setting runs in its own child process. On CUDA the peak is ``torch.cuda.max_memory_allocated``
during the steps; on the CPU it is the highest RSS a sampling thread sees during the steps (every 1 ms),
both over the memory before them (weights, no gradients): activations, gradients and workspace. The CPU child runs with
glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=0`` so that freed tensors leave the
RSS at once and it follows live memory (else malloc keeps freed activations and the rise reads low). Prints a table; ``--out``
also writes JSON (with the machine).

    python benchmarks/bench_gradckpt.py --preset small --batch 32 --out gradckpt.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """The largest RSS seen by a thread that reads it every millisecond (torch ops release the GIL)."""

    def __init__(self) -> None:
        self.peak, self._running = rss_mib(), True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.001)

    def stop(self) -> float:
        self._running = False
        self._thread.join()
        return max(self.peak, rss_mib())


def measure(preset: str, batch: int, image_size: int | None, checkpointing: bool, device: str, steps: int) -> dict:
    """One child's measurement: peak memory of a step and its mean time."""
    import torch

    from geometry_os.systems.pixel_llm import create_pixel_llm

    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=1000, preset=preset, **({"image_size": image_size} if image_size else {}))
    model = model.to(device).train()
    image_size = model.config.image_size
    model.gradient_checkpointing_enable(checkpointing)
    images = torch.rand(batch, 3, image_size, image_size, device=device)
    ids = torch.randint(4, 1000, (batch, 24), device=device)

    def step() -> None:  # gradients freed first, so each step starts from the weights alone
        model.zero_grad(set_to_none=True)
        model(images, ids, labels=ids).loss.backward()

    step()  # warm-up: kernels chosen, allocator settled
    model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
        sampler = PeakSampler()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = sampler.stop()
    seconds = (time.perf_counter() - start) / steps
    return {
        "peak_over_base_mib": round(peak - base, 1),
        "base_mib": round(base, 1),
        "seconds_per_step": round(seconds, 3),
        "image_size": image_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=0, help="0: the preset's")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.preset, args.batch, args.image_size, args.child == "on", args.device, args.steps)
        print(json.dumps(result))
        return
    rows = {}
    for setting in ("off", "on"):
        cmd = [
            sys.executable,
            __file__,
            "--preset",
            args.preset,
            "--batch",
            str(args.batch),
            "--image-size",
            str(args.image_size),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
            "--child",
            setting,
        ]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        rows[setting] = json.loads(proc.stdout.strip().splitlines()[-1])
    import torch

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
    }
    image_size = rows["off"].pop("image_size")
    rows["on"].pop("image_size")
    result = {
        "preset": args.preset,
        "batch": args.batch,
        "image_size": image_size,
        "device": args.device,
        "machine": machine,
        "off": rows["off"],
        "on": rows["on"],
        "memory_ratio": round(rows["on"]["peak_over_base_mib"] / max(rows["off"]["peak_over_base_mib"], 1e-9), 3),
        "time_ratio": round(rows["on"]["seconds_per_step"] / max(rows["off"]["seconds_per_step"], 1e-9), 3),
    }
    print(
        f"| gradient checkpointing ({args.preset}, batch {args.batch}, {image_size} px, {args.device}) "
        "| step peak over base MiB | base MiB | s/step |"
    )
    print("|---|---|---|---|")
    for setting in ("off", "on"):
        row = rows[setting]
        print(f"| {setting} | {row['peak_over_base_mib']} | {row['base_mib']} | {row['seconds_per_step']} |")
    print(f"on/off: memory {result['memory_ratio']}x, time {result['time_ratio']}x")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
