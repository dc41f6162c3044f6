"""The ``amp`` trainer: learning, checkpoints (atomic, rotated, safe to load), exact resume, DDP, AMP, CLI.

Tiny models on tiny synthetic scenes, one CPU thread (two threads fight over two busy cores).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from geometry_os.cli import cli
from geometry_os.errors import CheckpointError, GeometryOSError
from geometry_os.plugins.amp_trainer import run_state as ckpt
from geometry_os.plugins.amp_trainer.optim import amp_dtype, cpu_has_fast_bf16, lr_lambda, param_groups
from geometry_os.plugins.amp_trainer.sampling import EpochBatchSampler
from geometry_os.plugins.amp_trainer.trainer import NonFiniteLossError, PixelLLMTrainer, TrainingError
from geometry_os.plugins.amp_trainer.validation import CaptionCollapseWarning
from geometry_os.systems.pixel_llm import PixelLLM, create_pixel_llm
from geometry_os.systems.pixel_llm.config import TrainerConfig
from geometry_os.systems.pixel_llm.data import create_dataloader
from geometry_os.systems.pixel_llm.resolution import get_component

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


_SHAPES: dict[tuple, object] = {}


def shapes(n: int = 96, split: str = "train", tokenizer=None):
    """In-memory synthetic scenes at 32 px (cached: rendering is the slow part)."""
    key = (n, split)
    if key not in _SHAPES:
        _SHAPES[key] = get_component("dataset", "shapes").build(
            {"n": n, "seed": 0, "image_size": 32, "split": split}, tokenizer=tokenizer
        )
    return _SHAPES[key]


def tiny_model(vocab: int, seed: int = 0) -> PixelLLM:
    torch.manual_seed(seed)
    return create_pixel_llm(vocab_size=vocab, preset="tiny")


def trainer_config(tmp_path: Path, **fields) -> TrainerConfig:
    values = dict(
        learning_rate=3e-3,
        warmup_steps=2,
        batch_size=8,
        use_amp=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_interval=1,
        seed=0,
        num_epochs=1,
    )
    return TrainerConfig(**{**values, **fields})


def make_trainer(tmp_path, n=96, val=False, model_seed=0, quiet=True, loader=None, **fields) -> PixelLLMTrainer:
    train_set = shapes(n)
    cfg = trainer_config(tmp_path, **fields)
    train_loader = (
        loader(train_set, cfg) if loader else PixelLLMTrainer.make_dataloader(train_set, cfg.batch_size, seed=0)
    )
    val_loader = None
    if val:
        val_set = shapes(16, "val", train_set.tokenizer)
        val_loader = PixelLLMTrainer.make_dataloader(val_set, 8, shuffle=False)
    model = tiny_model(len(train_set.tokenizer), model_seed)
    return PixelLLMTrainer(model, cfg, train_loader, val_loader, quiet=quiet)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def losses(checkpoint_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (checkpoint_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


# ---- learning ------------------------------------------------------------------------------------------


def test_registered_as_the_default_trainer_and_readme_import():
    from geometry_os.systems.pixel_llm import PixelLLMTrainer as FromPackage

    assert FromPackage is PixelLLMTrainer
    assert get_component("trainer", "amp").load() is PixelLLMTrainer


def test_loss_falls_on_synthetic_shapes(tmp_path):
    trainer = make_trainer(tmp_path, num_epochs=3)  # 36 steps
    summary = trainer.train()
    curve = losses(tmp_path / "ckpt")
    assert summary["global_step"] == 36 and len(curve) == 36
    assert sum(curve[-5:]) / 5 < 0.75 * sum(curve[:3]) / 3, curve


def test_bf16_autocast_on_cpu_trains(tmp_path):
    trainer = make_trainer(tmp_path, num_epochs=2, use_amp=True, amp_dtype="bfloat16")
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    trainer.train()
    curve = losses(tmp_path / "ckpt")
    assert all(math.isfinite(x) for x in curve)
    assert sum(curve[-3:]) / 3 < 0.85 * sum(curve[:3]) / 3, curve
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay fp32


def test_auto_amp_on_cpu_uses_bf16_only_where_it_is_native():
    expected = torch.bfloat16 if cpu_has_fast_bf16() else None
    assert amp_dtype(TrainerConfig(use_amp=True), torch.device("cpu")) is expected
    assert amp_dtype(TrainerConfig(use_amp=False, amp_dtype="bfloat16"), torch.device("cpu")) is None


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """Loss is normalised by the step's target tokens, so 2 x 8 accumulated == one batch of 16."""
    big = make_trainer(tmp_path / "a", batch_size=16, max_steps=3)
    big.train()
    accumulated = make_trainer(tmp_path / "b", batch_size=8, gradient_accumulation_steps=2, max_steps=3)
    accumulated.train()
    assert max_diff(weights(big.model), weights(accumulated.model)) < 1e-5


