"""A plain wheel install, used from outside the checkout, finds registry.toml, every default plugin, the packaged
training recipes and the ``py.typed`` marker; pyproject.toml alone (no setup.py) lists every package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_pyproject_lists_every_package_and_no_setup_py_is_needed():
    """Package discovery cannot install plugins/ as geometry_os.plugins, so pyproject.toml lists the packages:
    each folder with an ``__init__.py`` under geometry_os/, plugins/ and configs/ must be there."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"geometry_os": "geometry_os", "geometry_os.plugins": "plugins", "geometry_os.configs": "configs"}
    assert setuptools["package-dir"] == roots
    found = set()
    for package, folder in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *parts)))
    assert set(setuptools["packages"]) == found
    assert (REPO / "geometry_os" / "py.typed").is_file()
    assert not (REPO / "setup.py").exists()


def test_the_demo_reads_the_recipe_the_docs_point_to():
    import importlib.resources

    packaged = importlib.resources.files("geometry_os.configs") / "shapes_small.toml"
    assert packaged.read_bytes() == (REPO / "configs" / "shapes_small.toml").read_bytes()


@pytest.mark.slow
def test_wheel_install_lists_every_default_component(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(dist.glob("geometry_os-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"geometry_os/py.typed", "geometry_os/registry.toml", "geometry_os/configs/shapes_small.toml"} <= names
    assert "geometry_os/plugins/serve/static/index.html" in names
    assert not any(name.startswith(("plugins/", "configs/")) for name in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    # The fresh venv sees this environment's dependencies (torch, ...) through a .pth file, but not
    # its editable geometry_os: .pth files are not processed inside directories a .pth adds.
    site = Path(
        subprocess.check_output(
            [bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Every site-packages folder on this interpreter's path, for environments layered through .pth files.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    deps |= {entry for entry in sys.path if Path(entry).name == "site-packages"}
    (site / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEO_OS_") and k != "PYTHONPATH"}
    result = subprocess.run(
        [bin_dir / "geo-os", "pixel-llm", "components", "--json"], cwd=outside, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    names = {(row["kind"], row["name"]) for row in json.loads(result.stdout)}
    expected = {
        ("encoder", "vit"),
        ("decoder", "xattn"),
        ("tokenizer", "simple"),
        ("tokenizer", "bpe"),
        ("tokenizer", "hf"),
        ("dataset", "captions"),
        ("dataset", "shapes"),
        ("decoding_strategy", "greedy"),
        ("decoding_strategy", "sample"),
        ("decoding_strategy", "beam"),
        ("trainer", "amp"),
    }
    assert expected <= names
    where = subprocess.run(
        [bin_dir / "python", "-c", "import geometry_os.plugins.vit as m; print(m.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(REPO) not in where.stdout and str(venv) in where.stdout
    no_top_level = subprocess.run([bin_dir / "python", "-c", "import plugins"], cwd=outside, env=env)
    assert no_top_level.returncode != 0
    recipe = subprocess.run(
        [
            bin_dir / "python",
            "-c",
            "from geometry_os.plugins.commands.demo import FULL, recipe_path as p; print(p(FULL['config']))",
        ],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    installed = Path(recipe.stdout.strip())
    assert (
        str(venv) in str(installed) and installed.read_bytes() == (REPO / "configs" / "shapes_small.toml").read_bytes()
    )
