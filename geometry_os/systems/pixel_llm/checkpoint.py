"""Checkpoint folders: ``model.safetensors`` + ``config.json`` (+ the tokenizer's JSON file).

Nothing here unpickles: weights are safetensors, everything else JSON. Folders are written to a
temporary sibling and renamed into place, so a crash never leaves a half-written checkpoint under the
final name. Loading checks every file stays inside the folder, validates the config before building,
and compares tensor shapes from the safetensors header with the model (built on the meta device)
before any memory is allocated, so a forged or mismatched file is refused with a message that says
which tensor or field is wrong.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from geometry_os import __version__
from geometry_os.errors import CheckpointError, ComponentError, format_validation_error
from geometry_os.fileio import MAX_JSON_BYTES, AtomicFolder, read_json, safe_file, write_json_atomic

from . import lora
from .config import PixelLLMConfig
from .resolution import current_components, get_component

FORMAT = "pixel-llm"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
# A training run's folder (what `train --out` / trainer.checkpoint_dir holds): step-N/ checkpoints, a `latest`
# pointer file naming the newest complete one, and `best/`, a copy of the best one by the validation metric.
LATEST = "latest"
BEST = "best"
STEP_RE = re.compile(r"^step-(\d{8,})$")

logger = logging.getLogger(__name__)


# ---- save -------------------------------------------------------------------------------------------


def tokenizer_component_name(tokenizer: Any) -> str:
    """The registered tokenizer component whose class this tokenizer is. Raises ``CheckpointError`` when
    none is."""
    registry = current_components()
    for name in registry.names("tokenizer"):
        try:
            if registry.get("tokenizer", name).load() is type(tokenizer):
                return name
        except ComponentError:
            continue
    raise CheckpointError(
        f"tokenizer of type {type(tokenizer).__name__} is not a registered tokenizer component; "
        f"registered: {', '.join(registry.names('tokenizer'))}"
    )


def write_model_files(folder: Path, model: torch.nn.Module, tokenizer: Any = None, adapters: bool = False) -> None:
    """model.safetensors, config.json and tokenizer.json into ``folder`` (which must be fresh).

    A model with LoRA adapters (see ``lora``) is written merged, so the folder loads as a plain model; with
    ``adapters=True`` (trainer checkpoints) the base weights go to model.safetensors and the adapters, alone,
    to adapter.safetensors, from which a resume continues exactly (``load_pretrained`` still merges them)."""
    from safetensors.torch import save_file, save_model

    config = model.config
    assert isinstance(config, PixelLLMConfig)
    tokenizer_entry = None
    if tokenizer is not None:
        tokenizer_entry = {"component": tokenizer_component_name(tokenizer), "file": TOKENIZER}
        tokenizer.save(str(folder / TOKENIZER))
    if not lora.has_lora(model):
        save_model(model, str(folder / WEIGHTS), metadata={"format": FORMAT})
    else:
        state = lora.base_state_dict(model) if adapters else lora.merged_state_dict(model)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS), metadata={"format": FORMAT})
        if adapters:
            lora.save_adapter(folder, model)
    write_json_atomic(
        folder / CONFIG,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "geometry_os_version": __version__,
            "model": config.model_dict(),
            "tokenizer": tokenizer_entry,
        },
    )


def save_pretrained(model: torch.nn.Module, path: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` (and ``tokenizer``'s file and name) as a checkpoint folder at ``path``: ``model.safetensors``,
    ``config.json``, the tokenizer file, written aside and swapped in whole (an error leaves ``path`` as it was).
    Returns the folder. Raises ``CheckpointError`` when ``path`` is not a folder, holds other files, or the
    tokenizer is not a registered component."""
    path = Path(path)
    with AtomicFolder(path, replaces=(WEIGHTS, CONFIG, TOKENIZER)) as tmp:
        write_model_files(tmp, model, tokenizer)
    return path


# ---- load -------------------------------------------------------------------------------------------


def read_checkpoint_config(folder: Path) -> tuple[PixelLLMConfig, dict[str, Any]]:
    """The model config and the whole ``config.json`` of the checkpoint ``folder``. Raises ``CheckpointError``
    when the file is missing, not a Pixel LLM checkpoint config, of a newer ``format_version`` or invalid."""
    config_path = safe_file(folder, CONFIG)
    assert config_path is not None  # required=True: a missing file raised
    data = read_json(config_path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("model"), dict):
        raise CheckpointError(
            f"{config_path}: not a Pixel LLM checkpoint config (expected format={FORMAT!r} and a 'model' object)"
        )
    version = data.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{config_path}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {data['format_version']} is newer than this version supports ({FORMAT_VERSION})"
        )
    try:
        config = PixelLLMConfig.model_validate(data["model"])
    except ValidationError as exc:
        raise CheckpointError(format_validation_error(exc, source=str(config_path))) from None
    return config, data


