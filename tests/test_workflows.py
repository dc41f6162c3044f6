"""The workflows as library functions: ``train``, ``caption`` and ``evaluate`` called from Python raise the
project's errors, print nothing on stdout, leave ``warnings.showwarning`` alone and need no click."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from geometry_os.errors import GeometryOSError, TrainingError, UsageError
from geometry_os.plugins.datasets.shapes import caption, make_split, render_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_RUN = ["trainer.max_steps=2", "trainer.warmup_steps=1", "trainer.batch_size=4"]


def write_captions(folder: Path, n: int = 6, size: int = 32) -> Path:
    """A JSON list of ``n`` synthetic scenes beside their images."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, scene in enumerate(make_split(n, 0, "train")):
        render_scene(scene, size).save(folder / f"{i}.png")
        entries.append({"image": f"{i}.png", "caption": caption(scene)})
    path = folder / "captions.json"
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A two-step run trained through ``workflows.train`` (stdout and ``warnings.showwarning`` recorded)."""
    import contextlib
    import io

    from geometry_os.host import set_host
    from geometry_os.systems.pixel_llm import workflows

    previous = set_host(None)
    root = tmp_path_factory.mktemp("workflows")
    data = write_captions(root / "data")
    shown = warnings.showwarning
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        summary = workflows.train(
            preset="tiny", data_path=str(data), out=str(root / "run"), overrides=TINY_RUN, quiet=True
        )
    set_host(previous)
    return {"data": data, "run": root / "run", "summary": summary, "stdout": stdout.getvalue(), "shown": shown}


def test_train_is_a_function_that_returns_the_summary(tiny_run):
    summary = tiny_run["summary"]
    assert summary["global_step"] == 2
    assert Path(summary["checkpoint_dir"]) == tiny_run["run"]
    assert (tiny_run["run"] / "latest").is_file()
    assert tiny_run["stdout"] == ""
    assert warnings.showwarning is tiny_run["shown"]


def test_caption_and_evaluate_are_functions(tiny_run):
    from geometry_os.systems.pixel_llm import workflows
    from geometry_os.systems.pixel_llm.captioning import CaptionResult
    from geometry_os.systems.pixel_llm.generation_config import GenerationConfig

    images = [str(tiny_run["data"].parent / "0.png"), str(tiny_run["data"].parent / "1.png")]
    results = list(workflows.caption(tiny_run["run"], images, GenerationConfig(max_length=8), batch_size=2))
    assert [type(r) for r in results] == [CaptionResult, CaptionResult]
    assert [Path(r.image).name for r in results] == ["0.png", "1.png"]
    assert all(r.error is None and isinstance(r.caption, str) for r in results)
    metrics = workflows.evaluate(tiny_run["run"], str(tiny_run["data"]), max_images=3)
    assert metrics["num_images"] == 3 and 0.0 <= metrics["exact_match"] <= 1.0 and "setting" not in metrics
    rows = workflows.evaluate_settings(
        tiny_run["run"], str(tiny_run["data"]), [("a", GenerationConfig()), ("b", GenerationConfig(num_beams=2))]
    )
    assert [row["setting"] for row in rows] == ["a", "b"] and rows[0]["num_images"] == 6


def test_workflow_errors_are_the_projects_own(tiny_run, tmp_path):
    from geometry_os.errors import CheckpointError, ConfigError
    from geometry_os.systems.pixel_llm import workflows

    data = str(tiny_run["data"])
    with pytest.raises(TrainingError, match="already holds a training run; resume it"):
        workflows.train(preset="tiny", data_path=data, out=str(tiny_run["run"]), overrides=TINY_RUN, quiet=True)
    with pytest.raises(UsageError, match="--init-from starts a new run; --resume continues one"):
        workflows.train(preset="tiny", resume="latest", init_from=str(tiny_run["run"]), quiet=True)
    with pytest.raises(UsageError, match="controls: 'nope' is not a trainer field"):
        workflows.train(preset="tiny", controls={"nope": 1}, quiet=True)
    with pytest.raises(ConfigError, match=r"^trainer\.lora_rank"):
        workflows.train(preset="tiny", controls={"lora_rank": "many"}, quiet=True)
    with pytest.raises(ConfigError, match=r"^trainer\.max_steps"):  # a flag's invalid value, as a control's
        workflows.train(preset="tiny", max_steps=0, quiet=True)
    with pytest.raises(UsageError, match="--val-data needs --data"):
        workflows.train(preset="tiny", val_path=data, out=str(tmp_path / "r"), quiet=True)
    with pytest.raises(TypeError, match="unknown flags: colour"):
        workflows.train(preset="tiny", colour="red")
    with pytest.raises(ConfigError, match="--device 'banana'"):
        workflows.caption(tiny_run["run"], [data.replace("captions.json", "0.png")], device="banana")
    with pytest.raises(CheckpointError):
        workflows.evaluate(tmp_path / "missing", data)


def test_train_system_call_prints_nothing_and_raises_project_errors(tiny_run, tmp_path, capsys):
    """``host.call("pixel_llm.train", ...)`` from Python: a bad option is a one-line GeometryOSError, nothing is
    written to stdout, and ``warnings.showwarning`` is what it was before the call."""
    from geometry_os.host import Host

    host = Host()
    shown = warnings.showwarning
    with pytest.raises(GeometryOSError) as refused:
        host.call("pixel_llm.train", preset="tiny", data=str(tiny_run["data"]), out=str(tiny_run["run"]))
    assert isinstance(refused.value, TrainingError)
    assert "\n" not in str(refused.value) and "already holds a training run" in str(refused.value)
    with pytest.raises(UsageError, match="^--val-data needs --data"):
        host.call("pixel_llm.train", preset="tiny", val_data=str(tiny_run["data"]), out=str(tmp_path / "v"))
    with pytest.raises(GeometryOSError):
        host.call("pixel_llm.train", preset="tiny", overrides=["trainer.batch_size=0"], out=str(tmp_path / "b"))
    summary = host.call(
        "pixel_llm.train", preset="tiny", data=str(tiny_run["data"]), out=str(tmp_path / "ok"), overrides=TINY_RUN
    )
    assert summary["global_step"] == 2
    assert capsys.readouterr().out == ""
    assert warnings.showwarning is shown


def test_the_core_workflow_needs_no_click(tiny_run, tmp_path):
    """Train, caption and evaluate from Python in a fresh process whose plugins do not register commands
    that need click: click is never imported, so no core module on these paths imports it."""
    import ast

    source = (Path(__file__).parents[1] / "geometry_os" / "systems" / "pixel_llm" / "workflows.py").read_text()
    imported = {
        name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert "click" not in imported and "geometry_os" in imported
    code = f"""
