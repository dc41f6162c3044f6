"""Caption-data formats as registered ``dataset`` components: the same images and captions written in every
format give the same records through ``train``, ``eval``, ``lint-data`` and ``ImageTextDataset``; format
inference, ``FORMAT:PATH``, Karpathy splits, one-line errors, and a third-party format plugin."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import make_plugin_dist
from PIL import Image

from geometry_os.cli import cli
from geometry_os.systems.pixel_llm.data import DataError, ImageTextDataset
from geometry_os.systems.pixel_llm.formats import read_caption_data, resolve

# image -> its captions; the Karpathy file also holds a val and a test image that the train split leaves out
SET = {"a.png": ["a red circle", "a round red shape"], "b.png": ["a blue square"], "c.png": ["a green triangle"]}
COLOURS = {"a.png": (200, 0, 0), "b.png": (0, 0, 200), "c.png": (0, 200, 0), "v.png": (9, 9, 9), "t.png": (5, 5, 5)}


def expected() -> list[tuple[str, str]]:
    return sorted((image, c) for image, captions in SET.items() for c in captions)


def write_images(folder: Path, names=SET) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (32, 32), COLOURS[name]).save(folder / name)


def write_all_formats(root: Path) -> dict[str, str]:
    """The set in every format; returns format name -> the spec to pass as --data."""
    write_images(root / "images", COLOURS)
    specs = {}
    (root / "list.json").write_text(json.dumps([{"image": f"images/{k}", "captions": v} for k, v in SET.items()]))
    specs["json"] = str(root / "list.json")
    (root / "lines.jsonl").write_text(
        "".join(json.dumps({"image": f"images/{k}", "captions": v}) + "\n" for k, v in SET.items())
    )
    specs["jsonl"] = str(root / "lines.jsonl")
    images = [{"id": i, "file_name": f"images/{k}"} for i, k in enumerate(SET)]
    annotations = [
        {"id": 10 * i + j, "image_id": i, "caption": c} for i, (k, v) in enumerate(SET.items()) for j, c in enumerate(v)
    ]
    (root / "coco.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    specs["coco"] = str(root / "coco.json")
    splits = {"a.png": "train", "b.png": "restval", "c.png": "train"}
    karpathy = [
        {
            "filepath": "images",
            "filename": k,
            "split": splits[k],
            "imgid": i,
            "sentences": [{"raw": c, "tokens": c.split()} for c in v],
        }
        for i, (k, v) in enumerate(SET.items())
    ]
    karpathy += [
        {"filepath": "images", "filename": "v.png", "split": "val", "sentences": [{"raw": "a dark square"}]},
        {"filepath": "images", "filename": "t.png", "split": "test", "sentences": [{"raw": "a black square"}]},
    ]
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}))
    specs["karpathy"] = str(root / "dataset_coco.json")
    (root / "captions.token").write_text(
        "".join(f"images/{k}#{j}\t{c}\n" for k, v in SET.items() for j, c in enumerate(v))
    )
    specs["flickr"] = str(root / "captions.token")
    meta = root / "meta_jsonl"
    write_images(meta)
    (meta / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": k, "text": v}) + "\n" for k, v in SET.items())
    )
    specs["imagefolder-jsonl"] = str(meta)
    meta_csv = root / "meta_csv"
    write_images(meta_csv)
    with open(meta_csv / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "caption"])
        writer.writerows([k, c] for k, v in SET.items() for c in v)
    specs["imagefolder-csv"] = str(meta_csv)
    pairs = root / "pairs"
    write_images(pairs)
    for k, v in SET.items():
        (pairs / k).with_suffix(".txt").write_text("\n".join(v) + "\n")
    specs["imagefolder-txt"] = str(pairs)
    return specs


def key(records) -> list[tuple[str, str]]:
    for r in records:
        assert Path(r.image).is_file(), r.image
    return sorted((Path(r.image).name, r.caption) for r in records)


def capture_training(monkeypatch) -> list[tuple]:
    """Make the ``train`` command's trainer one that records (training set, validation set) and trains
    nothing; returns the list it appends to."""
    from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
    from geometry_os.systems.pixel_llm import workflows

    seen = []

    class Capture:
        make_dataloader = staticmethod(PixelLLMTrainer.make_dataloader)

        def __init__(self, model, config, train_loader, val_loader, tokenizer=None, quiet=False):
            seen.append((train_loader.dataset, val_loader.dataset if val_loader else None))
            self.world = SimpleNamespace(is_main=True)

        def train(self):
            return None

    monkeypatch.setattr(workflows, "_trainer_class", lambda name=None: Capture)
    return seen


def capture_evaluation(monkeypatch, checkpoint: Path) -> list:
    """Save a tiny model to ``checkpoint`` and make ``eval`` record the references it would score
    (image, captions) instead of captioning; returns the list it appends to."""
    from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
    from geometry_os.systems.pixel_llm import captioning, create_pixel_llm

    vocab = SimpleVocabulary([c for v in SET.values() for c in v])
    create_pixel_llm(vocab_size=len(vocab), preset="tiny").save_pretrained(checkpoint, tokenizer=vocab)
    seen = []

    def capture(model, tokenizer, references, generation, batch_size):
        seen.append(references)
        return {"exact_match": 0.0}

    monkeypatch.setattr(captioning, "evaluate_dataset", capture)
    return seen


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, str]:
    return write_all_formats(tmp_path_factory.mktemp("formats"))


def test_every_format_is_inferred_and_gives_the_same_records(formats):
    for label, spec in formats.items():
        fmt, _ = resolve(spec)
        assert fmt.name == label.split("-")[0], label
        split = "train" if fmt.has_splits else None
        records, skipped, _ = read_caption_data(spec, split=split)
        assert not skipped and key(records) == expected(), label
        assert key(ImageTextDataset(f"{fmt.name}:{spec}", split=split).records) == expected(), label


def test_train_reads_every_format_through_the_registry(formats, monkeypatch):
    """The real ``train`` command, up to the trainer: the training set it builds has the same records; a
    Karpathy file gives its train split for --data and its val split for --val-data."""
    seen = capture_training(monkeypatch)
    for label, spec in formats.items():
        out = Path(spec).parent / f"run-{label}"
        args = ["pixel-llm", "train", "--preset", "tiny", "--data", spec, "--out", str(out), "--quiet"]
        if label == "karpathy":
            args += ["--val-data", spec]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (label, result.output)
        train_set, val_set = seen[-1]
        assert key(train_set.records) == expected(), label
        if label == "karpathy":
            assert key(val_set.records) == [("v.png", "a dark square")]


def test_eval_reads_every_format_through_the_registry(formats, monkeypatch, tmp_path):
    seen = capture_evaluation(monkeypatch, tmp_path / "ckpt")
    for label, spec in formats.items():
        args = ["pixel-llm", "eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", spec, "--json"]
        if label == "karpathy":
            args += ["--split", "train"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (label, result.output)
        got = sorted((Path(image).name, c) for image, captions in seen[-1] for c in captions)
        assert got == expected(), label


def test_lint_data_reads_every_format_through_the_registry(formats):
    for label, spec in formats.items():
        args = ["pixel-llm", "lint-data", spec, "--json"] + (["--split", "train"] if label == "karpathy" else [])
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (label, result.output)
        report = json.loads(result.output)["files"][0]
        assert (report["samples"], report["images"], report["errors"]) == (4, 3, []), label


def test_karpathy_splits_count_restval_as_train(formats):
    spec = formats["karpathy"]
    names = {
        s: sorted({Path(r.image).name for r in read_caption_data(spec, split=s)[0]}) for s in ("train", "val", "test")
    }
    assert names == {"train": ["a.png", "b.png", "c.png"], "val": ["v.png"], "test": ["t.png"]}
    assert len(read_caption_data(spec)[0]) == 6  # no split: every image


def test_format_errors_are_one_line(formats, tmp_path):
    with pytest.raises(DataError, match="the json format has no splits"):
        read_caption_data(formats["json"], split="val")
    odd = tmp_path / "notes.txt"
    odd.write_text("just some words\n")
    with pytest.raises(DataError, match=r"not a caption file or folder of a known format; name one as FORMAT:"):
        resolve(str(odd))
    with pytest.raises(DataError, match="no such file or folder"):
        resolve(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.token"
    bad.write_text("a.png#0\tfine\nno tab here\n")
    with pytest.raises(DataError, match=r"bad.token: line 2: expected 'IMAGE#N<TAB>caption'"):
        read_caption_data(f"flickr:{bad}")
    assert len(read_caption_data(f"flickr:{bad}", on_error="skip")[1]) == 1
    folder = tmp_path / "half"
    write_images(folder)
    (folder / "a.txt").write_text("a red circle\n")
    with pytest.raises(DataError, match=r"half/b.png: no caption file b.txt beside it"):
        read_caption_data(str(folder))
    result = CliRunner().invoke(cli, ["pixel-llm", "eval", "--checkpoint", str(tmp_path), "--data", str(odd)])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_a_third_party_plugin_adds_a_format(tmp_path, monkeypatch, formats):
    """The plugin of docs/plugins.md: a TSV format (image<TAB>caption) that train, eval and lint-data read."""
    from test_third_party_plugin import MODULE, plugin_source

    root = make_plugin_dist(tmp_path / "site", "geo-caption-extras", "1.0", MODULE, plugin_source())
    monkeypatch.syspath_prepend(str(root))
    data = Path(formats["json"]).parent
    (data / "set.tsv").write_text("".join(f"images/{k}\t{c}\n" for k, v in SET.items() for c in v))
    fmt, _ = resolve(str(data / "set.tsv"))
    assert fmt.name == "tsv"
    assert key(read_caption_data(str(data / "set.tsv"))[0]) == expected()
    result = CliRunner().invoke(cli, ["pixel-llm", "lint-data", f"tsv:{data / 'set.tsv'}", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["files"][0]["samples"] == 4


READER_PLUGIN = '''
"""A third-party caption format written against the DatasetReader protocol alone (no base class):
image<TAB>caption lines in a .tsv file."""
from pathlib import Path

from geometry_os.plugins.datasets import CaptionsOptions
from geometry_os.systems.pixel_llm.plugin_api import Records, hookimpl


class TsvReader:
    name = "tsvreader"
    has_splits = False
    streaming = False

    def claims(self, spec):
        return False

    def detect(self, path):
        return path.is_file() and path.suffix == ".tsv"

    def read(self, path, image_root, on_error, split):
        out = Records(path, image_root, on_error)
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            image, tab, caption = line.partition("\\t")
            if not tab or not caption.strip():
                out.bad(n, f": line {n}", "expected image<TAB>caption")
                continue
            out.add(image, [caption.strip()], f"line {n}", n)
        return out.result()

    def stream(self, spec, tokenizer, config, seed=0, **options):
        raise NotImplementedError

    def __call__(self, options, tokenizer=None):
        from geometry_os.systems.pixel_llm.plugin_api import ImageTextDataset

        return ImageTextDataset(f"tsvreader:{options.data_path}", tokenizer=tokenizer, image_root=options.image_root)


READER = TsvReader()


@hookimpl
def register_datasets(register):
    register("tsvreader", "geo_tsv_reader:READER", CaptionsOptions)
'''


def test_a_dataset_reader_plugin_is_read_by_the_dataset_train_eval_and_lint_data_alike(tmp_path, monkeypatch, formats):
    """A format registered through the ``dataset`` component by a plugin outside ``plugins/`` that implements
    ``protocols.DatasetReader`` without the ``CaptionFormat`` base class: inferred from the suffix and named as
    FORMAT:PATH, ``ImageTextDataset``, the component factory, ``train``, ``eval`` and ``lint-data`` all read the
    same records from it."""
    from geometry_os.systems.pixel_llm.protocols import DatasetReader
    from geometry_os.systems.pixel_llm.resolution import get_component

    root = make_plugin_dist(tmp_path / "site", "geo-tsv-reader", "1.0", "geo_tsv_reader", READER_PLUGIN)
    monkeypatch.syspath_prepend(str(root))
    spec = tmp_path / "set.tsv"
    spec.write_text("".join(f"{Path(formats['json']).parent}/images/{k}\t{c}\n" for k, v in SET.items() for c in v))

    fmt, _ = resolve(str(spec))
    assert fmt.name == "tsvreader" and isinstance(fmt, DatasetReader)
    assert key(read_caption_data(f"tsvreader:{spec}")[0]) == expected()
    assert key(ImageTextDataset(str(spec)).records) == expected()
    built = get_component("dataset", "tsvreader").build({"data_path": str(spec)})
    assert key(built.records) == expected()

    trained = capture_training(monkeypatch)
    args = ["pixel-llm", "train", "--preset", "tiny", "--data", str(spec), "--out", str(tmp_path / "run"), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert key(trained[-1][0].records) == expected()

    evaluated = capture_evaluation(monkeypatch, tmp_path / "ckpt")
    args = ["pixel-llm", "eval", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(spec), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted((Path(image).name, c) for image, captions in evaluated[-1] for c in captions) == expected()

    result = CliRunner().invoke(cli, ["pixel-llm", "lint-data", f"tsvreader:{spec}", "--json"])
    report = json.loads(result.output)["files"][0]
    assert result.exit_code == 0 and (report["samples"], report["images"], report["errors"]) == (4, 3, [])
