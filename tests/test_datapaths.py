"""The data paths a user has: image roots on every command (the COCO layout trains from the CLI), run
folders as checkpoints, images of the model's size, lint-data catching what train refuses or degrades,
bounded disk use, warm-up fitted to the run, the time estimate, and the train flags."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from cli_output import without_dtype_note
from click.testing import CliRunner
from PIL import Image, ImageDraw

from geometry_os.cli import cli
from geometry_os.errors import CheckpointError
from geometry_os.plugins.amp_trainer import trainer as trainer_module
from geometry_os.plugins.amp_trainer.fit import ImageSizeError, fitted_warmup
from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
from geometry_os.plugins.datasets.shapes import caption, make_split, render_scene
from geometry_os.systems.pixel_llm import PixelLLM, create_pixel_llm
from geometry_os.systems.pixel_llm.config import TrainerConfig
from geometry_os.systems.pixel_llm.data import ImageTextDataset, create_dataloader
from geometry_os.systems.pixel_llm.data_config import DatasetConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def invoke(*args: str):
    return CliRunner().invoke(cli, ["pixel-llm", *args])


def write_coco(root: Path, n_train: int = 12, n_val: int = 4, size: int = 32) -> Path:
    """The standard COCO layout: ``annotations/captions_{train,val}.json`` beside ``images/{train,val}/``;
    ``file_name`` is relative to the images folder, not to the annotation file."""
    (root / "annotations").mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        folder = root / "images" / split
        folder.mkdir(parents=True)
        images, annotations = [], []
        for i, scene in enumerate(make_split(n, 0, split)):
            render_scene(scene, size).save(folder / f"{i:04d}.png")
            images.append({"id": i, "file_name": f"{split}/{i:04d}.png"})
            annotations.append({"id": i, "image_id": i, "caption": caption(scene)})
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations})
        )
    return root


def write_list(folder: Path, n: int, size: int = 32, seed: int = 0, split: str = "train") -> Path:
    """A JSON list of ``n`` scenes beside its images (the original description's format)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, scene in enumerate(make_split(n, seed, split)):
        render_scene(scene, size).save(folder / f"{split}{i}.png")
        entries.append({"image": f"{split}{i}.png", "caption": caption(scene)})
    path = folder / f"{split}.json"
    path.write_text(json.dumps(entries))
    return path


# ---- a tiny run on the COCO layout, trained once through the CLI with every new flag ------------------------


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory) -> tuple[Path, Path, object]:
    root = write_coco(tmp_path_factory.mktemp("coco"))
    run = root / "run"
    result = invoke(
        "train",
        "--preset",
        "tiny",
        "--data",
        str(root / "annotations" / "captions_train.json"),
        "--val-data",
        str(root / "annotations" / "captions_val.json"),
        "--image-root",
        str(root / "images"),
        "--max-steps",
        "3",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "0.002",
        "--max-time",
        "300",
        "--tokenizer",
        "bpe",
        "--out",
        str(run),
        "--quiet",
        "--set",
        "trainer.warmup_steps=1",
        "--set",
        "trainer.checkpoint_interval=1",
        "--set",
        "trainer.val_interval=1",
    )
    return root, run, result


def test_coco_layout_trains_from_the_cli_with_image_root(coco_run):
    root, run, result = coco_run
    assert result.exit_code == 0, result.output
    assert (run / "best" / "config.json").is_file()
    state = json.loads((run / "step-00000003" / "trainer_state.json").read_text())
    saved = state["trainer_config"]
    # --val-image-root defaults to --image-root; both are saved absolute so that --resume finds the images
    assert saved["image_root"] == saved["val_image_root"] == str((root / "images").resolve())


