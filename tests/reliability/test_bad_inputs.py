"""Malformed inputs through the real ``geo-os`` commands, from the one table in ``bad_input_cases.py``:
each is refused with one line naming the culprit (or works, where the input is odd but valid), never
a traceback, and nothing printed before the failure is lost. docs/reliability.md lists the same cases.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from bad_input_cases import CASES, Workspace, check, outcome_of, run_in_process, start_subprocess
from reliability_support import write_exif_rotated, write_scene
from render_table import DOC, table_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def subprocesses(ws):
    """The real-process cases, all started at once (they overlap the in-process ones)."""
    return {case.id: start_subprocess(case, ws) for case in CASES if case.subprocess}


# The real-process cases run last: started together at the first case, they overlap the in-process ones.
ORDERED = sorted(CASES, key=lambda c: c.subprocess)


@pytest.mark.parametrize("case", ORDERED, ids=[c.id for c in ORDERED])
def test_bad_input(case, ws, subprocesses):
    outcome = outcome_of(subprocesses[case.id].wait(240)) if case.subprocess else run_in_process(case, ws)
    check(case, outcome)
    if case.fault == "enospc":
        assert_earlier_checkpoint_survives(ws.root / "full-disk")


def assert_earlier_checkpoint_survives(checkpoint_dir: Path) -> None:
    """After ENOSPC in the second checkpoint: the first is intact and ``latest``, and no temporary folder or
    half-written file is left under a final name."""
    from geometry_os.plugins.amp_trainer import run_state as ckpt
    from geometry_os.systems.pixel_llm import PixelLLM

    names = sorted(p.name for p in checkpoint_dir.iterdir() if p.is_dir())
    assert names == ["step-00000002"], names
    assert ckpt.read_latest(checkpoint_dir).name == "step-00000002"
    model, tokenizer = PixelLLM.from_pretrained(checkpoint_dir / "step-00000002")
    assert tokenizer is not None and ckpt.read_state(checkpoint_dir / "step-00000002")["global_step"] == 2
    ckpt.read_tensors(checkpoint_dir / "step-00000002")


def test_the_table_is_big_enough_and_its_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)
    assert sum(c.subprocess for c in CASES) >= 3
    assert {c.args[1] for c in CASES} >= {"train", "caption", "eval", "lint-data", "make-shapes", "info"}


def test_docs_table_is_up_to_date_with_the_cases():
    """docs/reliability.md is generated from the same list: rerun render_table.py when this fails."""
    assert table_ids(DOC.read_text(encoding="utf-8")) == [c.id for c in CASES], (
        "docs/reliability.md is out of date: run `python tests/reliability/render_table.py`"
    )


# ---- what "works" means for the odd-but-valid images -------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    from geometry_os.systems.pixel_llm.data import load_image

    image = load_image(str(write_exif_rotated(tmp_path / "exif.jpg")), 10**6)
    assert image.size == (20, 40)  # stored 40x20, displayed rotated a quarter turn
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top  # red on top after rotation
    assert bottom[2] > 200 and bottom[0] < 60, bottom


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "P", "RGBA", "LA", "L", "1", "I", "F"])
def test_every_pillow_mode_becomes_rgb(mode, tmp_path):
    from geometry_os.systems.pixel_llm.data import load_image

    suffix = ".jpg" if mode == "CMYK" else ".tif" if mode in ("I", "F") else ".png"
    path = write_scene(tmp_path / f"scene{suffix}", mode=mode)
    image = load_image(str(path), 10**6)
    assert image.mode == "RGB" and image.size == (32, 32)
    assert image.getpixel((0, 0)) == (0, 0, 0)  # the black background stays black (alpha over black)
    assert max(image.getpixel((16, 16))) > 30  # the square is still there


def real_bomb_png(path: Path, side: int = 20000) -> Path:
    """A genuine 1-bit 20000x20000 PNG (all black) of about 50 KB: decoding it as RGB would take 1.2 GB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + b"\0" * (side // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20000, 9000])  # over Pillow's own limit; under it but over max_image_pixels
def test_decompression_bomb_is_refused_from_its_header_without_decoding(side, tmp_path, monkeypatch):
    from PIL import Image

    from geometry_os.systems.pixel_llm.data import DataError, load_image
    from geometry_os.systems.pixel_llm.data_config import DatasetConfig

    bomb = real_bomb_png(tmp_path / "bomb.png", side)
    assert bomb.stat().st_size < 200_000
    decoded = []
    original = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self, *a, **k: decoded.append(self.size) or original(self, *a, **k))
    with pytest.raises(DataError, match="decompression bomb") as info:
        load_image(str(bomb), DatasetConfig().max_image_pixels)
    assert "bomb.png" in str(info.value) and "\n" not in str(info.value)
    assert decoded == [], "the bomb was decoded before being refused"
