"""One label/mask rule (``targets.py``) for the collator, ``PixelLLM.loss`` and the trainer's token counts;
one summed loss ``(loss, n_tokens)`` whose gradients and logged mean equal the mean-times-count
computation it replaces (written out here as the reference)."""

from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn.functional as F

from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
from geometry_os.systems.pixel_llm import PixelLLM, create_pixel_llm
from geometry_os.systems.pixel_llm.collate import CaptionCollator
from geometry_os.systems.pixel_llm.config import TrainerConfig
from geometry_os.systems.pixel_llm.resolution import get_component
from geometry_os.systems.pixel_llm.targets import IGNORE_INDEX, count_targets, ignore_padding, next_token_targets

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

PAD = 0


def items(lengths: list[int]) -> list[dict]:
    return [
        {
            "image": torch.zeros(3, 4, 4),
            "input_ids": torch.arange(5, 5 + n),
            "caption": f"c{i}",
            "image_path": f"i{i}.png",
            "index": i,
        }
        for i, n in enumerate(lengths)
    ]


def old_mean_loss(logits, labels, mask, label_smoothing=0.0):
    """The mean next-token cross-entropy as ``PixelLLM.loss`` computed it before it returned the sum."""
    if mask is not None:
        labels = labels.masked_fill(mask == 0, -100)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def old_count(batch) -> int:
    """The trainer's count of target tokens as it was computed in the trainer plugin."""
    labels = batch["labels"].masked_fill(batch["attention_mask"] == 0, -100)
    return int((labels[:, 1:] != -100).sum())


def test_one_rule_decides_targets_for_collator_loss_and_counts():
    batch = CaptionCollator(PAD)(items([4, 2, 6]))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert torch.equal(batch["labels"], ignore_padding(ids, mask))
    assert (batch["labels"][mask == 0] == IGNORE_INDEX).all() and torch.equal(
        batch["labels"][mask == 1], ids[mask == 1]
    )
    targets = next_token_targets(batch["labels"], mask)
    assert targets.shape == (3, 5)
    # every real token but the first of its caption is predicted: 3 + 1 + 5
    assert count_targets(batch["labels"], mask) == 9 == old_count(batch)
    assert [row[row != IGNORE_INDEX].tolist() for row in targets] == [[6, 7, 8], [6], [6, 7, 8, 9, 10]]
    # labels that say IGNORE_INDEX themselves stay ignored, with or without a mask
    labels = batch["labels"].clone()
    labels[0, 2] = IGNORE_INDEX
    assert count_targets(labels, mask) == 8 and count_targets(labels) == 8
    assert ignore_padding(ids) is ids


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_summed_loss_and_its_gradients_equal_the_mean_times_count(label_smoothing):
    torch.manual_seed(0)
    batch = CaptionCollator(PAD)(items([4, 2, 6, 3]))
    logits = torch.randn(4, batch["input_ids"].shape[1], 11, requires_grad=True)
    labels, mask = batch["labels"] % 11, batch["attention_mask"]
    labels = labels.masked_fill(batch["labels"] == IGNORE_INDEX, IGNORE_INDEX)

    total, n = PixelLLM.loss(logits, labels, mask, label_smoothing)
    assert total.dtype == torch.float32 and n.dtype == torch.long and total.dim() == n.dim() == 0
    assert int(n) == old_count({"labels": labels, "attention_mask": mask}) == 11
    (grad_new,) = torch.autograd.grad(total * 2 / 17, logits)  # as the trainer scales: world_size / step tokens

    mean = old_mean_loss(logits, labels, mask, label_smoothing)
    (grad_old,) = torch.autograd.grad(mean * int(n) * 2 / 17, logits)
    torch.testing.assert_close(total, mean * int(n), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_new, grad_old, rtol=1e-5, atol=1e-7)


def test_forward_keeps_the_mean_and_gives_the_sum_on_request():
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=20, preset="tiny")
    batch = CaptionCollator(PAD)(items([4, 2, 6]))
    images = torch.rand(3, 3, model.config.image_size, model.config.image_size)
    args = (images, batch["input_ids"], batch["attention_mask"], batch["labels"])
    mean = model(*args)
    summed = model(*args, reduction="sum")
    reference = old_mean_loss(mean.logits, batch["labels"], batch["attention_mask"])
    torch.testing.assert_close(mean.loss, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(summed.loss, reference * 9, rtol=1e-6, atol=1e-5)
    assert int(mean.n_tokens) == int(summed.n_tokens) == 9
    assert model(images, batch["input_ids"]).loss is None


def test_a_training_step_has_the_gradients_and_logged_loss_of_the_mean_times_count(tmp_path, monkeypatch):
    """Two accumulated micro-batches with label smoothing: the trainer's gradients before the optimizer step
    and the loss it logs equal those of sum_i(mean_i * n_i) / step_tokens on a copy of the model."""
    data = get_component("dataset", "shapes").build({"n": 16, "seed": 0, "image_size": 32, "split": "train"})
    loader = PixelLLMTrainer.make_dataloader(data, 8, shuffle=False)
    window = list(loader)
    assert len(window) == 2
    config = TrainerConfig(
        batch_size=8,
        gradient_accumulation_steps=2,
        label_smoothing=0.1,
        max_grad_norm=None,
        warmup_steps=0,
        use_amp=False,
        checkpoint_dir=str(tmp_path / "ckpt"),
        max_steps=1,
        seed=0,
    )
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(data.tokenizer), preset="tiny")
    reference = copy.deepcopy(model)
    trainer = PixelLLMTrainer(model, config, loader, quiet=True)

    total = sum(old_count(b) for b in window)
    logged = 0.0
    for batch in window:
        out = reference(batch["images"], batch["input_ids"], batch["attention_mask"], batch["labels"])
        mean = old_mean_loss(out.logits, batch["labels"], batch["attention_mask"], 0.1)
        (mean * old_count(batch) / total).backward()
        logged += mean.item() * old_count(batch) / total
    expected = {name: p.grad.clone() for name, p in reference.named_parameters()}

    seen: dict[str, torch.Tensor] = {}
    step = trainer.scaler.step

    def capture(optimizer, *args, **kwargs):
        seen.update({name: p.grad.clone() for name, p in trainer.model.named_parameters()})
        return step(optimizer, *args, **kwargs)

    monkeypatch.setattr(trainer.scaler, "step", capture)
    trainer._session_start = time.perf_counter()
    loss = trainer._optimizer_step(window)
    assert loss == pytest.approx(logged, rel=1e-5)
    assert seen.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(seen[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)