def test_without_image_root_the_coco_images_are_looked_for_beside_the_annotations(coco_run, tmp_path):
    root, _, _ = coco_run
    result = invoke(
        "train",
        "--preset",
        "tiny",
        "--data",
        str(root / "annotations" / "captions_train.json"),
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{root / 'annotations' / 'train' / '0000.png'}: no such file" in result.output  # when the set is built
    assert (
        f"relative image paths start from image_root (default: the caption file's folder) {root / 'annotations'}"
        in (" ".join(result.output.split()))
    )


def test_train_flags_reach_the_trainer_settings(coco_run):
    _, run, _ = coco_run
    saved = json.loads((run / "step-00000003" / "trainer_state.json").read_text())["trainer_config"]
    assert (saved["max_steps"], saved["num_epochs"], saved["batch_size"]) == (3, 2, 4)
    assert (saved["learning_rate"], saved["max_time_s"], saved["tokenizer"]) == (0.002, 300.0, "bpe")
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["tokenizer"]["component"] == "bpe"  # the bpe tokenizer, reachable from the CLI


def test_validation_set_uses_the_training_tokenizer(monkeypatch, tmp_path):
    from geometry_os.systems.pixel_llm import workflows
    from geometry_os.systems.pixel_llm.config import load_config

    root = write_coco(tmp_path, n_train=6, n_val=2)
    config = load_config(
        None,
        [
            f"trainer.data={root / 'annotations' / 'captions_train.json'}",
            f"trainer.val_data={root / 'annotations' / 'captions_val.json'}",
            f"trainer.image_root={root / 'images'}",
            f"trainer.val_image_root={root / 'images'}",
            "trainer.tokenizer=bpe",
        ],
        "tiny",
    )
    train_set, val_set, tokenizer = workflows.build_datasets(config, None)
    assert train_set.tokenizer is tokenizer and val_set.tokenizer is tokenizer


def test_image_root_has_one_meaning_on_every_command(coco_run, tmp_path):
    root, run, _ = coco_run
    val = str(root / "annotations" / "captions_val.json")
    images = str(root / "images")
    lint = invoke("lint-data", val, "--image-root", images)
    assert lint.exit_code == 0, lint.output
    evaluated = invoke("eval", "--data", val, "--image-root", images, "--checkpoint", str(run / "best"), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["num_images"] == 4
    missing = str(tmp_path / "nowhere")
    for args in (
        ("lint-data", val),
        ("eval", "--data", val, "--checkpoint", str(run / "best")),
        ("train", "--data", val, "--out", str(tmp_path / "r")),
        ("train", "--data", val, "--val-data", val, "--out", str(tmp_path / "r"), "--val-image-root"),
    ):
        flag = () if args[-1] == "--val-image-root" else ("--image-root",)
        result = invoke(*args, *flag, missing)
        assert result.exit_code == 2, (args, result.output)
        assert "nowhere' does not exist" in result.output and "Traceback" not in result.output


def test_set_image_root_is_a_trainer_setting():
    from geometry_os.systems.pixel_llm.config import load_config

    config = load_config(None, ["image_root=imgs", "trainer.val_image_root=val_imgs", "tokenizer=bpe"], "tiny")
    assert (config.trainer.image_root, config.trainer.val_image_root, config.trainer.tokenizer) == (
        "imgs",
        "val_imgs",
        "bpe",
    )


def test_unknown_tokenizer_is_one_line(coco_run, tmp_path):
    root, _, _ = coco_run
    result = invoke(
        "train",
        "--preset",
        "tiny",
        "--data",
        str(root / "annotations" / "captions_train.json"),
        "--image-root",
        str(root / "images"),
        "--tokenizer",
        "wordpiece",
        "--out",
        str(tmp_path / "r"),
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "wordpiece" in result.output and "bpe" in result.output and "simple" in result.output


def test_help_says_where_the_other_keys_are_and_info_shows_the_trainer():
    help_text = invoke("train", "--help").output
    for flag in (
        "--max-steps",
        "--epochs",
        "--batch-size",
        "--lr",
        "--max-time",
        "--tokenizer",
        "--image-root",
        "--val-image-root",
    ):
        assert flag in help_text
    assert "docs/configuration.md" in " ".join(help_text.split())
    info = invoke("info", "--preset", "tiny", "--set", "trainer.warmup_steps=7")
    assert info.exit_code == 0, info.output
    assert "trainer:" in info.output and "  warmup_steps = 7" in info.output and "  save_total_limit = 2" in info.output
    as_json = json.loads(invoke("info", "--preset", "tiny", "--json").output)
    assert as_json["trainer"]["learning_rate"] == 1e-4


# ---- a run folder stands for its best (else latest) checkpoint -----------------------------------------------


def test_checkpoint_run_folder_resolves_to_best_then_latest(coco_run, tmp_path, caplog):
    root, run, _ = coco_run
    image = str(root / "images" / "val" / "0000.png")
    result = invoke("caption", image, "--checkpoint", str(run))
    assert result.exit_code == 0, result.output
    assert (
        without_dtype_note(result.stderr)
        == f"Warning: {run} is a training run: using its best checkpoint, {run / 'best'}\n"
    )
    assert result.stdout.startswith(image)

    with caplog.at_level(logging.WARNING):
        model, tokenizer = PixelLLM.from_pretrained(run)
    assert "using its best checkpoint" in caplog.text and tokenizer is not None
    best, _ = PixelLLM.from_pretrained(run / "best")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), best.state_dict().values()))

    no_best = tmp_path / "no_best"
    shutil.copytree(run, no_best, ignore=shutil.ignore_patterns("best"))
    result = invoke("caption", image, "--checkpoint", str(no_best))
    assert result.exit_code == 0, result.output
    assert f"using its latest checkpoint, {no_best / 'step-00000003'}" in result.stderr

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: missing config.json"):
        PixelLLM.from_pretrained(tmp_path / "empty")


