"""The pieces of the synthetic-set training recipe (docs/learning.md): an LR schedule that decays over the
wall-clock budget, a shape-count mix for the training scenes, and the recommended config file."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from geometry_os.cli import cli
from geometry_os.errors import ConfigError
from geometry_os.plugins.amp_trainer.optim import lr_lambda
from geometry_os.plugins.datasets import shapes as S
from geometry_os.systems.pixel_llm.config import TrainerConfig, load_config
from geometry_os.systems.pixel_llm.resolution import get_component, resolve_model

ROOT = Path(__file__).resolve().parents[1]
OBJECT = r"a (small|large) (red|green|blue|yellow|purple|white) (circle|square|triangle|diamond)"
GRAMMAR = re.compile(rf"{OBJECT}( (left of|above|below) {OBJECT}){{0,2}}")


def test_time_schedule_warms_up_by_steps_then_decays_over_max_time():
    clock = {"t": 0.0}
    config = TrainerConfig(warmup_steps=4, max_time_s=100, lr_decay_over="time", min_lr_ratio=0.1)
    factor = lr_lambda(config, total_steps=10**6, elapsed_s=lambda: clock["t"])
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # warm-up counts steps
    clock["t"] = 50.0
    assert factor(1) == 0.5  # still warming up: the smaller of ramp and decay
    assert factor(1000) == pytest.approx(0.1 + 0.9 * 0.5)  # half the budget: cosine at its midpoint
    clock["t"] = 100.0
    assert factor(10) == pytest.approx(0.1)
    clock["t"] = 250.0  # past the budget (the last step): stays at the floor
    assert factor(10) == pytest.approx(0.1)
    linear = lr_lambda(config.model_copy(update={"lr_scheduler": "linear"}), 10, elapsed_s=lambda: 25.0)
    assert linear(100) == pytest.approx(0.1 + 0.9 * 0.75)


def test_time_schedule_needs_a_time_budget():
    with pytest.raises(ConfigError, match="max_time_s"):
        lr_lambda(TrainerConfig(lr_decay_over="time"), 100, elapsed_s=lambda: 0.0)
    steps = lr_lambda(TrainerConfig(warmup_steps=0), total_steps=10)  # the default is unchanged: steps
    assert steps(0) == 1.0 and steps(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def test_shape_weights_change_only_the_mix_of_scene_sizes():
    assert S.make_split(50, 3, "train") == S.make_split(50, 3, "train", shape_weights=None)  # default unchanged
    only_three = S.make_split(60, 3, "train", shape_weights=(0, 0, 1))
    assert {len(s) for s in only_three} == {3}
    mix = Counter(len(s) for s in S.make_split(3000, 3, "train", shape_weights=(1, 2, 3)))
    assert abs(mix[1] / 3000 - 1 / 6) < 0.03 and abs(mix[3] / 3000 - 1 / 2) < 0.03
    scenes = S.make_split(200, 4, "train", shape_weights=(1, 2, 3))
    assert all(S.is_valid(s) and GRAMMAR.fullmatch(S.caption(s)) and S.split_of(s) == "train" for s in scenes)
    for bad in [(1, 2), (-1, 1, 1), (0, 0, 0)]:
        with pytest.raises(ValueError, match="shape-count weights"):
            S.make_split(5, 0, "train", shape_weights=bad)


def test_shapes_component_takes_the_mix():
    dataset = get_component("dataset", "shapes").build(
        {"n": 20, "split": "train", "image_size": 32, "shape_weights": [0, 1, 0]}
    )
    assert {len(s) for s in dataset.scenes} == {2}


def test_recommended_config_loads_on_the_small_preset():
    config = load_config(ROOT / "configs" / "shapes_small.toml", (), "small")
    t = config.trainer
    assert config.vision_pos_embed == "sincos" and t.lr_decay_over == "time" and t.max_time_s == 600
    assert t.use_amp and t.amp_dtype == "auto"  # bf16 where the hardware computes it natively, else fp32


def test_cli_uses_the_mix_for_training_scenes_only(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        cli,
        [
            "pixel-llm",
            "train",
            "--preset",
            "tiny",
            "--num-scenes",
            "30",
            "--quiet",
            "--out",
            str(out),
            "--set",
            "trainer.max_steps=2",
            "--set",
            "trainer.batch_size=8",
            "--set",
            "trainer.use_amp=false",
            "--set",
            "trainer.synthetic_shape_weights=[0,0,1]",
            "--set",
            "trainer.max_time_s=60",
            "--set",
            "trainer.lr_decay_over=time",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    state = json.loads((out / "step-00000002" / "trainer_state.json").read_text())
    assert state["trainer_config"]["synthetic_shape_weights"] == [0, 0, 1]


def test_recommended_config_picks_the_conv_stem_and_unit_pixels():
    config = load_config(ROOT / "configs" / "shapes_small.toml", (), "small")
    assert resolve_model(config).encoder_options.stem == "conv"
    assert config.image_mean == (0.0, 0.0, 0.0) and config.image_std == (1.0, 1.0, 1.0)
    assert (config.vision_embed_dim, config.vision_num_layers, config.text_num_layers) == (192, 4, 4)  # the preset's
    assert 0 < config.trainer.word_dropout < 1  # against the caption prior (docs/learning.md)


def test_training_and_captioning_normalise_images_as_the_model_config_says(tmp_path):
    """The model config's image_mean/std reach the training scenes, a caption file's images and the
    checkpoint, so that captioning later sees the pixels the model was trained on."""
    import torch

    from geometry_os.systems.pixel_llm.captioning import preprocessing_config
    from geometry_os.systems.pixel_llm.modeling import PixelLLM
    from geometry_os.systems.pixel_llm.workflows import build_datasets as _datasets

    unit = ["image_mean=[0,0,0]", "image_std=[1,1,1]", "trainer.num_scenes=20"]
    config = load_config(None, unit, "tiny")
    train_set, val_set, _ = _datasets(config, None)
    for dataset in (train_set, val_set):
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        assert images.min() == 0.0 and images.max() == 1.0  # black background, white shapes: pixels / 255
    default_set, _, _ = _datasets(load_config(None, ["trainer.num_scenes=20"], "tiny"), None)
    assert default_set[0]["image"].min() < -1.5  # ImageNet normalisation: black is about -2

    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "pixel-llm",
            "train",
            "--preset",
            "tiny",
            "--num-scenes",
            "30",
            "--quiet",
            "--out",
            str(out),
            "--set",
            "trainer.max_steps=1",
            "--set",
            "trainer.batch_size=8",
            "--set",
            "trainer.use_amp=false",
            *[arg for item in unit for arg in ("--set", item)],
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    model, _ = PixelLLM.from_pretrained(out / "step-00000001")
    assert preprocessing_config(model).mean == (0.0, 0.0, 0.0) and preprocessing_config(model).std == (1.0, 1.0, 1.0)


def test_demo_trains_with_the_recommended_recipe():
    from geometry_os.plugins.commands.demo import FULL, recipe_path

    assert Path(recipe_path(FULL["config"])).read_bytes() == (ROOT / "configs" / "shapes_small.toml").read_bytes()
    demo = load_config(recipe_path(FULL["config"]), FULL["overrides"], FULL["preset"])
    recipe = load_config(ROOT / "configs" / "shapes_small.toml", (), "small")
    assert demo.model_dict() == recipe.model_dict()
    same = (
        "learning_rate",
        "batch_size",
        "warmup_steps",
        "lr_scheduler",
        "lr_decay_over",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "max_grad_norm",
        "use_amp",
    )
    assert {k: getattr(demo.trainer, k) for k in same} == {k: getattr(recipe.trainer, k) for k in same}
    assert demo.trainer.max_time_s <= recipe.trainer.max_time_s  # the demo leaves room for its evaluation
