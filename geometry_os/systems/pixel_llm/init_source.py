"""Weights a new training run starts from (``train --init-from``): partial initialisation.

Every tensor whose name and shape match is loaded; the model's other tensors start fresh (so do those
an import recorded as freshly initialised, e.g. the cross-attention of a GPT-2 imported alone); the
checkpoint's tensors the model has no place for are dropped. A tensor with the same name and another
shape is refused, unless the difference is explained: the token embedding (and an untied LM head)
when the vocabulary size differs start fresh. A folder that is not a Pixel LLM checkpoint (a HF model
folder, a timm / torchvision state dict) is converted first by the ``convert`` callable the caller
passes (the ``pretrained`` plugin's importer on the command line).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geometry_os.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .modeling import PixelLLM

VOCAB_TENSORS = ("decoder.wte.weight", "decoder.lm_head.weight")

# (source file or folder, destination folder) -> the Pixel LLM checkpoint folder written there
Converter = Callable[[Path, Path], Path]


@dataclass
class InitSource:
    """A checkpoint read into memory: its label (the path the user gave), ``PixelLLMConfig``, tokenizer
    (or None), tensors by name, and the names an import recorded as freshly initialised."""

    folder: Path
    config: Any
    tokenizer: Any
    weights: dict[str, torch.Tensor]
    recorded_fresh: set[str] = field(default_factory=set)


def read_init_source(path: str | Path, convert: Converter | None = None) -> InitSource:
    """Read the checkpoint ``path``; anything else is converted first with ``convert`` into a temporary
    folder (removed once read). Raises CheckpointError (one line) when ``path`` does not exist, is no
    Pixel LLM checkpoint and there is no ``convert``, or cannot be read."""
    source = Path(path)
    if not source.exists():
        raise CheckpointError(f"--init-from {path}: no such file or folder")
    if source.is_dir() and _is_pixel_llm(source):
        return _read(source, source)
    if convert is None:
        raise CheckpointError(f"--init-from {path}: not a Pixel LLM checkpoint, and no importer was given")
    with tempfile.TemporaryDirectory(prefix="geo-os-init-") as tmp:  # converted, read into memory, removed
        return _read(convert(source, Path(tmp) / "converted"), source)


def _read(folder: Path, label: Path) -> InitSource:
    from safetensors.torch import load_file

    from .checkpoint import WEIGHTS, load_tokenizer, read_checkpoint_config, safe_file

    config, data = read_checkpoint_config(folder)
    weights_file = safe_file(folder, WEIGHTS)
    assert weights_file is not None  # required=True raises instead of returning None
    weights = load_file(str(weights_file))
    recorded = data.get("import", {}).get("fresh", []) if isinstance(data.get("import"), dict) else []
    return InitSource(label, config, load_tokenizer(folder, data.get("tokenizer")), weights, set(recorded))


def _is_pixel_llm(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("format") == "pixel-llm"
    except (OSError, ValueError, AttributeError):
        return False


def apply_init(model: PixelLLM, source: InitSource) -> dict[str, list[Any]]:
    """Load the matching tensors into ``model`` in place; returns the ``loaded``, ``fresh`` and ``dropped``
    names, the ``vocabulary`` tensors that start fresh because ``vocab_size`` changed, and the new size.

    Raises CheckpointError for a tensor whose shape differs for another reason than the vocabulary size.
    """
    state = model.state_dict()
    vocab_size = model.config.vocab_size
    loaded, fresh, explained = [], [], []
    for name, target in state.items():
        tensor = source.weights.get(name)
        if tensor is None or name in source.recorded_fresh:
            fresh.append(name)
            continue
        if tuple(tensor.shape) != tuple(target.shape):
            if name in VOCAB_TENSORS and vocab_size != source.config.vocab_size:
                explained.append(name)
                fresh.append(name)
                continue
            raise CheckpointError(
                f"{source.folder}: tensor {name} has shape {tuple(tensor.shape)}, the model needs "
                f"{tuple(target.shape)}; change the model config to match or start without --init-from"
            )
        loaded.append(name)
    model.load_state_dict({name: source.weights[name] for name in loaded}, strict=False)
    dropped = sorted(set(source.weights) - set(state))
    return {"loaded": loaded, "fresh": fresh, "dropped": dropped, "vocabulary": explained, "vocab_size": [vocab_size]}


def describe(report: dict[str, list[Any]], source: InitSource) -> list[str]:
    """Lines for the user: how many tensors were loaded, and every fresh and dropped tensor by name."""
    lines = [
        f"init-from {source.folder}: loaded {len(report['loaded'])} tensors, {len(report['fresh'])} start fresh, "
        f"{len(report['dropped'])} dropped"
    ]
    if report["vocabulary"]:
        lines.append(
            f"  vocab_size differs ({source.config.vocab_size} -> {report['vocab_size'][0]}): "
            f"fresh {', '.join(report['vocabulary'])}"
        )
    lines += [f"  fresh: {name}" for name in report["fresh"]]
    lines += [f"  dropped: {name}" for name in report["dropped"]]
    return lines
