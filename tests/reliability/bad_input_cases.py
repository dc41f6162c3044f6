"""The bad-input table: malformed files, flags and configs driven through the real ``geo-os`` commands.

One list (``CASES``) feeds both ``test_bad_inputs.py`` and ``render_table.py`` (which writes the table of
docs/reliability.md with the message each case actually gets). Arguments may name workspace files as
``{name}``; ``Workspace`` makes each one the first time it is asked for.

Outcomes:

* ``error``  - non-zero exit, exactly one line on stderr containing ``expect``, no traceback, and stdout
  keeps what was printed before the failure (``stdout_lines``);
* ``works``  - exit 0 and ``expect`` on stdout (inputs that look odd but are valid);
* ``report`` - ``lint-data``: exit 1, an empty stderr, and exactly one ``error:`` line in the report,
  containing ``expect`` (lint-data reports every problem; here there is one);
* ``notice`` - exit 0, output on stdout, and exactly one ``Warning:`` line on stderr containing ``expect``
  (valid input the command adapts, saying so).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability_support import (
    Completed,
    child_env,
    geo_os_command,
    make_checkpoint,
    nonblank_lines,
    png_header_only,
    problem_lines,
    truncated_copy,
    write_exif_rotated,
    write_scene,
)


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: str
    what: str  # the malformed input, for the docs
    outcome: str = "error"  # error | works | report | notice
    stdout_lines: int = 0  # stdout lines that must survive an error (images captioned before it)
    subprocess: bool = False  # run as a real geo-os process (else click's CliRunner on the real root group)
    fault: str | None = None  # an in-process fault to inject while the command runs (see FAULTS)


CAPTION = ("pixel-llm", "caption", "--checkpoint", "{ckpt}", "--max-length", "6")
TRAIN = (
    "pixel-llm",
    "train",
    "--preset",
    "tiny",
    "--quiet",
    "--out",
    "{root}/train-out",
    "--set",
    "trainer.max_steps=4",
    "--set",
    "trainer.use_amp=false",
    "--set",
    "trainer.batch_size=4",
    "--set",
    "trainer.warmup_steps=1",
    "--set",
    "trainer.checkpoint_interval=2",
)
TRAIN_GOOD = (*TRAIN, "--data", "{data_good}")
EVAL = ("pixel-llm", "eval", "--checkpoint", "{ckpt}")
INFO = ("pixel-llm", "info", "--preset", "tiny")

CASES: list[Case] = [
    # ---- caption: image files
    Case(
        "caption-truncated-png",
        (*CAPTION, "{good_png}", "{trunc_png}", "{one_px_png}"),
        "trunc.png: OSError: image file is truncated",
        "PNG cut in half, between two good images",
        stdout_lines=2,
        subprocess=True,
    ),
    Case("caption-truncated-jpeg", (*CAPTION, "{trunc_jpg}"), "trunc.jpg: OSError", "JPEG cut in half"),
    Case("caption-zero-byte-file", (*CAPTION, "{zero_png}"), "zero.png: cannot identify image file", "empty .png file"),
    Case(
        "caption-text-named-jpg",
        (*CAPTION, "{text_jpg}"),
        "text.jpg: cannot identify image file",
        "text file named .jpg",
    ),
    Case(
        "caption-bomb-header",
        (*CAPTION, "{bomb_png}"),
        "bomb.png: possible decompression bomb",
        "PNG header declaring 20000x20000 (no pixel data)",
        subprocess=True,
    ),
    Case(
        "caption-1x1-image", (*CAPTION, "{one_px_png}"), "one.png", "1x1 image (works: resized like any other)", "works"
    ),
    Case("caption-cmyk-jpeg", (*CAPTION, "{cmyk_jpg}"), "cmyk.jpg", "CMYK JPEG (works: converted to RGB)", "works"),
    Case(
        "caption-16bit-grey-png",
        (*CAPTION, "{grey16_png}"),
        "grey16.png",
        "16-bit greyscale PNG (works: scaled to 8 bits)",
        "works",
    ),
    Case("caption-palette-png", (*CAPTION, "{palette_png}"), "palette.png", "palette PNG (works)", "works"),
    Case("caption-rgba-png", (*CAPTION, "{rgba_png}"), "rgba.png", "RGBA PNG (works: alpha over black)", "works"),
    Case("caption-grey-alpha-png", (*CAPTION, "{la_png}"), "la.png", "grey+alpha PNG (works)", "works"),
    Case(
        "caption-exif-rotated-jpeg",
        (*CAPTION, "{exif_jpg}"),
        "exif.jpg",
        "JPEG with EXIF orientation 6 (works: rotated first)",
        "works",
    ),
    Case(
        "caption-missing-image",
        (*CAPTION, "{root}/nowhere.png"),
        "nowhere.png: no such file",
        "image path that does not exist",
    ),
    Case("caption-empty-folder", (*CAPTION, "{empty_dir}"), "no images in this folder", "folder without images"),
    Case(
        "caption-glob-no-match", (*CAPTION, "{root}/*.nomatch"), "no file matches this pattern", "glob matching nothing"
    ),
    Case(
        "caption-missing-checkpoint",
        ("pixel-llm", "caption", "{good_png}", "--checkpoint", "{root}/no-ckpt"),
        "no-ckpt: checkpoint folder not found",
        "--checkpoint folder that does not exist",
    ),
    Case(
        "caption-checkpoint-not-a-run",
        ("pixel-llm", "caption", "{good_png}", "--checkpoint", "{empty_dir}"),
        "empty: missing config.json",
        "--checkpoint folder that is neither a checkpoint nor a training run",
    ),
    Case(
        "caption-checkpoint-run-folder",
        ("pixel-llm", "caption", "{good_png}", "--checkpoint", "{run_dir}"),
        "is a training run: using its best checkpoint",
        "--checkpoint naming a training run's folder (works: its best checkpoint, with a notice)",
        "notice",
    ),
    Case(
        "caption-checkpoint-is-a-file",
        ("pixel-llm", "caption", "{good_png}", "--checkpoint", "{good_png}"),
        "good.png: checkpoint folder not found",
        "--checkpoint naming an image file",
    ),
    Case(
        "caption-checkpoint-without-tokenizer",
        ("pixel-llm", "caption", "{good_png}", "--checkpoint", "{ckpt_no_tokenizer}"),
        "has no tokenizer",
        "checkpoint saved without a tokenizer",
    ),
    # ---- caption: flags
    Case(
        "caption-batch-size-zero",
        (*CAPTION, "{good_png}", "--batch-size", "0"),
        "'--batch-size': 0 is not in the range",
        "--batch-size 0",
    ),
    Case(
        "caption-max-length-not-a-number",
        (*CAPTION, "{good_png}", "--max-length", "ten"),
        "'--max-length': 'ten' is not a valid integer",
        "--max-length ten",
    ),
    Case(
        "caption-unknown-strategy",
        (*CAPTION, "{good_png}", "--strategy", "telepathy"),
        "unknown decoding_strategy 'telepathy'",
        "--strategy that no plugin registered",
    ),
    Case(
        "caption-zero-beams",
        (*CAPTION, "{good_png}", "--num-beams", "0"),
        "num_beams: Input should be greater than or equal to 1 (got 0)",
        "--num-beams 0",
    ),
    Case(
        "caption-negative-temperature",
        (*CAPTION, "{good_png}", "--strategy", "sample", "--temperature", "-1"),
        "temperature: Input should be greater than 0 (got -1.0)",
        "--temperature -1",
    ),
    Case(
        "caption-top-p-above-one",
        (*CAPTION, "{good_png}", "--strategy", "sample", "--top-p", "2"),
        "top_p: Input should be less than or equal to 1 (got 2.0)",
        "--top-p 2",
    ),
    Case(
        "caption-huge-max-length",
        (*CAPTION, "{good_png}", "--max-length", "1000000000"),
        "max_length=1000000000 is beyond the model's max_seq_len=32",
        "--max-length 10**9 (works: capped at the model's max_seq_len, with a notice)",
        "notice",
    ),
    Case(
        "caption-max-length-one",
        (*CAPTION, "{good_png}", "--max-length", "1"),
        "good.png",
        "--max-length 1 (works: no new tokens, an empty caption, in every strategy)",
        "works",
    ),
    Case(
        "caption-max-length-one-beam",
        (*CAPTION, "{good_png}", "--max-length", "1", "--num-beams", "3"),
        "good.png",
        "--max-length 1 --num-beams 3 (works: the same empty caption)",
        "works",
    ),
    Case(
        "caption-sampling-flag-selects-sampling",
        (*CAPTION, "{good_png}", "--temperature", "0.7", "--seed", "1"),
        "good.png",
        "--temperature and --seed without --strategy (works: they select sampling)",
        "works",
    ),
    Case(
        "caption-sampling-flag-with-greedy",
        (*CAPTION, "{good_png}", "--strategy", "greedy", "--temperature", "0.7"),
        "--temperature only affects sampling, which --strategy greedy does not do",
        "--temperature with --strategy greedy",
    ),
    Case(
        "caption-seed-with-beams",
        (*CAPTION, "{good_png}", "--num-beams", "3", "--seed", "1"),
        "--seed only affects sampling, which --num-beams 3 does not do",
        "--seed with --num-beams 3",
    ),
    Case(
        "caption-float-tiff",
        (*CAPTION, "{float_tif}"),
        "float.tif",
        "32-bit float TIFF with values in [0, 1] (works: scaled from 1.0, not clipped to black)",
        "works",
    ),
    Case(
        "caption-folder-with-sub-folders",
        (*CAPTION, "{nested_dir}"),
        "1 sub-folder(s) not searched (sub; use --recursive)",
        "folder with images in a sub-folder, without --recursive (works: its own images, the rest named)",
        "notice",
    ),
    Case(
        "caption-unknown-device", (*CAPTION, "{good_png}", "--device", "banana"), "--device 'banana'", "--device banana"
    ),
    # ---- eval
    Case(
        "eval-missing-image",
        (*EVAL, "--data", "{data_missing_image}"),
        "nowhere.png: no such file",
        "caption file naming a missing image",
    ),
    Case(
        "eval-truncated-image",
        (*EVAL, "--data", "{data_truncated_image}"),
        "trunc.png: OSError: image file is truncated",
        "caption file naming a truncated PNG",
    ),
    Case(
        "eval-unknown-key",
        (*EVAL, "--data", "{data_unknown_key}"),
        'entry 0: unknown key "captoin"',
        "entry with a misspelt key",
    ),
    Case(
        "eval-sweep-with-ignored-flags",
        (*EVAL, "--data", "{data_good}", "--sweep", "--temperature", "0.7"),
        "--sweep compares its own decoding settings; --temperature would be ignored",
        "--sweep with --temperature",
    ),
    Case(
        "eval-max-images-zero",
        (*EVAL, "--data", "{data_good}", "--max-images", "0"),
        "'--max-images': 0 is not in the range",
        "--max-images 0",
    ),
    Case(
        "eval-image-root-missing",
        (*EVAL, "--data", "{data_good}", "--image-root", "{root}/no-images"),
        "no-images' does not exist",
        "--image-root that does not exist",
    ),
    # ---- train: caption files
    Case(
        "train-trailing-comma",
        (*TRAIN, "--data", "{data_trailing_comma}"),
        "trailing_comma.json:3:1: malformed JSON",
        "JSON list with a trailing comma",
        subprocess=True,
    ),
    Case(
        "train-top-level-object",
        (*TRAIN, "--data", "{data_top_level_object}"),
        "top_level_object.json: expected a JSON list",
        "a single entry object instead of a list",
    ),
    Case("train-top-level-number", (*TRAIN, "--data", "{data_top_level_number}"), "got int", "the number 42"),
    Case(
        "train-missing-key",
        (*TRAIN, "--data", "{data_missing_key}"),
        'entry 1: missing "image"',
        'entry without "image"',
    ),
    Case(
        "train-unknown-key",
        (*TRAIN, "--data", "{data_unknown_key}"),
        'entry 0: unknown key "captoin"',
        "entry with a misspelt key",
    ),
    Case(
        "train-non-utf8-captions",
        (*TRAIN, "--data", "{data_latin1}"),
        "latin1.json: not UTF-8 text",
        "Latin-1 encoded caption file",
    ),
    Case(
        "train-empty-caption",
        (*TRAIN, "--data", "{data_empty_caption}"),
        'entry 0: "caption" must be a non-empty string',
        "empty caption",
    ),
    Case(
        "train-whitespace-caption",
        (*TRAIN, "--data", "{data_blank_caption}"),
        'entry 2: "caption" must be a non-empty string',
        "caption of spaces and a newline",
    ),
    Case(
        "train-caption-not-a-string",
        (*TRAIN, "--data", "{data_caption_number}"),
        'entry 0: "caption" must be a non-empty string, got 7',
        "caption that is a number",
    ),
    Case("train-empty-list", (*TRAIN, "--data", "{data_empty_list}"), "empty_list.json: no usable entries", "[]"),
    Case(
        "train-deeply-nested-json",
        (*TRAIN, "--data", "{data_nested}"),
        "nested.json: malformed JSON: nested too deeply",
        "caption file of 100000 nested brackets",
    ),
    Case(
        "train-coco-dangling-image-id",
        (*TRAIN, "--data", "{data_coco_dangling}"),
        'annotations[0]: "image_id" 99',
        "COCO annotation naming an unknown image id",
    ),
    Case(
        "train-jsonl-bad-line",
        (*TRAIN, "--data", "{data_bad_jsonl}"),
        "bad.jsonl:2:",
        "JSON Lines file with a broken line",
    ),
    # ---- train: flags and configs
    Case(
        "train-negative-learning-rate",
        (*TRAIN_GOOD, "--set", "trainer.learning_rate=-1"),
        "trainer.learning_rate: Input should be greater than 0 (got -1)",
        "--set trainer.learning_rate=-1",
    ),
    Case(
        "train-zero-batch-size",
        (*TRAIN_GOOD, "--set", "trainer.batch_size=0"),
        "trainer.batch_size: Input should be greater than or equal to 1",
        "--set trainer.batch_size=0",
    ),
    Case(
        "train-zero-max-steps",
        (*TRAIN_GOOD, "--set", "trainer.max_steps=0"),
        "trainer.max_steps",
        "--set trainer.max_steps=0",
    ),
    Case(
        "train-negative-max-time",
        (*TRAIN_GOOD, "--set", "trainer.max_time_s=-5"),
        "trainer.max_time_s",
        "--set trainer.max_time_s=-5",
    ),
    Case(
        "train-huge-width",
        (*TRAIN_GOOD, "--set", "vision_embed_dim=1000000000000"),
        "encoder 'vit' (plugin 'vit') failed to build",
        "--set vision_embed_dim=10**12 (the allocation is refused)",
    ),
    Case(
        "train-absurd-layers",
        (*TRAIN_GOOD, "--set", "text_num_layers=100000000"),
        "text_num_layers: Input should be less than or equal to 256",
        "--set text_num_layers=10**8",
    ),
    Case(
        "train-unknown-encoder",
        (*TRAIN_GOOD, "--set", "encoder=spaceship"),
        "unknown encoder 'spaceship'",
        "--set encoder=spaceship",
    ),
    Case(
        "train-unknown-preset", (*TRAIN_GOOD, "--preset", "colossal"), "unknown preset 'colossal'", "--preset colossal"
    ),
    Case(
        "train-set-without-value",
        (*TRAIN_GOOD, "--set", "learning_rate"),
        "--set 'learning_rate': expected key=value",
        "--set without '='",
    ),
    Case("train-set-into-a-value", (*TRAIN_GOOD, "--set", "image_size.x=3"), "image_size", "--set into a non-section"),
    Case(
        "train-num-scenes-zero",
        (*TRAIN, "--num-scenes", "0"),
        "'--num-scenes': 0 is not in the range",
        "--num-scenes 0",
    ),
    Case(
        "train-val-data-without-data",
        (*TRAIN, "--val-data", "{data_good}"),
        "--val-data needs --data",
        "--val-data alone",
    ),
    Case(
        "train-resume-missing",
        (*TRAIN_GOOD, "--resume", "{root}/no-ckpt"),
        "no-ckpt: checkpoint folder not found",
        "--resume of a folder that does not exist",
    ),
    Case(
        "train-resume-latest-empty",
        (*TRAIN_GOOD, "--resume", "latest"),
        "no checkpoint to resume from",
        "--resume latest with no checkpoint yet",
    ),
    Case(
        "train-image-root-missing",
        (*TRAIN_GOOD, "--image-root", "{root}/no-images"),
        "no-images' does not exist",
        "--image-root that does not exist",
    ),
    Case(
        "train-val-image-root-is-a-file",
        (*TRAIN_GOOD, "--val-data", "{data_good}", "--val-image-root", "{file_txt}"),
        "file.txt' is a file",
        "--val-image-root naming a file",
    ),
    Case(
        "train-unknown-tokenizer",
        (*TRAIN_GOOD, "--tokenizer", "wordpiece"),
        "unknown tokenizer 'wordpiece'; registered",
        "--tokenizer naming no registered tokenizer",
    ),
    Case(
        "train-max-steps-flag-zero",
        (*TRAIN_GOOD, "--max-steps", "0"),
        "'--max-steps': 0 is not in the range",
        "--max-steps 0",
    ),
    Case("train-lr-flag-zero", (*TRAIN_GOOD, "--lr", "0"), "'--lr': 0.0 is not in the range", "--lr 0"),
    Case(
        "train-out-under-a-file",
        (*TRAIN_GOOD, "--out", "{file_txt}/out"),
        "Not a directory",
        "--out below a regular file (unwritable)",
    ),
    Case(
        "train-disk-full",
        (*TRAIN_GOOD, "--out", "{root}/full-disk"),
        "No space left on device",
        "disk full while writing the second checkpoint (ENOSPC injected)",
        fault="enospc",
    ),
    Case(
        "train-config-trailing-comma",
        (*TRAIN_GOOD, "--config", "{cfg_trailing_comma}"),
        "cfg_trailing_comma.json:1:33: malformed JSON",
        "config JSON with a trailing comma",
    ),
    Case(
        "train-config-wrong-top-level",
        (*TRAIN_GOOD, "--config", "{cfg_list}"),
        "the top level must be a table/object, got list",
        "config that is a JSON list",
    ),
    Case(
        "train-config-unknown-key",
        (*TRAIN_GOOD, "--config", "{cfg_unknown_key}"),
        "imag_size: Extra inputs are not permitted",
        "config with a misspelt key",
    ),
    Case(
        "train-config-bad-toml",
        (*TRAIN_GOOD, "--config", "{cfg_bad_toml}"),
        "cfg_bad.toml: invalid TOML",
        "broken TOML",
    ),
    Case(
        "train-config-deeply-nested",
        (*TRAIN_GOOD, "--config", "{cfg_nested}"),
        "cfg_nested.json: malformed JSON: nested too deeply",
        "config JSON nested 100000 deep",
    ),
    Case(
        "train-config-missing",
        (*TRAIN_GOOD, "--config", "{root}/nowhere.toml"),
        "nowhere.toml: config file not found",
        "--config that does not exist",
    ),
    # ---- lint-data
    Case(
        "lint-truncated-image",
        ("pixel-llm", "lint-data", "{data_truncated_image}"),
        "trunc.png",
        "caption file naming a truncated PNG",
        "report",
    ),
    Case(
        "lint-missing-caption-file",
        ("pixel-llm", "lint-data", "{root}/nowhere.json"),
        "nowhere.json: no such file",
        "caption file that does not exist",
        "report",
    ),
    Case(
        "lint-deeply-nested-json",
        ("pixel-llm", "lint-data", "{data_nested}"),
        "nested.json: malformed JSON: nested too deeply",
        "caption file of 100000 nested brackets",
        "report",
    ),
    Case(
        "lint-vocab-not-a-vocabulary",
        ("pixel-llm", "lint-data", "{data_good}", "--vocab", "{cfg_list}"),
        "not a valid simple vocabulary",
        "--vocab naming a JSON list",
    ),
    Case(
        "lint-empty-list",
        ("pixel-llm", "lint-data", "{data_empty_list}"),
        "empty_list.json: no usable entries",
        "caption file that is an empty list (train refuses it)",
        "report",
    ),
    Case(
        "lint-coco-without-annotations",
        ("pixel-llm", "lint-data", "{data_coco_no_annotations}"),
        "coco_empty.json: no usable entries",
        'COCO file whose "annotations" is empty',
        "report",
    ),
    Case(
        "lint-image-root-missing",
        ("pixel-llm", "lint-data", "{data_good}", "--image-root", "{root}/no-images"),
        "no-images' does not exist",
        "--image-root that does not exist",
    ),
    # ---- make-shapes
    Case(
        "make-shapes-zero-scenes",
        ("pixel-llm", "make-shapes", "--out", "{root}/shapes", "--n", "0"),
        "'--n': 0 is not in the range",
        "--n 0",
    ),
    Case(
        "make-shapes-bad-splits",
        ("pixel-llm", "make-shapes", "--out", "{root}/shapes", "--n", "4", "--splits", "train=0.5,val=0.2"),
        "fractions sum to 0.7",
        "--splits that do not sum to 1",
    ),
    Case(
        "make-shapes-out-under-a-file",
        ("pixel-llm", "make-shapes", "--out", "{file_txt}/shapes", "--n", "2"),
        "Not a directory",
        "--out below a regular file (unwritable)",
    ),
    Case(
        "make-shapes-tiny-images",
        ("pixel-llm", "make-shapes", "--out", "{root}/shapes", "--n", "2", "--image-size", "2"),
        "'--image-size': 2 is not in the range",
        "--image-size 2",
    ),
    # ---- info / config loading
    Case(
        "info-patch-does-not-divide",
        (*INFO, "--set", "patch_size=7"),
        "patch_size=7 must divide image_size=32",
        "--set patch_size=7",
    ),
    Case(
        "info-negative-heads",
        (*INFO, "--set", "vision_num_heads=-2"),
        "vision_num_heads: Input should be greater than 0",
        "--set vision_num_heads=-2",
    ),
    Case(
        "info-unknown-component-option",
        (*INFO, "--set", "decoder_options.bogus=1"),
        "bogus",
        "--set decoder_options.bogus=1",
    ),
    Case(
        "info-absurd-layers",
        (*INFO, "--set", "vision_num_layers=10000000"),
        "vision_num_layers: Input should be less than or equal to 256",
        "--set vision_num_layers=10**7",
    ),
    Case(
        "info-huge-width",
        (*INFO, "--set", "vision_embed_dim=1000000"),
        "parameters:",
        "--set vision_embed_dim=10**6 (works: 10**13 parameters counted on the meta device, nothing allocated)",
        "works",
    ),
    Case(
        "info-overflowing-width",
        (*INFO, "--set", "vision_embed_dim=1000000000"),
        "Storage size calculation overflowed",
        "--set vision_embed_dim=10**9 (too many elements to even describe)",
    ),
    Case(
        "info-config-not-utf8",
        ("pixel-llm", "info", "--config", "{cfg_latin1}"),
        "cfg_latin1.toml: config file is not UTF-8 text",
        "Latin-1 encoded TOML config",
    ),
    Case(
        "info-config-is-a-folder", ("pixel-llm", "info", "--config", "{empty_dir}"), "empty", "--config naming a folder"
    ),
]


# ---- the workspace ----------------------------------------------------------------------------------


class Workspace(dict):
    """``{name}`` -> path of a file made on first use under ``root``."""

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self["root"] = str(self.root)

    def __missing__(self, key: str) -> str:
        path = BUILDERS[key](self)
        self[key] = str(path)
        return self[key]

    def p(self, name: str) -> Path:
        return self.root / name

    def resolve(self, args: tuple[str, ...]) -> list[str]:
        return [arg.format_map(self) for arg in args]

    def scrub(self, text: str) -> str:
        """Messages with the workspace path replaced by ``<tmp>`` (for the docs)."""
        return text.replace(str(self.root), "<tmp>")


def _good_images(ws: Workspace, n: int = 8) -> list[str]:
    folder = ws.p("images")
    folder.mkdir(exist_ok=True)
    return [str(write_scene(folder / f"{i}.png", seed=i).relative_to(ws.root)) for i in range(n)]


def _data(name: str, text: str | bytes | None = None, entries: Any = None) -> Callable[[Workspace], Path]:
    def build(ws: Workspace) -> Path:
        path = ws.p(name)
        if entries is not None:
            path.write_text(json.dumps(entries(ws) if callable(entries) else entries, indent=1))
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text((text or "").replace("{img}", _good_images(ws)[0]))
        return path

    return build


def _captioned(ws: Workspace, images: list[str] | None = None) -> list[dict]:
    from reliability_support import CAPTIONS

    images = images or _good_images(ws)
    return [{"image": image, "caption": CAPTIONS[i % len(CAPTIONS)]} for i, image in enumerate(images)]


def _checkpoint(ws: Workspace) -> Path:
    return make_checkpoint(ws.p("ckpt"))


def _checkpoint_without_tokenizer(ws: Workspace) -> Path:
    import torch

    from geometry_os.systems.pixel_llm import create_pixel_llm

    torch.manual_seed(0)
    return create_pixel_llm(vocab_size=16, preset="tiny").save_pretrained(ws.p("ckpt-no-tokenizer"))


def _run_dir(ws: Workspace) -> Path:
    """A training run's folder: a step checkpoint, ``latest`` naming it, and ``best``."""
    from reliability_support import copy_checkpoint

    run = ws.p("run")
    run.mkdir(exist_ok=True)
    copy_checkpoint(ws["ckpt"], run / "step-00000002")
    copy_checkpoint(ws["ckpt"], run / "best")
    (run / "latest").write_text(json.dumps({"checkpoint": "step-00000002", "step": 2}))
    return run


