"""What the user sees: a progress bar, ``metrics.jsonl`` (every logged value), and ``curves.png``.

Only the main process creates these. matplotlib is optional: without it there is no PNG.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from geometry_os.fileio import atomic_save, atomic_write_text

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"
CURVE_METRICS = ("exact_match", "bleu_4", "cider_d")


class MetricsLog:
    """Append-only JSON Lines log, flushed after every record; also kept in memory for the curves.

    ``tensorboard_dir``: also write every numeric value as a TensorBoard scalar there (``train/<key>`` for
    training records, ``val/<key>`` for validation ones, at their ``step``); needs the ``tensorboard`` extra.
    """

    def __init__(self, path: Path, enabled: bool = True, tensorboard_dir: Path | None = None) -> None:
        self.path, self.enabled = path, enabled
        self.history: list[dict[str, Any]] = []
        self.tensorboard = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from geometry_os.errors import ConfigError

                raise ConfigError(
                    "trainer.tensorboard=true needs the tensorboard package: pip install 'geometry-os[tensorboard]'"
                ) from None
            self.tensorboard = SummaryWriter(str(tensorboard_dir))

    def _scalars(self, record: dict[str, Any]) -> None:
        if self.tensorboard is None or "event" in record or not isinstance(record.get("step"), int):
            return
        section = "train" if "loss" in record else "val"
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(f"{section}/{key}", value, record["step"])
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def write(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        self.history.append(record)
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        self._scalars(record)

    def resume_at(self, step: int) -> None:
        """Keep the records up to ``step`` (those after it belong to the interrupted run's lost steps)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the crash
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(record)
        self.history = kept
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def plot_curves(history: list[dict[str, Any]], path: Path) -> bool:
    """Training/validation loss and caption metrics against steps; False when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    train = [(r["step"], r["loss"]) for r in history if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in history if isinstance(r.get("val_loss"), (int, float))]
    metrics = {m: [(r["step"], r[m]) for r in history if isinstance(r.get(m), (int, float))] for m in CURVE_METRICS}
    metrics = {m: points for m, points in metrics.items() if points}
    if not train and not val:
        return False
    figure = Figure(figsize=(10, 4) if metrics else (6, 4))
    FigureCanvasAgg(figure)  # the Agg canvas, without touching pyplot's global backend
    axes = figure.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    for points, label in ((train, "train loss"), (val, "val loss")):
        if points:
            axes[0].plot(*zip(*points), label=label, marker="o" if label == "val loss" else None)
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[0].legend()
    if metrics:
        for name, points in metrics.items():
            axes[1].plot(*zip(*points), label=name, marker="o")
        axes[1].set(xlabel="step", title="validation captions")
        axes[1].legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: figure.savefig(tmp, dpi=80))
    return True


class Progress:
    """A tqdm bar on a terminal; plain log lines elsewhere (CI, torchrun); silent when ``quiet``."""

    def __init__(self, total: int | None, initial: int, enabled: bool, quiet: bool) -> None:
        self.quiet = quiet or not enabled
        self.bar = None
        if not self.quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.total = total

    def step(self, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(postfix, refresh=False)

    def line(self, text: str, *, always: bool = False) -> None:
        """A log line (``always``: also under a progress bar, e.g. validation results)."""
        if self.quiet:
            return
        if self.bar is not None:
            if always:
                self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["CURVES_FILE", "METRICS_FILE", "MetricsLog", "Progress", "plot_curves"]