def test_weight_decay_skips_biases_norms_and_embeddings():
    model = tiny_model(21)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "decoder.blocks.0.fc1.weight" in decayed and "encoder.patch_embed.weight" in decayed
    assert not any(
        n.endswith(".bias") or "norm" in n or "embed" in n.split(".")[-1]
        for n in decayed - {"encoder.patch_embed.weight"}
    )
    assert "decoder.wte.weight" not in decayed and "encoder.pos_embed" not in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_lr_schedule_warms_up_then_decays(kind):
    factor = lr_lambda(TrainerConfig(warmup_steps=4, lr_scheduler=kind, min_lr_ratio=0.1), total_steps=14)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(14) == pytest.approx(1.0 if kind == "constant" else 0.1)
    assert factor(9) == pytest.approx(1.0 if kind == "constant" else 0.55)


def test_sampler_order_depends_on_seed_and_epoch_and_shards_like_one_big_batch():
    one = EpochBatchSampler(20, 4, seed=3)
    one.set_epoch(1)
    ranks = [EpochBatchSampler(20, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    for big, *small in zip(one, *ranks):
        assert sorted(big) == sorted(i for part in small for i in part)
    again = EpochBatchSampler(20, 4, seed=3)
    again.set_epoch(1, start_batch=2)
    assert list(again) == list(one)[2:] and len(again) == 3
    again.set_epoch(2)
    assert list(again) != list(one)
    assert sorted(i for b in again for i in b) == list(range(20))


# ---- checkpoints -----------------------------------------------------------------------------------------


def test_checkpoints_round_trip_to_identical_logits(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    batch = next(iter(trainer.train_dataloader))
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(batch["images"], batch["input_ids"], batch["attention_mask"]).logits
    trainer.model.save_pretrained(tmp_path / "pretrained", tokenizer=trainer.tokenizer)
    for folder in (tmp_path / "pretrained", tmp_path / "ckpt" / "step-00000002", ckpt.read_latest(tmp_path / "ckpt")):
        model, tokenizer = PixelLLM.from_pretrained(folder)
        with torch.no_grad():
            assert torch.equal(model(batch["images"], batch["input_ids"], batch["attention_mask"]).logits, expected)
        assert len(tokenizer) == len(trainer.tokenizer)
    other = make_trainer(tmp_path / "other", model_seed=1)
    other.load_checkpoint(tmp_path / "ckpt" / "step-00000002")
    other.model.eval()
    with torch.no_grad():
        assert torch.equal(other.model(batch["images"], batch["input_ids"], batch["attention_mask"]).logits, expected)
    assert other.global_step == 2
    folder = tmp_path / "ckpt" / "step-00000002"
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer_state.json",
        "optimizer.pt",
    }
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == 0 and state["batch_in_epoch"] == 2
    assert isinstance(state["rng"][0]["python"][1], list)
    torch.load(folder / "optimizer.pt", weights_only=True)


def test_save_pretrained_replaces_a_checkpoint_but_never_deletes_other_files(tmp_path):
    vocab = get_component("tokenizer", "simple").load().train(["a red square", "a blue circle"])
    model = tiny_model(len(vocab))
    folder = model.save_pretrained(tmp_path / "model", tokenizer=vocab)
    first = (folder / "model.safetensors").read_bytes()
    torch.nn.init.zeros_(model.decoder.norm.weight)
    model.save_pretrained(folder, tokenizer=vocab)  # a checkpoint folder: replaced as a whole
    assert (folder / "model.safetensors").read_bytes() != first
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}
    run = tmp_path / "run"
    (run / "step-00000002").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for dest, needle in ((run, "holds other files (notes.txt, step-00000002)"), (tmp_path / "file", "not a folder")):
        with pytest.raises(CheckpointError, match=re.escape(needle)):
            model.save_pretrained(dest, tokenizer=vocab)
    assert (run / "notes.txt").read_text() == "mine" and (run / "step-00000002").is_dir()
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "model", "run"]  # no temporary left