def test_trainer_load_checkpoint_takes_a_run_folder(coco_run, tmp_path):
    root, run, _ = coco_run
    model, tokenizer = PixelLLM.from_pretrained(run / "best")
    dataset = ImageTextDataset(
        root / "annotations" / "captions_train.json",
        tokenizer=tokenizer,
        config=DatasetConfig(**model.config.image_options()),
        image_root=root / "images",
    )
    loader = create_dataloader(dataset, batch_size=4)
    trainer = PixelLLMTrainer(
        model.train(),
        TrainerConfig(
            checkpoint_dir=str(tmp_path / "c"),
            max_steps=3,
            warmup_steps=1,
            batch_size=4,
            learning_rate=0.002,
            use_amp=False,
        ),
        loader,
        quiet=True,
    )
    state = trainer.load_checkpoint(run)
    assert state is not None and trainer.global_step == 3  # the latest checkpoint of the run, resumed


# ---- images of the model's size ----------------------------------------------------------------------------


def tiny(vocab: int) -> PixelLLM:
    torch.manual_seed(0)
    return create_pixel_llm(vocab_size=vocab, preset="tiny")  # 32-px images


def test_dataset_with_default_image_options_takes_the_models(tmp_path):
    data = write_list(tmp_path / "d", 6)
    dataset = ImageTextDataset(data)  # the original description's call: DatasetConfig() is 224 px
    assert dataset[0]["image"].shape[-1] == 224
    model = tiny(len(dataset.tokenizer))
    loader = create_dataloader(dataset, batch_size=3)
    trainer = PixelLLMTrainer(
        model,
        TrainerConfig(checkpoint_dir=str(tmp_path / "c"), max_steps=1, use_amp=False, warmup_steps=0),
        loader,
        quiet=True,
    )
    assert dataset.config.image_size == 32 and dataset[0]["image"].shape == (3, 32, 32)
    assert trainer._notices == [
        "training data: its DatasetConfig left image_size at the default; using the model's image_size=32"
    ]
    trainer.train()


def test_dataset_with_another_explicit_size_is_refused_in_one_line(tmp_path):
    data = write_list(tmp_path / "d", 6)
    dataset = ImageTextDataset(data, config=DatasetConfig(image_size=64))
    loader = create_dataloader(dataset, batch_size=3)
    with pytest.raises(ImageSizeError) as info:
        PixelLLMTrainer(tiny(len(dataset.tokenizer)), TrainerConfig(checkpoint_dir=str(tmp_path / "c")), loader)
    message = str(info.value)
    assert "\n" not in message and "image_size=64" in message and "model was built for image_size=32" in message


def test_batches_of_another_size_are_refused_at_the_first_step(tmp_path):
    from geometry_os.systems.pixel_llm.resolution import get_component

    scenes = get_component("dataset", "shapes").build({"n": 6, "seed": 0, "image_size": 48})
    loader = create_dataloader(torch.utils.data.Subset(scenes, range(6)), batch_size=3)  # no DatasetConfig to read
    trainer = PixelLLMTrainer(
        tiny(len(scenes.tokenizer)),
        TrainerConfig(checkpoint_dir=str(tmp_path / "c"), warmup_steps=1, use_amp=False),
        loader,
        quiet=True,
    )
    with pytest.raises(
        ImageSizeError, match="a batch has 48x48-pixel images but the model was built for image_size=32"
    ):
        trainer.train()
    assert trainer.global_step == 0


