"""Synthetic scenes: determinism, grammar, split disjointness; the in-memory dataset; make-shapes and lint-data."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from geometry_os.plugins.datasets import ShapesOptions, register_commands, register_datasets
from geometry_os.plugins.datasets import shapes as S
from geometry_os.plugins.datasets.commands import parse_splits, split_counts
from geometry_os.plugins.datasets.shapes_dataset import ShapesDataset, default_tokenizer
from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
from geometry_os.systems.pixel_llm.data import ImageTextDataset, create_dataloader
from geometry_os.systems.pixel_llm.data_config import DatasetConfig

OBJECT = r"a (small|large) (red|green|blue|yellow|purple|white) (circle|square|triangle|diamond)"
GRAMMAR = re.compile(rf"{OBJECT}( (left of|above|below) {OBJECT}){{0,2}}")
VOCAB = SimpleVocabulary([" ".join(S.VOCABULARY)])


@pytest.fixture(scope="module")
def scenes() -> list[S.Scene]:
    rng = random.Random(123)
    return [S.sample_scene(rng) for _ in range(400)]


@pytest.fixture
def cli() -> click.Group:
    group = click.Group()
    register_commands(group)
    return group


# ----------------------------------------------------------------------------------------- generator


def test_same_seed_same_scenes_and_pixels():
    assert S.make_split(30, 7, "train") == S.make_split(30, 7, "train")
    assert S.make_split(30, 7, "train") != S.make_split(30, 8, "train")
    a, b = random.Random(1), random.Random(1)
    scene_a, scene_b = S.sample_scene(a), S.sample_scene(b)
    assert scene_a == scene_b and S.render_scene(scene_a).tobytes() == S.render_scene(scene_b).tobytes()


def test_splits_never_share_a_scene_whatever_the_seeds():
    keys = {
        (split, seed): {S.scene_key(s) for s in S.make_split(n, seed, split)}
        for split, n in [("train", 300), ("val", 60), ("test", 60)]
        for seed in (0, 1)
    }
    for (split_a, seed_a), a in keys.items():
        assert len(a) == {"train": 300}.get(split_a, 60)  # distinct within a split
        for (split_b, seed_b), b in keys.items():
            if split_a != split_b:
                assert not a & b, (split_a, seed_a, split_b, seed_b)
    assert all(S.split_of(s) == "val" for s in S.make_split(40, 3, "val"))


def test_scene_counts_are_balanced(scenes):
    counts = [sum(len(s) == k for s in scenes) for k in (1, 2, 3)]
    assert all(100 < c < 170 for c in counts), counts


def test_captions_follow_the_grammar_and_the_geometry(scenes):
    for scene in scenes:
        text = S.caption(scene)
        assert GRAMMAR.fullmatch(text), text
        assert set(text.split()) <= set(S.VOCABULARY)
        assert S.is_valid(scene)
        objects = re.findall(OBJECT, text)
        assert objects == [(s.size, s.colour, s.kind) for s in scene]
        relations = re.findall(r"left of|above|below", text)
        for (a, b), rel in zip(zip(scene, scene[1:]), relations):
            dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
            assert dx >= S.MIN_DX
            if rel == "left of":
                assert dx >= 2 * abs(dy)
            else:
                assert abs(dy) >= 2 * dx and (dy > 0) == (rel == "above")


def test_fixed_example_caption():
    scene = (
        S.Shape("square", "white", "small", 5, 30),
        S.Shape("diamond", "green", "large", 20, 28),
        S.Shape("diamond", "red", "small", 36, 5),
    )
    assert S.is_valid(scene)
    assert S.caption(scene) == "a small white square left of a large green diamond below a small red diamond"


def test_invalid_layouts_are_rejected():
    overlapping = (S.Shape("square", "red", "large", 10, 10), S.Shape("circle", "red", "large", 20, 20))
    ambiguous = (S.Shape("square", "red", "small", 10, 10), S.Shape("circle", "red", "small", 30, 30))
    stacked = (S.Shape("square", "red", "small", 10, 10), S.Shape("circle", "red", "small", 12, 40))
    outside = (S.Shape("square", "red", "small", 0, 10),)
    assert not any(S.is_valid(s) for s in (overlapping, ambiguous, stacked, outside))


def test_rendering_puts_each_colour_at_its_shape(scenes):
    for scene in scenes[:50]:
        image = S.render_scene(scene, 64)
        assert image.size == (64, 64) and image.getpixel((0, 0)) == (0, 0, 0)
        for s in scene:
            assert image.getpixel(tuple(int(c) for c in s.centre)) == S.COLOURS[s.colour]
    assert S.render_scene(scenes[0], 128).size == (128, 128)


# ------------------------------------------------------------------------------------ in-memory dataset


def test_shapes_dataset_items(tmp_path):
    ds = ShapesDataset(20, seed=1, image_size=32, split="val", tokenizer=VOCAB)
    item = ds[3]
    assert set(item) == {"image", "input_ids", "caption", "image_path", "index"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert VOCAB.decode(item["input_ids"]) == item["caption"] == ds.captions[3]
    assert item["image_path"] == "shapes://val/000003" and item["index"] == 3
    assert ds.references[3] == ("shapes://val/000003", [item["caption"]]) and len(ds.image_paths) == 20
    batch = next(iter(create_dataloader(ds, batch_size=8)))
    assert batch["images"].shape == (8, 3, 32, 32) and (batch["labels"] != -100).sum() == batch["attention_mask"].sum()


def test_default_tokenizer_is_the_grammar_vocabulary_for_every_split():
    a, b = ShapesDataset(5, split="train"), ShapesDataset(5, seed=3, split="test")
    assert a.tokenizer.itos == b.tokenizer.itos == default_tokenizer().itos
    assert len(a.tokenizer) == 4 + len(S.VOCABULARY) == 21
    assert all(3 not in a[i]["input_ids"].tolist() for i in range(len(a)))


def test_shapes_component_and_options():
    from geometry_os.systems.pixel_llm.resolution import get_component

    ds = get_component("dataset", "shapes").build({"n": 6, "seed": 2, "image_size": 16, "split": "test"})
    assert len(ds) == 6 and ds[0]["image"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="split"):
        ShapesOptions(split="holdout")
    names = []
    register_datasets(lambda name, *a, **k: names.append(name))
    assert names == ["captions", "shapes", "json", "jsonl", "coco", "karpathy", "flickr", "imagefolder", "webdataset"]


# ---------------------------------------------------------------------------------------- make-shapes


def test_make_shapes_writes_the_seed_format(cli, tmp_path):
    out = tmp_path / "shapes"
    result = CliRunner().invoke(cli, ["make-shapes", "--out", str(out), "--n", "50", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "40 train, 5 val, 5 test" in result.output
    splits = {s: json.loads((out / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert json.loads((out / "captions.json").read_text()) == splits["train"] + splits["val"] + splits["test"]
    assert splits["val"][0]["image"] == "images/val/000000.png"
    assert all(GRAMMAR.fullmatch(e["caption"]) for e in splits["train"])
    assert sorted(p.name for p in out.iterdir()) == ["captions.json", "images", "test.json", "train.json", "val.json"]
    assert len(list((out / "images" / "train").iterdir())) == 40


def test_png_files_match_the_in_memory_dataset(cli, tmp_path):
    out = tmp_path / "shapes"
    assert CliRunner().invoke(cli, ["make-shapes", "--out", str(out), "--n", "30", "--seed", "2"]).exit_code == 0
    memory = ShapesDataset(24, seed=2, split="train", tokenizer=VOCAB)
    files = ImageTextDataset(out / "train.json", tokenizer=VOCAB, config=DatasetConfig(image_size=64))
    assert files.captions == memory.captions
    for i in (0, 5, 23):
        assert torch.allclose(files[i]["image"], memory[i]["image"], atol=1e-5)
        assert files[i]["input_ids"].tolist() == memory[i]["input_ids"].tolist()


def test_make_shapes_custom_splits_and_overwrite(cli, tmp_path):
    out = tmp_path / "o"
    args = ["make-shapes", "--out", str(out), "--n", "10", "--image-size", "32", "--splits", "a=0.5,b=0.5"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    (out / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "is not empty; pass --overwrite" in result.output
    result = CliRunner().invoke(cli, [*args[:-1], "a=0.6,b=0.4", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "a.json").read_text())) == 6 and (out / "mine.txt").read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    # only the splits being written are replaced: an earlier split's images stay, so its captions still resolve
    (out / "images" / "mine.png").write_bytes(b"mine")
    result = CliRunner().invoke(cli, [*args[:-1], "c=1.0", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a", "b", "c", "mine.png"]
    for split in ("a", "b", "c"):
        assert all((out / e["image"]).is_file() for e in json.loads((out / f"{split}.json").read_text()))


@pytest.mark.parametrize(
    "splits, message",
    [
        ("train=0.8,val=0.1", "sum to 0.9"),
        ("train=0.5,train=0.5", "given twice"),
        ("train", "NAME=FRACTION"),
        ("captions=1", "not 'captions'"),
        ("a=x,b=1", "is not a number"),
        ("a=0,b=1", r"in \(0, 1\]"),
    ],
)
def test_make_shapes_bad_splits(cli, tmp_path, splits, message):
    result = CliRunner().invoke(cli, ["make-shapes", "--out", str(tmp_path / "o"), "--n", "5", "--splits", splits])
    assert result.exit_code == 2 and "--splits" in result.output and re.search(message, result.output)
    assert "Traceback" not in result.output


def test_make_shapes_out_is_a_file(cli, tmp_path):
    (tmp_path / "f").write_text("x")
    result = CliRunner().invoke(cli, ["make-shapes", "--out", str(tmp_path / "f"), "--n", "5"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit) and "is a file" in result.output


def test_split_counts_sum_to_n():
    assert split_counts(10, parse_splits("train=0.8,val=0.1,test=0.1")) == {"train": 8, "val": 1, "test": 1}
    assert sum(split_counts(7, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}).values()) == 7


# ------------------------------------------------------------------------------------------ lint-data


@pytest.fixture
def made(cli, tmp_path) -> Path:
    out = tmp_path / "d"
    assert CliRunner().invoke(cli, ["make-shapes", "--out", str(out), "--n", "20", "--image-size", "16"]).exit_code == 0
    return out


def test_lint_clean_data(cli, made):
    result = CliRunner().invoke(cli, ["lint-data", str(made / "train.json"), str(made / "val.json")])
    assert result.exit_code == 0, result.output
    assert "0 errors, 0 warnings" in result.output and "caption length (words)" in result.output


def test_lint_reports_every_problem(cli, made, tmp_path):
    train = json.loads((made / "train.json").read_text())
    val = json.loads((made / "val.json").read_text())
    (made / "images" / "train" / "000001.png").write_bytes(b"broken")
    (made / "images" / "copy.png").write_bytes((made / "images" / "train" / "000002.png").read_bytes())
    train += [dict(train[0]), {"image": "images/none.png", "caption": "a cat"}, {"image": "x.png", "caption": ""}]
    val += [dict(train[3]), {"image": "images/copy.png", "caption": "a copy"}]
    (made / "train.json").write_text(json.dumps(train))
    (made / "val.json").write_text(json.dumps(val))
    result = CliRunner().invoke(
        cli, ["lint-data", str(made / "train.json"), str(made / "val.json"), str(tmp_path / "missing.json")]
    )
    out = result.output
    assert result.exit_code == 1
    assert "000001.png" in out and "cannot identify image file" in out
    assert "none.png" in out and "no such file" in out
    assert 'entry 18: "caption" must be a non-empty string' in out
    assert "entry 16: duplicates entry 0 (same image and caption)" in out
    assert "000003.png is used by" in out and "have identical images" in out
    assert "missing.json: no such file" in out
    assert "val.json: 1 word not in the vocabulary train builds from" in out and "'copy' (1x)" in out
    assert "6 errors, 2 warnings\n" in out


def test_lint_json_and_vocab(cli, made, tmp_path):
    SimpleVocabulary(["a small large red green circle square"]).save(tmp_path / "vocab.json")
    result = CliRunner().invoke(
        cli, ["lint-data", str(made / "train.json"), "--vocab", str(tmp_path / "vocab.json"), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (file,) = report["files"]
    assert file["entries"] == file["samples"] == file["images"] == 16 and report["errors"] == 0
    assert file["caption_lengths"]["unit"] == "tokens" and 0 < file["oov"]["rate"] < 1
    assert sum(file["caption_lengths"]["histogram"].values()) == 16


def test_lint_bad_vocab_is_one_line(cli, made, tmp_path):
    (tmp_path / "v.json").write_text("{")
    result = CliRunner().invoke(cli, ["lint-data", str(made / "train.json"), "--vocab", str(tmp_path / "v.json")])
    assert result.exit_code == 1 and "v.json:1:2: malformed JSON" in result.output and "Traceback" not in result.output
    (tmp_path / "w.bin").write_bytes(b"\xff\xfe\x00")
    result = CliRunner().invoke(cli, ["lint-data", str(made / "train.json"), "--vocab", str(tmp_path / "w.bin")])
    assert result.exit_code == 1 and "w.bin: not UTF-8 text" in result.output and "Traceback" not in result.output


def test_commands_on_the_geo_os_cli(made):
    from geometry_os.cli import cli as root

    result = CliRunner().invoke(root, ["pixel-llm", "lint-data", str(made / "test.json")])
    assert result.exit_code == 0, result.output
    assert "make-shapes" in CliRunner().invoke(root, ["pixel-llm", "--help"]).output


def test_exact_match_by_shapes_groups_by_the_true_captions_shape_count():
    from geometry_os.plugins.datasets.shapes import caption, exact_match_by_shapes, make_split

    scenes = make_split(60, 5, "test")
    truths = [caption(s) for s in scenes]
    assert all(t.split().count("a") == len(s) for t, s in zip(truths, scenes))  # one "a" per shape
    wrong = {i for i, s in enumerate(scenes) if len(s) == 2}
    wrong = set(sorted(wrong)[:2])
    predictions = [("a large red circle" if i in wrong else t.upper() + " ") for i, t in enumerate(truths)]
    counts = {k: sum(len(s) == k for s in scenes) for k in (1, 2, 3)}
    assert exact_match_by_shapes(predictions, truths) == {
        1: (1.0, counts[1]),
        2: ((counts[2] - 2) / counts[2], counts[2]),
        3: (1.0, counts[3]),
    }
