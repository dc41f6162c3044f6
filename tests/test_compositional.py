"""make-shapes --hold-out / --max-objects: held-out colour-kind pairs never reach the ordinary splits,
the compositional split holds only scenes with one, and longer scenes follow the same grammar."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from geometry_os.cli import cli as geo_os
from geometry_os.plugins.datasets.shapes import (
    COMPOSITIONAL,
    caption,
    has_pair,
    is_valid,
    make_split,
    parse_pairs,
)

PAIRS = parse_pairs("red circle, green square, blue triangle, yellow diamond, purple circle, white square")


def mentions(text: str, pairs) -> bool:
    return any(f"{colour} {kind}" in text for colour, kind in pairs)


def test_parse_pairs_names_the_bad_part():
    assert parse_pairs("red circle,blue square") == {("red", "circle"), ("blue", "square")}
    for bad in ("pink circle", "red", "red circle square", "circle red"):
        with pytest.raises(ValueError, match=f"{bad!r} is not 'COLOUR KIND'"):
            parse_pairs(f"blue square,{bad}")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_held_out_pairs_never_occur_in_ordinary_splits(split):
    scenes = make_split(300, 0, split, hold_out=PAIRS)
    assert len(scenes) == 300 and not any(has_pair(s, PAIRS) for s in scenes)
    assert not any(mentions(caption(s), PAIRS) for s in scenes)
    # the pairs' colours and kinds still occur, only not together
    words = " ".join(caption(s) for s in scenes)
    assert all(colour in words and kind in words for colour, kind in PAIRS)


def test_compositional_split_holds_only_held_out_pairs():
    scenes = make_split(200, 0, COMPOSITIONAL, hold_out=PAIRS)
    assert len({str(s) for s in scenes}) == 200 and all(has_pair(s, PAIRS) and is_valid(s) for s in scenes)
    assert all(mentions(caption(s), PAIRS) for s in scenes)
    seen = {pair for s in scenes for pair in PAIRS if has_pair(s, frozenset([pair]))}
    assert seen == PAIRS  # every held-out pair is tested
    train = {caption(s) for s in make_split(300, 0, "train", hold_out=PAIRS)}
    assert not train & {caption(s) for s in scenes}
    with pytest.raises(ValueError, match="needs held-out pairs"):
        make_split(5, 0, COMPOSITIONAL)


def test_without_hold_out_the_scenes_are_unchanged():
    assert make_split(40, 3, "train") == make_split(40, 3, "train", hold_out=frozenset(), max_objects=3)


def test_max_objects_draws_longer_valid_scenes():
    scenes = make_split(100, 0, "test", max_objects=5)
    assert {len(s) for s in scenes} == {1, 2, 3, 4, 5} and all(is_valid(s) for s in scenes)
    assert all(caption(s).split().count("a") == len(s) for s in scenes)
    with pytest.raises(ValueError, match="max_objects=6"):
        make_split(5, 0, "train", max_objects=6)


def test_make_shapes_cli_writes_the_compositional_split(tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        geo_os,
        [
            "pixel-llm",
            "make-shapes",
            "--out",
            str(out),
            "--n",
            "100",
            "--hold-out",
            "red circle,blue square",
            "--max-objects",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "10 compositional" in result.output
    held = parse_pairs("red circle,blue square")
    for split in ("train", "val", "test"):
        entries = json.loads((out / f"{split}.json").read_text())
        assert entries and not any(mentions(e["caption"], held) for e in entries)
    entries = json.loads((out / "compositional.json").read_text())
    assert len(entries) == 10 and all(mentions(e["caption"], held) for e in entries)
    assert all((out / e["image"]).is_file() for e in entries)
    assert max(e["caption"].split().count("a") for e in json.loads((out / "train.json").read_text())) == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hold-out", "pink circle"], "'pink circle' is not 'COLOUR KIND'"),
        (["--splits", "train=0.5,compositional=0.5"], "not 'captions' or 'compositional'"),
        (["--max-objects", "6"], "--max-objects"),
    ],
)
def test_make_shapes_cli_refuses_bad_options_in_one_line(tmp_path, args, message):
    result = CliRunner().invoke(geo_os, ["pixel-llm", "make-shapes", "--out", str(tmp_path / "x"), "--n", "10", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
