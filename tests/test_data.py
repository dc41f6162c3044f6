"""ImageTextDataset and create_dataloader: every caption format, every bad input, image modes, batching."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from geometry_os.errors import GeometryOSError
from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
from geometry_os.systems.pixel_llm.data import (
    DataError,
    ImageTextDataset,
    create_dataloader,
    load_image,
    to_rgb,
)
from geometry_os.systems.pixel_llm.data_config import DatasetConfig

VOCAB = SimpleVocabulary(["a red square", "a blue circle left of a green square", "a cat"])
SMALL = DatasetConfig(image_size=16)
KEYS = {"image", "input_ids", "caption", "image_path", "index"}


def png(path: Path, colour=(255, 0, 0), size=(8, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    png(tmp_path / "images" / "red.png", (255, 0, 0))
    png(tmp_path / "images" / "blue.png", (0, 0, 255))
    return tmp_path


def dataset(path, **kw) -> ImageTextDataset:
    kw.setdefault("tokenizer", VOCAB)
    kw.setdefault("config", SMALL)
    return ImageTextDataset(path, **kw)


# ------------------------------------------------------------------------------------------- formats


def test_seed_json_list(folder):
    path = write(
        folder / "captions.json",
        [
            {"image": "images/red.png", "caption": "a red square"},
            {"image": "images/blue.png", "caption": "a blue circle"},
        ],
    )
    ds = ImageTextDataset(str(path), tokenizer=VOCAB.encode, config=SMALL)
    assert len(ds) == 2 and ds.tokenizer is VOCAB
    item = ds[1]
    assert set(item) == KEYS
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["input_ids"].dtype == torch.long and item["input_ids"].tolist() == VOCAB.encode("a blue circle")
    assert item["caption"] == "a blue circle" and item["index"] == 1
    assert item["image_path"] == str(folder / "images" / "blue.png")
    # blue stays blue after normalisation: the blue channel is the largest
    assert item["image"][2].mean() > item["image"][0].mean()


def test_plain_callable_tokenizer(folder):
    path = write(folder / "c.json", [{"image": "images/red.png", "caption": "x y"}])
    ds = ImageTextDataset(path, tokenizer=lambda text: [1, 7, 7, 2], config=SMALL)
    assert ds.tokenizer is None and ds[0]["input_ids"].tolist() == [1, 7, 7, 2]
    with pytest.raises(TypeError, match="tokenizer"):
        ImageTextDataset(path, tokenizer=5, config=SMALL)


def test_several_captions_per_image_and_references(folder):
    path = write(
        folder / "c.json",
        [
            {"image": "images/red.png", "captions": ["a red square", "a square"]},
            {"image": "images/blue.png", "caption": "a blue circle"},
            {"image": "images/red.png", "caption": "red"},
        ],
    )
    ds = dataset(path)
    assert len(ds) == 4
    red, blue = str(folder / "images/red.png"), str(folder / "images/blue.png")
    assert ds.references == [(red, ["a red square", "a square", "red"]), (blue, ["a blue circle"])]
    assert ds.image_paths == [red, blue]
    assert ds.captions == ["a red square", "a square", "a blue circle", "red"]


def test_coco_captions(folder):
    coco = {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 1, "file_name": "red.png", "width": 8, "height": 8, "license": 1},
            {"id": 2, "file_name": "blue.png"},
        ],
        "annotations": [
            {"id": 10, "image_id": 2, "caption": "a blue circle"},
            {"id": 11, "image_id": 1, "caption": "a red square"},
            {"id": 12, "image_id": 2, "caption": "blue"},
        ],
    }
    ds = dataset(write(folder / "coco.json", coco), image_root=folder / "images")
    assert [c for _, c in ds.references] == [["a blue circle", "blue"], ["a red square"]]
    assert ds[1]["image_path"] == str(folder / "images" / "red.png")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"annotations": [{"image_id": 9, "caption": "x"}]}, r'annotations\[0\]: "image_id" 9 is not'),
        ({"annotations": [{"image_id": 1, "caption": ""}]}, r'annotations\[0\]: "caption" must be a non-empty'),
        ({"annotations": [{"image_id": 1, "caption": "x", "score": 1}]}, r'annotations\[0\]: unknown key "score"'),
        (
            {"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}]},
            r'images\[1\]: duplicate "id" 1',
        ),
        ({"images": [{"id": 1}]}, r'images\[0\]: "file_name" must be a non-empty string'),
        ({"images": {}}, '"images" must be a list'),
        ({"extra": 1}, 'unknown top-level COCO key "extra"'),
    ],
)
def test_coco_errors(tmp_path, change, message):
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, "caption": "x"}]}
    path = write(tmp_path / "coco.json", {**coco, **change})
    with pytest.raises(DataError, match=f"coco.json: {message}"):
        dataset(path)


def test_json_lines(folder):
    lines = [
        '{"image": "images/red.png", "caption": "a red square"}',
        "",
        '{"image": "images/blue.png", "captions": ["a blue circle", "blue"]}',
    ]
    ds = dataset(write(folder / "data.jsonl", "\n".join(lines) + "\n"))
    assert ds.captions == ["a red square", "a blue circle", "blue"]


def test_json_lines_errors_name_the_line(folder):
    lines = ['{"image": "images/red.png", "caption": "a"}', '{"image": "images/red.png" "caption": "b"}']
    with pytest.raises(DataError, match=r"data\.jsonl:2:28: malformed JSON: Expecting ',' delimiter"):
        dataset(write(folder / "data.jsonl", "\n".join(lines)))
    with pytest.raises(DataError, match=r'data\.jsonl: line 1: "caption" must be'):
        dataset(write(folder / "data.jsonl", '{"image": "images/red.png", "caption": 3}'))


def test_paths_absolute_relative_and_image_root(folder, tmp_path, monkeypatch):
    data = folder / "sub"
    data.mkdir()
    absolute = str(folder / "images" / "blue.png")
    path = write(data / "c.json", [{"image": absolute, "caption": "a"}, {"image": "../images/red.png", "caption": "b"}])
    monkeypatch.chdir(tmp_path.parent)  # relative paths resolve against the file's folder, not the cwd
    ds = dataset(path)
    assert ds[0]["image_path"] == absolute
    assert ds[1]["image_path"] == str(folder / "images" / "red.png")
    path = write(data / "r.json", [{"image": "red.png", "caption": "a"}])
    assert dataset(path, image_root=str(folder / "images"))[0]["image_path"] == str(folder / "images" / "red.png")


def test_relative_data_path_gives_relative_image_paths(folder, monkeypatch):
    write(folder / "c.json", [{"image": "images/red.png", "caption": "a"}])
    monkeypatch.chdir(folder)
    ds = dataset("c.json")
    assert ds[0]["image_path"] == "images/red.png"


# ---------------------------------------------------------------------------------------- bad inputs


def test_missing_and_unreadable_data_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: no such file"):
        dataset(tmp_path / "nope.json")
    with pytest.raises(DataError, match="is a directory"):
        dataset(tmp_path)
    (tmp_path / "latin.json").write_bytes(b'[{"image": "\xe9"}]')
    with pytest.raises(DataError, match=r"latin\.json: not UTF-8 text"):
        dataset(tmp_path / "latin.json")


def test_malformed_json_has_line_and_column(tmp_path):
    path = write(tmp_path / "captions.json", '[\n  {"image": "a.png",\n   "caption": "x"\n  {"image": "b.png"}\n]')
    with pytest.raises(DataError) as info:
        dataset(path)
    assert str(info.value) == f"{path}:4:3: malformed JSON: Expecting ',' delimiter"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image": "a.png"}, "expected a JSON list of"),
        (5, "expected a JSON list of .* got int"),
        ([], "no usable entries"),
        ([["a.png", "x"]], 'entry 0: expected an object with "image" and "caption", got list'),
        ([{"caption": "x"}], 'entry 0: missing "image"'),
        ([{"image": "", "caption": "x"}], 'entry 0: "image" must be a non-empty string'),
        (
            [{"image": "a.png", "caption": "x"}, {"image": "a.png", "caption": ""}],
            "entry 1: \"caption\" must be a non-empty string, got ''",
        ),
        ([{"image": "a.png", "caption": "  "}], 'entry 0: "caption" must be a non-empty string'),
        ([{"image": "a.png", "caption": 5}], 'entry 0: "caption" must be a non-empty string, got 5'),
        ([{"image": "a.png", "caption": None}], 'entry 0: "caption" must be a non-empty string, got None'),
        ([{"image": "a.png"}], 'entry 0: needs exactly one of "caption" or "captions"'),
        ([{"image": "a.png", "caption": "x", "captions": ["y"]}], "needs exactly one of"),
        ([{"image": "a.png", "captions": []}], '"captions" must be a non-empty list'),
        ([{"image": "a.png", "captions": ["ok", ""]}], r'entry 0: "captions"\[1\] must be a non-empty string'),
        ([{"image": "a.png", "captoin": "x"}], 'entry 0: unknown key "captoin"'),
    ],
)
def test_bad_structure_names_file_and_entry(tmp_path, data, message):
    path = write(tmp_path / "captions.json", data)
    with pytest.raises(DataError, match=message) as info:
        dataset(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_data_error_is_a_user_error():
    assert issubclass(DataError, GeometryOSError) and issubclass(DataError, ValueError)


def _ihdr_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` with (almost) no pixel data: a decompression bomb stand-in."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.png", None, "no such file"),
        ("noise.png", b"\x00\x01garbage" * 20, "cannot identify image file"),
        ("text.jpg", b"hello, I am not a picture\n", "cannot identify image file"),
        ("bomb.png", _ihdr_png(9000, 9000), "image is 9000x9000 = 81000000 pixels, over max_image_pixels=64000000"),
        ("huge.png", _ihdr_png(100_000, 100_000), "possible decompression bomb"),
    ],
)
def test_bad_images_raise_on_access_naming_path_and_entry(tmp_path, name, content, message):
    png(tmp_path / "ok.png")
    if content is not None:
        (tmp_path / name).write_bytes(content)
    path = write(tmp_path / "captions.json", [{"image": "ok.png", "caption": "a"}, {"image": name, "caption": "b"}])
    ds = dataset(path)  # images are read lazily
    ds[0]
    with pytest.raises(DataError, match=message) as info:
        ds[1]
    assert str(info.value).startswith(f"{tmp_path / name} ({path} entry 1): ")


def test_truncated_image(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    ds = dataset(write(tmp_path / "c.json", [{"image": "cut.png", "caption": "a"}]))
    with pytest.raises(DataError, match=r"cut\.png \(.*entry 0\): .*(truncated|broken)"):
        ds[0]


def test_max_image_pixels_from_config(tmp_path):
    png(tmp_path / "a.png", size=(20, 20))
    ds = dataset(
        write(tmp_path / "c.json", [{"image": "a.png", "caption": "a"}]),
        config=DatasetConfig(image_size=8, max_image_pixels=399),
    )
    with pytest.raises(DataError, match="20x20 = 400 pixels, over max_image_pixels=399"):
        ds[0]


# ------------------------------------------------------------------------------------ on_error="skip"


def test_skip_bad_entries_at_load_with_one_warning(folder, caplog):
    data = [
        {"image": "images/red.png", "caption": "a"},
        {"image": "images/red.png", "caption": ""},
        {"image": "images/blue.png", "caption": "b"},
        {"image": 3, "caption": "c"},
        {"img": "x"},
    ]
    with caplog.at_level(logging.WARNING):
        ds = dataset(write(folder / "c.json", data), config=DatasetConfig(image_size=8, on_error="skip"))
    assert ds.captions == ["a", "b"]
    assert [i for i, _ in ds.skipped] == [1, 3, 4]
    assert 'entry 1: "caption" must be a non-empty string' in ds.skipped[0][1]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 of 5 entries" in warnings[0].getMessage()


def test_skip_malformed_jsonl_lines(folder):
    text = '{"image": "images/red.png", "caption": "a"}\n{oops\n{"image": "images/blue.png", "caption": "b"}\n'
    ds = dataset(write(folder / "d.jsonl", text), config=DatasetConfig(image_size=8, on_error="skip"))
    assert ds.captions == ["a", "b"] and ds.skipped[0][0] == 2 and "d.jsonl:2:2: malformed JSON" in ds.skipped[0][1]


def test_jsonl_records_end_at_newlines_only(folder):
    """U+2028/U+2029/U+0085 are legal inside JSON strings (json.dumps(ensure_ascii=False) writes them raw)."""
    rows = [{"image": "images/red.png", "caption": "a\u2028b"}, {"image": "images/blue.png", "caption": "c\u0085d"}]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    assert "\u2028" in text
    ds = dataset(write(folder / "u.jsonl", text), config=DatasetConfig(image_size=8))
    assert ds.captions == ["a\u2028b", "c\u0085d"]


def test_skip_whole_file_problems_still_raise(tmp_path):
    with pytest.raises(DataError, match="malformed JSON"):
        dataset(write(tmp_path / "c.json", "[{"), config=DatasetConfig(on_error="skip"))
    with pytest.raises(DataError, match="no usable entries"):
        dataset(write(tmp_path / "c.json", [{"image": ""}]), config=DatasetConfig(on_error="skip"))


def test_skip_unreadable_images_on_access_and_validate(folder, caplog):
    (folder / "images" / "bad.png").write_bytes(b"not a png")
    data = [
        {"image": "images/red.png", "caption": "a"},
        {"image": "images/bad.png", "captions": ["b", "b2"]},
        {"image": "images/missing.png", "caption": "c"},
        {"image": "images/blue.png", "caption": "d"},
    ]
    path = write(folder / "c.json", data)
    skip = DatasetConfig(image_size=8, on_error="skip")
    ds = dataset(path, config=skip)
    item = ds[1]  # bad.png (samples 1, 2) and missing.png (3) are skipped: the next readable sample answers
    assert (item["caption"], item["index"]) == ("d", 4)
    assert [Path(p).name for p, _ in ds.skipped] == ["bad.png", "missing.png"]

    ds = dataset(path, config=skip)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        problems = ds.validate()
    assert [Path(p).name for p, _ in problems] == ["bad.png", "missing.png"]
    assert ds.captions == ["a", "d"] and [ds[i]["caption"] for i in range(len(ds))] == ["a", "d"]
    assert ds.references == [(str(folder / "images/red.png"), ["a"]), (str(folder / "images/blue.png"), ["d"])]
    assert len(caplog.records) == 1 and "skipped 2 of 4 images" in caplog.records[0].getMessage()

    with pytest.raises(DataError, match=r"bad\.png \(.*entry 1\): cannot identify .*\(and 1 more unreadable images\)"):
        dataset(path).validate()
    assert dataset(write(folder / "ok.json", data[:1])).validate() == []


# --------------------------------------------------------------------------------------------- images


def _saved(image: Image.Image, fmt: str = "PNG", **kw) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    buffer.seek(0)
    return buffer


def _rgb_of(image: Image.Image, tmp_path: Path, fmt: str = "PNG", **kw) -> Image.Image:
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_saved(image, fmt, **kw).getvalue())
    return load_image(str(path), 10**6)


def test_image_modes_become_rgb(tmp_path):
    assert _rgb_of(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path, "JPEG").getpixel((1, 1))[0] > 200
    assert _rgb_of(Image.new("I;16", (4, 4), 32768), tmp_path).getpixel((0, 0)) == (128, 128, 128)
    assert _rgb_of(Image.new("I;16", (4, 4), 65535), tmp_path).getpixel((0, 0)) == (255, 255, 255)
    assert _rgb_of(Image.new("1", (4, 4), 1), tmp_path).getpixel((0, 0)) == (255, 255, 255)
    assert _rgb_of(Image.new("L", (4, 4), 77), tmp_path).getpixel((0, 0)) == (77, 77, 77)
    palette = Image.new("P", (4, 4), 5)
    palette.putpalette([0, 0, 0] * 5 + [10, 200, 30])
    assert _rgb_of(palette, tmp_path).getpixel((0, 0)) == (10, 200, 30)


def test_alpha_is_composited_on_black(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 255, 255, 0))
    out = _rgb_of(rgba, tmp_path)
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((1, 0)) == (0, 0, 0)
    half = to_rgb(Image.new("RGBA", (1, 1), (200, 100, 50, 128))).getpixel((0, 0))
    assert all(abs(a - b) <= 1 for a, b in zip(half, (100, 50, 25)))
    assert _rgb_of(Image.new("LA", (1, 1), (200, 0)), tmp_path).getpixel((0, 0)) == (0, 0, 0)
    transparent_palette = Image.new("P", (1, 1), 0)
    transparent_palette.putpalette([255, 255, 255] * 256)
    assert _rgb_of(transparent_palette, tmp_path, transparency=0).getpixel((0, 0)) == (0, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    image.paste((0, 0, 255), (2, 0, 4, 2))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = _rgb_of(image, tmp_path, exif=exif.tobytes())
    assert out.size == (2, 4)
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((0, 3)) == (0, 0, 255)


def test_augmentation_never_flips_left_and_right(tmp_path):
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 32, 32))
    image.save(tmp_path / "lr.png")
    ds = dataset(
        write(tmp_path / "c.json", [{"image": "lr.png", "caption": "a"}]),
        config=DatasetConfig(image_size=16, augment=True),
    )
    torch.manual_seed(0)
    for _ in range(20):
        x = ds[0]["image"]
        assert x[0, :, :4].mean() > x[0, :, -4:].mean() and x[2, :, :4].mean() < x[2, :, -4:].mean()


def test_captions_are_truncated_keeping_eos(folder):
    path = write(folder / "c.json", [{"image": "images/red.png", "caption": "a blue circle left of a green square"}])
    ids = dataset(path, config=DatasetConfig(image_size=8, max_length=4))[0]["input_ids"].tolist()
    assert ids == VOCAB.encode("a blue circle left")[:3] + [2]
    assert dataset(path, config=DatasetConfig(image_size=8), tokenizer=lambda t: list(range(5, 80)))[0][
        "input_ids"
    ].tolist() == list(range(5, 69))


def test_dataset_config_errors_name_the_field():
    for kwargs, field in [
        ({"image_size": 0}, "image_size"),
        ({"max_length": 2}, "max_length"),
        ({"imagesize": 3}, "imagesize"),
        ({"std": (1, 0, 1)}, "std"),
        ({"on_error": "ignore"}, "on_error"),
        ({"mean": (1, 2)}, "mean"),
    ]:
        with pytest.raises(ValidationError, match=field):
            DatasetConfig(**kwargs)
    assert DatasetConfig().mean == (0.485, 0.456, 0.406) and DatasetConfig().max_image_pixels == 64_000_000


# -------------------------------------------------------------------------------------------- batches


@pytest.fixture
def three(folder) -> ImageTextDataset:
    data = [
        {"image": "images/red.png", "caption": "a red square"},
        {"image": "images/blue.png", "caption": "a blue circle left of a green square"},
        {"image": "images/red.png", "caption": "a cat"},
    ]
    return dataset(write(folder / "c.json", data), config=DatasetConfig(image_size=8))


def test_dataloader_pads_and_masks(three):
    batch = next(iter(create_dataloader(three, batch_size=3, shuffle=False)))
    lengths = [5, 10, 4]
    assert batch["images"].shape == (3, 3, 8, 8)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, 10)
    assert batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row, :n].tolist() == three[row]["input_ids"].tolist()
        assert (batch["input_ids"][row, n:] == 0).all() and (batch["labels"][row, n:] == -100).all()
        assert batch["labels"][row, :n].tolist() == three[row]["input_ids"].tolist()
    assert batch["captions"] == three.captions and batch["indices"].tolist() == [0, 1, 2]
    assert batch["image_paths"][1].endswith("blue.png")


def test_dataloader_custom_pad_id_sampler_and_generator(three):
    batch = next(iter(create_dataloader(three, batch_size=3, pad_token_id=7, sampler=[2, 0, 1])))
    assert batch["indices"].tolist() == [2, 0, 1]
    assert batch["input_ids"][0, 4:].tolist() == [7] * 6 and (batch["labels"][0, 4:] == -100).all()
    orders = [
        [
            b["indices"].tolist()
            for b in create_dataloader(three, batch_size=1, generator=torch.Generator().manual_seed(5))
        ]
        for _ in range(2)
    ]
    assert orders[0] == orders[1]


def test_dataloader_with_two_workers(three):
    loader = create_dataloader(three, batch_size=2, shuffle=True, num_workers=2, drop_last=False)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["indices"].tolist()) == [0, 1, 2]
    assert all(b["images"].shape[1:] == (3, 8, 8) for b in batches)


# ---------------------------------------------------------------------------- registry (tokenizer=None)


def test_without_tokenizer_the_simple_vocabulary_is_trained(folder):
    path = write(folder / "c.json", [{"image": "images/red.png", "caption": "A zebra, grazing"}])
    ds = ImageTextDataset(path, config=SMALL)
    assert type(ds.tokenizer).__name__ == "SimpleVocabulary"
    assert 3 not in ds[0]["input_ids"].tolist() and ds.tokenizer.decode(ds[0]["input_ids"]) == "a zebra, grazing"


def test_without_tokenizer_the_registry_default_tokenizer_is_trained(folder):
    """The tokenizer trained for a data set without one is the registry's default, whatever it names."""
    from geometry_os.host import Host, set_host

    host = Host(entry_points=False)
    host.system("pixel_llm").components.defaults["tokenizer"] = "bpe"
    set_host(host)  # tests/conftest.py puts the previous host back
    path = write(folder / "c.json", [{"image": "images/red.png", "caption": "a red square"}])
    ds = ImageTextDataset(path, config=SMALL)
    assert type(ds.tokenizer).__name__ == "BPETokenizer"
    assert ds.tokenizer.decode(ds[0]["input_ids"].tolist()) == "a red square"


def test_captions_dataset_component(folder):
    from geometry_os.systems.pixel_llm.resolution import get_component

    path = write(folder / "c.json", [{"image": "images/red.png", "caption": "a red square"}])
    ds = get_component("dataset", "captions").build({"data_path": str(path), "image_size": 12}, tokenizer=VOCAB)
    assert isinstance(ds, ImageTextDataset) and ds[0]["image"].shape == (3, 12, 12) and ds.tokenizer is VOCAB
    with pytest.raises(GeometryOSError, match="imagesize"):
        get_component("dataset", "captions").build({"data_path": str(path), "imagesize": 12})
