"""Helpers shared by the benchmark scripts (each script runs with ``benchmarks/`` first on ``sys.path``)."""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

SamplerT = TypeVar("SamplerT", bound="PeriodicSampler")
ResultT = TypeVar("ResultT")


def timed(fn: Callable[[], ResultT]) -> tuple[float, ResultT]:
    """``fn()``'s wall-clock seconds (``time.perf_counter``) and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


class PeriodicSampler:
    """Calls ``sample()`` on a daemon thread every ``interval`` seconds (the first call at once), from
    entering the ``with`` block until leaving it; subclasses say what one sample is."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        """Take one sample (runs on the sampling thread)."""
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self: SamplerT) -> SamplerT:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine_kind() -> str:
    """What decides which CPU kernels run: the vector ISA torch dispatches to, and native or emulated
    bf16 (oneDNN's check). A table measured on one kind says nothing about another."""
    import torch

    from geometry_os.systems.pixel_llm.cpu_bf16 import EMULATED_BF16

    return f"{torch.backends.cpu.get_cpu_capability()}, bf16 {'emulated' if EMULATED_BF16 else 'native'}"


def machine_description() -> dict[str, str]:
    """``machine`` (CPU, CPU count, torch threads, capability), ``kind`` and library versions, for a result's meta."""
    import torch
    import transformers

    return {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}",
        "kind": machine_kind(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
