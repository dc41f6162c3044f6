"""Every evaluation scores each image's one caption against all of that image's references, whatever the
caption file's order (grouped, or COCO-interleaved) or the batch size: the trainer's validate(), ``eval``,
the ``pixel_llm.evaluate`` system call and the demo share ``data.group_references``.

The model's captions are fixed per image (its colour) so the right scores are known: each image is
"captioned" with a reference that is not its first, so a scorer that drops references gets it wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from geometry_os.cli import cli
from geometry_os.host import Host
from geometry_os.plugins.amp_trainer import validation
from geometry_os.plugins.amp_trainer.trainer import PixelLLMTrainer
from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
from geometry_os.systems.pixel_llm import captioning, create_pixel_llm
from geometry_os.systems.pixel_llm.config import TrainerConfig
from geometry_os.systems.pixel_llm.data import ImageTextDataset, group_references
from geometry_os.systems.pixel_llm.metrics import caption_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
CAPTIONS = {  # three references each; the model below answers with the last one
    "red": ["a red square", "a big red square", "red square on black"],
    "green": ["a green square", "one green square", "a square that is green"],
    "blue": ["a blue square", "the blue square", "blue square in the middle"],
}
ANSWER = {name: refs[-1] for name, refs in CAPTIONS.items()}
WRONG = {"red": "a red circle", "green": "a green circle", "blue": "a blue circle"}


def write_images(folder: Path) -> None:
    for name, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(folder / f"{name}.png")


def write_grouped(folder: Path) -> Path:
    path = folder / "grouped.json"
    path.write_text(json.dumps([{"image": f"{name}.png", "captions": refs} for name, refs in CAPTIONS.items()]))
    return path


def write_interleaved(folder: Path) -> Path:
    """COCO with annotations interleaved: image 0 caption a, image 1 caption a, ..., image 0 caption b, ..."""
    names = list(CAPTIONS)
    images = [{"id": i, "file_name": f"{name}.png"} for i, name in enumerate(names)]
    annotations = [
        {"id": 10 * k + i, "image_id": i, "caption": CAPTIONS[name][k]}
        for k in range(3)
        for i, name in enumerate(names)
    ]
    path = folder / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


WRITERS = {"grouped": write_grouped, "interleaved": write_interleaved}


@pytest.fixture
def folder(tmp_path):
    write_images(tmp_path)
    return tmp_path


def colour_of(image: torch.Tensor) -> str:
    """The name of a (normalised) single-colour test image: its brightest channel."""
    return list(COLOURS)[int(image.mean(dim=(1, 2)).argmax())]


def expected(answers: dict[str, str], names=tuple(CAPTIONS)) -> dict[str, float]:
    return caption_metrics([answers[n] for n in names], [CAPTIONS[n] for n in names])


def test_group_references_collects_interleaved_captions_in_file_order():
    samples = [("a", "1"), ("b", "x"), ("a", "2"), ("c", "y"), ("b", "z"), ("a", "1")]
    assert group_references(samples) == [("a", ["1", "2", "1"]), ("b", ["x", "z"]), ("c", ["y"])]


@pytest.mark.parametrize("order", WRITERS)
def test_dataset_references_hold_every_caption_of_every_image(folder, order):
    dataset = ImageTextDataset(WRITERS[order](folder))
    refs = {Path(image).stem: captions for image, captions in dataset.references}
    assert refs == CAPTIONS


# ---- the trainer's validate() ----------------------------------------------------------------------------


def validate(folder: Path, order: str, batch_size: int, monkeypatch, max_samples: int = 500, answers=ANSWER):
    dataset = ImageTextDataset(WRITERS[order](folder), config={"image_size": 32})
    calls: list[str] = []

    def fake_generate(model, images, tokenizer):  # the model "sees" the colour and answers for it
        names = [colour_of(image) for image in images]
        calls.extend(names)
        return [answers[name] for name in names]

    monkeypatch.setattr(validation, "_generate", fake_generate)
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(dataset.tokenizer), preset="tiny")
    loader = PixelLLMTrainer.make_dataloader(dataset, batch_size, shuffle=False)
    config = TrainerConfig(batch_size=batch_size, use_amp=False, val_max_samples=max_samples, max_steps=1)
    trainer = PixelLLMTrainer(model, config, loader, loader, quiet=True)
    return trainer.validate(), calls


@pytest.mark.parametrize("order", WRITERS)
@pytest.mark.parametrize("batch_size", [1, 2, 4, 6, 9])
def test_validate_scores_each_image_once_against_all_its_references(folder, monkeypatch, order, batch_size):
    metrics, calls = validate(folder, order, batch_size, monkeypatch)
    assert sorted(calls) == sorted(CAPTIONS)  # each image captioned exactly once
    assert metrics["exact_match"] == 1.0 and metrics["num_images"] == 3
    right = expected(ANSWER)
    for name in ("bleu_1", "bleu_4", "rouge_l", "cider_d"):
        assert metrics[name] == pytest.approx(right[name], abs=1e-12)


@pytest.mark.parametrize("order", WRITERS)
@pytest.mark.parametrize("batch_size", [2, 6])
def test_validate_wrong_captions_score_against_all_references(folder, monkeypatch, order, batch_size):
    metrics, _ = validate(folder, order, batch_size, monkeypatch, answers=WRONG)
    right = expected(WRONG)
    assert metrics["exact_match"] == 0.0
    for name in ("bleu_1", "bleu_2", "rouge_l", "cider_d"):
        assert metrics[name] == pytest.approx(right[name], abs=1e-12)


@pytest.mark.parametrize("order", WRITERS)
def test_validate_limited_to_fewer_images_still_takes_their_later_references(folder, monkeypatch, order):
    """val_max_samples=2 captions two images; their references further down the file still count."""
    metrics, calls = validate(folder, order, 2, monkeypatch, max_samples=2)
    assert len(calls) == 2 and len(set(calls)) == 2
    assert metrics["exact_match"] == 1.0 and metrics["num_images"] == 2
    assert metrics["cider_d"] == pytest.approx(expected(ANSWER, tuple(calls))["cider_d"], abs=1e-12)


def test_issue_example_one_prediction_per_image_exact_match_one(folder, monkeypatch):
    """3 images with 2 captions each in one batch of 6: a prediction of exactly the first caption is a match."""
    path = folder / "two.json"
    path.write_text(json.dumps([{"image": f"{n}.png", "captions": CAPTIONS[n][:2]} for n in CAPTIONS]))
    monkeypatch.setitem(WRITERS, "two", lambda _folder: path)
    metrics, calls = validate(folder, "two", 6, monkeypatch, answers={n: CAPTIONS[n][0] for n in CAPTIONS})
    assert metrics["exact_match"] == 1.0 and len(calls) == 3


# ---- eval, the pixel_llm.evaluate system call, the demo -------------------------------------------------------


@pytest.fixture
def checkpoint(folder):
    vocab = SimpleVocabulary([c for refs in CAPTIONS.values() for c in refs])
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(vocab), preset="tiny")
    return model.save_pretrained(folder / "ckpt", tokenizer=vocab)


@pytest.fixture
def fixed_captions(monkeypatch):
    """caption_images answers ANSWER for each image path and records the paths it was given."""
    seen: list[str] = []

    def fake(model, tokenizer, paths, generation=None, batch_size=16):
        seen.extend(Path(p).stem for p in paths)
        return [captioning.CaptionResult(image=str(p), caption=ANSWER[Path(p).stem]) for p in paths]

    monkeypatch.setattr(captioning, "caption_images", fake)
    return seen


@pytest.mark.parametrize("order", WRITERS)
def test_evaluate_system_call_uses_every_reference(folder, checkpoint, fixed_captions, order):
    data = WRITERS[order](folder)
    metrics = Host().call("pixel_llm.evaluate", checkpoint=str(checkpoint), data=str(data), batch_size=2)
    assert sorted(fixed_captions) == sorted(CAPTIONS)
    assert metrics["exact_match"] == 1.0 and metrics["cider_d"] == pytest.approx(expected(ANSWER)["cider_d"])
    assert {Path(e["image"]).stem: e["references"] for e in metrics["examples"]} == CAPTIONS


@pytest.mark.parametrize("order", WRITERS)
def test_eval_command_uses_every_reference(folder, checkpoint, fixed_captions, order):
    data = WRITERS[order](folder)
    result = CliRunner().invoke(
        cli, ["pixel-llm", "eval", "--checkpoint", str(checkpoint), "--data", str(data), "--batch-size", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert sorted(fixed_captions) == sorted(CAPTIONS)
    assert metrics["exact_match"] == 1.0 and metrics["bleu_1"] == pytest.approx(expected(ANSWER)["bleu_1"])


def test_demo_evaluation_scores_against_the_datasets_references(monkeypatch):
    """The demo's held-out evaluation scores one caption per scene against ``test.references`` (the
    synthetic scenes have one caption each, so this pins the shared rule rather than a different number)."""
    import geometry_os.systems.pixel_llm.metrics as metrics_module
    from geometry_os.plugins.commands import demo
    from geometry_os.plugins.datasets.shapes_dataset import ShapesDataset

    scored: list[tuple[list[str], list[list[str]]]] = []
    original = metrics_module.caption_metrics

    def spy(predictions, references, idf_corpus=None):
        scored.append((list(predictions), [list(r) for r in references]))
        return original(predictions, references, idf_corpus)

    monkeypatch.setattr(metrics_module, "caption_metrics", spy)
    test = ShapesDataset(6, seed=1, image_size=32, split="test")
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(test.tokenizer), preset="tiny").eval()
    metrics, _, predictions = demo.evaluate_by_shapes(model, test.tokenizer, 6, 1)
    assert scored == [(predictions, [refs for _, refs in test.references])]
    assert metrics["num_images"] == 6


@pytest.mark.parametrize("order", WRITERS)
def test_per_image_turns_per_sample_predictions_into_one_per_image(folder, order):
    """The demo and benchmarks/learn_shapes.py caption every sample; per_image keeps one prediction per
    image and pairs it with all of that image's references."""
    from geometry_os.systems.pixel_llm.data import per_image

    dataset = ImageTextDataset(WRITERS[order](folder))
    predictions = [ANSWER[Path(r.image).stem] for r in dataset.records]
    chosen, references = per_image(dataset, predictions)
    assert chosen == [ANSWER[n] for n in CAPTIONS] and references == [CAPTIONS[n] for n in CAPTIONS]
    assert caption_metrics(chosen, references)["exact_match"] == 1.0
    with pytest.raises(ValueError, match="2 predictions for 9 samples"):
        per_image(dataset, predictions[:2])