def _image(name: str, **kwargs: Any) -> Callable[[Workspace], Path]:
    return lambda ws: write_scene(ws.p(name), **kwargs)


def _empty_dir(ws: Workspace) -> Path:
    ws.p("empty").mkdir(exist_ok=True)
    return ws.p("empty")


def _float_tiff(path: Path) -> Path:
    """A 32-bit float grey TIFF in [0, 1] (mode F): a bright square on black."""
    import numpy as np
    from PIL import Image

    values = np.zeros((32, 32), np.float32)
    values[8:24, 8:24] = 0.9
    Image.fromarray(values, "F").save(path)
    return path


def _nested_dir(ws: Workspace) -> Path:
    folder = ws.p("nested")
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    write_scene(folder / "top.png")
    write_scene(folder / "sub" / "inner.png", seed=1)
    write_scene(folder / ".hidden.png", seed=2)  # a dot-file: skipped, as ls and shell globs do
    return folder


BUILDERS: dict[str, Callable[[Workspace], Path]] = {
    "ckpt": _checkpoint,
    "ckpt_no_tokenizer": _checkpoint_without_tokenizer,
    "good_png": _image("good.png"),
    "good_jpg": _image("good.jpg", quality=90),
    "trunc_png": lambda ws: truncated_copy(ws["good_png"], ws.p("trunc.png")),
    "trunc_jpg": lambda ws: truncated_copy(ws["good_jpg"], ws.p("trunc.jpg")),
    "zero_png": lambda ws: (ws.p("zero.png").write_bytes(b""), ws.p("zero.png"))[1],
    "text_jpg": lambda ws: (ws.p("text.jpg").write_text("not a picture, just words\n"), ws.p("text.jpg"))[1],
    "bomb_png": lambda ws: (ws.p("bomb.png").write_bytes(png_header_only(20000, 20000)), ws.p("bomb.png"))[1],
    "one_px_png": _image("one.png", size=1),
    "cmyk_jpg": _image("cmyk.jpg", mode="CMYK"),
    "grey16_png": _image("grey16.png", mode="I;16"),
    "palette_png": _image("palette.png", mode="P"),
    "rgba_png": _image("rgba.png", mode="RGBA"),
    "la_png": _image("la.png", mode="LA"),
    "exif_jpg": lambda ws: write_exif_rotated(ws.p("exif.jpg")),
    "empty_dir": _empty_dir,
    "float_tif": lambda ws: _float_tiff(ws.p("float.tif")),
    "nested_dir": _nested_dir,
    "file_txt": lambda ws: (ws.p("file.txt").write_text("a regular file\n"), ws.p("file.txt"))[1],
    "data_good": _data("good.json", entries=_captioned),
    "data_missing_image": _data("missing_image.json", entries=lambda ws: _captioned(ws, ["nowhere.png"])),
    "data_truncated_image": _data(
        "truncated_image.json",
        entries=lambda ws: _captioned(ws, [str(Path(ws["good_png"]).name), str(Path(ws["trunc_png"]).name)]),
    ),
    "data_unknown_key": _data("unknown_key.json", entries=lambda ws: [{**_captioned(ws)[0], "captoin": "typo"}]),
    "data_trailing_comma": _data("trailing_comma.json", '[\n {"image": "{img}", "caption": "a red circle"},\n]\n'),
    "data_top_level_object": _data("top_level_object.json", '{"image": "{img}", "caption": "a red circle"}'),
    "data_top_level_number": _data("top_level_number.json", "42"),
    "data_missing_key": _data("missing_key.json", entries=lambda ws: [_captioned(ws)[0], {"caption": "a blue square"}]),
    "data_latin1": _data(
        "latin1.json", '[{"image": "images/0.png", "caption": "un cercle rouge \u00e0 gauche"}]'.encode("latin-1")
    ),
    "data_empty_caption": _data("empty_caption.json", entries=lambda ws: [{**_captioned(ws)[0], "caption": ""}]),
    "data_blank_caption": _data(
        "blank_caption.json", entries=lambda ws: [*_captioned(ws)[:2], {**_captioned(ws)[2], "caption": "  \n "}]
    ),
    "data_caption_number": _data("caption_number.json", entries=lambda ws: [{**_captioned(ws)[0], "caption": 7}]),
    "data_empty_list": _data("empty_list.json", "[]"),
    "data_nested": _data("nested.json", "[" * 100_000 + "]" * 100_000),
    "cfg_nested": _data("cfg_nested.json", '{"model": ' * 100_000 + "1" + "}" * 100_000),
    "data_coco_dangling": _data(
        "coco.json",
        entries=lambda ws: {
            "images": [{"id": 1, "file_name": _good_images(ws)[0]}],
            "annotations": [{"image_id": 99, "caption": "a red circle"}],
        },
    ),
    "data_coco_no_annotations": _data(
        "coco_empty.json",
        entries=lambda ws: {"images": [{"id": 1, "file_name": _good_images(ws)[0]}], "annotations": []},
    ),
    "run_dir": lambda ws: _run_dir(ws),
    "data_bad_jsonl": _data(
        "bad.jsonl", '{"image": "{img}", "caption": "a red circle"}\n{"image": "{img}", "caption": \n'
    ),
    "cfg_trailing_comma": _data("cfg_trailing_comma.json", '{"model": {"text_num_layers": 2,}}'),
    "cfg_list": _data("cfg_list.json", "[1, 2, 3]"),
    "cfg_unknown_key": _data("cfg_unknown_key.json", '{"imag_size": 32}'),
    "cfg_bad_toml": _data("cfg_bad.toml", "image_size = \n"),
    "cfg_latin1": _data("cfg_latin1.toml", 'encoder = "vit" # r\u00e9sum\u00e9\n'.encode("latin-1")),
}


