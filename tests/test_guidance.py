"""Classifier-free guidance (``GenerationConfig.guidance_scale``) and the null image it contrasts with
(``trainer.image_dropout``), on tiny random models.

The reference recomputes every step without a cache: the full decoder over the caption so far, once
with the image's features and once with zeros, combined as HF's ``UnbatchedClassifierFreeGuidanceLogitsProcessor``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from geometry_os.plugins.decoding import beam as beam_module
from geometry_os.plugins.decoding import greedy as greedy_module
from geometry_os.plugins.decoding.guidance import GuidedDecoder
from geometry_os.systems.pixel_llm import create_pixel_llm
from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption

MAX_SEQ = 10
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_torch_thread")]


def make_model(seed: int, vocab: int = 24):
    torch.manual_seed(seed)
    model = create_pixel_llm(vocab_size=vocab, preset="tiny", text_num_layers=2, max_seq_len=MAX_SEQ).eval()
    with torch.no_grad():  # larger weights than the init: captions that depend on the image
        for name, p in model.named_parameters():
            if p.dim() > 1 and "norm" not in name:
                p.normal_(0.0, min(p.shape) ** -0.5)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
    return model, images


def guided_log_probs(model, features: torch.Tensor, prefix: torch.Tensor, scale: float) -> torch.Tensor:
    """log_softmax of the guided scores of the token after ``prefix`` (rows, t), without a cache."""
    with torch.inference_mode():
        cond = F.log_softmax(model.decoder(prefix, features)[:, -1].float(), dim=-1)
        uncond = F.log_softmax(model.decoder(prefix, torch.zeros_like(features))[:, -1].float(), dim=-1)
    return F.log_softmax(uncond + scale * (cond - uncond), dim=-1)


def trimmed(row: torch.Tensor, eos: int) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(eos, 1) + 1] if eos in ids[1:] else ids


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [0.0, 2.5])
def test_guided_greedy_picks_the_argmax_of_the_guided_scores(seed, scale):
    model, images = make_model(seed)
    eos = model.config.eos_token_id
    out = generate_caption(
        model, images, max_length=MAX_SEQ, guidance_scale=scale, return_dict_in_generate=True, output_scores=True
    )
    plain = generate_caption(model, images, max_length=MAX_SEQ)
    with torch.inference_mode():
        features = model.encode(images)
    for row in range(len(images)):
        ids = trimmed(out.sequences[row], eos)
        for t in range(1, len(ids)):
            ref = guided_log_probs(model, features[row : row + 1], torch.tensor([ids[:t]]), scale)[0]
            assert ids[t] == int(ref.argmax())
            assert out.token_scores[row, t - 1].item() == pytest.approx(ref[ids[t]].item(), abs=1e-4)
    if scale == 0.0:  # the prior alone: the same caption for every image
        assert len({tuple(trimmed(r, eos)) for r in out.sequences}) == 1
    assert not torch.equal(out.sequences, plain) or scale == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_guided_beam_scores_are_sums_of_guided_log_probs(seed):
    model, images = make_model(seed)
    eos, scale = model.config.eos_token_id, 3.0
    out = generate_caption(
        model,
        images,
        max_length=MAX_SEQ,
        num_beams=3,
        num_return_sequences=2,
        guidance_scale=scale,
        return_dict_in_generate=True,
    )
    with torch.inference_mode():
        features = model.encode(images)
    for row, sequence in enumerate(out.sequences):
        ids, image = trimmed(sequence, eos), row // 2
        total = sum(
            guided_log_probs(model, features[image : image + 1], torch.tensor([ids[:t]]), scale)[0, ids[t]].item()
            for t in range(1, len(ids))
        )
        assert out.sequence_scores[row].item() == pytest.approx(total, abs=1e-3)


@pytest.mark.parametrize("fields", [{}, {"num_beams": 3, "num_return_sequences": 2}, {"num_beams": 4}])
def test_the_guided_wrapper_at_scale_one_changes_nothing(monkeypatch, fields):
    """Scale 1 never wraps the decoder; forcing the wrapper checks its cache plumbing (expand, reorder,
    reorder_groups, rows leaving) against the plain decoder's."""
    model, images = make_model(0)
    plain = generate_caption(model, images, max_length=MAX_SEQ, return_dict_in_generate=True, **fields)
    for module in (greedy_module, beam_module):
        monkeypatch.setattr(module, "guided", lambda decoder, config: GuidedDecoder(decoder, 1.0))
    wrapped = generate_caption(model, images, max_length=MAX_SEQ, return_dict_in_generate=True, **fields)
    assert torch.equal(wrapped.sequences, plain.sequences)
    assert torch.allclose(wrapped.sequence_scores, plain.sequence_scores, atol=1e-5)