@pytest.mark.parametrize(
    "loader, at",
    [(None, 5), (None, 12), (lambda ds, cfg: create_dataloader(ds, batch_size=cfg.batch_size, shuffle=True), 7)],
    ids=["mid-epoch", "epoch-boundary", "user-dataloader"],
)
def test_resume_equals_uninterrupted(tmp_path, loader, at):
    """Resuming from the checkpoint of step ``at`` reaches the uninterrupted weights (12 steps per epoch)."""
    fields = dict(num_epochs=2, checkpoint_interval=at, loader=loader, save_total_limit=None)  # keeps step `at`
    full = make_trainer(tmp_path / "full", **fields)
    full.train()
    resumed = make_trainer(tmp_path / "resumed", model_seed=7, **fields)
    resumed.load_checkpoint(tmp_path / "full" / "ckpt" / ckpt.step_name(at))
    assert (resumed.global_step, resumed.epoch, resumed.batch_in_epoch) == (at, at // 12, at % 12)
    resumed.train()
    assert resumed.global_step == full.global_step == 24
    assert max_diff(weights(full.model), weights(resumed.model)) <= 1e-6
    a, b = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert max((a[k]["exp_avg_sq"] - b[k]["exp_avg_sq"]).abs().max().item() for k in a) <= 1e-9


def test_resume_applies_a_changed_learning_rate_betas_and_weight_decay(tmp_path):
    make_trainer(tmp_path, max_steps=3, warmup_steps=1, lr_scheduler="constant").train()
    changed = make_trainer(
        tmp_path,
        max_steps=4,
        warmup_steps=1,
        lr_scheduler="constant",
        learning_rate=1e-5,
        adam_beta2=0.9,
        weight_decay=0.5,
    )
    changed.resume("latest")
    decay, no_decay = changed.optimizer.param_groups
    assert decay["lr"] == no_decay["lr"] == 1e-5 and changed.scheduler.base_lrs == [1e-5, 1e-5]
    assert changed.scheduler.get_last_lr() == [1e-5, 1e-5]  # what the first log line reports
    assert decay["betas"] == no_decay["betas"] == (0.9, 0.9)
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    changed.train()
    assert changed.scheduler.get_last_lr() == [1e-5, 1e-5]


def test_a_fresh_run_never_takes_over_an_existing_runs_folder(tmp_path):
    first = make_trainer(tmp_path, max_steps=2, val=True)
    first.train()
    before = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    latest = (tmp_path / "ckpt" / "latest").read_text()
    with pytest.raises(TrainingError, match="already holds a training run; resume it"):
        make_trainer(tmp_path, max_steps=4, val=True).train()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == before
    assert (tmp_path / "ckpt" / "latest").read_text() == latest
    resumed = make_trainer(tmp_path, max_steps=4, val=True)
    resumed.resume("latest")
    assert resumed.train()["global_step"] == 4


def test_resume_latest_continues_a_stopped_run(tmp_path):
    first = make_trainer(tmp_path, max_steps=3)
    first.train()
    second = make_trainer(tmp_path, model_seed=5, max_steps=6)
    state = second.resume("latest")
    assert state["global_step"] == 3
    second.train()
    assert ckpt.read_latest(tmp_path / "ckpt").name == "step-00000006"
    steps = [json.loads(line)["step"] for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_rotation_keeps_limit_plus_best_and_latest(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, val=True, max_steps=7, val_interval=1, checkpoint_interval=1, save_total_limit=2)
    trainer.best_metric_name = "val_loss"
    scores = iter([0.9, 0.5, 0.7, 0.8, 0.6, 0.9, 0.95])  # best at step 2
    monkeypatch.setattr(trainer, "validate", lambda: {"val_loss": next(scores)})
    trainer.train()
    root = tmp_path / "ckpt"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000006", "step-00000007"]
    assert ckpt.read_latest(root).name == "step-00000007"
    best_state = json.loads((root / "best" / "trainer_state.json").read_text())
    assert best_state["global_step"] == 2 and best_state["best_checkpoint"] == "step-00000002"
    PixelLLM.from_pretrained(root / "best")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_interrupted_save_leaves_latest_on_a_complete_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=4, checkpoint_interval=2)
    root = tmp_path / "ckpt"
    real_save = torch.save
    calls = {"n": 0}

    def crashing_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        real_save(obj, path, *args, **kwargs)
        if calls["n"] == 2:  # the second checkpoint dies after its last file is written
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        trainer.train()
    monkeypatch.setattr(torch, "save", real_save)
    (root / ".step-00000009.tmp-0badf00d").mkdir()  # a crashed process's leftover
    (root / ".step-00000009.tmp-0badf00d" / "model.safetensors").write_bytes(b"half")
    assert [p.name for p in root.glob("step-*")] == ["step-00000002"]
    assert ckpt.read_latest(root).name == "step-00000002"
    PixelLLM.from_pretrained(ckpt.read_latest(root))
    again = make_trainer(tmp_path, model_seed=3, max_steps=4, checkpoint_interval=2)
    assert again.resume("latest")["global_step"] == 2
    again.train()
    assert ckpt.read_latest(root).name == "step-00000004"
    assert not (root / ".step-00000009.tmp-0badf00d").exists()


class Exploit:
    """Unpickling this creates a file: what a forged optimizer.pt would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_optimizer_pickle_is_refused(tmp_path, writer):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    folder = tmp_path / "ckpt" / "step-00000001"
    marker = tmp_path / "pwned"
    if writer == "pickle":
        (folder / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Exploit(marker)}, protocol=2))
    else:
        torch.save({"optimizer": Exploit(marker)}, folder / "optimizer.pt")
    with pytest.raises(CheckpointError, match="refused"):
        make_trainer(tmp_path / "victim").load_checkpoint(folder)
    assert not marker.exists()


def test_mismatched_checkpoint_is_refused_naming_the_field(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    other = PixelLLMTrainer(
        create_pixel_llm(vocab_size=40, preset="tiny"),
        trainer_config(tmp_path / "o"),
        trainer.train_dataloader,
        quiet=True,
    )
    with pytest.raises(CheckpointError, match="vocab_size: checkpoint 21 vs model 40"):
        other.load_checkpoint(tmp_path / "ckpt" / "step-00000001")


# ---- validation, non-finite losses, feedback -----------------------------------------------------------------


def test_validation_reports_caption_metrics_and_warns_on_collapse(tmp_path):
    trainer = make_trainer(tmp_path, val=True, max_steps=2, val_max_samples=10)
    with pytest.warns(CaptionCollapseWarning, match="captions collapsed"):
        trainer.train()  # two steps in, every image gets the same caption
    records = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_loss" in r][-1]
    assert val["num_images"] == 10 and 0 <= val["exact_match"] <= 1
    assert {"bleu_4", "distinct_1", "distinct_2", "identical_fraction"} <= set(val)
    assert trainer.best_measured_by == "exact_match" and (tmp_path / "ckpt" / "best").is_dir()
    assert (tmp_path / "ckpt" / "curves.png").stat().st_size > 1000


def test_a_non_finite_step_is_skipped_with_a_warning(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=3, max_nonfinite_steps=2)
    forward, calls = trainer.model.forward, {"n": 0}

    def sometimes_nan(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "forward", sometimes_nan)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        trainer.train()
    assert trainer.global_step == 3 and calls["n"] == 4 and trainer.nonfinite_streak == 0
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_consecutive_non_finite_losses_stop_with_a_clear_error(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=10, max_nonfinite_steps=3)
    before = weights(trainer.model)
    forward = trainer.model.forward

    def always_nan(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "forward", always_nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteLossError, match="3 consecutive steps") as info:
            trainer.train()
    assert isinstance(info.value, GeometryOSError)
    assert trainer.global_step == 0 and max_diff(before, weights(trainer.model)) == 0


def test_readme_training_api_runs_as_written(tmp_path):
    from geometry_os.systems.pixel_llm import PixelLLMConfig as TrainerConfig
    from geometry_os.systems.pixel_llm import PixelLLMTrainer as Trainer
    from geometry_os.systems.pixel_llm.data import ImageTextDataset

    captions = write_caption_file(tmp_path / "data")
    dataset = ImageTextDataset(str(captions), config={"image_size": 32})
    train_loader = create_dataloader(dataset, batch_size=4, shuffle=True)
    trainer_config = TrainerConfig(learning_rate=1e-4, num_epochs=1, use_amp=True, checkpoint_dir=str(tmp_path / "c"))
    trainer = Trainer(model=tiny_model(len(dataset.tokenizer)), config=trainer_config, train_dataloader=train_loader)
    trainer.quiet = True
    trainer.train()
    assert ckpt.read_latest(tmp_path / "c").name == "step-00000002"
    assert PixelLLM.from_pretrained(tmp_path / "c" / "step-00000002")[1] is not None  # the dataset's tokenizer


# ---- distributed ---------------------------------------------------------------------------------------------

DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.resolution import get_component
    from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
    from geometry_os.systems.pixel_llm.config import TrainerConfig

    out, batch = sys.argv[1], int(sys.argv[2])
    data = get_component("dataset", "shapes").build({"n": 48, "seed": 0, "image_size": 32})
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(data.tokenizer), preset="tiny")
    config = TrainerConfig(learning_rate=3e-3, warmup_steps=1, batch_size=batch, use_amp=False, checkpoint_dir=out,
                           max_steps=5, log_interval=1, seed=0)
    loader = PixelLLMTrainer.make_dataloader(data, batch, seed=0)
    PixelLLMTrainer(model, config, loader, quiet=True).train()
""")


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """gloo DDP, 2 x batch 4 vs 1 x batch 8: the same samples per step; weights agree within 2e-5."""
    from safetensors.torch import load_file

    script = tmp_path / "train_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "8"], env=env, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(script),
            str(tmp_path / "two"),
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "curves.png",
        "latest",
        "metrics.jsonl",
        "step-00000005",
    ]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    a = load_file(str(tmp_path / "one" / "step-00000005" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "step-00000005" / "model.safetensors"))
    assert max_diff(a, b) < 2e-5  # observed 2e-6: summation order differs between batch 8 and 2 x 4
    state = json.loads((tmp_path / "two" / "step-00000005" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2


# ---- command line ----------------------------------------------------------------------------------------------

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (60, 110, 255), "white": (255, 255, 255)}


def write_caption_file(folder: Path) -> Path:
    """8 PNGs of one coloured square, left or right, and a JSON caption list."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (colour, rgb) in enumerate(list(COLOURS.items()) * 2):
        image = Image.new("RGB", (32, 32))
        x = 2 if i < 4 else 18
        image.paste(rgb, (x, 10, x + 12, 22))
        image.save(folder / f"{i}.png")
        entries.append({"image": f"{i}.png", "caption": f"a {colour} square on the {'left' if i < 4 else 'right'}"})
    (folder / "captions.json").write_text(json.dumps(entries))
    return folder / "captions.json"


def invoke(*args: str):
    return CliRunner().invoke(cli, ["pixel-llm", "train", *args], catch_exceptions=False)


def assert_one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip() and "warning" not in line]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output


def test_cli_train_on_caption_files_then_resume(tmp_path):
    captions = write_caption_file(tmp_path / "data")
    out = tmp_path / "runs"
    args = ["--preset", "tiny", "--data", str(captions), "--val-data", str(captions), "--quiet", "--out", str(out)]
    result = invoke(
        *args, "--set", "trainer.max_steps=3", "--set", "trainer.batch_size=4", "--set", "trainer.use_amp=false"
    )
    assert result.exit_code == 0, result.output
    assert f"checkpoints: {out.resolve()}" in result.output and "step-00000003" in result.output
    model, tokenizer = PixelLLM.from_pretrained(out / "best")
    assert tokenizer.decode(tokenizer.encode("a red square")) == "a red square"
    args[1] = "small"  # the model and its image size come from the checkpoint, not the preset
    result = invoke(*args, "--resume", "latest", "--set", "trainer.max_steps=5", "--set", "trainer.batch_size=4")
    assert result.exit_code == 0, result.output
    assert "trained 5 steps" in result.output
    # the README's resume command, from another folder: the run's data and settings, only max_steps changed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        result = invoke("--out", str(out), "--resume", "latest", "--quiet", "--set", "trainer.max_steps=7")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0 and "trained 7 steps" in result.output and "does not record" not in result.output
    state = json.loads((out / "step-00000007" / "trainer_state.json").read_text())
    saved = state["trainer_config"]
    assert saved["data"] == saved["val_data"] == str(captions.resolve()) and saved["max_steps"] == 7
    assert saved["batch_size"] == 4 and not saved["use_amp"] and state["num_samples"] == 8  # the 8 captions


def test_cli_train_defaults_to_synthetic_shapes_with_a_config_file(tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(
        f"[model]\nimage_size = 32\n\n[trainer]\nmax_steps = 2\nbatch_size = 8\n"
        f'checkpoint_dir = "{(tmp_path / "runs").as_posix()}"\n'
    )
    result = invoke("--config", str(config), "--preset", "tiny", "--num-scenes", "40", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "step-00000002" / "tokenizer.json").is_file()
    saved = json.loads((tmp_path / "runs" / "step-00000002" / "config.json").read_text())["model"]
    assert saved["image_size"] == 32 and saved["vocab_size"] == 21  # the grammar's vocabulary


def test_cli_user_errors_are_one_line(tmp_path):
    captions = write_caption_file(tmp_path / "data")
    assert_one_line_error(invoke("--preset", "tiny", "--data", str(tmp_path / "missing.json")), "missing.json")
    assert_one_line_error(
        invoke("--preset", "tiny", "--data", str(captions), "--set", "trainer.learning_rate=-1"), "learning_rate"
    )
    assert_one_line_error(
        invoke("--preset", "tiny", "--data", str(captions), "--resume", "latest", "--out", str(tmp_path / "empty")),
        "no checkpoint",
    )
    assert_one_line_error(invoke("--preset", "tiny", "--val-data", str(captions)), "--val-data needs --data")
    bare = create_pixel_llm(vocab_size=5, preset="tiny").save_pretrained(tmp_path / "bare")  # no tokenizer
    assert_one_line_error(
        invoke(
            "--data", str(captions), "--resume", str(bare), "--out", str(tmp_path / "b"), "--set", "trainer.max_steps=1"
        ),
        "more than the model's vocab_size=5",
    )
    run = tmp_path / "run"
    (run / "step-00000004").mkdir(parents=True)
    assert_one_line_error(
        invoke(
            "--preset",
            "tiny",
            "--data",
            str(captions),
            "--out",
            str(run),
            "--quiet",
            "--set",
            "trainer.max_steps=1",
            "--set",
            "trainer.batch_size=4",
        ),
        "already holds a training run",
    )


def test_max_time_stops_and_saves(tmp_path):
    trainer = make_trainer(tmp_path, num_epochs=1000, max_time_s=0.3)
    summary = trainer.train()
    assert summary["stopped_by_time"] and 0 < summary["global_step"] < 12_000
    assert ckpt.read_latest(tmp_path / "ckpt").name == ckpt.step_name(summary["global_step"])


def test_compile_wraps_the_training_model(tmp_path, monkeypatch):
    """``compile=True`` goes through torch.compile (compiling for real takes minutes on CPU: stubbed)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    trainer = make_trainer(tmp_path, max_steps=1, compile=True)
    assert compiled == [trainer.model] and trainer.train_model is trainer.model
    trainer.train()


def test_caption_scores_without_pycocoevalcap(monkeypatch):
    """pycocoevalcap is an optional extra: without it validation still gives exact match and diversity."""
    from geometry_os.plugins.amp_trainer.validation import score

    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)
    metrics = score(["a red square", "a red square"], [["A red square."], ["a blue circle"]])
    assert metrics["exact_match"] == 0.5 and metrics["most_common_fraction"] == 1.0 and "bleu_4" not in metrics


