"""Trainer checkpoints: ``checkpoint_dir/step-00000100/`` plus ``latest`` (a JSON pointer) and ``best`` (a copy).

A step folder is a ``save_pretrained`` folder (model.safetensors, config.json, tokenizer.json) plus
``trainer_state.json`` (counters, data position, best metric, Python/NumPy RNG state as JSON) and
``optimizer.pt`` (optimizer, scheduler, GradScaler and torch RNG tensors; with ``ema_decay`` the trained
weights, ``model.safetensors`` holding their average), which is only ever read
with ``torch.load(weights_only=True)``: a forged file cannot run code. Every folder is written by
``AtomicFolder``, and ``latest`` is replaced only once its folder is complete, so a crash at any
moment leaves ``latest`` naming a loadable checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from geometry_os.errors import CheckpointError
from geometry_os.systems.pixel_llm.plugin_api import (  # noqa: F401 - the run layout is the core's, re-exported
    BEST,
    CONFIG,
    LATEST,
    STATE,
    STATE_FORMAT,
    STEP_RE,
    WEIGHTS,
    AtomicFolder,
    check_weights_header,
    is_number,
    is_run_folder,
    load_tokenizer,
    load_weights,
    lora,
    new_run_refusal,
    read_checkpoint_config,
    read_json,
    read_latest,
    read_state,
    resolve_checkpoint,
    safe_file,
    step_folders,
    tokenizer_misfit,
    write_json_atomic,
    write_model_files,
)

OPTIMIZER = "optimizer.pt"
STALE_RE = re.compile(r"^\.(step-\d{8,}|best)\.(tmp|old)-[0-9a-f]{8}$")
# Fields that may differ between a checkpoint and the model it is loaded into.
RUNTIME_FIELDS = frozenset({"dropout"})


def step_name(step: int) -> str:
    return f"step-{step:08d}"


# ---- writing ------------------------------------------------------------------------------------------


def write_checkpoint(
    folder: Path, model: torch.nn.Module, tokenizer: Any, state: dict[str, Any], tensors: dict[str, Any]
) -> None:
    """One complete checkpoint folder, or nothing (the previous one, if any, stays)."""
    with AtomicFolder(folder, replaces=None) as tmp:  # step-N: the trainer's own folder
        write_model_files(tmp, model, tokenizer, adapters=True)
        write_json_atomic(tmp / STATE, state)
        torch.save(tensors, tmp / OPTIMIZER)


def point_latest(checkpoint_dir: Path, name: str, step: int) -> None:
    write_json_atomic(checkpoint_dir / LATEST, {"checkpoint": name, "step": step})


def copy_as_best(checkpoint_dir: Path, folder: Path) -> Path:
    """``checkpoint_dir/best``: hard links to ``folder``'s files (copies where links fail), placed atomically."""
    with AtomicFolder(checkpoint_dir / BEST, replaces=None) as tmp:
        for file in folder.iterdir():
            try:
                os.link(file, tmp / file.name)
            except OSError:
                shutil.copy2(file, tmp / file.name)
    return checkpoint_dir / BEST


def repair_best(checkpoint_dir: Path, best_checkpoint: str) -> bool:
    """Make ``best`` a copy of ``best_checkpoint`` (the step the run's state names) when it is not, e.g.
    after a crash between copying the new best and replacing the old one. Returns whether it copied."""
    source = checkpoint_dir / best_checkpoint
    if not STEP_RE.match(best_checkpoint) or not source.is_dir():
        return False
    try:
        current = read_json(checkpoint_dir / BEST / STATE).get("global_step")
        wanted = read_json(source / STATE).get("global_step")
    except (CheckpointError, OSError, AttributeError):
        current, wanted = None, -1
    if current == wanted:
        return False
    copy_as_best(checkpoint_dir, source)
    return True


def rotate(checkpoint_dir: Path, limit: int | None, keep: set[str]) -> list[Path]:
    """Delete the oldest step folders beyond ``limit``, never one named in ``keep`` (latest, best)."""
    if limit is None:
        return []
    folders = step_folders(checkpoint_dir)
    newest = {p.name for _, p in folders[-limit:]}
    doomed = [p for _, p in folders if p.name not in newest and p.name not in keep]
    for path in doomed:
        # renamed first (atomic), so that a crash mid-delete leaves a temporary name remove_stale clears,
        # never a half-deleted folder under a step name
        doomed_tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        os.rename(path, doomed_tmp)
        shutil.rmtree(doomed_tmp, ignore_errors=True)
    return doomed


def remove_stale(checkpoint_dir: Path) -> list[Path]:
    """Temporary folders left by a crashed save (``.step-*.tmp-*``, ``.best.old-*``). A crash between
    moving a folder aside and moving its replacement in leaves only ``.X.old-*``: that one is put back."""
    if not checkpoint_dir.is_dir():
        return []
    stale = []
    for path in sorted(checkpoint_dir.iterdir()):
        match = STALE_RE.match(path.name)
        if not match or not path.is_dir():
            continue
        name, kind = match.group(1), match.group(2)
        if kind == "old" and not (checkpoint_dir / name).exists():
            os.rename(path, checkpoint_dir / name)
            continue
        shutil.rmtree(path, ignore_errors=True)
        stale.append(path)
    return stale


