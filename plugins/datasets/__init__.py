"""Plugin: the ``captions`` and ``shapes`` datasets, the caption-data formats (``json``, ``jsonl``, ``coco``,
``karpathy``, ``flickr``, ``imagefolder``; see ``formats.py``) and the ``make-shapes`` / ``lint-data`` commands.

Registering stays cheap: pydantic, the hookspecs and (for commands) click only; torch is imported by the
factories and inside command bodies.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator

from geometry_os.systems.pixel_llm.plugin_api import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SYNTHETIC_DATA,
    DatasetConfig,
    hookimpl,
)


class CaptionsOptions(DatasetConfig):
    """Caption data (``[FORMAT:]PATH``, the format inferred when unambiguous) plus every ``DatasetConfig`` field."""

    data_path: str = Field(description="[FORMAT:]PATH: a caption file or folder of a registered format")
    image_root: str | None = Field(None, description="folder that image paths are relative to (default: the file's)")
    split: Literal["train", "val", "test"] | None = Field(
        None, description="part of a split file (karpathy; restval counts as train); None: all of it"
    )


class ShapesOptions(BaseModel):
    """In-memory synthetic scenes (see ``shapes.py``)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1000, gt=0, description="number of scenes")
    seed: int = Field(0, description="the same seed gives the same scenes")
    image_size: int = Field(64, gt=0, description="pixels per side")
    split: Literal["train", "val", "test", "compositional"] = Field(
        "train", description="splits never share a scene; 'compositional': scenes with a held-out pair"
    )
    hold_out: list[str] = Field(
        default_factory=list, description="'COLOUR KIND' pairs that no scene of train/val/test contains"
    )
    shape_weights: tuple[float, float, float] | None = Field(
        None, description="relative frequencies of 1/2/3-shape scenes (None: uniform); a training curriculum"
    )
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="per-channel mean for normalising")
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(IMAGENET_STD, description="per-channel std")

    @field_validator("hold_out")
    @classmethod
    def _pairs(cls, value: list[str]) -> list[str]:
        from geometry_os.plugins.datasets.shapes import parse_pairs  # plain Python, no torch

        if value:
            parse_pairs(",".join(value))
        return value


@hookimpl
def register_datasets(register):
    """The ``captions`` and ``shapes`` datasets and every caption-data format (a ``DatasetReader``)."""
    register("captions", "geometry_os.plugins.datasets.factories:build_captions", CaptionsOptions)
    # the synthetic scenes are what a run trains on without --data
    register("shapes", "geometry_os.plugins.datasets.factories:build_shapes", ShapesOptions, serves=[SYNTHETIC_DATA])
    for name in ("json", "jsonl", "coco", "karpathy", "flickr", "imagefolder", "webdataset"):  # caption-data formats
        # a .json file no format detects is read as the original JSON format, whose reader names the problem
        serves = [".json"] if name == "json" else []
        register(name, f"geometry_os.plugins.datasets.formats:{name.upper()}", CaptionsOptions, serves=serves)


@hookimpl
def register_commands(cli):
    """``make-shapes`` and ``lint-data``."""
    from geometry_os.plugins.datasets.commands import lint_data, make_shapes

    cli.add_command(make_shapes)
    cli.add_command(lint_data)
