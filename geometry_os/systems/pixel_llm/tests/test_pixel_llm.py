"""Smoke tests of the public API, runnable from this folder as the original description says:

    cd geometry_os/systems/pixel_llm
    pytest tests/test_pixel_llm.py -v

Kept for the original description's API (its "Running Tests" and "Contributing" sections name this file);
pinned by tests/test_seed_surfaces.py. The full suite lives in the repository's top-level ``tests/`` folder.
"""

import subprocess
import sys
from pathlib import Path

import torch

from geometry_os.systems.pixel_llm import PixelLLM, PixelLLMConfig, create_pixel_llm, generate_caption


def test_forward_and_generate():
    """A forward pass gives (B, T, vocab) logits and a finite loss; ``generate`` and ``generate_caption``
    give the same greedy captions, at most ``max_length`` tokens long."""
    model = create_pixel_llm(vocab_size=50, preset="tiny").eval()
    images = torch.rand(2, 3, 32, 32)
    ids = torch.randint(4, 50, (2, 6))
    out = model(images, ids, labels=ids)
    assert out.logits.shape == (2, 6, 50) and torch.isfinite(out.loss)
    captions = model.generate(images, max_length=10)
    assert captions.shape[0] == 2 and captions.shape[1] <= 10
    assert torch.equal(generate_caption(model, images, max_length=10), captions)


def test_custom_configuration():
    """A model built from a hand-written config encodes a 32×32 image into (1, patches, width) features."""
    config = PixelLLMConfig(
        image_size=32,
        patch_size=8,
        vision_embed_dim=32,
        vision_num_layers=1,
        vocab_size=40,
        text_embed_dim=32,
        text_num_layers=1,
        max_seq_len=16,
    )
    assert PixelLLM(config).encode(torch.rand(1, 3, 32, 32)).shape == (1, 16, 32)


def test_demo_runs():
    """The demo script runs to the end and prints its greedy captions."""
    demo = Path(__file__).resolve().parents[1] / "demo_pixel_llm.py"
    result = subprocess.run([sys.executable, str(demo)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "5. captions (greedy)" in result.stdout
