"""Fine-tuning controls of the ``amp`` trainer: freeze, encoder LR and layer-wise decay, gradient
checkpointing, LoRA adapters, early stopping, TensorBoard, and their ``train`` flags.

Tiny models on tiny synthetic scenes, one CPU thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from geometry_os.cli import cli
from geometry_os.errors import ConfigError
from geometry_os.plugins.amp_trainer import run_state as ckpt
from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
from geometry_os.systems.pixel_llm import PixelLLM, create_pixel_llm, lora
from geometry_os.systems.pixel_llm.config import TrainerConfig
from geometry_os.systems.pixel_llm.freeze import matching
from geometry_os.systems.pixel_llm.resolution import get_component

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_SHAPES: dict[tuple, object] = {}


def shapes(n: int = 48, split: str = "train", tokenizer=None):
    key = (n, split)
    if key not in _SHAPES:
        _SHAPES[key] = get_component("dataset", "shapes").build(
            {"n": n, "seed": 0, "image_size": 32, "split": split}, tokenizer=tokenizer
        )
    return _SHAPES[key]


def tiny_model(vocab: int, seed: int = 0, **overrides) -> PixelLLM:
    torch.manual_seed(seed)
    return create_pixel_llm(vocab_size=vocab, preset="tiny", **overrides)


def make_trainer(
    tmp_path: Path, val: bool = False, model_seed: int = 0, quiet: bool = True, **fields
) -> PixelLLMTrainer:
    train_set = shapes()
    values = dict(
        learning_rate=3e-3,
        warmup_steps=1,
        batch_size=8,
        use_amp=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        log_interval=1,
        seed=0,
        num_epochs=1,
    )
    cfg = TrainerConfig(**{**values, **fields})
    loader = PixelLLMTrainer.make_dataloader(train_set, cfg.batch_size, seed=0)
    val_loader = None
    if val:
        val_loader = PixelLLMTrainer.make_dataloader(shapes(8, "val", train_set.tokenizer), 8, shuffle=False)
    return PixelLLMTrainer(tiny_model(len(train_set.tokenizer), model_seed), cfg, loader, val_loader, quiet=quiet)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def optimizer_state_params(trainer: PixelLLMTrainer) -> set[int]:
    """ids of the parameters the optimizer holds state for."""
    return {id(p) for p in trainer.optimizer.state}


# ---- freeze ----------------------------------------------------------------------------------------------


def test_patterns_match_ranges_prefixes_and_globs():
    names = [f"encoder.blocks.{i}.qkv.weight" for i in range(12)] + ["encoder.norm.weight", "decoder.wte.weight"]
    assert matching(names, "encoder.blocks.0-7.*") == names[:8]
    assert matching(names, "encoder") == names[:13]
    assert matching(names, "*.norm.*") == ["encoder.norm.weight"]
    assert matching(names, "decoder.wte") == ["decoder.wte.weight"]
    assert matching(names, "encoder.blocks.1") == ["encoder.blocks.1.qkv.weight"]  # not blocks.10, blocks.11


def test_frozen_parameters_stay_bitwise_equal_and_get_no_optimizer_state(tmp_path, capsys):
    trainer = make_trainer(tmp_path, max_steps=4, freeze=["encoder.blocks.0-0.*", "decoder.wte"], quiet=False)
    model = trainer.model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("encoder.blocks.0.")} | {
        "decoder.wte.weight"
    }
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    for name in frozen:
        assert torch.equal(before[name], after[name]), name
    trained = [n for n in after if n not in frozen and not torch.equal(before[n], after[n])]
    assert len(trained) > 10  # the rest did train
    params = dict(model.named_parameters())
    assert optimizer_state_params(trainer) == {id(p) for n, p in params.items() if n not in frozen}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert f"parameters: {trainable:,} trainable / {total:,} total" in capsys.readouterr().err


def test_freeze_errors_name_the_pattern(tmp_path):
    with pytest.raises(ConfigError, match="'nosuch' matches no parameter"):
        make_trainer(tmp_path, freeze=["nosuch"])
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        make_trainer(tmp_path, freeze=["encoder", "decoder"])
    with pytest.raises(ValueError, match="range 7-0 runs backwards"):
        TrainerConfig(freeze=["encoder.blocks.7-0.*"])


# ---- learning rates --------------------------------------------------------------------------------------


def test_layer_decay_gives_each_encoder_layer_its_own_lr_in_the_optimizer_groups(tmp_path):
    trainer = make_trainer(tmp_path, learning_rate=1e-3, encoder_learning_rate=4e-4, layer_decay=0.5, max_steps=1)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    L = len(trainer.model.encoder.blocks)  # the tiny preset: 2 blocks -> layers 0 (embeddings) .. 3 (final norm)
    assert L == 2
    assert groups["decoder.decay"]["initial_lr"] == groups["decoder.no_decay"]["initial_lr"] == 1e-3
    for layer in range(L + 2):
        expected = 4e-4 * 0.5 ** (L + 1 - layer)
        named = [g for n, g in groups.items() if n.startswith(f"encoder.layer{layer}.")]
        assert named and all(g["initial_lr"] == pytest.approx(expected) for g in named), layer
    by_param = {id(p): g["name"] for g in trainer.optimizer.param_groups for p in g["params"]}
    enc = trainer.model.encoder
    assert by_param[id(enc.patch_embed.weight)] == "encoder.layer0.decay"
    assert by_param[id(enc.pos_embed)] == "encoder.layer0.no_decay"
    assert by_param[id(enc.blocks[1].qkv.weight)] == "encoder.layer2.decay"
    assert by_param[id(enc.norm.weight)] == "encoder.layer3.no_decay"
    # every trainable parameter in exactly one group
    assert sorted(by_param) == sorted(id(p) for p in trainer.model.parameters())


def test_layer_decay_survives_a_resume_and_a_changed_encoder_lr_applies(tmp_path):
    make_trainer(tmp_path, encoder_learning_rate=4e-4, layer_decay=0.5, max_steps=2, lr_scheduler="constant").train()
    resumed = make_trainer(tmp_path, encoder_learning_rate=2e-4, layer_decay=0.5, max_steps=3, lr_scheduler="constant")
    resumed.resume("latest")
    lrs = {g["name"]: g["lr"] for g in resumed.optimizer.param_groups}
    assert lrs["encoder.layer3.no_decay"] == pytest.approx(2e-4)
    assert lrs["encoder.layer0.decay"] == pytest.approx(2e-4 * 0.125)
    assert lrs["decoder.decay"] == pytest.approx(3e-3)


# ---- gradient checkpointing ------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    """Same weights, batch and RNG (dropout on, so the replayed RNG state matters): gradients within 1e-6."""
    train_set = shapes()
    batch = next(iter(PixelLLMTrainer.make_dataloader(train_set, 8, seed=0)))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(len(train_set.tokenizer), dropout=0.1).train()
        model.gradient_checkpointing_enable(checkpointing)
        torch.manual_seed(123)
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    plain, recomputed = grads
    assert max((plain[n] - recomputed[n]).abs().max().item() for n in plain) <= 1e-6
    assert any(plain[n].abs().max() > 0 for n in plain)


def test_gradient_checkpointing_recomputes_the_blocks(monkeypatch):
    """The blocks really run through torch.utils.checkpoint (not only the flag is set)."""
    import torch.utils.checkpoint as tuc

    from geometry_os.plugins.vit import model as vit_model
    from geometry_os.plugins.xattn import model as xattn_model

    calls = []

    def spy(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return tuc.checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(vit_model, "checkpoint", spy)
    monkeypatch.setattr(xattn_model, "checkpoint", spy)
    model = tiny_model(20)
    model.gradient_checkpointing_enable()
    images, ids = torch.rand(2, 3, 32, 32), torch.randint(4, 20, (2, 5))
    model.eval()(images, ids)
    assert calls == []  # inference keeps plain forward
    model.train()(images, ids).logits.sum().backward()
    assert calls == [False] * (len(model.encoder.blocks) + len(model.decoder.blocks))


# ---- LoRA ------------------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_merged_logits_equal_unmerged(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, lora_rank=4, lora_alpha=8.0)
    model = trainer.model
    adapters = {n for n, p in model.named_parameters() if ".lora_" in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters
    assert len(adapters) == 2 * len(lora.lora_modules(model))
    base_before = lora.base_state_dict(model)
    base_before = {k: v.clone() for k, v in base_before.items()}
    trainer.train()
    base_after = lora.base_state_dict(model)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)  # base bitwise unchanged
    params = dict(model.named_parameters())
    assert optimizer_state_params(trainer) == {id(params[n]) for n in adapters}
    assert any(
        lora.lora_modules(model)[m].parametrizations.weight[0].lora_B.abs().max() > 0 for m in lora.lora_modules(model)
    )

    model.eval()
    images, ids = torch.rand(3, 3, 32, 32), torch.randint(4, 20, (3, 6))
    with torch.no_grad():
        unmerged = model(images, ids).logits
        plain = tiny_model(model.config.vocab_size)
        plain.load_state_dict(lora.merged_state_dict(model))
        merged = plain.eval()(images, ids).logits
        with_base_only = tiny_model(model.config.vocab_size)
        with_base_only.load_state_dict(base_after)
        base_logits = with_base_only.eval()(images, ids).logits
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert (base_logits - unmerged).abs().max().item() > 1e-4  # the adapters changed the model

    # the step checkpoint: base + adapter-only file, loading as a plain model with the adapters merged
    folder = tmp_path / "ckpt" / ckpt.step_name(4)
    adapter_names = set(json.loads((folder / lora.ADAPTER_CONFIG).read_text())["modules"])
    assert adapter_names == set(lora.lora_modules(model))
    from safetensors import safe_open

    with safe_open(str(folder / lora.ADAPTER_WEIGHTS), framework="pt") as f:
        assert all(".lora_" in k for k in f.keys())
    loaded, _ = PixelLLM.from_pretrained(folder)
    assert not lora.has_lora(loaded)
    with torch.no_grad():
        assert (loaded(images, ids).logits - unmerged).abs().max().item() <= 1e-5

    # the adapter files alone (the trainable-only checkpoint) fold into a model holding the base weights
    only = tmp_path / "adapter-only"
    only.mkdir()
    for name in (lora.ADAPTER_WEIGHTS, lora.ADAPTER_CONFIG):
        (only / name).write_bytes((folder / name).read_bytes())
    assert lora.merge_adapter_file(only, with_base_only)
    with torch.no_grad():
        assert (with_base_only(images, ids).logits - unmerged).abs().max().item() <= 1e-5

    # save_pretrained of an adapted model writes merged plain weights, no adapter files
    exported = model.save_pretrained(tmp_path / "export")
    assert not (exported / lora.ADAPTER_WEIGHTS).exists()
    again, _ = PixelLLM.from_pretrained(exported)
    with torch.no_grad():
        assert (again(images, ids).logits - unmerged).abs().max().item() <= 1e-5

    lora.merge_lora(model)  # in place: plain again, same logits
    assert not lora.has_lora(model) and set(model.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        assert (model(images, ids).logits - unmerged).abs().max().item() <= 1e-5


def test_lora_resume_equals_uninterrupted(tmp_path):
    full = make_trainer(tmp_path / "full", max_steps=6, checkpoint_interval=3, lora_rank=2)
    full.train()
    resumed = make_trainer(tmp_path / "resumed", model_seed=5, max_steps=6, lora_rank=2)
    resumed.load_checkpoint(tmp_path / "full" / "ckpt" / ckpt.step_name(3))
    resumed.train()
    a, b = snapshot(full.model), snapshot(resumed.model)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_lora_targets_that_match_nothing_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match="'\\*.nosuch' matches no linear layer"):
        make_trainer(tmp_path, lora_rank=2, lora_targets=["*.nosuch"])


# ---- early stopping, TensorBoard -------------------------------------------------------------------------


def test_early_stopping_stops_at_the_right_step_on_a_scripted_curve(tmp_path, monkeypatch):
    # validated every step; best at step 3, then 3 validations without a better value: stops after step 6
    curve = iter([0.1, 0.2, 0.5, 0.4, 0.5, 0.3, 0.9, 0.9])
    trainer = make_trainer(
        tmp_path, val=True, max_steps=8, val_interval=1, early_stopping_patience=3, best_metric="bleu_4"
    )
    monkeypatch.setattr(trainer, "validate", lambda: {"val_loss": 1.0, "bleu_4": next(curve)})
    summary = trainer.train()
    assert summary["global_step"] == 6 and summary["stopped_early"] is True
    assert summary["best_checkpoint"] == ckpt.step_name(3)
    state = ckpt.read_state(tmp_path / "ckpt" / ckpt.step_name(6))
    assert state["early_stopped"] is True and state["validations_since_best"] == 3
    events = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "early_stop"] == [6]


def test_early_stopping_counter_resumes(tmp_path, monkeypatch):
    curve = iter([0.5, 0.4, 0.3, 0.2, 0.1])
    first = make_trainer(
        tmp_path, val=True, max_steps=2, val_interval=1, early_stopping_patience=2, best_metric="bleu_4"
    )
    monkeypatch.setattr(first, "validate", lambda: {"val_loss": 1.0, "bleu_4": next(curve)})
    first.train()  # step 1 best, step 2 one without improvement
    resumed = make_trainer(
        tmp_path, val=True, max_steps=5, val_interval=1, early_stopping_patience=2, best_metric="bleu_4"
    )
    resumed.resume("latest")
    assert resumed.early_stopping.since_best == 1
    monkeypatch.setattr(resumed, "validate", lambda: {"val_loss": 1.0, "bleu_4": next(curve)})
    assert resumed.train()["global_step"] == 3  # the second validation without improvement


def test_tensorboard_events_beside_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(tmp_path, val=True, max_steps=3, tensorboard=True).train()
    events = EventAccumulator(str(tmp_path / "ckpt" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/val_loss"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


# ---- the train command -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_flags_set_the_controls_and_resume_keeps_them(tmp_path):
    out = tmp_path / "run"
    common = [
        "pixel-llm",
        "train",
        "--preset",
        "tiny",
        "--num-scenes",
        "32",
        "--set",
        "image_size=32",
        "--set",
        "patch_size=8",
        "--set",
        "trainer.batch_size=16",
        "--set",
        "trainer.use_amp=false",
        "--out",
        str(out),
        "--quiet",
    ]
    result = CliRunner().invoke(
        cli,
        [
            *common,
            "--set",
            "trainer.max_steps=2",
            "--freeze",
            "encoder",
            "--lora-rank",
            "2",
            "--early-stopping-patience",
            "3",
            "--layer-decay",
            "0.8",
            "--gradient-checkpointing",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = ckpt.read_state(out / ckpt.step_name(2))["trainer_config"]
    assert saved["freeze"] == ["encoder"] and saved["lora_rank"] == 2 and saved["early_stopping_patience"] == 3
    assert saved["layer_decay"] == 0.8 and saved["gradient_checkpointing"] is True
    assert (out / ckpt.step_name(2) / lora.ADAPTER_WEIGHTS).is_file()
    result = CliRunner().invoke(
        cli, [*common[:-3], "--resume", "latest", "--out", str(out), "--quiet", "--set", "trainer.max_steps=3"]
    )
    assert result.exit_code == 0, result.output
    state = ckpt.read_state(out / ckpt.step_name(3))
    assert state["trainer_config"]["lora_rank"] == 2
    bad = CliRunner().invoke(cli, [*common, "--freeze", "encoder.blocks.3-1.*"])
    assert bad.exit_code != 0 and bad.output.strip().splitlines()[-1] == (
        "Error: trainer.freeze: 'encoder.blocks.3-1.*': range 3-1 runs backwards"
    )
