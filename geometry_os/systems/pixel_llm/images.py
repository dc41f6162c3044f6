"""Reading image files without torch: decode, check, orient and convert to RGB (Pillow only).

Training, captioning and the ONNX runtime (which needs no torch) all load images through
``load_image``, so an image is the same array everywhere. Problems are one-line ``DataError``s.
"""

from __future__ import annotations

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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on black, 16/32-bit grey scaled (not clipped) to 8 bits."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode.startswith("I;16"):
        image = image.convert("I").point(lambda v: v / 256)
    elif image.mode in ("I", "F"):
        high = image.getextrema()[1]
        image = image.point(lambda v: v / 256) if high > 255 else image
    if image.mode in ("I", "F"):
        return image.convert("L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


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


def load_image(path: str, max_pixels: int, label: str | None = None, draft_size: int | None = None) -> Image.Image:
    """Open, check the header size, decode, apply EXIF orientation, convert to RGB; else ``DataError``.

    ``label`` names the image in messages (default: ``path``); ``draft_size`` lets JPEG decode at a
    reduced scale when the image will be shrunk anyway.
    """
    label = label or path
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            width, height = image.size
            if width * height > max_pixels:
                reason = (f"image is {width}x{height} = {width * height} pixels, over max_image_pixels="
                          f"{max_pixels} (possible decompression bomb); not decoded")
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
