"""The caption-data formats this plugin registers (``CaptionFormat`` instances; see the core's ``dataset`` and ``formats``).

* ``json`` / ``jsonl`` / ``coco``: the core's readers (``records.read_caption_file``).
* ``karpathy``: Karpathy's split files (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``
  from "Deep Visual-Semantic Alignments", Karpathy & Fei-Fei 2015): ``{"images": [{"split", "filepath"?,
  "filename", "sentences": [{"raw"}]}]}``; ``restval`` counts as ``train``, as in Karpathy's neuraltalk2
  ``prepro`` code. Images are ``filepath/filename`` under the image root.
* ``flickr``: Flickr8k/Flickr30k token files, ``image.jpg#0<TAB>caption`` per line.
* ``imagefolder``: a folder with ``metadata.jsonl`` or ``metadata.csv`` (Hugging Face ``datasets``'
  ImageFolder convention: ``file_name`` plus a ``text`` or ``caption`` column, a string or a list of
  strings), or else image files with a same-name ``.txt`` beside them (each non-empty line a caption).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from geometry_os.fileio import parse_json
from geometry_os.systems.pixel_llm.plugin_api import (
    CaptionFormat,
    DataError,
    Read,
    Records,
    head,
    read_caption_file,
    read_text,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CAPTION_COLUMNS = ("text", "caption", "captions")


class _CoreFormat(CaptionFormat):
    kind = ""

    def read(self, path: str, image_root: str | None, on_error: str, split: str | None) -> Read:
        return read_caption_file(path, image_root, on_error, kind=self.kind)


class JsonList(_CoreFormat):
    """``[{"image": ..., "caption": ...}]`` (or ``"captions": [...]``)."""

    name = kind = "json"

    def detect(self, path: Path) -> bool:
        """A file (not ``.jsonl``) whose text starts with ``[``."""
        return path.is_file() and path.suffix != ".jsonl" and head(path, 4096).lstrip().startswith("[")


class JsonLines(_CoreFormat):
    """One ``{"image", "caption"}`` object per line of a ``.jsonl`` file."""

    name = kind = "jsonl"

    def detect(self, path: Path) -> bool:
        """A ``.jsonl`` file."""
        return path.is_file() and path.suffix == ".jsonl"


def _json_object_head(path: Path) -> str | None:
    if not path.is_file() or path.suffix == ".jsonl":
        return None
    text = head(path)
    return text if text.lstrip().startswith("{") else None


class Coco(_CoreFormat):
    """COCO captions: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``."""

    name = kind = "coco"

    def detect(self, path: Path) -> bool:
        """A JSON object file whose head has no ``"sentences"`` (that is Karpathy's)."""
        text = _json_object_head(path)
        return text is not None and '"sentences"' not in text


class Karpathy(CaptionFormat):
    """Karpathy's split files; ``split`` train (with restval), val or test; None: every image."""

    name = "karpathy"
    has_splits = True

    def detect(self, path: Path) -> bool:
        """A JSON object file whose head has ``"sentences"``."""
        text = _json_object_head(path)
        return text is not None and '"sentences"' in text

    def read(self, path: str, image_root: str | None, on_error: str, split: str | None) -> Read:
        """Records of the images of ``split`` (None: all); ``DataError`` for a file that is not a Karpathy
        split file, and for a bad entry when ``on_error="raise"``."""
        out = Records(path, image_root, on_error)
        data = parse_json(read_text(path), path, DataError)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f'{path}: expected a Karpathy split file, an object with an "images" list')
        wanted = {"train", "restval"} if split == "train" else {split}
        for i, entry in enumerate(data["images"]):
            where = f"images[{i}]"
            if not isinstance(entry, dict):
                out.bad(i, f": {where}", f"expected an object, got {type(entry).__name__}")
                continue
            entry_split = entry.get("split")
            if split is not None and entry_split not in wanted:
                continue
            filename, filepath = entry.get("filename"), entry.get("filepath", "")
            sentences = entry.get("sentences")
            if not isinstance(filename, str) or not filename.strip() or not isinstance(filepath, str):
                out.bad(i, f": {where}", '"filename" must be a non-empty string (and "filepath", if given, a string)')
                continue
            if not isinstance(sentences, list) or not sentences:
                out.bad(i, f": {where}", '"sentences" must be a non-empty list of {"raw": ...} objects')
                continue
            raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
            texts = [r.strip() for r in raws if isinstance(r, str) and r.strip()]
            if len(texts) != len(raws):
                out.bad(i, f": {where}", 'every sentence needs a non-empty "raw" string')
                continue
            out.add(f"{filepath}/{filename}" if filepath else filename, texts, where, i)
        return out.result()


_TOKEN_LINE = re.compile(r"^([^\t#]+)#(\d+)\t(.*)$")


class Flickr(CaptionFormat):
    """Flickr8k/30k token files: ``1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ...``."""

    name = "flickr"

    def detect(self, path: Path) -> bool:
        """A file whose first non-empty line is ``IMAGE#N<TAB>caption``."""
        if not path.is_file():
            return False
        first = next((line for line in head(path, 4096).splitlines() if line.strip()), "")
        return _TOKEN_LINE.match(first) is not None

    def read(self, path: str, image_root: str | None, on_error: str, split: str | None) -> Read:
        """One record per line; ``DataError`` for an unreadable file, and for a bad line when
        ``on_error="raise"``."""
        out = Records(path, image_root, on_error)
        for n, line in enumerate(read_text(path).split("\n"), start=1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            m = _TOKEN_LINE.match(line)
            if m is None or not m.group(3).strip():
                out.bad(n, f": line {n}", "expected 'IMAGE#N<TAB>caption'")
                continue
            out.add(m.group(1).strip(), [m.group(3).strip()], f"line {n}", n)
        return out.result()


class ImageFolder(CaptionFormat):
    """A folder: ``metadata.jsonl`` / ``metadata.csv`` (HF ImageFolder), else image + same-name ``.txt``."""

    name = "imagefolder"

    def detect(self, path: Path) -> bool:
        """Any folder."""
        return path.is_dir()

    def read(self, path: str, image_root: str | None, on_error: str, split: str | None) -> Read:
        """Records from ``metadata.jsonl`` / ``metadata.csv``, else from the ``.txt`` beside each image;
        ``DataError`` for a path that is not a folder or holds neither, and for a bad row or image when
        ``on_error="raise"``."""
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"{path}: not a folder (the imagefolder format reads a folder of images)")
        root = image_root if image_root is not None else path
        for name in ("metadata.jsonl", "metadata.csv"):
            if (folder / name).is_file():
                out = Records(str(folder / name), root, on_error)
                rows = self._jsonl(out) if name.endswith(".jsonl") else self._csv(out)
                for n, row in rows:
                    self._add_row(out, n, row)
                return out.result()
        out = Records(path, root, on_error)
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(
                f"{path}: is a directory with no metadata.jsonl, metadata.csv or image files "
                "(expected a caption file or an image folder)"
            )
        for n, image in enumerate(images):
            text_file = image.with_suffix(".txt")
            if not text_file.is_file():
                out.bad(n, f"/{image.name}", f"no caption file {text_file.name} beside it")
                continue
            captions = [line.strip() for line in read_text(str(text_file)).splitlines() if line.strip()]
            if not captions:
                out.bad(n, f"/{text_file.name}", "empty caption file")
                continue
            out.add(image.name, captions, text_file.name, n)
        return out.result()

    @staticmethod
    def _jsonl(out: Records):
        for n, line in enumerate(read_text(out.name).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                out.bad(n, f":{n}:{e.colno}", f"malformed JSON: {e.msg}")

    @staticmethod
    def _csv(out: Records):
        reader = csv.DictReader(io.StringIO(read_text(out.name), newline=""))
        yield from enumerate(reader, start=2)  # line 1 is the header

    @staticmethod
    def _add_row(out: Records, n: int, row: object) -> None:
        if not isinstance(row, dict):
            out.bad(n, f": line {n}", f"expected an object, got {type(row).__name__}")
            return
        file_name = row.get("file_name")
        column = next((c for c in CAPTION_COLUMNS if c in row), None)
        if not isinstance(file_name, str) or not file_name.strip():
            out.bad(n, f": line {n}", '"file_name" must be a non-empty string')
            return
        if column is None:
            out.bad(n, f": line {n}", f"needs a caption column ({', '.join(CAPTION_COLUMNS)})")
            return
        value = row[column]
        captions = value if isinstance(value, list) else [value]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            out.bad(n, f": line {n}", f'"{column}" must be a non-empty string or list of strings')
            return
        out.add(file_name, [c.strip() for c in captions], f"line {n}", n)


class WebDataset(CaptionFormat):
    """WebDataset tar shards (``data/{000000..000099}.tar``), streamed: see ``shards.ShardStream``."""

    name = "webdataset"
    streaming = True

    def claims(self, spec: str) -> bool:
        """A spec naming ``.tar`` files (a brace pattern need not exist as one path)."""
        return ".tar" in spec

    def detect(self, path: Path) -> bool:
        """A ``.tar`` file."""
        return path.is_file() and path.suffix == ".tar"

    def read(self, path: str, image_root: str | None, on_error: str, split: str | None) -> Read:
        """Always ``DataError``: shards are streamed (``stream``), never read into a list."""
        raise DataError(
            f"{path}: WebDataset shards are streamed, not read into a list: train with --data "
            "webdataset:PATTERN and check them with lint-data --limit"
        )

    def stream(self, spec: str, tokenizer, config, seed: int = 0, **options):
        """A ``ShardStream`` of the shards of ``spec``."""
        from .shards import ShardStream

        return ShardStream(spec, tokenizer, config, seed=seed, **options)

    def __call__(self, options, tokenizer=None):
        """The component factory: a ``ShardStream`` of ``options.data_path``."""
        from geometry_os.systems.pixel_llm.plugin_api import dataset_config

        return self.stream(options.data_path, tokenizer, dataset_config(options))


JSON = JsonList()
JSONL = JsonLines()
COCO = Coco()
KARPATHY = Karpathy()
FLICKR = Flickr()
IMAGEFOLDER = ImageFolder()
WEBDATASET = WebDataset()