def test_fp32_checkpoint_resumes_into_an_fp16_run(tmp_path):
    """A run without fp16 saves an empty GradScaler state; resuming it with fp16 keeps a fresh scaler."""
    make_trainer(tmp_path, max_steps=1).train()
    fp16 = make_trainer(tmp_path, max_steps=2, use_amp=True, amp_dtype="float16")
    assert fp16.scaler.is_enabled()
    scale = fp16.scaler.get_scale()
    state = fp16.resume("latest")
    assert state["global_step"] == 1 and fp16.global_step == 1 and fp16.scaler.get_scale() == scale


def test_resumed_settings_are_the_runs_own_under_what_is_set_now(tmp_path, capsys):
    from geometry_os.cli import one_line_diagnostics
    from geometry_os.systems.pixel_llm.workflows import resumed_trainer_settings as _resumed_trainer_settings

    folder = tmp_path / "runs" / "step-00000004"
    folder.mkdir(parents=True)
    saved = TrainerConfig(batch_size=4, seed=7, max_steps=4, checkpoint_dir="/somewhere/else").model_dump(mode="json")
    old = {k: v for k, v in saved.items() if k not in ("data", "val_data", "num_scenes")}  # an older version's
    for trainer_config, warned in ((saved, False), (old, True)):
        (folder / "trainer_state.json").write_text(
            json.dumps(
                {"format": ckpt.STATE_FORMAT, "global_step": 4, "trainer_config": {**trainer_config, "retired": 1}}
            )
        )
        now = TrainerConfig.model_validate({"max_steps": 9})  # as from --set trainer.max_steps=9
        with one_line_diagnostics():  # how the command line shows the workflow's notes
            merged = TrainerConfig.model_validate(_resumed_trainer_settings(folder, now))
        assert (merged.batch_size, merged.seed, merged.max_steps) == (4, 7, 9)  # unknown "retired" dropped
        assert merged.checkpoint_dir == str(tmp_path / "runs")  # next to the resumed checkpoint
        assert ("does not record the run's training data" in capsys.readouterr().err) == warned
    # the machine's own settings are not inherited; a forged value is refused naming the file
    (folder / "trainer_state.json").write_text(
        json.dumps(
            {
                "format": ckpt.STATE_FORMAT,
                "trainer_config": {**saved, "device": "cuda", "num_workers": 4096, "compile": True},
            }
        )
    )
    merged = _resumed_trainer_settings(folder, TrainerConfig())
    assert {"device", "num_workers", "compile"}.isdisjoint(merged)
    (folder / "trainer_state.json").write_text(
        json.dumps({"format": ckpt.STATE_FORMAT, "trainer_config": {**saved, "learning_rate": "x"}})
    )
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: trainer_config.*learning_rate"):
        _resumed_trainer_settings(folder, TrainerConfig())
    # a plain saved model (no trainer state) starts a new run where this run's settings say
    (folder / "trainer_state.json").unlink()
    assert "checkpoint_dir" not in _resumed_trainer_settings(folder, TrainerConfig())


