"""Load: one ``geo-os pixel-llm caption`` process captions 1,000 images (batch 32) and its memory stays flat.

The images are 512x512 PNGs that compress to a few KB but decode to 0.75 MB each, so holding all of them
at once would need about 750 MB more than holding one batch; the bound below is a fifth of that.
The same command on a single batch runs alongside as the baseline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from reliability_support import Measured, child_env, geo_os_command, make_checkpoint, problem_lines

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

N_IMAGES = 1000
BATCH = 32
SIDE = 512
ALL_AT_ONCE_MB = N_IMAGES * SIDE * SIDE * 3 / 2**20  # decoded RGB bytes of every image together
GROWTH_LIMIT_MB = 150  # over the one-batch run: 1000 images may cost no more than this

FIGURES: dict[str, object] = {}


def write_images(folder: Path, n: int) -> list[Path]:
    """``n`` PNG files: 25 distinct scenes (a few shapes on black), each written n/25 times under its own name."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    rng = random.Random(0)
    scenes = []
    for _ in range(25):
        image = Image.new("RGB", (SIDE, SIDE))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randint(1, 3)):
            x, y, r = rng.randint(100, SIDE - 100), rng.randint(100, SIDE - 100), rng.randint(30, 90)
            colour = tuple(rng.choice([0, 255]) for _ in range(3)) or (255, 0, 0)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour if any(colour) else (255, 0, 0))
        path = folder / "scene.png"
        image.save(path, compress_level=6)
        scenes.append(path.read_bytes())
    paths = []
    for i in range(n):
        path = folder / f"{i:04d}.png"
        path.write_bytes(scenes[i % len(scenes)])
        paths.append(path)
    (folder / "scene.png").unlink()
    return paths


def test_caption_a_thousand_images_in_one_process_with_bounded_memory(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    paths = write_images(tmp_path / "images", N_IMAGES)
    assert sum(p.stat().st_size for p in paths) < 50 * 2**20  # small files, large pictures

    def caption(*images: str):
        return Measured(
            [
                *geo_os_command(),
                "pixel-llm",
                "caption",
                *images,
                "--checkpoint",
                str(checkpoint),
                "--batch-size",
                str(BATCH),
                "--max-length",
                "12",
            ],
            env=child_env(),
        )

    full = caption(str(tmp_path / "images"))  # the folder: every image in it, sorted
    one_batch = caption(*[str(p) for p in paths[:BATCH]])
    full, one_batch = full.wait(timeout=600), one_batch.wait(timeout=600)

    assert full.returncode == 0, full.stderr[-2000:]
    assert one_batch.returncode == 0, one_batch.stderr[-2000:]
    assert problem_lines(full.stderr) == [], full.stderr
    lines = full.stdout.splitlines()
    assert len(lines) == N_IMAGES
    assert [line.split("\t", 1)[0] for line in lines] == [str(p) for p in paths]  # every image, once, in order
    assert all("\t" in line for line in lines)

    peak_full, peak_batch = full.max_rss_kb / 1024, one_batch.max_rss_kb / 1024
    growth = peak_full - peak_batch
    FIGURES.update(
        images=N_IMAGES,
        batch=BATCH,
        side=SIDE,
        peak_rss_mb=round(peak_full),
        one_batch_peak_rss_mb=round(peak_batch),
        growth_mb=round(growth, 1),
        all_images_decoded_mb=round(ALL_AT_ONCE_MB),
        seconds=round(full.seconds, 1),
        images_per_s=round(N_IMAGES / full.seconds, 1),
    )
    print(json.dumps(FIGURES))
    assert GROWTH_LIMIT_MB < ALL_AT_ONCE_MB / 4  # the bound would catch holding every image
    assert growth < GROWTH_LIMIT_MB, f"peak RSS {peak_full:.0f} MB vs {peak_batch:.0f} MB for one batch"
