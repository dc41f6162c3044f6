"""The ``vit`` encoder plugin: options, registration, shapes, position embeddings."""

import importlib
import os
import subprocess
import sys

import pluggy
import pytest
import torch
from pydantic import ValidationError

from geometry_os.plugins import vit as vit_plugin
from geometry_os.plugins.vit import ViTOptions
from geometry_os.plugins.vit.model import VisionEncoder, sincos_2d
from geometry_os.systems.pixel_llm import hookspecs
from geometry_os.systems.pixel_llm.protocols import Encoder

TINY = dict(image_size=32, patch_size=8, embed_dim=32, num_layers=2, num_heads=2)


def make(**kw) -> VisionEncoder:
    torch.manual_seed(0)
    return VisionEncoder(**{**TINY, **kw}).eval()


def test_registration_is_lazy_and_builds_from_options():
    pm = pluggy.PluginManager("pixel_llm")
    pm.add_hookspecs(hookspecs)
    pm.register(vit_plugin)
    seen = []
    pm.hook.register_encoders(register=lambda *args, **kw: seen.append(args))
    assert seen == [("vit", "geometry_os.plugins.vit.model:VisionEncoder", ViTOptions)]

    module, attr = seen[0][1].split(":")
    encoder = getattr(importlib.import_module(module), attr)(ViTOptions(**TINY))
    assert isinstance(encoder, Encoder) and encoder.embed_dim == 32


def test_plugin_modules_do_not_import_torch(tmp_path):
    code = (
        "import sys, geometry_os.plugins.vit, geometry_os.plugins.xattn; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(image_size=0), "image_size"),
        (dict(patch_size=-8), "patch_size"),
        (dict(image_size=30), "image_size=30"),  # patch 8 does not divide 30
        (dict(embed_dim=30, num_heads=4), "embed_dim=30"),
        (dict(embed_dim=34, num_heads=2, pos_embed="sincos"), "embed_dim=34"),
        (dict(pos_embed="rope"), "pos_embed"),
        (dict(stem="resnet"), "stem"),
        (dict(image_size=36, patch_size=12, stem="conv"), "power-of-two patch_size"),
        (dict(dropout=1.5), "dropout"),
        (dict(num_layer=2), "num_layer"),  # typo: extra fields are forbidden
    ],
)
def test_options_validation_names_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        ViTOptions(**{**TINY, **kwargs})
    with pytest.raises(ValidationError, match=field):  # keyword construction validates too
        VisionEncoder(**{**TINY, **kwargs})


def test_keywords_and_options_build_the_same_model():
    a = make()
    torch.manual_seed(0)
    b = VisionEncoder(ViTOptions(**TINY)).eval()
    assert a.config == b.config
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(images), b(images))


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_output_shape_and_patch_grid(pos_embed):
    enc = make(pos_embed=pos_embed)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 16, 32)
    assert enc.patch_grid(32, 32) == (4, 4)
    assert enc.patch_grid(48, 64) == (6, 8)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_other_image_sizes(pos_embed):
    enc = make(pos_embed=pos_embed)
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 48, 64))
    assert out.shape == (2, 6 * 8, 32) and torch.isfinite(out).all()


def test_conv_stem_keeps_the_patch_grid_and_sees_across_patch_borders():
    enc = make(stem="conv", pos_embed="sincos")
    widths = [m.out_channels for m in enc.patch_embed if isinstance(m, torch.nn.Conv2d)]
    assert widths == [32, 32, 32, 32]  # log2(8) = 3 stride-2 convs (32, 64, 128, capped at embed_dim 32), 1x1
    assert [
        m.out_channels
        for m in make(stem="conv", embed_dim=192, num_heads=3).patch_embed
        if isinstance(m, torch.nn.Conv2d)
    ] == [32, 64, 128, 192]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.patch_embed)
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 48, 64))
        assert out.shape == (2, 6 * 8, 32) and enc.patch_grid(48, 64) == (6, 8)
        # A pixel change inside patch (0, 0) reaches patch (0, 1)'s feature through the 3x3 convs;
        # a patchify conv keeps patches independent until attention.
        image = torch.zeros(1, 3, 32, 32)
        poked = image.clone()
        poked[..., 3, 7] = 5.0  # last column of patch (0, 0)
        for stem, reaches in (("conv", True), ("patch", False)):
            e = make(stem=stem, num_layers=1)
            delta = (e.patch_embed(poked) - e.patch_embed(image))[0, :, 0, 1].abs().max()
            assert bool(delta > 1e-6) is reaches, stem