# ---- lint-data flags what train refuses or degrades ------------------------------------------------------------


def test_lint_errors_on_files_without_usable_entries(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "coco.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []}))
    result = invoke("lint-data", str(tmp_path / "empty.json"), str(tmp_path / "coco.json"))
    assert result.exit_code == 1
    assert "empty.json: no usable entries" in result.output and "coco.json: no usable entries" in result.output
    assert "coco.json: 1 of its images have no caption" in result.output
    assert "2 errors, 1 warning" in result.output


def test_lint_warns_about_images_flattened_to_one_colour(tmp_path):
    drawn = []
    for name, ink in (("black_on_clear.png", (0, 0, 0, 255)), ("white_on_clear.png", (255, 255, 255, 255))):
        image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
        ImageDraw.Draw(image).rectangle((8, 8, 24, 24), fill=ink)
        image.save(tmp_path / name)
        drawn.append({"image": name, "caption": "a square"})
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "flat.png")
    drawn.append({"image": "flat.png", "caption": "nothing"})
    (tmp_path / "c.json").write_text(json.dumps(drawn))
    result = invoke("lint-data", str(tmp_path / "c.json"))
    assert result.exit_code == 0, result.output
    assert "black_on_clear.png (" in result.output and "once its transparency is flattened onto black" in result.output
    assert "flat.png (" in result.output and "is a single colour (9, 9, 9) as loaded" in result.output
    assert "white_on_clear.png (" not in result.output
    assert "0 errors, 2 warnings" in result.output


def test_lint_lists_validation_words_the_training_vocabulary_lacks(tmp_path):
    render_scene(make_split(1, 0, "train")[0], 16).save(tmp_path / "a.png")
    render_scene(make_split(1, 0, "val")[0], 16).save(tmp_path / "b.png")
    (tmp_path / "train.json").write_text(json.dumps([{"image": "a.png", "caption": "a red circle"}]))
    (tmp_path / "val.json").write_text(json.dumps([{"image": "b.png", "captions": ["a red zebra", "a zebra, purple"]}]))
    result = invoke("lint-data", str(tmp_path / "train.json"), str(tmp_path / "val.json"), "--json")
    report = json.loads(result.output)
    (warning,) = report["files"][1]["warnings"]
    assert "3 words not in the vocabulary train builds from" in warning and "can never produce them" in warning
    assert "'zebra' (2x), ',' (1x), 'purple' (1x)" in warning
    assert not report["files"][0]["warnings"]


# ---- bounded disk use, warm-up, time estimate -------------------------------------------------------------------


def test_defaults_bound_disk_use():
    config = TrainerConfig()
    assert (config.save_total_limit, config.checkpoint_interval, config.val_interval) == (2, 500, 500)


def seed_snippet_run(tmp_path: Path, **fields) -> Path:
    """The original description's training snippet (default TrainerConfig but the run length) on 17 images:
    a batch of 32 makes one step per epoch."""
    data = write_list(tmp_path / "data", 17)
    dataset = ImageTextDataset(data)
    loader = create_dataloader(dataset, batch_size=32, shuffle=True)
    out = tmp_path / "checkpoints"
    config = TrainerConfig(learning_rate=1e-4, use_amp=True, checkpoint_dir=str(out), **fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the warm-up notice
        PixelLLMTrainer(model=tiny(len(dataset.tokenizer)), config=config, train_dataloader=loader, quiet=True).train()
    return out


def step_names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("step-"))


def test_twenty_epochs_of_seventeen_images_write_one_checkpoint(tmp_path):
    out = seed_snippet_run(tmp_path, num_epochs=20)
    assert step_names(out) == ["step-00000020"]
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "latest", "metrics.jsonl", "step-00000020"]


def test_step_interval_keeps_save_total_limit_folders(tmp_path):
    out = seed_snippet_run(tmp_path, num_epochs=20, checkpoint_interval=5)
    assert step_names(out) == ["step-00000015", "step-00000020"]  # 5 and 10 rotated away