def test_fp16_steps_that_always_overflow_stop_the_run(tmp_path):
    """The GradScaler skips a step whose gradients are not finite; a run where every step overflows
    must stop with a clear error instead of skipping steps forever."""
    from geometry_os.plugins.amp_trainer.trainer import FP16_CALIBRATION_STEPS

    trainer = make_trainer(tmp_path, max_steps=5, use_amp=True, amp_dtype="float16", max_nonfinite_steps=2)
    assert trainer.scaler.is_enabled()
    next(trainer.model.parameters()).register_hook(lambda grad: grad * math.inf)
    with pytest.raises(NonFiniteLossError, match=f"{FP16_CALIBRATION_STEPS + 2} consecutive fp16 steps"):
        trainer.train()
    assert trainer.global_step == 0 and trainer.overflow_streak == FP16_CALIBRATION_STEPS + 2
    events = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert sum(e.get("event") == "fp16_overflow" for e in events) == FP16_CALIBRATION_STEPS + 2


def test_an_uncomputed_best_metric_falls_back_to_val_loss_instead_of_ending_the_run(tmp_path, monkeypatch):
    fields = dict(val=True, checkpoint_interval=1, val_interval=1, best_metric="cider_typo")
    trainer = make_trainer(tmp_path, max_steps=2, **fields)
    scores = iter([0.5, 0.6, 0.9])  # val_loss at steps 1, 2, 3: the best stays at step 1
    validate = lambda: {"val_loss": next(scores)}  # noqa: E731
    monkeypatch.setattr(trainer, "validate", validate)
    with pytest.warns(RuntimeWarning, match="'cider_typo' is not computed .* picked by val_loss instead"):
        summary = trainer.train()
    assert summary["global_step"] == 2 and trainer.best_measured_by == "val_loss"
    assert summary["best_checkpoint"] == "step-00000001" and (tmp_path / "ckpt" / "best").is_dir()
    resumed = make_trainer(tmp_path, max_steps=3, **fields)  # the same typo again, as a resume inherits it
    monkeypatch.setattr(resumed, "validate", validate)
    resumed.resume("latest")
    with pytest.warns(RuntimeWarning, match="cider_typo"):
        summary = resumed.train()
    assert summary["best_checkpoint"] == "step-00000001" and summary["best_metric"] == 0.5  # not the worse 0.9


