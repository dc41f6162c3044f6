"""A third-party plugin written against ``plugin_api`` alone works end to end from the command line.

The plugin is the one docs/plugins.md shows ("A decoding strategy with options, and a caption format"): its
source is read from the doc, installed as a distribution with an entry point, and driven through ``geo-os`` in
child processes: listed, trained on a ``.tsv`` file, captioning and evaluating with the strategy's options.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_plugin_dist
from test_dependency_rule import imported_modules, plugin_violations

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- tests/test_third_party_plugin.py installs this block as geo_caption_extras.py -->"
MODULE = "geo_caption_extras"
COLOURS = ("red", "green", "blue", "yellow")


def plugin_source() -> str:
    """The plugin module exactly as docs/plugins.md prints it (the code block after ``MARKER``)."""
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    match = re.search(re.escape(MARKER) + r"\n```python\n(.*?)```", doc, re.S)
    assert match, f"docs/plugins.md has no python block after {MARKER}"
    return match.group(1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The plugin installed under ``site/``, four one-colour images and their ``train.tsv``."""
    from PIL import Image

    root = tmp_path_factory.mktemp("third_party")
    make_plugin_dist(root / "site", "geo-caption-extras", "1.0.0", MODULE, plugin_source(), "extras")
    (root / "images").mkdir()
    for colour in COLOURS:
        Image.new("RGB", (32, 32), colour).save(root / "images" / f"{colour}.png")
    lines = [f"images/{colour}.png\ta {colour} square\n" for colour in COLOURS]
    (root / "train.tsv").write_text("".join(lines * 2), encoding="utf-8")
    yield root
    sys.modules.pop(MODULE, None)


def geo_os(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``geo-os ARGS`` in a child process that finds the plugin through its entry point (and only there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(workspace / "site"), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    exe = Path(sys.executable).with_name("geo-os")
    return subprocess.run(
        [str(exe), *args], cwd=workspace, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_the_plugin_imports_nothing_of_geometry_os_but_the_plugin_api():
    source = plugin_source()
    assert plugin_violations(source, MODULE, MODULE) == []
    targets = {target.rpartition(".")[0] for _, target in imported_modules(source, MODULE)}
    assert {t for t in targets if t.startswith("geometry_os")} == {"geometry_os.systems.pixel_llm.plugin_api"}


def test_a_third_party_strategy_with_options_and_format_work_from_the_cli(workspace):
    listed = geo_os(workspace, "pixel-llm", "plugins")
    assert listed.returncode == 0, listed.stderr
    assert "extras [geo-caption-extras 1.0.0] (entry point, pixel_llm): loaded" in listed.stdout
    assert "components: dataset:tsv, decoding_strategy:exact-words" in listed.stdout

    trained = geo_os(
        workspace,
        *("pixel-llm", "train", "--preset", "tiny", "--set", "image_size=32", "--data", "tsv:train.tsv"),
        *("--max-steps", "3", "--batch-size", "4", "--out", "run", "--quiet"),
    )
    assert trained.returncode == 0, trained.stderr
    assert "trained 3 steps" in trained.stdout
    assert (workspace / "run" / "latest").exists()

    images = [f"images/{colour}.png" for colour in COLOURS[:2]]
    caption = ("pixel-llm", "caption", *images, "--checkpoint", "run", "--json", "--strategy", "exact-words")
    for words in (2, 5):
        result = geo_os(workspace, *caption, "--strategy-option", f"words={words}")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert [row["image"] for row in rows] == images
        assert [len(row["caption"].split()) for row in rows] == [words, words]  # the option reached the strategy

    refused = geo_os(workspace, *caption, "--strategy-option", "speed=2")
    assert refused.returncode != 0
    assert "decoding_strategy 'exact-words': speed: Extra inputs are not permitted" in refused.stderr

    evaluate = (
        "pixel-llm",
        "eval",
        "--checkpoint",
        "run",
        "--data",
        "train.tsv",
        "--json",
        "--strategy",
        "exact-words",
    )
    result = geo_os(workspace, *evaluate, "--strategy-option", "words=4")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["num_images"] == len(COLOURS)  # the .tsv file was read through the plugin's format
    examples = report["examples"]
    assert examples and {len(example["prediction"].split()) for example in examples} == {4}
    assert {Path(example["image"]).name for example in examples} <= {f"{colour}.png" for colour in COLOURS}
    assert all(example["references"][0].startswith("a ") for example in examples)
