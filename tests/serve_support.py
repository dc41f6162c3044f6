"""A tiny random checkpoint whose captions differ from image to image, test images, and a real
``geo-os pixel-llm serve`` process on a free loopback port."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

WORDS = (
    "a red blue green small large circle square triangle left right of above below the and "
    "big tiny dark light one two three"
).split()


def make_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Random weights of about unit gain (so the caption follows the image instead of collapsing to one
    repeated token) and an ``<eos>`` bias that makes captions end at varied lengths."""
    from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
    from geometry_os.systems.pixel_llm import create_pixel_llm

    tokenizer = SimpleVocabulary([" ".join(WORDS)])
    model = create_pixel_llm(
        vocab_size=len(tokenizer), preset="tiny", text_num_layers=2, max_seq_len=12, tie_word_embeddings=False
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                continue
            std = (
                0.1
                if p.dim() == 1
                else (1.0 if "wte" in name or "wpe" in name or "pos" in name else min(p.shape) ** -0.5)
            )
            p.normal_(0.0, std, generator=g)
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


def image_bytes(index: int, size: int = 32, fmt: str = "PNG") -> bytes:
    """A distinct image per index: a flat colour plus seeded noise."""
    g = torch.Generator().manual_seed(index)
    colour = torch.rand(3, 1, 1, generator=g)
    pixels = (0.6 * colour + 0.4 * torch.rand(3, size, size, generator=g)).clamp(0, 1)
    array = (pixels.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:03d}.png"
        path.write_bytes(image_bytes(i))
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``geo-os pixel-llm serve`` in a child process; output goes to files (a full pipe would block it)."""

    def __init__(self, checkpoint: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = log_dir / f"serve-{self.port}.out", log_dir / f"serve-{self.port}.err"
        geo_os = Path(sys.executable).with_name("geo-os")
        command = [str(geo_os), "pixel-llm", "serve", "--checkpoint", str(checkpoint), "--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command,
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    def wait_ready(self, timeout: float = 240.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.stderr()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout} s: {self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def access_log(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