def alias_groups(module: torch.nn.Module) -> list[list[str]]:
    """The state-dict names of each tensor of ``module`` (tied weights have several, and are saved once)."""
    state = module.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def check_weights_header(path: Path, expected: dict[str, torch.Size], required: list[list[str]] | None = None) -> None:
    """Compare the safetensors header with the model's tensors before loading anything; with ``required``
    (``alias_groups`` of the model) a tensor the model needs but the file lacks is refused too. Raises
    ``CheckpointError`` for an unreadable header, a shape mismatch, an unexpected or a missing tensor."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid safetensors file: {' '.join(str(exc).split())}") from None
    mismatched = [
        f"{name} {shapes[name]} != {tuple(shape)}"
        for name, shape in expected.items()
        if name in shapes and tuple(shapes[name]) != tuple(shape)
    ]
    if mismatched:
        raise CheckpointError(f"{path}: tensor shapes do not match the config: {'; '.join(mismatched[:3])}")
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors: {', '.join(unexpected[:5])}")
    absent = [names[0] for names in required or () if not any(name in shapes for name in names)]
    if absent:
        more = f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""
        raise CheckpointError(f"{path}: tensors the config needs are missing: {', '.join(absent[:5])}{more}")


def load_weights(model: torch.nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    """Load ``model.safetensors`` at ``path`` into ``model`` on ``device`` (tied weights stored once). Raises
    ``CheckpointError`` when the file cannot be read or its tensors do not match the model's."""
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load weights: {' '.join(str(exc).split())}") from None
    # Tied weights are stored once; their aliases are legitimately "missing".
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)} - {
        n for n, _ in model.named_parameters()
    }
    missing = [m for m in missing if m not in tied]
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensors {missing[:5]} / unexpected {unexpected[:5]}")


def load_tokenizer(folder: Path, entry: Any) -> Any:
    """The tokenizer ``entry`` (``config.json``'s ``tokenizer`` object) names, loaded from its file in
    ``folder``; None without an entry. Raises ``CheckpointError`` for a malformed entry, an unknown component,
    a file that is not a plain name, too large or that the tokenizer cannot load."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("component"), str):
        raise CheckpointError(f"{folder / CONFIG}: 'tokenizer' must be an object with 'component' and 'file'")
    file = safe_file(folder, str(entry.get("file") or TOKENIZER))
    assert file is not None  # required=True: a missing file raised
    if Path(str(entry.get("file") or TOKENIZER)).name != str(entry.get("file") or TOKENIZER):
        raise CheckpointError(f"{folder / CONFIG}: tokenizer file must be a plain file name")
    try:
        cls: Any = get_component("tokenizer", entry["component"]).load()
    except ComponentError as exc:
        raise CheckpointError(f"{folder / CONFIG}: {exc}") from None
    if file.stat().st_size > MAX_JSON_BYTES:  # tokenizers read the whole file: refuse a huge one unread
        raise CheckpointError(f"{file}: file too large for a tokenizer ({file.stat().st_size} bytes)")
    try:
        return cls.load(str(file))
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file}: cannot load tokenizer: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # a third-party tokenizer's own error type: still one line, naming it
        raise CheckpointError(
            f"{file}: tokenizer {entry['component']!r} failed to load: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        ) from None


# ---- run folders --------------------------------------------------------------------------------------


def step_folders(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """Complete-named step folders of a run, oldest first (temporary ``.step-*.tmp-*`` folders are not listed)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def read_latest(checkpoint_dir: Path) -> Path:
    """The folder a run's ``latest`` names; without a ``latest`` file, the newest step folder. Raises
    ``CheckpointError`` for a malformed ``latest``, one naming an incomplete folder, or no checkpoint at all."""
    pointer = checkpoint_dir / LATEST
    if pointer.is_file():
        data = read_json(pointer)
        name = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f'{pointer}: expected {{"checkpoint": "<folder name>"}}')
        folder = checkpoint_dir / name
        if not (folder / CONFIG).is_file():
            raise CheckpointError(f"{pointer}: names {name}, which is not a complete checkpoint")
        return folder
    folders = step_folders(checkpoint_dir)
    if not folders:
        raise CheckpointError(f"{checkpoint_dir}: no checkpoint to resume from (no 'latest' and no step-* folder)")
    return folders[-1][1]


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a training run's folder (rather than one checkpoint)."""
    return not (folder / CONFIG).exists() and (
        (folder / BEST).is_dir() or (folder / LATEST).is_file() or bool(step_folders(folder))
    )


def resolve_checkpoint_folder(path: str | Path) -> tuple[Path, str | None]:
    """A checkpoint folder, or a training run's folder -> its ``best`` checkpoint, else its ``latest``.

    Returns the checkpoint folder and, for a run folder, a one-line note saying which checkpoint was taken.
    Raises ``CheckpointError`` when ``path`` is neither (naming what is missing)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found")
    if not is_run_folder(folder):
        return folder, None
    if (folder / BEST / CONFIG).is_file():
        chosen, which = folder / BEST, "best"
    else:
        chosen, which = read_latest(folder), "latest"
    return chosen, f"{folder} is a training run: using its {which} checkpoint, {chosen}"