# ---- faults injected in-process -------------------------------------------------------------------


@contextlib.contextmanager
def enospc_on_second_weights_write() -> Iterator[None]:
    """The second ``model.safetensors`` write of the run gets half its bytes onto the disk and then ENOSPC."""
    import safetensors.torch

    original = safetensors.torch.save_model
    calls = {"n": 0}

    def save_model(model, filename, *args, **kwargs):
        calls["n"] += 1
        original(model, filename, *args, **kwargs)
        if calls["n"] >= 2:
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    safetensors.torch.save_model = save_model
    try:
        yield
    finally:
        safetensors.torch.save_model = original


FAULTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {"enospc": enospc_on_second_weights_write}


# ---- running a case --------------------------------------------------------------------------------


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None  # in-process: anything but SystemExit is a crash

    @property
    def message(self) -> str:
        """The line the docs show: the error line, the report's error line, or the first output line."""
        if self.exit_code != 0 or problem_lines(self.stderr):  # an error, or a notice beside the output
            lines = problem_lines(self.stderr) or [ln.strip() for ln in nonblank_lines(self.stdout) if "error:" in ln]
        else:
            lines = nonblank_lines(self.stdout)
        return lines[0].strip() if lines else ""


def run_in_process(case: Case, ws: Workspace) -> Outcome:
    from click.testing import CliRunner

    from geometry_os.cli import cli
    from geometry_os.host import set_host

    args = ws.resolve(case.args)
    fault = FAULTS[case.fault]() if case.fault else contextlib.nullcontext()
    previous = set_host(None)
    try:
        with fault:
            result = CliRunner().invoke(cli, args, prog_name="geo-os")
    finally:
        set_host(previous)
    exception = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, exception)