def test_conv_stem_refuses_sides_that_are_not_multiples_of_the_patch():
    with pytest.raises(ValueError, match="multiples of patch_size=8"):
        make(stem="conv")(torch.randn(1, 3, 36, 32))


def test_conv_stem_trains_and_round_trips(tmp_path):
    enc = make(stem="conv").train()
    enc(torch.randn(4, 3, 32, 32)).square().mean().backward()
    grads = [p.grad for p in enc.patch_embed.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    state = enc.state_dict()
    assert "patch_embed.1.running_mean" in state  # BatchNorm statistics are saved with the weights
    again = make(stem="conv")
    again.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(images), enc.eval()(images))


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_output_pos_adds_the_position_table_to_the_features(pos_embed):
    plain, with_pos = make(pos_embed=pos_embed), make(pos_embed=pos_embed, output_pos=True)
    with_pos.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 48, 64)  # another grid than the table's: the resized / recomputed one
    with torch.no_grad():
        difference = with_pos(images) - plain(images)
        torch.testing.assert_close(difference, plain._position(6, 8).expand(2, -1, -1))


def test_learned_table_is_interpolated_and_cached():
    enc = make()
    with torch.no_grad():
        same = enc._resize_table(4, 4)  # bicubic resize to the same grid is the identity
        torch.testing.assert_close(same, enc.pos_embed)
        t1 = enc._position(6, 8)
        assert t1.shape == (1, 48, 32)
        assert enc._position(6, 8) is t1  # cached per size
        enc.pos_embed.add_(1.0)  # e.g. an optimizer step: the cache must not go stale
        t2 = enc._position(6, 8)
    assert t2 is not t1
    torch.testing.assert_close(t2, t1 + 1.0, atol=1e-5, rtol=0)


def test_learned_table_gets_gradients_at_other_sizes():
    enc = make().train()
    enc(torch.randn(1, 3, 48, 48)).square().mean().backward()
    assert enc.pos_embed.grad is not None and enc.pos_embed.grad.abs().sum() > 0


def test_sincos_table_is_fixed_mae_style():
    table = sincos_2d(8, rows=2, cols=3)  # dim 8: [sin, cos] of the column (2 freqs), then of the row
    assert table.shape == (6, 8)
    # patch (row 1, col 2) is index 1*3+2; frequencies 1 and 1/100
    r, c = 1.0, 2.0
    expected = torch.tensor(
        [
            torch.sin(torch.tensor(c)),
            torch.sin(torch.tensor(c / 100)),
            torch.cos(torch.tensor(c)),
            torch.cos(torch.tensor(c / 100)),
            torch.sin(torch.tensor(r)),
            torch.sin(torch.tensor(r / 100)),
            torch.cos(torch.tensor(r)),
            torch.cos(torch.tensor(r / 100)),
        ]
    )
    torch.testing.assert_close(table[5], expected)

    enc = make(pos_embed="sincos")
    assert "pos_embed" not in enc.state_dict()  # not learned, not saved
    assert not any(p is enc.pos_embed for p in enc.parameters())
    torch.testing.assert_close(enc._position(6, 8)[0], sincos_2d(32, 6, 8))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_bf16_autocast_forward_on_cpu(stem):
    enc = make(stem=stem)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 16, 32) and torch.isfinite(out.float()).all()
