"""Shared helpers of the reliability suite: subprocess runs with peak memory, tiny checkpoints, odd images,
hostile files and one-line-error assertions. Imported by the test modules and by ``render_table.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


# ---- subprocesses -----------------------------------------------------------------------------------


def geo_os_command() -> list[str]:
    """The installed ``geo-os`` console script next to this interpreter (else ``python -m geometry_os.cli``)."""
    script = Path(sys.executable).with_name("geo-os")
    return [str(script)] if script.exists() else [sys.executable, "-m", "geometry_os.cli"]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: one thread (deterministic, and the machine is shared), no
    registry/plugin overrides leaking in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OS_")}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        TOKENIZERS_PARALLELISM="false",
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


@dataclass
class Completed:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    max_rss_kb: int  # this child's peak resident set (from wait4), in KiB
    seconds: float


class Measured:
    """A child process whose own peak RSS is read with ``os.wait4`` (exact for this child, unlike
    ``RUSAGE_CHILDREN``, which is the maximum over every child the test process ever had)."""

    def __init__(
        self,
        args: Sequence[str],
        cwd: str | os.PathLike | None = None,
        env: dict | None = None,
        stdin: str | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        self._started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=env or child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        )
        self._chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if stdin is not None:
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.close()

    def _drain(self, stream, name: str) -> None:
        for chunk in iter(lambda: stream.read(65536), b""):
            self._chunks[name].append(chunk)

    def wait(self, timeout: float = 300) -> Completed:
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(self.proc.pid, 0)
        finally:
            timer.cancel()
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        for reader in self._readers:
            reader.join()
        text = {k: b"".join(v).decode("utf-8", "replace") for k, v in self._chunks.items()}
        return Completed(
            self.args,
            self.proc.returncode,
            text["stdout"],
            text["stderr"],
            usage.ru_maxrss,
            time.perf_counter() - self._started,
        )


def run_measured(args: Sequence[str], timeout: float = 300, **kwargs) -> Completed:
    return Measured(args, **kwargs).wait(timeout)


# ---- assertions -----------------------------------------------------------------------------------


def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# the one informational line ``--dtype auto`` prints where it picks bf16 (CPUs with native bf16, GPUs)
DTYPE_NOTE = re.compile(r"^dtype: \w+ \(--dtype auto on \w+\)$")


def problem_lines(stderr: str) -> list[str]:
    """The non-blank lines of ``stderr`` other than the ``--dtype auto`` note."""
    return [line for line in nonblank_lines(stderr) if not DTYPE_NOTE.match(line)]


def assert_one_line(stderr: str, *needles: str) -> str:
    """``stderr`` is exactly one line (besides the ``--dtype auto`` note), with no traceback, containing
    every needle; returns the line."""
    lines = problem_lines(stderr)
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# ---- checkpoints -----------------------------------------------------------------------------------

CAPTIONS = [
    "a small red circle",
    "a large blue square left of a small green diamond",
    "a small white triangle above a large purple circle",
    "a large yellow diamond",
]


def make_checkpoint(folder: str | os.PathLike, seed: int = 0, preset: str = "tiny", **overrides) -> Path:
    """A random tiny model with a ``simple`` vocabulary, written by ``save_pretrained``."""
    import torch

    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.resolution import get_component

    vocab = get_component("tokenizer", "simple").load().train(CAPTIONS, None)
    torch.manual_seed(seed)
    model = create_pixel_llm(vocab_size=len(vocab), preset=preset, **overrides)
    return model.save_pretrained(folder, tokenizer=vocab)


def copy_checkpoint(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
    return dest


# ---- hostile files -----------------------------------------------------------------------------------


class CodeOnLoad:
    """Unpickling this runs ``open(marker, "w")``: the file appears if any reader executes pickled code."""

    def __init__(self, marker: str | os.PathLike) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SystemOnLoad:
    """The classic: ``os.system("touch marker")`` on unpickling."""

    def __init__(self, marker: str | os.PathLike) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def evil_pickle(marker: str | os.PathLike, protocol: int = pickle.DEFAULT_PROTOCOL, system: bool = False) -> bytes:
    payload = SystemOnLoad(marker) if system else CodeOnLoad(marker)
    return pickle.dumps(payload, protocol=protocol)


def evil_torch_file(marker: str | os.PathLike) -> bytes:
    """A real ``torch.save`` zip archive whose pickle holds a code-running object next to an optimizer key."""
    import torch

    buffer = io.BytesIO()
    torch.save({"optimizer": SystemOnLoad(marker), "scheduler": {}, "rng": []}, buffer)
    return buffer.getvalue()


def safetensors_bytes(header: dict, data: bytes = b"", header_length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, JSON header, data (lengths may lie)."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_length is None else header_length) + raw + data


# ---- images -----------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` RGB in its IHDR and has no pixel data at all:
    only a reader that trusts the header before decoding refuses it as a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def write_scene(path: str | os.PathLike, size: int = 32, mode: str = "RGB", seed: int = 0, **save) -> Path:
    """A small picture (a coloured square on black) in any Pillow mode."""
    from PIL import Image, ImageDraw

    path = Path(path)
    image = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    c = (seed * 37) % 200 + 40
    draw.rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=(c, 255 - c, 60))
    if mode == "I;16":
        grey = image.convert("L")
        image = Image.new("I;16", grey.size)
        image.putdata([v * 257 for v in grey.tobytes()])
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, **save)
    return path


def write_exif_rotated(path: str | os.PathLike) -> Path:
    """A 40x20 JPEG stored landscape (left half red, right half blue) with EXIF orientation 6
    (display rotated 90 degrees clockwise): correctly loaded it is 20x40, red on top."""
    from PIL import Image

    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return Path(path)


def truncated_copy(src: str | os.PathLike, dest: str | os.PathLike, keep: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dest).write_bytes(data[: max(1, int(len(data) * keep))])
    return Path(dest)
