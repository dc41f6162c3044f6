"""A plain wheel install, used from outside the checkout, finds registry.toml and every default plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_lists_every_default_component(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(dist.glob("geometry_os-*.whl"))
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
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
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
