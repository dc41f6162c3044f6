"""Every image mode Pillow opens becomes the RGB picture a viewer shows, through ``load_image`` (the one
loader of train, caption, eval, explain and lint-data), or a one-line refusal naming the file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geometry_os.systems.pixel_llm.data import DataError, load_image, to_rgb


def saved(image: Image.Image, path: Path, **kw) -> Path:
    image.save(path, **kw)
    return path


def row(values, dtype) -> Image.Image:
    return Image.fromarray(np.array([values], dtype=dtype))


def greys(path: Path) -> list[int]:
    """The first channel of each pixel of the one-row image at ``path``, loaded as training loads it."""
    image = load_image(str(path), 10**6)
    assert image.mode == "RGB"
    pixels = [image.getpixel((x, 0)) for x in range(image.width)]
    assert all(p[0] == p[1] == p[2] for p in pixels), pixels  # grey stays grey
    return [p[0] for p in pixels]


def png16(path: Path, colour_type: int, pixels: list[tuple[int, ...]]) -> Path:
    """A one-row 16-bit PNG (colour type 2: RGB, 6: RGBA) written by hand (Pillow cannot write these)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"\0" + b"".join(struct.pack(f">{len(p)}H", *p) for p in pixels)
    header = struct.pack(">IIBBBBB", len(pixels), 1, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def test_float_tiff_in_zero_one_is_not_black(tmp_path):
    """The reported case: 32-bit float in [0, 1] loaded all black (values clipped to 0 and 1 of 255)."""
    path = saved(row([0.0, 0.25, 0.5, 1.0], np.float32), tmp_path / "f.tif")
    assert Image.open(path).mode == "F"
    assert greys(path) == [0, 64, 128, 255]


@pytest.mark.parametrize(
    "values, dtype, expected",
    [
        ([0.0, 100.0, 200.0], np.float32, [0, 100, 200]),  # float on the 8-bit scale
        ([float("nan"), -3.0, 0.5], np.float32, [0, 0, 128]),  # NaN and negatives are black
        ([0, 200, 255], np.int32, [0, 200, 255]),  # 32-bit integers on the 8-bit scale
        ([0, 32768, 65535], np.int32, [0, 128, 255]),  # ... on the 16-bit scale
        ([0, 500_000, 1_000_000], np.int32, [0, 128, 255]),  # ... beyond: stretched to the brightest
    ],
)
def test_32bit_tiffs_scale_from_their_full_scale(tmp_path, values, dtype, expected):
    path = saved(row(values, dtype), tmp_path / "x.tif")
    assert Image.open(path).mode in ("F", "I")
    assert greys(path) == expected


def test_16bit_grey_png(tmp_path):
    path = saved(row([0, 200, 32768, 65535], np.uint16), tmp_path / "g.png")
    assert Image.open(path).mode.startswith("I;16")
    assert greys(path) == [0, 1, 128, 255]  # 200 of 65535 is (nearly) black, as a viewer shows it
    transparent = saved(row([40000, 65535], np.uint16), tmp_path / "t.png", transparency=40000)
    assert greys(transparent) == [0, 255]  # the tRNS grey value is transparent: black background


def test_16bit_rgb_and_rgba_png(tmp_path):
    rgb = load_image(str(png16(tmp_path / "rgb.png", 2, [(65535, 32896, 0)])), 10**6)
    assert rgb.getpixel((0, 0)) == (255, 128, 0)
    rgba = load_image(str(png16(tmp_path / "rgba.png", 6, [(65535, 0, 0, 65535), (65535, 65535, 65535, 0)])), 10**6)
    assert [rgba.getpixel((x, 0)) for x in range(2)] == [(255, 0, 0), (0, 0, 0)]


def test_grey_and_palette_alpha_modes(tmp_path):
    assert greys(saved(Image.new("LA", (1, 1), (200, 128)), tmp_path / "la.png"))[0] in (100, 101)
    grey_trns = saved(Image.new("L", (2, 1), 50), tmp_path / "lt.png", transparency=50)
    assert greys(grey_trns) == [0, 0]
    palette = Image.new("P", (2, 1), 1)
    palette.putpalette([255, 255, 255, 10, 200, 30] * 128)
    palette.putpixel((0, 0), 0)
    out = load_image(str(saved(palette, tmp_path / "p.png", transparency=0)), 10**6)
    assert [out.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (10, 200, 30)]
    pa = Image.new("PA", (2, 1))  # Pillow makes PA in memory only (no format writes it)
    pa.putpalette([0, 0, 0, 10, 200, 30] * 128)
    pa.putpixel((0, 0), (1, 255))
    pa.putpixel((1, 0), (1, 0))
    assert [to_rgb(pa).getpixel((x, 0)) for x in range(2)] == [(10, 200, 30), (0, 0, 0)]


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(tmp_path, fmt):
    path = saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / f"c.{fmt.lower()}", format=fmt)
    assert Image.open(path).mode == "CMYK"
    r, g, b = load_image(str(path), 10**6).getpixel((1, 1))
    assert r > 240 and g < 15 and b < 15  # magenta + yellow ink: red
    broken = saved(Image.new("CMYK", (1, 1), (0, 255, 255, 0)), tmp_path / "b.tif", format="TIFF", icc_profile=b"junk")
    assert load_image(str(broken), 10**6).getpixel((0, 0)) == (255, 0, 0)  # an unusable profile: the plain formula


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_one_bit(tmp_path, fmt):
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    assert greys(saved(image, tmp_path / f"one.{fmt.lower()}", format=fmt)) == [0, 255]


def test_other_colour_spaces():
    assert to_rgb(Image.new("HSV", (1, 1), (0, 255, 255))).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("YCbCr", (1, 1), (76, 85, 255))).getpixel((0, 0))[0] > 240  # red in YCbCr
    grey = to_rgb(Image.new("LAB", (1, 1), (128, 128, 128))).getpixel((0, 0))  # L* 50, neutral
    assert all(abs(c - 119) <= 2 for c in grey)


def test_a_mode_without_a_conversion_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import geometry_os.systems.pixel_llm.images as images  # where load_image and to_rgb live

    path = saved(Image.new("RGBA", (1, 1)), tmp_path / "odd.png")
    monkeypatch.setattr(images, "to_rgb", lambda image: to_rgb(image.convert("La")))  # 'La' has no RGB conversion
    with pytest.raises(DataError) as caught:
        load_image(str(path), 10**6)
    assert str(caught.value) == f"{path}: ValueError: cannot convert Pillow mode 'La' to RGB"
