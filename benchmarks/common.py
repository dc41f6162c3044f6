"""Helpers shared by the benchmark scripts (each script runs with ``benchmarks/`` first on ``sys.path``)."""

from __future__ import annotations

import threading
from typing import Any, TypeVar

SamplerT = TypeVar("SamplerT", bound="PeriodicSampler")


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