@pytest.mark.parametrize("own_loader", [True, False])
def test_validation_shards_count_every_sample_once(own_loader):
    """Under DDP each validation sample is scored by exactly one process: no padding duplicates, whether
    the loader came from make_dataloader or is a plain DataLoader."""
    from torch.utils.data import DataLoader

    from geometry_os.plugins.amp_trainer.distributed import World
    from geometry_os.plugins.amp_trainer.sampling import adapt_loader

    seen = []
    for rank in range(3):
        data = list(range(10))
        loader = (
            PixelLLMTrainer.make_dataloader(data, 4, shuffle=False, collate_fn=list)
            if own_loader
            else DataLoader(data, batch_size=4, collate_fn=list)
        )
        adapted, _ = adapt_loader(loader, 0, World(rank, 3), training=False)
        seen += [i for batch in adapted for i in batch]
    assert sorted(seen) == list(range(10))


def test_stale_folders_are_removed_and_a_folder_moved_aside_is_put_back(tmp_path):
    """What a crash in the middle of AtomicFolder's two renames leaves: ``.best.old-*`` without ``best``."""
    run = tmp_path / "ckpt"
    for name in (".step-00000004.tmp-0123abcd", ".best.old-89abcdef", ".step-00000002.old-01234567"):
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text(name)
    (run / "step-00000002").mkdir()
    removed = ckpt.remove_stale(run)
    assert sorted(p.name for p in removed) == [".step-00000002.old-01234567", ".step-00000004.tmp-0123abcd"]
    assert sorted(p.name for p in run.iterdir()) == ["best", "step-00000002"]
    assert (run / "best" / "config.json").read_text() == ".best.old-89abcdef"


