"""How images and captions become tensors. Pydantic only (no torch), so configs load cheaply."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetConfig(BaseModel):
    """Options shared by every image-caption dataset; unknown fields are an error naming the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(224, gt=0, description="images are resized to image_size x image_size")
    max_length: int = Field(64, ge=3, description="captions longer than this many tokens are cut, keeping <eos>")
    augment: bool = Field(False, description="mild colour jitter and random resized crop; never a flip")
    mean: tuple[float, float, float] = Field(IMAGENET_MEAN, description="per-channel mean for normalising")
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(IMAGENET_STD, description="per-channel std")
    interpolation: Literal["bilinear", "bicubic"] = Field("bilinear", description="resize filter (antialiased, as PIL)")
    resize: Literal["squash", "shorter_crop"] = Field(
        "squash",
        description="squash: resize to image_size x image_size; shorter_crop: shorter side to "
        "floor(image_size / crop_pct), then a centre crop (timm, CLIP)",
    )
    crop_pct: float = Field(1.0, gt=0, le=1, description="shorter_crop: the fraction of the resized image kept")
    rescale_factor: PositiveFloat = Field(
        1 / 255, description="8-bit pixel values are multiplied by this before normalising"
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="skip: drop bad entries and unreadable images")
    max_image_pixels: int = Field(
        64_000_000, gt=0, description="decompression-bomb limit, checked from the header before decoding"
    )


def dataset_config(options: BaseModel) -> DatasetConfig:
    """The ``DatasetConfig`` fields of a dataset component's options (e.g. ``CaptionsOptions``: where the data
    is, plus every ``DatasetConfig`` field), as a ``DatasetConfig``; the other fields are left out."""
    return DatasetConfig.model_validate(options.model_dump(include=set(DatasetConfig.model_fields)))
