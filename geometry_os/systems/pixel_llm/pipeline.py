"""``caption_images``: caption files and PIL images in one call, as HF ``pipeline("image-to-text")`` does.

    from geometry_os.systems.pixel_llm import caption_images
    caption_images(["a.jpg", PIL.Image.open("b.png")], checkpoint="runs/mine/best")
    # [{"image": "a.jpg", "caption": "...", "score": -3.2, "penalised_score": -0.4}, {"image": None, ...}]

Every image is preprocessed exactly as ``geo-os pixel-llm caption`` does it (the checkpoint's size,
resize, interpolation, mean and std; files decoded with EXIF orientation and JPEG draft mode).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from geometry_os.errors import ConfigError, GeometryOSError

from .captioning import loader_threads, preprocessing_config, read_ahead
from .cpu_bf16 import inference_dtype
from .data import build_transform, load_image, to_rgb
from .generation_config import GenerationConfig


def caption_images(
    images: Sequence[str | os.PathLike | Image.Image] | str | os.PathLike | Image.Image,
    checkpoint: str | os.PathLike | None = None,
    *,
    model: Any = None,
    tokenizer: Any = None,
    generation: GenerationConfig | dict[str, Any] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 16,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Captions of ``images`` (paths and/or ``PIL.Image`` objects, or one of them), in order.

    Give ``checkpoint`` (a folder; loaded on ``device`` in ``dtype``: ``float32`` when None, ``bfloat16``,
    ``float16`` or ``auto``, bfloat16 where the hardware computes it natively) or an already loaded
    ``model`` (used in its own dtype) and ``tokenizer``. ``generation`` and keyword arguments are
    ``GenerationConfig`` fields (the checkpoint's own defaults apply to the rest). Returns one dict per
    image: ``image`` (the path, or None for a PIL image), ``caption``, ``score`` (sum of token log-probs),
    ``penalised_score`` and, with ``rerank``, ``rerank_score``. An unreadable file raises ``DataError``
    naming it; ``GeometryOSError`` when neither a checkpoint nor a model with a tokenizer is given,
    ``ConfigError`` for an unknown ``dtype`` or one given with ``model``.
    """
    from .inference import generate_output, scored_caption
    from .modeling import PixelLLM

    if model is None:
        if checkpoint is None:
            raise GeometryOSError("caption_images needs checkpoint= (a folder) or model= and tokenizer=")
        try:
            torch_dtype = inference_dtype(dtype or "float32", device)
        except ValueError as exc:
            raise ConfigError(f"caption_images: {exc}") from None
        model, tokenizer = PixelLLM.from_pretrained(Path(checkpoint), map_location=device)
        model = model.to(torch_dtype)
    elif dtype is not None:
        raise ConfigError("caption_images: dtype= applies to checkpoint=; a given model= keeps its own dtype")
    if tokenizer is None:
        raise GeometryOSError("caption_images: no tokenizer (the checkpoint has none; pass tokenizer=)")
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    config = preprocessing_config(model)
    transform = build_transform(config)
    settings = (
        generation.model_dump(exclude_unset=True)
        if isinstance(generation, GenerationConfig)
        else dict(generation or {})
    )
    settings.update(generate_kwargs)

    def load(item: str | os.PathLike | Image.Image) -> torch.Tensor | Image.Image:
        if isinstance(item, Image.Image):  # the caller's object, perhaps given twice: used in this thread only
            return item
        return transform(load_image(str(item), config.max_image_pixels, draft_size=config.image_size))

    results: list[dict[str, Any]] = []
    batches = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
    # the next batch is read while this one is captioned, where torch leaves CPUs idle
    for batch, loaded in read_ahead(batches, load, loader_threads(model.device)):
        pixels = [transform(to_rgb(x)) if isinstance(x, Image.Image) else x for x in loaded]
        out = generate_output(model, torch.stack(pixels).to(model.device), tokenizer=tokenizer, **settings)
        step = out.sequences.shape[0] // len(batch)  # num_return_sequences: the best of each image
        for i, item in enumerate(batch):
            caption, score, penalised = scored_caption(out, i * step)
            result = {
                "image": None if isinstance(item, Image.Image) else str(item),
                "caption": caption,
                "score": score,
                "penalised_score": penalised,
            }
            if out.rerank_scores is not None:
                result["rerank_score"] = float(out.rerank_scores[i * step])
            results.append(result)
    return results