def test_guidance_scale_is_validated():
    with pytest.raises(ValidationError, match="guidance_scale"):
        GenerationConfig(guidance_scale=-1)
    with pytest.raises(ValidationError, match="does not support guidance_scale=2.0"):
        GenerationConfig(guidance_scale=2.0, cache_implementation="static")


def test_image_dropout_decodes_some_rows_from_the_null_image():
    model, images = make_model(0)
    images = images.repeat(8, 1, 1, 1)  # 32 rows
    ids = torch.randint(3, 24, (32, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.encode(images)
        cond = model.decoder(ids, features)
        null = model.decoder(ids, torch.zeros_like(features))
        model.train()
        torch.manual_seed(0)
        dropped = model(images, ids, image_dropout=0.5).logits
        kept = model(images, ids).logits  # no image_dropout: every row its own image
        model.eval()
        evaluated = model(images, ids, image_dropout=0.5).logits  # eval mode: never dropped
    is_null = [torch.allclose(d, n, atol=1e-5) for d, n in zip(dropped, null)]
    is_cond = [torch.allclose(d, c, atol=1e-5) for d, c in zip(dropped, cond)]
    assert all(a != b for a, b in zip(is_null, is_cond))  # each row one or the other
    assert 4 <= sum(is_null) <= 28
    assert torch.allclose(kept, cond, atol=1e-5) and torch.allclose(evaluated, cond, atol=1e-5)


def test_word_dropout_replaces_input_words_after_bos_by_pad():
    model, images = make_model(0)
    pad = model.config.pad_token_id
    ids = torch.randint(3, 24, (4, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.encode(images)
        torch.manual_seed(1)
        drop = torch.rand(ids.shape) < 0.4  # the draw forward makes
        drop[:, 0] = False
        expected = model.decoder(ids.masked_fill(drop, pad), features)
        model.train()
        torch.manual_seed(1)
        dropped = model(images, ids, word_dropout=0.4).logits
        model.eval()
        evaluated = model(images, ids, word_dropout=0.4).logits
    assert drop.any() and not drop[:, 0].any()
    assert torch.allclose(dropped, expected, atol=1e-5)
    assert torch.allclose(evaluated, model.decoder(ids, features), atol=1e-5)


def test_word_replacement_puts_random_words_in_place_of_input_words_after_bos():
    model, images = make_model(0)
    c = model.config
    ids = torch.randint(3, 24, (64, 8), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = c.bos_token_id
    seen = []

    def record(input_ids, features, attention_mask=None):
        seen.append(input_ids)
        return decoder(input_ids, features, attention_mask)

    decoder = model.decoder.forward
    model.decoder.forward = record
    model.train()
    with torch.no_grad():
        model(images.repeat(16, 1, 1, 1), ids, word_replacement=0.5)
        model.eval()
        model(images.repeat(16, 1, 1, 1), ids, word_replacement=0.5)
    trained, evaluated = seen
    changed = trained != ids
    assert torch.equal(evaluated, ids) and not changed[:, 0].any()
    assert 0.3 < changed[:, 1:].float().mean() < 0.5  # half drawn, a few redrawn as themselves or specials
    assert not torch.isin(trained[changed], torch.tensor([c.pad_token_id, c.bos_token_id, c.eos_token_id])).any()
    assert 0 <= trained.min() and trained.max() < c.vocab_size


@pytest.mark.parametrize(
    "fields",
    [{}, {"image_dropout": 0.25}, {"word_dropout": 0.1, "image_dropout": 0.2, "word_replacement": 0.3}],
)
def test_the_trainer_passes_the_regularisers_to_the_model(tmp_path, monkeypatch, fields):
    from test_trainer import make_trainer

    from geometry_os.systems.pixel_llm.modeling import PixelLLM

    seen: list[dict] = []
    forward = PixelLLM.forward

    def spy(self, *args, **kwargs):
        seen.append({k: kwargs[k] for k in ("image_dropout", "word_dropout", "word_replacement") if k in kwargs})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(PixelLLM, "forward", spy)
    make_trainer(tmp_path, n=16, max_steps=2, **fields).train()
    assert seen and all(s == fields for s in seen)
