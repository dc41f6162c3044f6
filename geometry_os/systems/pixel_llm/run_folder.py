"""The layout of a training run's folder, as the train workflow reads it before any trainer runs.

A run writes ``checkpoint_dir/step-00000100/`` folders (a ``save_pretrained`` folder plus
``trainer_state.json``), a ``latest`` JSON pointer and a ``best`` copy (see ``checkpoint.py`` for the
model files and the pointer). This module answers the workflow's questions about such a folder: may a
new run start here, which checkpoint does ``--resume`` mean, what did the run record about itself.
No torch: reading these files is plain JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from geometry_os.errors import CheckpointError

from .checkpoint import BEST, CONFIG, LATEST, STEP_RE, read_json, read_latest, safe_file

STATE = "trainer_state.json"
STATE_FORMAT = "pixel-llm-trainer-state"


def new_run_refusal(checkpoint_dir: Path) -> str | None:
    """Why a new run must not start in ``checkpoint_dir`` (a run already wrote its ``latest`` pointer,
    ``best`` or a step folder there, which the new one would take over), or None when it may."""
    if not checkpoint_dir.is_dir():
        return None
    if not (
        (checkpoint_dir / LATEST).exists()
        or (checkpoint_dir / BEST).exists()
        or any(STEP_RE.match(p.name) for p in checkpoint_dir.iterdir())
    ):
        return None
    return (
        f"{checkpoint_dir} already holds a training run; resume it (train --resume latest, trainer.resume()) "
        "or train into another checkpoint_dir (--out)"
    )


def resolve_checkpoint(path: str | Path, checkpoint_dir: str | Path | None = None) -> Path:
    """``"latest"`` (in ``checkpoint_dir``), a checkpoint folder, or a checkpoint_dir -> a checkpoint folder.

    Raises CheckpointError when the folder does not exist, ``latest`` has no ``checkpoint_dir``, or the
    run's ``latest`` pointer is missing or broken.
    """
    if str(path) == LATEST:
        if checkpoint_dir is None:
            raise CheckpointError("'latest' needs a checkpoint_dir")
        return read_latest(Path(checkpoint_dir))
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    if (folder / CONFIG).is_file():
        return folder
    return read_latest(folder)


def read_state(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's ``trainer_state.json`` (counters, data position, best metric, the run's trainer
    settings), or None for a plain ``save_pretrained`` folder.

    Raises CheckpointError for a file that is not a trainer state or whose counters have the wrong types.
    """
    path = safe_file(folder, STATE, required=False)
    if path is None:
        return None
    state = read_json(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a trainer state (expected format={STATE_FORMAT!r})")
    _check_state_types(state, path)
    return state


def is_number(value: Any) -> bool:
    """An int or float that is not a bool (JSON ``true`` is no step count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_state_types(state: dict[str, Any], path: Path) -> None:
    """The fields the trainer restores have the types it computes with (else a one-line error, not a crash)."""

    count: tuple[Callable[[Any], bool], str] = (
        lambda v: is_number(v) and isinstance(v, int) and v >= 0,
        "a non-negative integer",
    )
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "global_step": count,
        "epoch": count,
        "batch_in_epoch": count,
        "validations_since_best": count,
        "early_stopped": (lambda v: isinstance(v, bool), "true or false"),
        "train_time_s": (lambda v: is_number(v) and v >= 0, "a non-negative number"),
        "best_metric": (lambda v: v is None or is_number(v), "a number or null"),
        "best_val_loss": (lambda v: v is None or is_number(v), "a number or null"),
        "best_metric_name": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "best_checkpoint": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "rng": (
            lambda v: v is None or (isinstance(v, list) and all(r is None or isinstance(r, dict) for r in v)),
            "a list of objects",
        ),
    }
    for key, (ok, what) in checks.items():
        if key in state and not ok(state[key]):
            raise CheckpointError(f"{path}: {key!r} must be {what}, got {str(state[key])[:60]!r}")
