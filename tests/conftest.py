"""Shared fixtures: an isolated process-wide host, third-party plugin distributions made on disk, the
check of a one-line CLI error, and a tiny checkpoint with a few images to caption."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from geometry_os.host import set_host


@pytest.fixture(autouse=True)
def _isolated_host(monkeypatch):
    """Every test starts from a fresh host built from the environment it sets."""
    for var in ("GEO_OS_REGISTRY", "GEO_OS_DISABLE_PLUGINS", "GEO_OS_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    previous = set_host(None)
    yield
    set_host(previous)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: the machine has two cores and some suites run child processes alongside
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CAPTION_WORKSPACE_CAPTIONS = ["a red circle", "a blue square left of a green triangle", "a small yellow diamond"]


def caption_workspace(root: Path) -> Path:
    """In ``root``: a random ``tiny`` checkpoint (max_seq_len 32) with a simple vocabulary trained on
    ``CAPTION_WORKSPACE_CAPTIONS`` at ``ckpt/``, and three 32 px images ``0.png`` .. ``2.png`` (red, green,
    blue). Returns ``root``."""
    import torch
    from PIL import Image

    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.resolution import get_component

    vocab = get_component("tokenizer", "simple").load().train(CAPTION_WORKSPACE_CAPTIONS, None)
    torch.manual_seed(0)
    create_pixel_llm(vocab_size=len(vocab), preset="tiny").save_pretrained(root / "ckpt", tokenizer=vocab)
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
    return root


def assert_one_line_error(result, *needles: str) -> None:
    """A click ``Result`` that failed with exactly one non-blank line of output (no traceback), containing
    every one of ``needles``."""
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def make_plugin_dist(root: Path, dist: str, version: str, module: str, source: str, ep_name: str | None = None) -> Path:
    """A real installed distribution: ``module.py`` plus ``<dist>-<version>.dist-info`` with an entry point
    in the ``geometry_os.plugins`` group. Put ``root`` on sys.path and importlib.metadata finds it."""
    root.mkdir(parents=True, exist_ok=True)
    sys.modules.pop(module, None)  # a module of that name from an earlier test must not be reused
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[geometry_os.plugins]\n{ep_name or module} = {module}\n")
    (info / "RECORD").write_text("")
    return root


TOY_PLUGIN = '''
from pydantic import BaseModel, ConfigDict
from geometry_os.systems.pixel_llm.hookspecs import hookimpl


class ToyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_size: int = 32
    embed_dim: int = 16
    pool: int = 4


def build_toy(opts):
    import torch
    from torch import nn

    class ToyEncoder(nn.Module):
        """Average-pools the image into a grid and projects each cell."""

        def __init__(self):
            super().__init__()
            self.embed_dim = opts.embed_dim
            self.proj = nn.Linear(3, opts.embed_dim)

        def patch_grid(self, height, width):
            return (opts.pool, opts.pool)

        def forward(self, images):
            cells = nn.functional.adaptive_avg_pool2d(images, opts.pool).flatten(2).transpose(1, 2)
            return self.proj(cells)

    return ToyEncoder()


@hookimpl
def register_encoders(register):
    register("toy", build_toy, ToyOptions)
'''


# The sizes of a small model built on the toy plugin's encoder (16 channels out, a 4 x 4 grid of cells).
TOY_MODEL = dict(
    encoder="toy",
    image_size=32,
    patch_size=8,
    vision_embed_dim=16,
    text_embed_dim=32,
    text_num_layers=1,
    vocab_size=20,
    max_seq_len=16,
)


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    root = make_plugin_dist(tmp_path / "site", "geo-toy-plugin", "1.2.3", "geo_toy_plugin", TOY_PLUGIN, "toy")
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("geo_toy_plugin", None)