# ---- finding ------------------------------------------------------------------------------------------


# ---- reading ------------------------------------------------------------------------------------------


def check_compatible(folder: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Refuse a checkpoint of another vocabulary or shape, naming the fields; returns config.json's data."""
    config, data = read_checkpoint_config(folder)
    ours, theirs = model.config.model_dict(), config.model_dict()
    differ = [k for k in ours if k not in RUNTIME_FIELDS and ours[k] != theirs.get(k)]
    if differ:
        detail = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs model {ours[k]!r}" for k in differ[:4])
        raise CheckpointError(f"{folder}: checkpoint does not match the model ({detail})")
    expected = {name: t.shape for name, t in lora.base_state_dict(model).items()}
    check_weights_header(safe_file(folder, WEIGHTS), expected)
    return data


def load_model(folder: Path, model: torch.nn.Module, tokenizer: Any) -> Any:
    """Weights into ``model`` after the checks; returns the checkpoint's tokenizer (or None)."""
    data = check_compatible(folder, model)
    checkpoint_tokenizer = load_tokenizer(folder, data.get("tokenizer"))
    if checkpoint_tokenizer is not None and tokenizer is not None and len(checkpoint_tokenizer) != len(tokenizer):
        raise CheckpointError(
            f"{folder}: the checkpoint's tokenizer has {len(checkpoint_tokenizer)} tokens, the trainer's {len(tokenizer)}"
        )
    misfit = tokenizer_misfit(checkpoint_tokenizer, model.config.vocab_size)
    if misfit:
        raise CheckpointError(f"{folder}: {misfit}")
    if not lora.has_lora(model):
        load_weights(model, safe_file(folder, WEIGHTS), device=next(model.parameters()).device)
        lora.merge_adapter_file(folder, model)  # a LoRA run's checkpoint continued without adapters: merged
        return checkpoint_tokenizer
    # a LoRA run: the base weights under their plain names, then the adapters (both exactly as saved)
    from safetensors.torch import load_file

    saved = load_file(str(safe_file(folder, WEIGHTS)))
    base = lora.base_state_dict(model)
    missing = sorted(set(base) - set(saved))
    if missing:
        raise CheckpointError(f"{folder / WEIGHTS}: missing tensors {missing[:5]}")
    with torch.no_grad():
        for name, tensor in base.items():
            tensor.copy_(saved[name])
    lora.load_adapter_into(folder, model)
    return checkpoint_tokenizer


def check_hyperparameter_types(tensors: dict[str, Any]) -> None:
    """The plain values torch's ``load_state_dict`` copies without looking (optimizer groups, the schedule's
    position) have the types the training step computes with: a TypeError here, not mid-step."""
    groups = tensors["optimizer"]["param_groups"]
    for i, group in enumerate(groups):
        for key in ("lr", "eps", "weight_decay"):
            if key in group and not is_number(group[key]):
                raise TypeError(f"param_groups[{i}].{key} must be a number, got {group[key]!r:.40}")
        betas = group.get("betas", (0.9, 0.999))
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(map(is_number, betas))):
            raise TypeError(f"param_groups[{i}].betas must be two numbers, got {betas!r:.40}")
    last_epoch = tensors["scheduler"].get("last_epoch", 0)
    if not isinstance(last_epoch, int) or isinstance(last_epoch, bool):
        raise TypeError(f"scheduler.last_epoch must be an integer, got {last_epoch!r:.40}")


def read_tensors(folder: Path) -> dict[str, Any]:
    """optimizer.pt through the weights-only unpickler: anything but tensors and plain containers is refused."""
    path = safe_file(folder, OPTIMIZER)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of the file it is refusing
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler runs no code: any failure means a bad file
        raise CheckpointError(f"{path}: refused to load (not a weights-only file): {_unpickler_reason(exc)}") from None
    if not isinstance(data, dict) or "optimizer" not in data:
        raise CheckpointError(f"{path}: expected a dict with an 'optimizer' entry")
    return data


def _unpickler_reason(exc: BaseException) -> str:
    """The informative part of torch's weights-only error (not its advice to load with weights_only=False)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.replace("WeightsUnpickler error:", "").strip() for line in str(exc).splitlines()]
    useful = " ".join(line for line in lines if line and not line.startswith(boilerplate))
    return useful[:200] or ("empty or truncated file" if isinstance(exc, EOFError) else type(exc).__name__)


# ---- random number generators ------------------------------------------------------------------------


def rng_json() -> dict[str, Any]:
    """Python's (and NumPy's, when installed) global RNG state as JSON lists."""
    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {"python": [version, list(internal), gauss]}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return out
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return out


def rng_tensors() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(json_state: dict[str, Any] | None, tensor_state: dict[str, Any] | None) -> None:
    if json_state and "python" in json_state:
        version, internal, gauss = json_state["python"]
        random.setstate((version, tuple(internal), gauss))
    if json_state and "numpy" in json_state:
        try:
            import numpy as np

            name, keys, pos, has_gauss, cached = json_state["numpy"]
            np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        except ImportError:  # pragma: no cover
            pass
    if tensor_state and "torch" in tensor_state:
        torch.set_rng_state(tensor_state["torch"])
    if tensor_state and tensor_state.get("cuda") and torch.cuda.is_available():
        states = tensor_state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
