"""``geo-os pixel-llm make-shapes`` and ``lint-data``. No torch at import time (``--help`` stays fast).

make-shapes writes, into OUT::

    images/<split>/<index:06d>.png     one PNG per scene
    <split>.json                       the seed's format, [{"image": "images/...", "caption": "..."}]
    captions.json                      every split's entries together

The scenes of split ``s`` are ``shapes.make_split(count_s, seed, s, splits)``: the same as the in-memory
``shapes`` dataset for the same seed and count (with the default splits). With ``--hold-out``, the
splits never contain the held-out colour-kind pairs and a ``compositional`` split (as many scenes as
the last split) contains only scenes with at least one of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import click

from geometry_os.plugins.datasets.shapes import (
    COLOURS,
    COMPOSITIONAL,
    DEFAULT_SPLITS,
    KINDS,
    MAX_OBJECTS,
    RELATIONS,
    Pair,
    caption,
    make_split,
    parse_pairs,
    render_scene,
)
from geometry_os.systems.pixel_llm.plugin_api import image_root_option

_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_DEFAULT_SPLITS_TEXT = ",".join(f"{k}={v}" for k, v in DEFAULT_SPLITS.items())


def parse_splits(text: str) -> dict[str, float]:
    """``"train=0.8,val=0.1,test=0.1"`` -> fractions that sum to 1 (ValueError names the bad part)."""
    splits: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not _SPLIT_NAME.fullmatch(name) or name in ("captions", COMPOSITIONAL):
            raise ValueError(
                f"{part.strip()!r} is not NAME=FRACTION "
                f"(NAME: letters, digits, _ or -, not 'captions' or '{COMPOSITIONAL}')"
            )
        if name in splits:
            raise ValueError(f"split {name!r} is given twice")
        try:
            splits[name] = float(value)
        except ValueError:
            raise ValueError(f"{part.strip()!r}: fraction {value!r} is not a number") from None
        if not 0 < splits[name] <= 1:
            raise ValueError(f"{part.strip()!r}: fraction must be in (0, 1]")
    if abs(sum(splits.values()) - 1) > 1e-6:
        raise ValueError(f"fractions sum to {sum(splits.values()):g}, not 1")
    return splits


def split_counts(n: int, splits: dict[str, float]) -> dict[str, int]:
    """``n`` divided by the fractions, rounding by largest remainder so the counts sum to ``n``."""
    exact = {name: n * f for name, f in splits.items()}
    counts = {name: int(x) for name, x in exact.items()}
    for name in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


def _write_entries(path: Path, entries: list[dict]) -> None:
    """A JSON list with one entry per line (readable, diffable, and errors point at a line)."""
    body = ",\n".join(" " + json.dumps(e) for e in entries)
    path.write_text(f"[\n{body}\n]\n" if entries else "[]\n", encoding="utf-8")


def _write_dataset(
    staging: Path,
    counts: dict[str, int],
    seed: int,
    image_size: int,
    splits: dict,
    hold_out: frozenset[Pair] = frozenset(),
    max_objects: int = 3,
) -> None:
    everything = []
    for split, count in counts.items():
        folder = staging / "images" / split
        folder.mkdir(parents=True)
        entries = []
        for i, scene in enumerate(make_split(count, seed, split, splits, hold_out=hold_out, max_objects=max_objects)):
            name = f"images/{split}/{i:06d}.png"
            render_scene(scene, image_size).save(staging / name, format="PNG")
            entries.append({"image": name, "caption": caption(scene)})
        _write_entries(staging / f"{split}.json", entries)
        everything += entries
    _write_entries(staging / "captions.json", everything)


def _commit(staging: Path, out: Path, names: list[str]) -> None:
    """Move the finished outputs into OUT, images first, so caption files never point at missing images.
    Images are replaced one split folder at a time: other folders under ``images/`` stay."""
    trash = staging / ".old"
    trash.mkdir()
    if "images" in names:
        (out / "images").mkdir(exist_ok=True)
        (trash / "images").mkdir()
        names = [f"images/{split.name}" for split in sorted((staging / "images").iterdir())] + [
            n for n in names if n != "images"
        ]
    for name in names:
        if (out / name).exists():
            os.replace(out / name, trash / name)
        os.replace(staging / name, out / name)


@click.command("make-shapes")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--n", "n", required=True, type=click.IntRange(min=1), help="Number of scenes over all splits.")
@click.option("--seed", default=0, show_default=True, type=int, help="The same seed writes the same scenes.")
@click.option("--image-size", default=64, show_default=True, type=click.IntRange(min=8), help="Pixels per side.")
@click.option(
    "--splits",
    "splits_text",
    default=_DEFAULT_SPLITS_TEXT,
    show_default=True,
    help="NAME=FRACTION,... summing to 1; a split gets <NAME>.json and images/<NAME>/.",
)
@click.option(
    "--hold-out",
    "hold_out_text",
    default=None,
    metavar="'COLOUR KIND,...'",
    help="Colour-kind pairs no split contains; adds a 'compositional' split of scenes that contain one.",
)
@click.option(
    "--max-objects",
    default=3,
    show_default=True,
    type=click.IntRange(1, MAX_OBJECTS),
    help="Shapes per scene are drawn from 1..N (more than 3: longer scenes than the default).",
)
@click.option("--overwrite", is_flag=True, help="Replace the outputs in a non-empty OUT (other files are kept).")
def make_shapes(
    out: Path,
    n: int,
    seed: int,
    image_size: int,
    splits_text: str,
    hold_out_text: str | None,
    max_objects: int,
    overwrite: bool,
) -> None:
    """Write N synthetic scenes as PNG files plus caption files (<split>.json and captions.json)."""
    try:
        splits = parse_splits(splits_text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--splits") from None
    try:
        hold_out = parse_pairs(hold_out_text) if hold_out_text is not None else frozenset()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--hold-out") from None
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise click.UsageError(f"{out} is not empty; pass --overwrite to replace its images and caption files")
    counts = {name: c for name, c in split_counts(n, splits).items() if c > 0}
    if hold_out:
        counts[COMPOSITIONAL] = counts[list(counts)[-1]]
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".make-shapes-", dir=out))
        try:
            _write_dataset(staging, counts, seed, image_size, splits, hold_out, max_objects)
            _commit(staging, out, ["images", *(f"{s}.json" for s in counts), "captions.json"])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        raise click.ClickException(f"{e.filename or out}: {e.strerror or e}") from None
    summary = ", ".join(f"{c} {s}" for s, c in counts.items())
    click.echo(f"wrote {sum(counts.values())} scenes to {out}: {summary} (captions.json lists all)")


make_shapes.help = (
    f"{make_shapes.help}\n\nCaptions: 'a SIZE COLOUR KIND' joined by relations, left to right. "
    f"Colours: {', '.join(COLOURS)}. Kinds: {', '.join(KINDS)}. Sizes: small, large. "
    f"Relations: {', '.join(RELATIONS)}."
)


@click.command("lint-data")
@click.argument("data", nargs=-1, required=True, metavar="[FORMAT:]PATH...")
@click.option(
    "--vocab",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A saved tokenizer JSON: report the out-of-vocabulary rate and lengths in its tokens.",
)
@image_root_option
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test"]),
    default=None,
    help="Only this part of a split file (karpathy; restval counts as train).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Streamed formats (WebDataset shards): check this many samples, streaming.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def lint_data(
    data: tuple[str, ...], vocab: Path | None, image_root: str | None, split: str | None, limit: int, as_json: bool
) -> None:
    """Check caption data of any registered format and all its images; report every problem; exit 1 if there
    are errors."""
    from geometry_os.plugins.datasets.lint import format_report, lint_files, load_vocab

    tokenizer = None
    if vocab is not None:
        try:
            tokenizer = load_vocab(vocab)
        except ValueError as e:
            raise click.ClickException(" ".join(str(e).split())) from None
    report = lint_files(
        [str(p) for p in data], tokenizer, vocab_path=vocab, image_root=image_root, split=split, limit=limit
    )
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if report["errors"]:
        raise click.exceptions.Exit(1)
