"""System calls of pixel_llm, reached through ``host.call("pixel_llm.<name>", **params)``.

Parameters are validated by a pydantic model; results are JSON-serialisable. Heavy imports happen
inside the call, never at import time.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from geometry_os.host import SystemCall

from .config import StrictModel, load_config
from .generation_config import GenerationConfig


class InfoParams(StrictModel):
    """Parameters of ``pixel_llm.info``: a model config as the command line builds it."""

    config: str | None = Field(None, description="model config file (TOML/JSON)")
    preset: str | None = Field(None, description="preset to start from (default: small)")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides")


def info(params: InfoParams, host: Any) -> dict[str, Any]:
    """The resolved model config, its parameter count (built on the meta device: no memory used) and the
    trainer settings (``trainer``)."""
    import torch

    from .modeling import PixelLLM
    from .resolution import resolve_model

    preset = params.preset or (None if params.config else "small")
    config = load_config(params.config, params.overrides, preset=preset)
    resolved = resolve_model(config, host.system("pixel_llm").components, source=params.config or "config")
    with torch.device("meta"):
        model = PixelLLM(resolved)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return {
        "config": model.config.model_dict(),  # the components it was built with, by name
        "trainer": config.trainer.model_dump(mode="json"),
        "parameters": {"total": count(model), "encoder": count(model.encoder), "decoder": count(model.decoder)},
    }


class RemoteInfoParams(StrictModel):
    """``info`` over the network: a preset and overrides, never a config file on the server."""

    preset: str | None = Field(None, description="preset to start from (default: small)")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides")


class GenerationParams(StrictModel):
    """What every captioning call takes: the checkpoint, the decoding settings, the batch, the device and dtype."""

    checkpoint: str = Field(description="checkpoint folder")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig.model_validate({}), description="GenerationConfig fields"
    )
    batch_size: int = Field(16, ge=1)
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="weights and activations (auto: bfloat16 where the hardware computes it natively)"
    )


class CaptionParams(GenerationParams):
    """Parameters of ``pixel_llm.caption``: the images to caption."""

    images: list[str] = Field(min_length=1, description="image files, folders or glob patterns")
    recursive: bool = Field(False, description="also the images in the sub-folders of a folder")


class EvaluateParams(GenerationParams):
    """Parameters of ``pixel_llm.evaluate``: the caption data to score the checkpoint on."""

    data: str = Field(description="[FORMAT:]PATH: caption data of a registered format (json, coco, karpathy, ...)")
    split: Literal["train", "val", "test"] | None = Field(None, description="part of a split file (karpathy)")
    image_root: str | None = None
    max_images: int | None = Field(None, ge=1)


def caption(params: CaptionParams, host: Any) -> list[dict[str, Any]]:
    """One ``{image, caption, score, penalised_score}`` (``rerank_score`` too with ``rerank``; or
    ``{image, error}``) per image."""
    from .workflows import caption as caption_workflow

    options = params.model_dump(include={"batch_size", "device", "recursive", "dtype"})
    return [r.to_dict() for r in caption_workflow(params.checkpoint, params.images, params.generation, **options)]


def evaluate(params: EvaluateParams, host: Any) -> dict[str, Any]:
    """Caption metrics (BLEU-1..4, ROUGE-L, CIDEr-D, exact match, diversity, seconds per image)."""
    from .workflows import evaluate as evaluate_workflow

    options = params.model_dump(include={"split", "image_root", "max_images", "batch_size", "device", "dtype"})
    return evaluate_workflow(params.checkpoint, params.data, params.generation, **options)


class TrainParams(StrictModel):
    """Parameters of ``pixel_llm.train``: the ``train`` command's config, data and run options."""

    config: str | None = Field(None, description="config file (TOML/JSON)")
    preset: str | None = Field(None, description="preset to start from")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides")
    data: str | None = Field(None, description="training caption file (default: synthetic shapes)")
    val_data: str | None = None
    image_root: str | None = Field(
        None, description="folder the image paths of `data` start from (default: its folder)"
    )
    val_image_root: str | None = Field(
        None, description="the same for `val_data` (default: image_root, else its folder)"
    )
    tokenizer: str | None = Field(None, description="tokenizer component trained on the captions")
    out: str | None = Field(None, description="checkpoint folder")
    resume: str | None = Field(None, description="checkpoint folder or 'latest'")
    num_scenes: int | None = Field(None, ge=1, description="synthetic scenes when no data is given (default 10000)")
    trainer: str | None = Field(None, description="trainer component (default: the registry's)")


def train(params: TrainParams, host: Any) -> dict[str, Any]:
    """Train like ``geo-os pixel-llm train`` (quietly: nothing on stdout); returns the trainer's summary.
    Raises the workflow's ``GeometryOSError`` subclasses (see ``workflows.train``)."""
    from .workflows import train as train_workflow

    summary = train_workflow(
        config_path=params.config,
        preset=params.preset,
        data_path=params.data,
        val_path=params.val_data,
        overrides=params.overrides,
        resume=params.resume,
        quiet=True,
        out=params.out,
        num_scenes=params.num_scenes,
        trainer=params.trainer,
        **{k: v for k in ("image_root", "val_image_root", "tokenizer") if (v := getattr(params, k)) is not None},
    )
    return json.loads(json.dumps(summary or {}, default=str))


CALLS = [
    SystemCall(
        "pixel_llm.info",
        InfoParams,
        info,
        "Resolved model config, parameter count and trainer settings.",
        remote_params=RemoteInfoParams,
    ),
    SystemCall("pixel_llm.caption", CaptionParams, caption, "Caption image files with a checkpoint."),
    SystemCall("pixel_llm.evaluate", EvaluateParams, evaluate, "Caption metrics of a checkpoint on a caption file."),
    # over the network only when the server was started with --allow-train (it reads and writes server files)
    SystemCall(
        "pixel_llm.train",
        TrainParams,
        train,
        "Train a model (as geo-os pixel-llm train) and summarise.",
        remote_params=TrainParams,
    ),
]