def test_a_failed_rename_puts_the_previous_folder_back(tmp_path, monkeypatch):
    from geometry_os.fileio import AtomicFolder

    dest = tmp_path / "best"
    dest.mkdir()
    (dest / "config.json").write_text("previous")
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".best.tmp-"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        with AtomicFolder(dest, replaces=None) as tmp:
            (tmp / "config.json").write_text("new")
    assert (dest / "config.json").read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["best"]


def test_resume_repairs_a_best_folder_left_behind_by_a_crash(tmp_path, monkeypatch):
    trainer = make_trainer(
        tmp_path, max_steps=3, val=True, checkpoint_interval=1, val_interval=1, save_total_limit=None
    )  # keeps step 1 for the crash below
    monkeypatch.setattr(trainer, "validate", iter([{"val_loss": 0.9}, {"val_loss": 0.5}, {"val_loss": 0.7}]).__next__)
    trainer.train()
    root = tmp_path / "ckpt"
    assert trainer.best_checkpoint == "step-00000002"
    ckpt.copy_as_best(root, root / "step-00000001")  # what a crash mid-update can leave: the previous best
    resumed = make_trainer(tmp_path, max_steps=4, val=True, checkpoint_interval=1, val_interval=1)
    monkeypatch.setattr(resumed, "validate", lambda: {"val_loss": 0.8})
    resumed.resume("latest")
    resumed.train()
    assert json.loads((root / "best" / "trainer_state.json").read_text())["global_step"] == 2
    assert not ckpt.repair_best(root, "step-00000002")  # already right: nothing copied
