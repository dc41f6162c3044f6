"""Where the model looked: one panel per generated word, the image under that word's cross-attention.

For the word generated at step t we take the cross-attention of the decoder query that predicted it
(the query at position t-1), average it over every head of every cross-attention layer, reshape it
to the encoder's patch grid, normalise it to [0, 1] and draw it over the image as a heatmap. Drawing
uses Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import Image, ImageDraw, ImageFont

from geometry_os.errors import ComponentError, GeometryOSError
from geometry_os.fileio import atomic_save

from .captioning import preprocessing_config
from .data import build_transform, load_image
from .generation_config import GenerationConfig

PANEL = 160  # pixels per panel side


@dataclass
class Explanation:
    """A caption with, per generated word, where the cross-attention looked: ``maps`` (words, rows, cols)
    over the patch grid, each in [0, 1], for drawing on ``image`` (the full-size picture)."""

    image: Image.Image
    words: list[str]
    maps: torch.Tensor  # (words, rows, cols), each in [0, 1]
    text: str = ""  # the decoded caption, spaced as the tokenizer writes it (``caption`` prints the same)

    @property
    def caption(self) -> str:
        """The decoded caption (the words joined by spaces when no text was kept)."""
        return self.text or " ".join(self.words)


def explain_image(
    model: Any, tokenizer: Any, path: str | BinaryIO, generation: GenerationConfig | None = None
) -> Explanation:
    """Caption the image at ``path`` (greedy unless ``generation`` says otherwise) and keep, per word, the
    cross-attention averaged over heads and layers. Raises GeometryOSError when the encoder has no patch
    grid to draw on, ComponentError when the decoding strategy returns no cross-attentions, DataError when the
    image cannot be read."""
    from .inference import generate_output

    config = preprocessing_config(model)
    image = load_image(path, config.max_image_pixels)  # full size, for the pictures
    # the model sees exactly what `caption` feeds it (JPEGs decoded at reduced scale), so the captions agree
    seen = load_image(path, config.max_image_pixels, draft_size=config.image_size)
    pixels = build_transform(config)(seen).unsqueeze(0).to(model.device)
    generation = (generation or GenerationConfig()).model_copy(
        update={"output_attentions": True, "return_dict_in_generate": True, "num_return_sequences": 1}
    )
    out = generate_output(model, pixels, config=generation, tokenizer=tokenizer)
    grid = (
        model.encoder.patch_grid(pixels.shape[-2], pixels.shape[-1]) if hasattr(model.encoder, "patch_grid") else None
    )
    if grid is None:
        raise GeometryOSError(f"encoder '{model.config.encoder}' does not expose a patch grid to draw attention on")
    if out.cross_attentions is None:
        raise ComponentError("the decoding strategy returned no cross-attentions (output_attentions was asked for)")
    attentions = out.cross_attentions
    ids = out.sequences[0].tolist()[1:]  # drop <bos>
    words, maps = [], []
    for step, token in enumerate(ids):
        if token in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            break
        attention = attentions[step][0].float().mean(dim=(0, 1))  # layers, heads -> (N,)
        grid_map = attention[-grid[0] * grid[1] :].reshape(grid)  # ignore any non-patch tokens in front
        span = grid_map.max() - grid_map.min()
        maps.append((grid_map - grid_map.min()) / span if span > 0 else torch.zeros_like(grid_map))
        words.append(tokenizer.decode([token], skip_special_tokens=True).strip() or "?")  # byte-level BPE: " dog"
    empty = torch.zeros(0, *grid)
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()  # "a man's hat.", not the panels' "a man's hat ."
    return Explanation(image=image, words=words, maps=torch.stack(maps) if maps else empty, text=text)


def _heat(value: float) -> tuple[int, int, int]:
    """Dark blue -> red -> yellow."""
    v = max(0.0, min(1.0, value))
    return (int(255 * min(1.0, 2 * v)), int(255 * max(0.0, 2 * v - 1)), int(160 * (1 - v)))


def render_panels(explanation: Explanation, out: str | Path) -> Path:
    """A PNG with the caption on top and one panel per word; written atomically."""
    canvas = draw_panels(explanation)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(out, lambda tmp: canvas.save(tmp, format="PNG"))


def draw_panels(explanation: Explanation) -> Image.Image:
    """The picture ``render_panels`` writes: the caption on top, one panel (``PANEL`` px) per word."""
    words = explanation.words or ["(empty caption)"]
    cols = min(len(words), 6)
    rows = (len(words) + cols - 1) // cols
    header, label = 24, 18
    canvas = Image.new("RGB", (cols * PANEL, header + rows * (PANEL + label)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((4, 4), explanation.caption or "(empty caption)", fill="black", font=font)
    base = explanation.image.resize((PANEL, PANEL))
    for i, word in enumerate(words):
        x, y = (i % cols) * PANEL, header + (i // cols) * (PANEL + label)
        panel = base
        if i < len(explanation.maps):
            grid = explanation.maps[i]
            heat = Image.new("RGB", (grid.shape[1], grid.shape[0]))
            heat.putdata([_heat(float(v)) for v in grid.flatten()])
            heat = heat.resize((PANEL, PANEL), Image.Resampling.BILINEAR)
            panel = Image.blend(base, heat, 0.55)
        canvas.paste(panel, (x, y))
        draw.text((x + 4, y + PANEL + 3), word, fill="black", font=font)
    return canvas
