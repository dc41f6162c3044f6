"""Every Python code block of README.md and docs/*.md runs as written; so does every snippet of the
original description (../shared/seed/pixel_llm_README.md) when that file is present, with the data files
it expects created first and only sizes reduced where its own values would make training too slow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "seed" / "pixel_llm_README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def run_blocks(blocks: list[str], label: str) -> dict:
    """Run the blocks in order in one namespace, as a reader pasting them into one session would."""
    namespace: dict = {"__name__": "__snippet__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{label} block {i + 1}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{label} block {i + 1} failed: {type(exc).__name__}: {exc}\n{code}") from exc
    return namespace


DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documentation_code_blocks_run(path, tmp_path, monkeypatch):
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip(f"{path.name} has no Python code blocks")
    monkeypatch.chdir(tmp_path)
    run_blocks(blocks, path.name)


def write_seed_data(root: Path, n: int = 8) -> None:
    """data/captions.json in the seed's format, with absolute image paths so that both of its dataset
    snippets (default image_root, and image_root="data/images") find the images."""
    import json

    from geometry_os.plugins.datasets.shapes import caption, make_split, render_scene

    images = root / "data" / "images"
    images.mkdir(parents=True)
    entries = []
    for i, scene in enumerate(make_split(n, 0, "train")):
        path = images / f"scene{i}.png"
        render_scene(scene, 64).save(path)
        entries.append({"image": str(path.resolve()), "caption": caption(scene)})
    (root / "data" / "captions.json").write_text(json.dumps(entries))


# Only sizes change, and only where the seed's values would make the training loop too slow for a test.
SEED_SIZES = [
    ("image_size=256,", "image_size=64,"),
    ("vision_embed_dim=768,", "vision_embed_dim=64,"),
    ("vision_num_layers=6,", "vision_num_layers=1,"),
    ("text_embed_dim=768,", "text_embed_dim=64,"),
    ("text_num_layers=12,", "text_num_layers=1,"),
    ("batch_size=32,", "batch_size=4,"),
    ("num_epochs=10,", "num_epochs=2,"),
]


@pytest.mark.slow
@pytest.mark.skipif(not SEED.is_file(), reason="the original description is not beside this checkout")
def test_original_description_snippets_run(tmp_path, monkeypatch):
    text = SEED.read_text(encoding="utf-8")
    for old, new in SEED_SIZES:
        assert old in text, f"expected {old!r} in the seed README"
        text = text.replace(old, new)
    blocks = BLOCK.findall(text)
    assert len(blocks) >= 10
    monkeypatch.chdir(tmp_path)
    write_seed_data(tmp_path)
    namespace = run_blocks(blocks, "seed README")
    assert namespace["captions"].shape[0] == 1
    assert (tmp_path / "checkpoints").is_dir()


@pytest.mark.slow
def test_seed_shell_commands_run_as_documented():
    """`cd geometry_os/systems/pixel_llm && pytest tests/test_pixel_llm.py -v` (which also runs
    `python demo_pixel_llm.py` there), as the original description's "Examples" and "Running Tests" say."""
    import subprocess
    import sys

    folder = REPO / "geometry_os" / "systems" / "pixel_llm"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_pixel_llm.py", "-v", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 passed" in result.stdout


def test_reference_docs_are_current():
    """docs/configuration.md and docs/cli.md are generated from the code and must match it."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_reference_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
