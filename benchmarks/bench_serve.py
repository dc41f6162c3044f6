"""Load benchmark of ``geo-os pixel-llm serve`` on loopback: sequential single-image requests vs many
concurrent clients (dynamic batching), throughput and p50/p99 latency, and the server's peak RSS
sampled through the concurrent phase (to show it stays flat over thousands of requests).

The server is started here (a child process on 127.0.0.1 and a free port) and stopped at the end;
the client is a small asyncio + httpx loop. Bounded in count (``--requests``) and time (``--max-seconds``).

    python benchmarks/bench_serve.py --checkpoint CKPT --out bench_serve.json    # 5,000 requests
    python benchmarks/bench_serve.py --quick                                       # tiny random model, smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import table
from common import PeriodicSampler

from geometry_os.fileio import write_json_atomic


def make_tiny_checkpoint(folder: Path) -> Path:
    from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
    from geometry_os.systems.pixel_llm import create_pixel_llm

    tokenizer = SimpleVocabulary(["a red blue green small large circle square triangle left right of above below"])
    model = create_pixel_llm(vocab_size=len(tokenizer), preset="tiny")
    return model.save_pretrained(folder, tokenizer=tokenizer)


def images(count: int, size: int) -> list[bytes]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        pixels = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, port: int, flags: list[str], log: Path) -> subprocess.Popen:
    geo_os = Path(sys.executable).with_name("geo-os")
    process = subprocess.Popen(
        [str(geo_os), "pixel-llm", "serve", "--checkpoint", str(checkpoint), "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("server did not start in 180 s")


class RssSampler(PeriodicSampler):
    """Samples the server's resident memory every ``interval`` seconds (with the request count then),
    and once more on leaving the ``with`` block."""

    def __init__(self, pid: int, counter: list[int], interval: float = 0.25) -> None:
        super().__init__(interval)
        self.process, self.counter = psutil.Process(pid), counter
        self.samples: list[tuple[int, int]] = []

    def sample(self) -> None:
        self.samples.append((self.counter[0], self.process.memory_info().rss))

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self.sample()


async def run_phase(
    url: str, payloads: list[bytes], total: int, concurrency: int, max_seconds: float, counter: list[int]
) -> dict[str, Any]:
    latencies: list[float] = []
    server_ms: list[float] = []
    errors = 0
    next_index = 0
    deadline = time.monotonic() + max_seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index, errors
        while next_index < total and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            files = [("image", (f"{index}.png", payloads[index % len(payloads)], "image/png"))]
            started = time.perf_counter()
            response = await http.post("/v1/captions", files=files)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200
            if response.status_code == 200:  # the server's own view: from the handler's start to its answer
                server_ms.append(response.json()["timings"]["total_ms"])
            counter[0] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered, handled = sorted(latencies), sorted(server_ms) or [0.0]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "server_p50_ms": round(statistics.median(handled), 2),
        "server_p99_ms": round(handled[min(len(handled) - 1, int(0.99 * len(handled)))], 2),
    }


def batch_stats(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and line[0] != "#"}
    count = values.get("pixel_llm_batch_requests_count", 0.0)
    return {
        "model_calls": count,
        "mean_requests_per_call": round(values.get("pixel_llm_batch_requests_sum", 0.0) / count, 2) if count else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default with --quick: a tiny random one)")
    parser.add_argument("--requests", type=int, default=5000, help="requests in the concurrent phase")
    parser.add_argument("--sequential", type=int, default=200, help="requests in the sequential phase")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--device", default="cpu", help="the server's --device (cpu, cuda, ...)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server (OMP_NUM_THREADS)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop each phase after this long")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 40 + 200 requests")
    parser.add_argument("--out", type=Path, default=Path("bench_serve.json"))
    args = parser.parse_args()
    if args.quick:
        args.requests, args.sequential = min(args.requests, 200), min(args.sequential, 40)

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_serve_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or make_tiny_checkpoint(work / "ck")
    config = json.loads((checkpoint / "config.json").read_text())["model"]
    payloads = images(64, int(config.get("image_size", 32)))
    port = free_port()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    flags = [
        "--device",
        args.device,
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--max-queue",
        str(max(512, 2 * args.concurrency)),
    ]
    server = start_server(checkpoint, port, flags, work / "server.err")
    url = f"http://127.0.0.1:{port}"
    counter = [0]
    try:
        asyncio.run(run_phase(url, payloads, 20, 4, 60, [0]))  # warm-up
        rss_start = psutil.Process(server.pid).memory_info().rss
        sequential = asyncio.run(run_phase(url, payloads, args.sequential, 1, args.max_seconds, [0]))
        before = batch_stats(url)
        with RssSampler(server.pid, counter) as sampler:
            concurrent = asyncio.run(
                run_phase(url, payloads, args.requests, args.concurrency, args.max_seconds, counter)
            )
        after = batch_stats(url)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    calls = after["model_calls"] - before["model_calls"]
    concurrent["mean_requests_per_call"] = round(concurrent["requests"] / calls, 2) if calls else 0.0
    rss = sampler.samples
    tenth = next((r for n, r in rss if n >= concurrent["requests"] // 10), rss[0][1])
    memory = {
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_after_10pct_mib": round(tenth / 2**20, 1),
        "rss_end_mib": round(rss[-1][1] / 2**20, 1),
        "rss_peak_mib": round(max(r for _, r in rss) / 2**20, 1),
        "samples": len(rss),
    }
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "server_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        },
        "checkpoint": {
            "path": str(checkpoint),
            "image_size": config.get("image_size"),
            "vision_embed_dim": config.get("vision_embed_dim"),
            "text_num_layers": config.get("text_num_layers"),
        },
        "server_flags": flags,
        "sequential": sequential,
        "concurrent": concurrent,
        "memory": memory,
    }
    write_json_atomic(args.out, result)
    rows = [
        [
            name,
            phase["requests"],
            phase["requests_per_s"],
            phase["p50_ms"],
            phase["p99_ms"],
            phase["server_p50_ms"],
            phase["server_p99_ms"],
            phase["errors"],
            calls_per,
        ]
        for name, phase, calls_per in (
            ("sequential (1 client)", sequential, 1.0),
            (f"{args.concurrency} concurrent clients", concurrent, concurrent["mean_requests_per_call"]),
        )
    ]
    print(
        "\n".join(
            table(
                [
                    "load",
                    "requests",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "handler p50 ms",
                    "handler p99 ms",
                    "errors",
                    "requests per model call",
                ],
                rows,
            )
        )
    )
    print(
        "\n".join(
            table(
                ["RSS start MiB", "after 10 % MiB", "end MiB", "peak MiB"],
                [
                    [
                        memory["rss_start_mib"],
                        memory["rss_after_10pct_mib"],
                        memory["rss_end_mib"],
                        memory["rss_peak_mib"],
                    ]
                ],
            )
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
