"""``vit`` options for pretrained layouts: class token, LayerNorm eps, activation, pre/final norm, patch bias;
and a checkpoint written before these options existed still loads and captions the same."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from geometry_os.plugins.vit import ViTOptions
from geometry_os.plugins.vit.model import VisionEncoder
from geometry_os.systems.pixel_llm.inference import generate_caption
from geometry_os.systems.pixel_llm.modeling import PixelLLM

TINY = dict(image_size=32, patch_size=8, embed_dim=32, num_layers=2, num_heads=2)
LEGACY = Path(__file__).parent / "data" / "legacy_tiny"

DEFAULT_KEYS = {"patch_embed.weight", "patch_embed.bias", "pos_embed", "norm.weight", "norm.bias"}


def make(**kw) -> VisionEncoder:
    torch.manual_seed(0)
    return VisionEncoder(**{**TINY, **kw}).eval()


def test_defaults_keep_the_layout():
    enc = make()
    top = {k for k in enc.state_dict() if not k.startswith("blocks.")}
    assert top == DEFAULT_KEYS
    assert enc.norm.eps == 1e-5 and enc.blocks[0].norm1.eps == 1e-5
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 16, 32)


def test_class_token_prepends_cls_and_keeps_patch_rows_last():
    enc = make(class_token=True)
    assert enc.pos_embed.shape == (1, 17, 32) and enc.cls_token.shape == (1, 1, 32)
    out = enc(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 17, 32)
    # another image size: the CLS row of the table is kept as it is, only the patch rows are resized
    table = enc._position(6, 6)
    assert table.shape == (1, 37, 32) and torch.equal(table[:, :1], enc.pos_embed[:, :1])
    assert enc(torch.rand(1, 3, 48, 48)).shape == (1, 37, 32)
    assert enc.patch_grid(48, 48) == (6, 6)


def test_class_token_changes_every_feature():
    enc = make(class_token=True)
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        base = enc(images)
        enc.cls_token.add_(1.0)
        assert not torch.allclose(enc(images)[:, 1:], base[:, 1:])  # patches attend to the CLS token


@pytest.mark.parametrize(
    "act, fn",
    [
        ("gelu", F.gelu),
        ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
        ("quick_gelu", lambda x: x * torch.sigmoid(1.702 * x)),
    ],
)
def test_activation_and_eps_reach_every_block(act, fn):
    enc = make(act=act, norm_eps=1e-12)
    assert all(m.eps == 1e-12 for m in enc.modules() if isinstance(m, torch.nn.LayerNorm))
    x = torch.randn(5, 7)
    assert torch.allclose(enc.blocks[0].act(x), fn(x))


def test_pre_norm_final_norm_and_patch_bias():
    enc = make(pre_norm=True, final_norm=False, patch_bias=False)
    keys = set(enc.state_dict())
    assert {"norm_pre.weight", "norm_pre.bias"} <= keys
    assert "norm.weight" not in keys and "patch_embed.bias" not in keys
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        x = enc.norm_pre(F.conv2d(images, enc.patch_embed.weight, stride=8).flatten(2).transpose(1, 2) + enc.pos_embed)
        for block in enc.blocks:
            x = block(x)
        assert torch.allclose(enc(images), x, atol=1e-6)  # no norm after the blocks


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(class_token=True, pos_embed="sincos"), "class_token"),
        (dict(act="relu"), "act"),
        (dict(norm_eps=0), "norm_eps"),
        (dict(patch_bias=False, stem="conv"), "patch_bias"),
    ],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        ViTOptions(**{**TINY, **kwargs})


def test_explain_draws_patch_rows_with_a_class_token(tmp_path):
    from PIL import Image

    from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.explain import explain_image

    vocab = SimpleVocabulary(["a red circle", "a blue square"])
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(vocab), preset="tiny", encoder_options={"class_token": True}).eval()
    Image.new("RGB", (40, 40), "red").save(tmp_path / "a.png")
    out = explain_image(model, vocab, str(tmp_path / "a.png"))
    assert out.maps.shape[1:] == (4, 4) and len(out.words) == len(out.maps)


def test_checkpoint_from_before_the_options_loads_and_captions_the_same():
    expected = json.loads((LEGACY / "expected.json").read_text())
    model, vocab = PixelLLM.from_pretrained(LEGACY / "ckpt")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(expected["images_seed"]))
    with torch.no_grad():
        logits = model(images, torch.tensor(expected["ids"])).logits
    assert logits[0, 0, :8].tolist() == pytest.approx(expected["logits_first"], abs=1e-5)
    assert float(logits.sum()) == pytest.approx(expected["logits_sum"], abs=1e-3)
    assert generate_caption(model, images, max_length=12).tolist() == expected["greedy"]
    assert generate_caption(model, images, max_length=12, num_beams=3).tolist() == expected["beam3"]
    assert vocab.batch_decode(expected["greedy"]) == expected["texts"]
