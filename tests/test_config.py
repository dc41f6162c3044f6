"""Configs: strict fields, cross-field checks, presets, trainer fields given flat, files and overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from geometry_os.errors import ConfigError
from geometry_os.systems.pixel_llm.config import (
    PRESETS,
    PixelLLMConfig,
    TrainerConfig,
    load_config,
    parse_overrides,
    preset_config,
)
from geometry_os.systems.pixel_llm.modeling import PixelLLM
from geometry_os.systems.pixel_llm.resolution import resolve_model


def test_defaults_are_the_original_description_sizes():
    config = PixelLLMConfig()
    assert (config.image_size, config.patch_size, config.vision_embed_dim, config.vocab_size) == (224, 16, 768, 50000)
    assert config.heads("vision_num_heads") == 12 and config.heads("text_num_heads") == 12


def test_head_count_follows_width_when_not_given():
    config = PixelLLMConfig(vision_embed_dim=256, text_num_layers=4, vocab_size=5000)
    assert config.heads("vision_num_heads") == 4
    encoder_options = resolve_model(config).encoder_options
    assert encoder_options.num_heads == 4 and encoder_options.embed_dim == 256


def test_typo_is_an_error_naming_the_field():
    with pytest.raises(ValidationError, match="image_sise"):
        PixelLLMConfig(image_sise=64)


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"image_size": 64, "patch_size": 7}, "patch_size=7 must divide image_size=64"),
        (
            {"vision_embed_dim": 100, "vision_num_heads": 3},
            "vision_embed_dim=100 must be divisible by vision_num_heads=3",
        ),
        ({"text_num_layers": 2, "num_cross_attention_layers": 3}, "num_cross_attention_layers=3 exceeds"),
        ({"vocab_size": -1}, "vocab_size"),
    ],
)
def test_invalid_values_name_the_field(fields, needle):
    with pytest.raises(ValidationError) as info:
        PixelLLMConfig(**fields)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "fields,needle",
    [
        ({"decoder": "nope"}, "unknown decoder 'nope'; registered decoders: xattn"),
        ({"encoder_options": {"colour": 1}}, "encoder_options: encoder 'vit': colour"),
    ],
)
def test_components_and_their_options_are_checked_when_resolved(fields, needle):
    """A config is plain data; resolving it against a registry names the unknown component or option."""
    config = PixelLLMConfig(**fields)
    with pytest.raises(ConfigError) as info:
        resolve_model(config)
    assert needle in str(info.value)
    with pytest.raises(ConfigError) as info:  # the same when a model is built from it
        PixelLLM(config)
    assert needle in str(info.value)


def test_trainer_fields_given_flat_go_to_the_trainer_section():
    config = PixelLLMConfig(learning_rate=1e-4, num_epochs=10, use_amp=True, checkpoint_dir="./ck", val_interval=500)
    assert config.trainer.learning_rate == 1e-4 and config.trainer.val_interval == 500
    assert config.trainer.checkpoint_dir == "./ck"
    with pytest.raises(ValidationError, match="learning_rate"):
        PixelLLMConfig(learning_rate=-1)
    with pytest.raises(ValidationError, match="warmup_steps"):
        TrainerConfig(warmup_steps=-5)


def test_presets_validate_and_small_uses_sincos_positions():
    for name in PRESETS:
        preset_config(name)
    small = preset_config("small")
    assert resolve_model(small).encoder_options.pos_embed == "sincos" and small.vision_embed_dim == 192
    with pytest.raises(ConfigError, match="unknown preset 'huge'; presets: tiny, small, base"):
        preset_config("huge")


def test_file_then_overrides(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text("text_num_layers = 3\n[trainer]\nlearning_rate = 0.001\n")
    config = load_config(path, ["trainer.learning_rate=0.0005", "vocab_size=300"], preset="tiny")
    assert config.text_num_layers == 3 and config.trainer.learning_rate == 0.0005 and config.vocab_size == 300
    assert config.image_size == 32  # from the preset
    json_path = tmp_path / "model.json"
    json_path.write_text('{"model": {"image_size": 64, "patch_size": 8}}')
    assert load_config(json_path).image_size == 64


def test_override_parsing():
    assert parse_overrides(["a.b=1", "c=hello", "d=[1, 2]", "e=true"]) == {
        "a": {"b": 1},
        "c": "hello",
        "d": [1, 2],
        "e": True,
    }
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["novalue"])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("image_size = [\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(bad)
    wrong = tmp_path / "list.json"
    wrong.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="list.json: the top level must be a table/object"):
        load_config(wrong)
    typo = tmp_path / "typo.toml"
    typo.write_text("[trainer]\nlearning_rat = 1\n")
    with pytest.raises(ConfigError, match=r"typo.toml: trainer.learning_rat: Extra inputs are not permitted"):
        load_config(typo)
