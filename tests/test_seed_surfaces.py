"""The surfaces that exist for the original description (../shared/seed/pixel_llm_README.md) stay, and say so.

Each name, keyword, method and file its snippets, API reference and shell commands use is pinned here, so
that no clean-up deletes one; the modules and functions kept only for it carry the label
"Kept for the original description's API" in their docstrings. Cheap checks only (nothing is trained):
tests/test_snippets.py runs the description's snippets and shell commands themselves.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "geometry_os" / "systems" / "pixel_llm"
LABEL = "Kept for the original description's API"

# module -> names the original description imports from it
IMPORTS = {
    "geometry_os.systems.pixel_llm": [
        "PixelLLM",
        "PixelLLMConfig",
        "PixelLLMTrainer",
        "create_pixel_llm",
        "generate_caption",
        "VisionEncoder",
        "LanguageDecoder",
        "SimpleVocabulary",
        "ImageTextDataset",
        "create_dataloader",
        "beam_search_decode",
        "GenerationConfig",
        "DatasetConfig",
    ],
    "geometry_os.systems.pixel_llm.data": ["ImageTextDataset", "create_dataloader"],
    "geometry_os.systems.pixel_llm.inference": ["generate_caption", "GenerationConfig", "beam_search_decode"],
    "geometry_os.systems.pixel_llm.models": ["SimpleVocabulary", "VisionEncoder", "LanguageDecoder", "PixelLLM"],
}


@pytest.mark.parametrize("module, names", IMPORTS.items(), ids=list(IMPORTS))
def test_every_name_the_description_imports_is_there(module, names):
    loaded = importlib.import_module(module)
    for name in names:
        assert getattr(loaded, name) is not None, f"{module}.{name}"


def parameters(obj: object) -> set[str]:
    return set(inspect.signature(obj).parameters)  # type: ignore[arg-type]


def test_documented_parameters_and_methods():
    from geometry_os.systems.pixel_llm import (
        ImageTextDataset,
        LanguageDecoder,
        PixelLLM,
        PixelLLMTrainer,
        VisionEncoder,
        beam_search_decode,
        create_pixel_llm,
        generate_caption,
    )

    assert {"vocab_size"} <= parameters(create_pixel_llm)
    assert {"images", "input_ids", "attention_mask"} <= parameters(PixelLLM.forward)
    assert {"images", "max_length", "temperature", "do_sample"} <= parameters(PixelLLM.generate)
    assert {"model", "images", "config"} <= parameters(generate_caption)
    assert {"model", "images", "num_beams"} <= parameters(beam_search_decode)
    assert {"data_path", "tokenizer", "config", "image_root"} <= parameters(ImageTextDataset)
    assert {"model", "config", "train_dataloader", "val_dataloader"} <= parameters(PixelLLMTrainer)
    for method in ("train", "train_epoch", "validate", "save_checkpoint", "load_checkpoint"):
        assert callable(getattr(PixelLLMTrainer, method)), method
    assert {"name"} <= parameters(PixelLLMTrainer.save_checkpoint)
    assert {"path"} <= parameters(PixelLLMTrainer.load_checkpoint)
    VisionEncoder(image_size=32, patch_size=8, embed_dim=32, num_layers=1, num_heads=2)  # keywords, not a signature
    LanguageDecoder(vocab_size=20, embed_dim=32, num_layers=1, cross_attention_dim=32, num_cross_attention_layers=1)


def test_flat_trainer_fields_on_the_model_config():
    """``PixelLLMConfig as TrainerConfig`` with the trainer's fields given flat, as the description's training
    snippets and tips write it."""
    from geometry_os.systems.pixel_llm import PixelLLMConfig

    config = PixelLLMConfig(
        learning_rate=1e-4,
        num_epochs=10,
        use_amp=True,
        checkpoint_dir="./checkpoints",
        val_interval=500,
        checkpoint_interval=1000,
        save_total_limit=3,
    )
    t = config.trainer
    assert (t.learning_rate, t.num_epochs, t.use_amp, t.checkpoint_dir) == (1e-4, 10, True, "./checkpoints")
    assert (t.val_interval, t.checkpoint_interval, t.save_total_limit) == (500, 1000, 3)


def test_the_files_the_description_names_exist():
    for path in ("demo_pixel_llm.py", "tests/test_pixel_llm.py", "models.py"):
        assert (PACKAGE / path).is_file(), path


def docstring_of(path: Path, function: str | None = None) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if function is None:
        return ast.get_docstring(tree) or ""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    raise AssertionError(f"{path.name}: no function {function}")


@pytest.mark.parametrize(
    "path, function",
    [
        ("__init__.py", None),
        ("models.py", None),
        ("demo_pixel_llm.py", None),
        ("tests/test_pixel_llm.py", None),
        ("config.py", "_lift_trainer_fields"),
    ],
)
def test_surfaces_kept_for_the_description_say_so(path, function):
    assert LABEL in " ".join(docstring_of(PACKAGE / path, function).split())
