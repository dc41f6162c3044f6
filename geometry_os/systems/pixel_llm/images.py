"""Reading image files without torch: decode, check, orient and convert to RGB (Pillow and numpy).

Training, captioning and the ONNX runtime (which needs no torch) all load images through
``load_image``, so an image is the same array everywhere. Problems are one-line ``DataError``s.
"""

from __future__ import annotations

import io
import os
from contextlib import AbstractContextManager, nullcontext
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from geometry_os.errors import GeometryOSError


class DataError(GeometryOSError, ValueError):
    """A problem with the user's data, as one line naming the file and the entry or image
    (a ``GeometryOSError``: the CLI prints it without a traceback).

    ``reason`` is the message without the location, for summaries ("3x no such file").
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _full_scale(mode: str, high: float) -> float:
    """The value that shows as white in a high-depth grey image: 16-bit modes 65535; a float image
    whose values lie in [0, 1] 1.0 (the float convention); otherwise the smallest of 255 / 65535 that
    holds the brightest pixel, and beyond those the brightest pixel itself (a 32-bit range is
    stretched, as a viewer's auto-contrast would)."""
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "F" and high <= 1.0:
        return 1.0
    return next((full for full in (255.0, 65535.0) if high <= full), max(high, 1.0))


def _high_depth_grey(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grey -> 8-bit grey scaled from its full-scale value (clipped
    below 0, NaN as 0); a single transparent grey value (PNG tRNS) becomes an alpha band ("LA")."""
    values = np.asarray(image).astype(np.float64)
    values[~np.isfinite(values)] = 0.0
    full = _full_scale(image.mode, float(values.max()) if values.size else 0.0)
    grey = Image.fromarray(np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8), "L")
    transparent = image.info.get("transparency")
    if isinstance(transparent, (int, float)):
        alpha = Image.fromarray(np.where(np.asarray(image) == transparent, 0, 255).astype(np.uint8), "L")
        return Image.merge("LA", (grey, alpha))
    return grey


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK through its embedded ICC profile to sRGB, as a colour-managed viewer shows it; without a
    profile (or one littleCMS cannot use), Pillow's naive formula."""
    icc = image.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:  # None only when converting in place, which this does not ask for
                return converted
        except Exception:  # ImportError (Pillow built without littleCMS), PyCMSError (a broken profile)
            pass
    return image.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> the RGB picture a viewer shows: alpha (an alpha band, or a palette's or grey
    image's transparent entry) composited on black; 16-bit, 32-bit and float grey scaled from their
    full-scale value (see ``_full_scale``: floats in [0, 1] are [0, 1]); CMYK through its ICC profile;
    1-bit, palette, LAB, HSV and YCbCr by Pillow's conversions. ValueError for a mode Pillow cannot
    convert."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _high_depth_grey(image)
    if image.mode == "CMYK":
        return _cmyk_to_rgb(image)
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError:  # Pillow has no conversion for this mode
        raise ValueError(f"cannot convert Pillow mode {image.mode!r} to RGB") from None


def _reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not an image"
    if isinstance(error, UnidentifiedImageError):
        return "cannot identify image file (not an image, or a format Pillow cannot read)"
    if isinstance(error, Image.DecompressionBombError):
        return f"possible decompression bomb: {error}"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def load_image(
    path: str | os.PathLike[str] | BinaryIO, max_pixels: int, label: str | None = None, draft_size: int | None = None
) -> Image.Image:
    """Open, check the header size, decode, apply EXIF orientation, convert to RGB; else ``DataError``.

    ``path`` is a file name or a binary file object (an upload; read from its start). ``label`` names
    the image in messages (default: ``path``); ``draft_size`` lets JPEG decode at a reduced scale when
    the image will be shrunk anyway.
    """
    label = label or str(path)
    try:
        if isinstance(path, (str, os.PathLike)):
            opened: AbstractContextManager[BinaryIO] = open(path, "rb")
        else:  # an upload: read from its start, and left open for its owner
            path.seek(0)
            opened = nullcontext(path)
        with opened as f:
            image = Image.open(f)
            width, height = image.size
            if width * height > max_pixels:
                reason = (
                    f"image is {width}x{height} = {width * height} pixels, over max_image_pixels="
                    f"{max_pixels} (possible decompression bomb); not decoded"
                )
                raise DataError(f"{label}: {reason}", reason)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    except DataError:
        raise
    except Exception as e:  # any decoder failure is a data problem of this image
        raise DataError(f"{label}: {_reason(e)}", _reason(e)) from None
