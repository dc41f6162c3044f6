"""``trainer.ema_decay``: the moving average of the weights is what validation measures and checkpoints
hold; the trained weights keep training and a resume continues both exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import make_trainer, max_diff, weights

from geometry_os.errors import CheckpointError
from geometry_os.plugins.amp_trainer import run_state as ckpt
from geometry_os.plugins.amp_trainer.ema import ema_model, warmed_decay
from geometry_os.plugins.amp_trainer.resumable import EMA_UPDATES, TRAINED_WEIGHTS
from geometry_os.systems.pixel_llm.config import TrainerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_average_follows_the_warm_up_formula():
    model = torch.nn.Linear(3, 2)
    average = ema_model(model, 0.9)
    history = []
    for step in range(6):
        with torch.no_grad():
            model.weight.add_(float(step + 1))
        history.append(model.weight.detach().clone())
        average.update_parameters(model)
    expected = history[0].clone()  # the first update copies
    for n, w in enumerate(history[1:], start=1):
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert warmed_decay(0.9, 1) == pytest.approx(2 / 11) and warmed_decay(0.9, 1000) == 0.9
    assert torch.allclose(average.module.weight, expected, atol=1e-6)
    assert not average.module.weight.requires_grad and int(average.n_averaged) == 6


def test_off_by_default_and_checked():
    assert TrainerConfig().ema_decay == 0.0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ema_decay"):
            TrainerConfig(ema_decay=bad)


def test_validation_and_checkpoints_use_the_average(tmp_path):
    trainer = make_trainer(tmp_path, val=True, max_steps=4, ema_decay=0.99, checkpoint_interval=4)
    assert trainer.eval_model is trainer.model  # nothing averaged yet: the average is not a stale copy
    trainer.train()
    assert trainer.eval_model is trainer.ema.module
    average, trained = weights(trainer.ema.module), weights(trainer.model)
    assert max_diff(average, trained) > 1e-4  # they differ, so the checks below can tell them apart
    folder = tmp_path / "ckpt" / "step-00000004"
    assert max_diff(load_file(str(folder / "model.safetensors")), average) == 0
    assert max_diff(load_file(str(tmp_path / "ckpt" / "best" / "model.safetensors")), average) == 0
    tensors = torch.load(folder / "optimizer.pt", weights_only=True)
    assert max_diff(tensors[TRAINED_WEIGHTS], trained) == 0 and tensors[EMA_UPDATES] == 4
    # the logged validation loss is the average's, not the trained weights'
    logged = [r for r in trainer.log.history if "val_loss" in r][-1]["val_loss"]
    trainer.ema = None  # eval_model is now the trained weights
    of_trained = trainer.validate()["val_loss"]
    trainer.model.load_state_dict(average)
    assert trainer.validate()["val_loss"] == pytest.approx(logged, abs=1e-9)
    assert abs(of_trained - logged) > 1e-6


def test_resume_continues_weights_and_average_exactly(tmp_path):
    fields = dict(num_epochs=2, ema_decay=0.9, checkpoint_interval=5, save_total_limit=None)
    full = make_trainer(tmp_path / "full", **fields)
    full.train()
    resumed = make_trainer(tmp_path / "resumed", model_seed=7, **fields)
    resumed.load_checkpoint(tmp_path / "full" / "ckpt" / ckpt.step_name(5))
    assert int(resumed.ema.n_averaged) == 5
    resumed.train()
    assert max_diff(weights(full.model), weights(resumed.model)) <= 1e-6
    assert max_diff(weights(full.ema.module), weights(resumed.ema.module)) <= 1e-6


def test_a_run_without_ema_continues_the_trained_weights(tmp_path):
    make_trainer(tmp_path / "a", max_steps=3, ema_decay=0.9).train()
    step = tmp_path / "a" / "ckpt" / ckpt.step_name(3)
    trained = torch.load(step / "optimizer.pt", weights_only=True)[TRAINED_WEIGHTS]
    plain = make_trainer(tmp_path / "b", max_steps=4)
    plain.load_checkpoint(step)
    assert max_diff(weights(plain.model), trained) == 0
    averaged = make_trainer(tmp_path / "c", max_steps=4, ema_decay=0.5)
    averaged.load_checkpoint(step)  # the average continues from the saved one, at this run's decay
    assert max_diff(weights(averaged.ema.module), load_file(str(step / "model.safetensors"))) == 0


def test_a_forged_update_count_is_refused(tmp_path):
    make_trainer(tmp_path, max_steps=2, ema_decay=0.9).train()
    step = tmp_path / "ckpt" / ckpt.step_name(2)
    tensors = torch.load(step / "optimizer.pt", weights_only=True)
    for bad in ("many", -3, 2**70):
        tensors[EMA_UPDATES] = bad
        torch.save(tensors, step / "optimizer.pt")
        with pytest.raises(CheckpointError, match="ema_updates must be a non-negative integer"):
            make_trainer(tmp_path / f"b{bad}", max_steps=3, ema_decay=0.9).load_checkpoint(step)
