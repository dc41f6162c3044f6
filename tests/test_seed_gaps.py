"""The original description's API (../shared/seed/pixel_llm_README.md) where it went beyond the snippets:
its model classes from the package, their documented keywords with any width, and a wrong
``image_root`` in its data example failing when the data set is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from geometry_os.systems.pixel_llm.data import DataError


def test_model_classes_import_from_the_package():
    from geometry_os.systems.pixel_llm import LanguageDecoder, SimpleVocabulary, VisionEncoder, models

    assert (VisionEncoder, LanguageDecoder, SimpleVocabulary) == (
        models.VisionEncoder,
        models.LanguageDecoder,
        models.SimpleVocabulary,
    )


@pytest.mark.parametrize("dim, heads", [(64, 1), (200, 2), (384, 6), (768, 12), (96, 1)])
def test_any_width_gets_a_head_count_that_divides_it(dim, heads):
    from geometry_os.systems.pixel_llm import LanguageDecoder, PixelLLMConfig, VisionEncoder

    encoder = VisionEncoder(image_size=32, patch_size=16, embed_dim=dim, num_layers=1)
    decoder = LanguageDecoder(vocab_size=40, embed_dim=dim, num_layers=1, max_seq_len=8)
    assert encoder.config.num_heads == decoder.config.num_heads == heads
    features = encoder(torch.rand(1, 3, 32, 32))
    assert features.shape == (1, 4, dim)
    assert decoder(torch.tensor([[1, 5, 6]]), features).shape == (1, 3, 40)
    config = PixelLLMConfig(image_size=32, patch_size=16, vision_embed_dim=dim, text_embed_dim=dim, vocab_size=40)
    assert config.heads("vision_num_heads") == config.heads("text_num_heads") == heads


def test_an_explicit_head_count_that_does_not_divide_names_both_fields():
    from geometry_os.systems.pixel_llm import LanguageDecoder, VisionEncoder

    with pytest.raises(ValidationError, match="embed_dim=64 must be divisible by num_heads=12"):
        VisionEncoder(image_size=32, patch_size=16, embed_dim=64, num_heads=12)
    with pytest.raises(ValidationError, match="embed_dim=64 must be divisible by num_heads=12"):
        LanguageDecoder(vocab_size=40, embed_dim=64, num_heads=12)


@pytest.fixture
def seed_layout(tmp_path, monkeypatch):
    """The description's layout: data/captions.json naming "images/cat.jpg", the image in data/images."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "data" / "images" / "cat.jpg")
    entries = [
        {"image": "images/cat.jpg", "caption": "A cat sitting on a couch"},
        {"image": "images/dog.jpg", "caption": "A dog playing in the park"},
    ]
    (tmp_path / "data" / "captions.json").write_text(json.dumps(entries))
    return tmp_path


def test_a_wrong_image_root_fails_when_the_data_set_is_built(seed_layout):
    from geometry_os.systems.pixel_llm import ImageTextDataset

    ImageTextDataset("data/captions.json")  # the default root, the file's folder: right (dog.jpg is found lazily)
    with pytest.raises(DataError) as caught:  # the description's own example: data/images + images/cat.jpg
        ImageTextDataset("data/captions.json", image_root="data/images")
    message = str(caught.value)
    assert message.startswith(f"{Path('data/images/images/cat.jpg')}: no such file (data/captions.json entry 0)")
    assert "nor do the other 1 images" in message and "image_root data/images" in message
    with pytest.raises(DataError, match="data/captions.json: image_root data/imgs: no such folder"):
        ImageTextDataset("data/captions.json", image_root="data/imgs")


def test_the_documented_keywords_build_an_encoder_and_a_narrower_decoder():
    """The API reference's parameters: VisionEncoder(image_size, patch_size, embed_dim, num_layers, num_heads),
    LanguageDecoder(vocab_size, embed_dim, num_layers, cross_attention_dim, num_cross_attention_layers)."""
    from geometry_os.systems.pixel_llm import LanguageDecoder, VisionEncoder

    encoder = VisionEncoder(image_size=64, patch_size=16, embed_dim=128, num_layers=1, num_heads=4)
    decoder = LanguageDecoder(
        vocab_size=100, embed_dim=64, num_layers=2, cross_attention_dim=128, num_cross_attention_layers=1
    )
    features = encoder(torch.rand(2, 3, 64, 64))
    assert features.shape == (2, 16, 128)
    assert decoder(torch.randint(0, 100, (2, 5)), features).shape == (2, 5, 100)
    assert decoder.cross_attention_layers == (1,)