def start_subprocess(case: Case, ws: Workspace):
    from reliability_support import Measured

    return Measured([*geo_os_command(), *ws.resolve(case.args)], cwd=ws.root, env=child_env())


def outcome_of(done: Completed) -> Outcome:
    return Outcome(done.returncode, done.stdout, done.stderr)


def run_case(case: Case, ws: Workspace) -> Outcome:
    if case.subprocess:
        return outcome_of(start_subprocess(case, ws).wait(timeout=240))
    return run_in_process(case, ws)


def check(case: Case, outcome: Outcome) -> None:
    """The contract of the table (see the module docstring); raises AssertionError naming what broke."""
    assert outcome.exception is None, f"{case.id}: crashed with {outcome.exception!r}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, f"{case.id}: traceback\n{outcome.stderr}"
    if case.outcome == "works":
        assert outcome.exit_code == 0, f"{case.id}: exit {outcome.exit_code}\n{outcome.stderr}"
        assert case.expect in outcome.stdout, f"{case.id}: {case.expect!r} not on stdout:\n{outcome.stdout}"
        return
    if case.outcome == "notice":
        assert outcome.exit_code == 0, f"{case.id}: exit {outcome.exit_code}\n{outcome.stderr}"
        notices = problem_lines(outcome.stderr)
        assert len(notices) == 1 and notices[0].startswith("Warning: "), f"{case.id}: stderr {outcome.stderr!r}"
        assert case.expect in notices[0], f"{case.id}: {case.expect!r} not in {notices[0]!r}"
        assert nonblank_lines(outcome.stdout), f"{case.id}: nothing on stdout"
        return
    assert outcome.exit_code != 0, f"{case.id}: exit 0\n{outcome.stdout}"
    if case.outcome == "report":
        errors = [ln for ln in nonblank_lines(outcome.stdout) if "error:" in ln]
        assert problem_lines(outcome.stderr) == [], f"{case.id}: stderr {outcome.stderr!r}"
        assert len(errors) == 1 and case.expect in errors[0], f"{case.id}: report errors {errors}"
        return
    lines = problem_lines(outcome.stderr)
    assert len(lines) == 1, f"{case.id}: {len(lines)} lines on stderr:\n{outcome.stderr}"
    assert case.expect in lines[0], f"{case.id}: {case.expect!r} not in {lines[0]!r}"
    kept = nonblank_lines(outcome.stdout)
    assert len(kept) == case.stdout_lines, f"{case.id}: stdout {kept} (expected {case.stdout_lines} lines)"


if __name__ == "__main__":  # pragma: no cover - quick manual run: python bad_input_cases.py [ID...]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace(tmp)
        for case in CASES:
            if len(sys.argv) > 1 and case.id not in sys.argv[1:]:
                continue
            import time

            started = time.perf_counter()
            result = run_case(case, workspace)
            took = time.perf_counter() - started
            try:
                check(case, result)
                status = "ok"
            except AssertionError as exc:
                status = f"FAIL {exc}"
            print(f"{case.id} ({took:.2f} s): {workspace.scrub(result.message)}  [{status}]")