def test_under_ddp_references_from_every_process_are_merged():
    """Each process sees a share of the samples: an image captioned on one process is scored against its
    captions from all of them, in file order, each sample once (a padded duplicate counts once)."""

    class TwoProcesses:
        is_main = True

        def gather_objects(self, mine):
            other = (
                [("b.png", "a blue square")],
                [(1, "a.png", "a big red square"), (2, "b.png", "a blue square"), (0, "a.png", "a red square")],
            )
            return [mine, other]

        def broadcast_object(self, obj):
            return obj

    captions = {"a.png": "a big red square"}
    samples = [(0, "a.png", "a red square"), (3, "a.png", "red square on black"), (4, "b.png", "the blue square")]
    metrics = validation._caption_metrics(captions, samples, TwoProcesses(), max_samples=10)
    references = [["a red square", "a big red square", "red square on black"], ["a blue square", "the blue square"]]
    right = caption_metrics(["a big red square", "a blue square"], references)
    assert metrics["num_images"] == 2 and metrics["exact_match"] == 1.0
    assert metrics["cider_d"] == pytest.approx(right["cider_d"], abs=1e-12)
    assert metrics["bleu_2"] == pytest.approx(right["bleu_2"], abs=1e-12)


def test_validate_a_stream_without_sample_indices(folder, monkeypatch):
    """WebDataset shards stream samples with index -1: each sample still counts once, every image is
    scored against all its captions."""
    import contextlib

    from geometry_os.plugins.amp_trainer.distributed import World

    dataset = ImageTextDataset(write_interleaved(folder), config={"image_size": 32})
    batches = [
        dict(b, indices=torch.full_like(b["indices"], -1))
        for b in PixelLLMTrainer.make_dataloader(dataset, 4, shuffle=False)
    ]
    monkeypatch.setattr(
        validation, "_generate", lambda model, images, tokenizer: [ANSWER[colour_of(i)] for i in images]
    )
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(dataset.tokenizer), preset="tiny")
    metrics = validation.evaluate(
        model,
        batches,
        to_device=lambda b: b,
        autocast=contextlib.nullcontext,
        world=World(),
        tokenizer=dataset.tokenizer,
        max_samples=500,
    )
    right = expected(ANSWER)
    assert metrics["exact_match"] == 1.0 and metrics["num_images"] == 3
    assert metrics["cider_d"] == pytest.approx(right["cider_d"], abs=1e-12)
