"""Re-ranking beam candidates by their word-dropout likelihood (``GenerationConfig(rerank="word_dropout")``),
on tiny random models. The reference scores one caption at a time, one word at a time, with no batching."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from geometry_os.systems.pixel_llm import create_pixel_llm
from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption
from geometry_os.systems.pixel_llm.rerank import word_dropout_scores

MAX_SEQ = 10
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_torch_thread")]


def make_model(seed: int, vocab: int = 24):
    torch.manual_seed(seed)
    model = create_pixel_llm(vocab_size=vocab, preset="tiny", text_num_layers=2, max_seq_len=MAX_SEQ).eval()
    with torch.no_grad():  # larger weights than the init: captions that depend on the image and the words
        for name, p in model.named_parameters():
            if p.dim() > 1 and "norm" not in name:
                p.normal_(0.0, min(p.shape) ** -0.5)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
    return model, images


def reference_score(model, features: torch.Tensor, ids: list[int]) -> float:
    """sum over t >= 1 of log p(ids[t] | image, ids[:t] with ids[t-1] -> <pad> unless it is <bos>)."""
    total = 0.0
    with torch.inference_mode():
        for t in range(1, len(ids)):
            context = list(ids[:t])
            if t >= 2:
                context[t - 1] = model.config.pad_token_id
            logits = model.decoder(torch.tensor([context]), features)[0, -1].float()
            total += F.log_softmax(logits, dim=-1)[ids[t]].item()
    return total


def trimmed(row: torch.Tensor, eos: int) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(eos, 1) + 1] if eos in ids[1:] else ids


def test_scores_match_the_one_word_at_a_time_reference():
    model, images = make_model(0)
    c = model.config
    with torch.inference_mode():
        features = model.encode(images[:2])
    # finished captions of different lengths, padding after <eos>, and one cut at the length cap (no <eos>)
    rows = [[1, 5, 7, 2, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0], [1, 4, 4, 6, 8, 11, 3]]
    sequences = torch.tensor(rows)
    feats = features[torch.tensor([0, 1, 1])]
    got = word_dropout_scores(model.decoder, feats, sequences, c.pad_token_id, c.eos_token_id)
    for i, row in enumerate(rows):
        ids = trimmed(torch.tensor(row), c.eos_token_id)
        assert got[i].item() == pytest.approx(reference_score(model, feats[i : i + 1], ids), abs=1e-4)


def test_a_caption_of_bos_alone_scores_zero():
    model, images = make_model(0)
    with torch.inference_mode():
        features = model.encode(images[:1])
    got = word_dropout_scores(model.decoder, features, torch.tensor([[1]]), 0, 2)
    assert got.tolist() == [0.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_returns_the_best_beam_candidates_by_the_score(seed):
    model, images = make_model(seed)
    eos, K, R = model.config.eos_token_id, 4, 2
    plain = generate_caption(
        model, images, max_length=MAX_SEQ, num_beams=K, num_return_sequences=K, return_dict_in_generate=True
    )
    out = generate_caption(
        model,
        images,
        max_length=MAX_SEQ,
        num_beams=K,
        num_return_sequences=R,
        rerank="word_dropout",
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert out.sequences.shape[0] == len(images) * R and out.rerank_scores.shape == (len(images) * R,)
    with torch.inference_mode():
        features = model.encode(images)
    changed = False
    for image in range(len(images)):
        candidates = [trimmed(plain.sequences[image * K + k], eos) for k in range(K)]
        beam_scores = [plain.sequence_scores[image * K + k].item() for k in range(K)]
        ref = [reference_score(model, features[image : image + 1], ids) for ids in candidates]
        order = sorted(range(K), key=lambda k: -ref[k])  # stable: ties keep the beam order
        for r in range(R):
            row = image * R + r
            assert trimmed(out.sequences[row], eos) == candidates[order[r]]
            assert out.rerank_scores[row].item() == pytest.approx(ref[order[r]], abs=1e-4)
            # the beam's own scores travel with the caption
            assert out.sequence_scores[row].item() == pytest.approx(beam_scores[order[r]], abs=1e-5)
            assert out.token_scores[row].sum().item() == pytest.approx(beam_scores[order[r]], abs=1e-4)
        changed |= order[0] != 0
    if seed == 0:
        assert changed  # on these weights the word-dropout score disagrees with the beam somewhere


def test_rerank_texts_follow_the_reordered_rows():
    model, images = make_model(1)

    class Tok:
        pad_token_id, bos_token_id, eos_token_id, unk_token_id = 0, 1, 2, 3

        def __len__(self) -> int:
            return 24

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(str(i) for i in ids if i > 3)

    out = generate_caption(
        model,
        images,
        max_length=MAX_SEQ,
        num_beams=3,
        rerank="word_dropout",
        return_dict_in_generate=True,
        tokenizer=Tok(),
    )
    assert out.texts == [Tok().decode(row.tolist()) for row in out.sequences]


def test_rerank_needs_beam_search():
    with pytest.raises(ValidationError, match="rerank='word_dropout'.*num_beams > 1"):
        GenerationConfig(rerank="word_dropout")
    with pytest.raises(ValidationError):
        GenerationConfig(num_beams=3, rerank="length")
    assert GenerationConfig(num_beams=3, rerank="word_dropout").rerank == "word_dropout"


def test_beam_slots_no_caption_filled_stay_last():
    """Six tokens, three of them suppressed, one new token: beam search fills 3 of its 8 slots with
    captions; the other 5 (score -inf, no <eos>) must not be re-ranked above them."""
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=6, preset="tiny", max_seq_len=MAX_SEQ).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_beams=8, max_new_tokens=1, suppress_tokens=[0, 1, 3], return_dict_in_generate=True)
    plain = generate_caption(model, images, num_return_sequences=3, **kwargs)  # the three real captions
    real = [sorted(r.tolist() for r in plain.sequences[i * 3 : (i + 1) * 3]) for i in range(2)]
    assert real[0] == real[1] == [[1, 2], [1, 4], [1, 5]]
    out = generate_caption(model, images, num_return_sequences=3, rerank="word_dropout", **kwargs)
    for i in range(2):
        assert sorted(r.tolist() for r in out.sequences[i * 3 : (i + 1) * 3]) == real[i]
    assert torch.isfinite(out.rerank_scores).all() and out.sequences.shape[1] == 2


class _ReorderOnly:
    """The decoder's cache without ``reorder_groups``: only ``protocols.DecoderCache``'s methods."""

    def __init__(self, cache):
        self.cache = cache

    @property
    def length(self):
        return self.cache.length

    @property
    def batch_size(self):
        return self.cache.batch_size

    def reorder(self, index):
        self.cache.reorder(index)

    def expand(self, n):
        self.cache.expand(n)


class _PlainDecoder:
    def __init__(self, decoder):
        self.decoder = decoder

    def init_cache(self, features, max_length):
        return _ReorderOnly(self.decoder.init_cache(features, max_length))

    def step(self, ids, cache):
        return self.decoder.step(ids, cache.cache)


def test_scores_agree_for_per_image_features_per_row_features_and_a_plain_cache():
    model, images = make_model(2)
    c = model.config
    with torch.inference_mode():
        features = model.encode(images)  # 3 images, 2 captions each (beam order)
    rows = [[1, 5, 7, 2, 0], [1, 9, 9, 9, 2], [1, 4, 2, 0, 0], [1, 6, 8, 11, 3], [1, 2, 0, 0, 0], [1, 7, 7, 2, 0]]
    sequences = torch.tensor(rows)
    grouped = word_dropout_scores(model.decoder, features, sequences, c.pad_token_id, c.eos_token_id)
    per_row = word_dropout_scores(
        model.decoder, features.repeat_interleave(2, 0), sequences, c.pad_token_id, c.eos_token_id
    )
    plain = word_dropout_scores(_PlainDecoder(model.decoder), features, sequences, c.pad_token_id, c.eos_token_id)
    assert torch.allclose(grouped, per_row, atol=1e-5) and torch.allclose(grouped, plain, atol=1e-5)
    for i, row in enumerate(rows):
        ids = trimmed(torch.tensor(row), c.eos_token_id)
        assert grouped[i].item() == pytest.approx(reference_score(model, features[i // 2 : i // 2 + 1], ids), abs=1e-4)


def test_captions_must_be_a_multiple_of_the_images():
    model, images = make_model(0)
    with torch.inference_mode():
        features = model.encode(images[:2])
    with pytest.raises(ValueError, match="3 captions for 2 images"):
        word_dropout_scores(model.decoder, features, torch.tensor([[1, 5, 2]] * 3), 0, 2)


def test_no_captions_score_nothing():
    model, images = make_model(0)
    with torch.inference_mode():
        features = model.encode(images[:1])
    assert word_dropout_scores(model.decoder, features, torch.zeros(0, 5, dtype=torch.long), 0, 2).shape == (0,)


def test_bf16_scores_stay_near_the_fp32_reference():
    model, images = make_model(1)
    c = model.config
    rows = [[1, 5, 7, 2, 0], [1, 9, 9, 9, 2]]
    with torch.inference_mode():
        features = model.encode(images[:1])
        half = copy.deepcopy(model).to(torch.bfloat16)
        got = word_dropout_scores(half.decoder, features.to(torch.bfloat16), torch.tensor(rows), 0, c.eos_token_id)
    for i, row in enumerate(rows):
        ids = trimmed(torch.tensor(row), c.eos_token_id)
        # bf16 keeps 8 bits of mantissa: a few hundredths of a nat over a caption
        assert got[i].item() == pytest.approx(reference_score(model, features, ids), abs=0.1)