import json, sys
from geometry_os.systems.pixel_llm import workflows
data = {str(tiny_run["data"])!r}
out = {str(tmp_path / "run")!r}
summary = workflows.train(preset="tiny", data_path=data, out=out, overrides={TINY_RUN!r}, quiet=True)
results = list(workflows.caption(out, [data.replace("captions.json", "0.png")]))
metrics = workflows.evaluate(out, data, max_images=2)
print(json.dumps({{"click": "click" in sys.modules, "steps": summary["global_step"],
                  "captioned": results[0].error is None, "images": metrics["num_images"]}}))
"""
    env = {**os.environ, "GEO_OS_DISABLE_PLUGINS": "commands,pretrained,serve", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "click": False,
        "steps": 2,
        "captioned": True,
        "images": 2,
    }


def test_the_trainer_run_entry_point_is_the_workflow(monkeypatch):
    """``PixelLLMTrainer.run(**options)`` (used by scripts) is ``workflows.train`` with the plugin's importer."""
    from geometry_os.plugins.amp_trainer import init_from
    from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
    from geometry_os.systems.pixel_llm import workflows

    seen: dict = {}
    monkeypatch.setattr(workflows, "train", lambda **options: seen.update(options) or {"global_step": 0})
    assert PixelLLMTrainer.run(preset="tiny", quiet=True) == {"global_step": 0}
    assert seen == {"convert": init_from.convert, "preset": "tiny", "quiet": True}


def test_the_amp_trainer_is_a_trainer(tmp_path):
    """The registry's trainer provides what the workflow calls (``protocols.Trainer``)."""
    from geometry_os.plugins.datasets.shapes_dataset import ShapesDataset
    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.config import TrainerConfig
    from geometry_os.systems.pixel_llm.protocols import Trainer, TrainingWorld
    from geometry_os.systems.pixel_llm.resolution import get_component

    trainer_cls = get_component("trainer").load()
    data = ShapesDataset(8, seed=0, image_size=32)
    loader = trainer_cls.make_dataloader(data, 4, shuffle=True, seed=0, pad_token_id=data.tokenizer.pad_token_id)
    config = TrainerConfig(max_steps=1, warmup_steps=0, checkpoint_dir=str(tmp_path / "run"))
    model = create_pixel_llm(vocab_size=len(data.tokenizer), preset="tiny")
    trainer = trainer_cls(model, config, loader, None, tokenizer=data.tokenizer, quiet=True)
    assert isinstance(trainer, Trainer) and isinstance(trainer.world, TrainingWorld) and trainer.world.is_main