def test_warmup_longer_than_the_run_is_scaled_to_it(tmp_path):
    assert fitted_warmup(100, 20) == (
        2,
        "trainer.warmup_steps=100 is not shorter than the run (20 steps); "
        "warming up over 2 steps instead (a tenth of the run)",
    )
    assert fitted_warmup(10, 20) == (10, None) and fitted_warmup(0, 5) == (0, None) and fitted_warmup(1, 1) == (1, None)
    dataset = ImageTextDataset(write_list(tmp_path / "d", 4))
    loader = create_dataloader(dataset, batch_size=4)
    config = TrainerConfig(warmup_steps=100, max_steps=20, learning_rate=1e-3, checkpoint_dir=str(tmp_path / "c"))
    with pytest.warns(RuntimeWarning, match=r"warmup_steps=100 is not shorter than the run \(20 steps\)"):
        trainer = PixelLLMTrainer(tiny(len(dataset.tokenizer)), config, loader, quiet=True)
    factor = trainer.scheduler.lr_lambdas[0]
    assert factor(0) == 0.5 and factor(1) == 1.0  # the peak after 2 steps, not 1/100 of it for the whole run


def test_warmup_notice_is_one_cli_line(tmp_path):
    data = write_list(tmp_path / "d", 4)
    result = invoke(
        "train",
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--max-steps",
        "2",
        "--out",
        str(tmp_path / "r"),
        "--batch-size",
        "4",
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "warmup_steps" in line]
    assert lines == [
        "Warning: trainer.warmup_steps=100 is not shorter than the run (2 steps); warming up "
        "over 1 step instead (a tenth of the run)"
    ]


def test_time_estimate_after_the_first_steps(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trainer_module, "ESTIMATE_AFTER_S", 0.0)
    monkeypatch.setattr(trainer_module, "SUGGEST_SMALL_ABOVE_S", 0.0)
    monkeypatch.setattr(PixelLLMTrainer, "_larger_than_small", lambda self: True)
    dataset = ImageTextDataset(write_list(tmp_path / "d", 16))
    loader = create_dataloader(dataset, batch_size=2)
    config = TrainerConfig(max_steps=7, warmup_steps=1, use_amp=False, checkpoint_dir=str(tmp_path / "c"), device="cpu")
    PixelLLMTrainer(tiny(len(dataset.tokenizer)), config, loader, quiet=False).train()
    err = capsys.readouterr().err
    estimates = [line for line in err.splitlines() if line.startswith("expected training time:")]
    assert len(estimates) == 1, err
    assert "per epoch (8 steps)" in estimates[0] and "for the rest of the run (1 step)" in estimates[0]
    assert "training on the CPU: the `small` preset trains many times faster" in err


def test_larger_than_small_compares_parameter_counts():
    from types import SimpleNamespace

    from geometry_os.systems.pixel_llm.config import PixelLLMConfig

    small = SimpleNamespace(model=create_pixel_llm(vocab_size=100, preset="tiny"))
    assert not PixelLLMTrainer._larger_than_small(small)
    with torch.device("meta"):
        base = PixelLLM(PixelLLMConfig(vocab_size=100))  # what train builds without --preset
    assert PixelLLMTrainer._larger_than_small(SimpleNamespace(model=base))


def test_no_preset_note_names_the_base_model():
    from geometry_os.systems.pixel_llm.config import PixelLLMConfig
    from geometry_os.systems.pixel_llm.workflows import size_note

    with torch.device("meta"):
        base = PixelLLM(PixelLLMConfig(vocab_size=1000))
    note = size_note(None, None, ["trainer.max_steps=3", "learning_rate=0.1"], base)
    assert note is not None and "full-size base model" in note and "224-px" in note and "--preset small" in note
    assert size_note("small", None, [], base) is None and size_note(None, None, ["image_size=64"], base) is None


def test_system_calls_take_image_roots_and_run_folders(tmp_path):
    from geometry_os.host import Host

    root = write_coco(tmp_path / "coco", n_train=6, n_val=2)
    host = Host()
    summary = host.call(
        "pixel_llm.train",
        preset="tiny",
        data=str(root / "annotations" / "captions_train.json"),
        val_data=str(root / "annotations" / "captions_val.json"),
        image_root=str(root / "images"),
        out=str(tmp_path / "run"),
        overrides=["trainer.max_steps=2", "trainer.warmup_steps=1"],
    )
    assert summary["global_step"] == 2
    metrics = host.call(
        "pixel_llm.evaluate",
        checkpoint=str(tmp_path / "run"),
        data=str(root / "annotations" / "captions_val.json"),
        image_root=str(root / "images"),
    )
    assert metrics["num_images"] == 2
