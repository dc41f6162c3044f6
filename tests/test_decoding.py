"""Decoding strategies (greedy, sample, beam) on tiny random models, each property over 3 seeds.

The random models get an untied LM head with a bias; the ``<eos>`` bias is calibrated per seed so
that captions of one batch end at different lengths (asserted where it matters).
"""

from __future__ import annotations

import itertools
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from geometry_os.errors import ComponentError
from geometry_os.plugins.decoding.common import process_logits, warp_logits
from geometry_os.systems.pixel_llm import create_pixel_llm
from geometry_os.systems.pixel_llm.inference import (
    GenerationConfig,
    GenerationOutput,
    beam_search_decode,
    generate_caption,
)
from geometry_os.systems.pixel_llm.resolution import get_component

PAD, BOS, EOS = 0, 1, 2
SEEDS = [0, 1, 2]
MAX_SEQ = 16

# tiny models: one thread (tests/conftest.py) is fastest, and immune to other processes on a busy machine
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_torch_thread")]


# ---- tiny models -----------------------------------------------------------------------------------


def make_model(seed: int, vocab: int = 32, eos_bias: float = 0.0, max_seq_len: int = MAX_SEQ) -> nn.Module:
    """A tiny PixelLLM with random weights of ~unit gain (so captions vary with the image instead of
    collapsing to one repeated token) and a fresh LM head whose bias on ``<eos>`` makes captions end."""
    model = create_pixel_llm(
        vocab_size=vocab, preset="tiny", text_num_layers=2, max_seq_len=max_seq_len, tie_word_embeddings=False
    ).eval()
    weights = torch.Generator().manual_seed(seed)  # every weight drawn here: independent of global RNG use
    dim = model.decoder.embed_dim
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "lm_head" in name:  # the head is replaced below
                continue
            if p.dim() == 1:
                std = 0.1
            elif name.endswith(("wte.weight", "wpe.weight")) or "pos" in name:
                std = 1.0
            else:  # (in, out) or (out, in) layouts alike: the smaller side is the fan-in here
                std = (p[0].numel() if p.dim() > 2 else min(p.shape)) ** -0.5
            p.normal_(0.0, std, generator=weights)
        head = type(model.decoder.lm_head)(dim, vocab, bias=True)  # the decoder's own layer type, plus a bias
        head.weight.normal_(0.0, 3 * dim**-0.5, generator=weights)
        head.bias.zero_()
        head.bias[EOS] = eos_bias
        model.decoder.lm_head = head
    return model


def make_images(seed: int, n: int) -> torch.Tensor:
    """Images of distinct average colours (random noise alone averages out over the patches)."""
    g = torch.Generator().manual_seed(1000 + seed)
    colour = 2 * torch.randn(n, 3, 1, 1, generator=g)
    return colour + 0.5 * torch.randn(n, 3, 32, 32, generator=g)


def lengths_of(sequences: torch.Tensor) -> list[int]:
    """Tokens up to and including the first <eos> (all if none)."""
    out = []
    for row in sequences.tolist():
        out.append(row.index(EOS, 1) + 1 if EOS in row[1:] else len(row))
    return out


def trimmed(row: torch.Tensor) -> tuple[int, ...]:
    tokens = row.tolist()
    return tuple(tokens[: lengths_of(row[None])[0]])


_CALIBRATED: dict[tuple, float] = {}
_KNOWN_BIAS = {0: -1.5, 1: 2.5, 2: 3.0}  # what the scan below finds for greedy; tried first


def eos_model(seed: int, n_images: int = 6, **fields) -> tuple[nn.Module, torch.Tensor]:
    """A model whose captions (greedy, or decoded with ``fields``) for the images end at (at least 3)
    different lengths: the ``<eos>`` bias is scanned until they do."""
    images = make_images(seed, 6)
    key = (seed, *sorted(fields.items()))
    if key not in _CALIBRATED:
        for bias in [_KNOWN_BIAS.get(seed, 0.0)] + [b / 4 for b in range(-8, 24)]:
            model = make_model(seed, eos_bias=bias)
            lengths = lengths_of(generate_caption(model, images, max_length=MAX_SEQ, **fields))
            if len(set(lengths)) >= 3:
                _CALIBRATED[key] = bias
                break
        else:  # pragma: no cover - a change of the random model would land here
            pytest.fail(f"no <eos> bias gives varied caption lengths for seed {seed}")
    return make_model(seed, eos_bias=_CALIBRATED[key]), images[:n_images]


def strategy(name: str):
    return get_component("decoding_strategy", name).build()


def seeded(fields: dict, seed: int) -> dict:
    """``fields`` plus ``seed`` when they sample (greedy and beam refuse a seed they would ignore)."""
    return {**fields, "seed": seed} if fields.get("do_sample") else fields


# ---- a decoder without KV cache: recomputes the whole prefix at every step -----------------------


class PrefixCache:
    """Holds the tokens so far and the features; ``reorder`` / ``expand`` act on both."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features
        self.ids = torch.empty(features.shape[0], 0, dtype=torch.long)

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    def reorder(self, index: torch.Tensor) -> None:
        self.ids, self.features = self.ids[index], self.features[index]

    def expand(self, n: int) -> None:
        self.ids = self.ids.repeat_interleave(n, 0)
        self.features = self.features.repeat_interleave(n, 0)


class NoCacheDecoder:
    """``model.decoder(ids, features)`` on the whole prefix each step (the reference)."""

    def __init__(self, decoder: nn.Module) -> None:
        self.decoder = decoder
        self.max_seq_len = decoder.max_seq_len
        self.vocab_size = decoder.vocab_size

    def init_cache(self, features: torch.Tensor, max_length: int) -> PrefixCache:
        return PrefixCache(features)

    def step(self, input_ids: torch.Tensor, cache: PrefixCache, output_attentions: bool = False) -> torch.Tensor:
        assert not output_attentions
        cache.ids = torch.cat([cache.ids, input_ids], dim=1)
        return self.decoder(cache.ids, cache.features)[:, -1]


def decode_direct(model, images, name: str, decoder=None, **fields) -> GenerationOutput:
    """Run a strategy on pre-encoded images, optionally with another decoder."""
    config = GenerationConfig(return_dict_in_generate=True, output_scores=True, **fields)
    shim = SimpleNamespace(decoder=decoder or model.decoder)
    with torch.inference_mode():
        return strategy(name).decode(shim, model.encode(images), config)


def greedy_reference(model, images, max_length: int) -> tuple[list[tuple[int, ...]], list[float]]:
    """Plain greedy decoding, one image at a time, no cache, no strategy code."""
    seqs, scores = [], []
    with torch.inference_mode():
        for image in images:
            features = model.encode(image[None])
            ids, total = [BOS], 0.0
            while len(ids) < max_length:
                logp = torch.log_softmax(model.decoder(torch.tensor([ids]), features)[0, -1].float(), -1)
                token = int(logp.argmax())
                ids.append(token)
                total += float(logp[token])
                if token == EOS:
                    break
            seqs.append(tuple(ids))
            scores.append(total)
    return seqs, scores


# ---- equivalences ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_greedy_matches_no_cache_reference(seed):
    model, images = eos_model(seed)
    out = generate_caption(model, images, max_length=MAX_SEQ, return_dict_in_generate=True, output_scores=True)
    ref_seqs, ref_scores = greedy_reference(model, images, MAX_SEQ)
    assert [trimmed(r) for r in out.sequences] == ref_seqs
    assert torch.allclose(out.sequence_scores, torch.tensor(ref_scores), atol=1e-5)
    assert torch.allclose(out.token_scores.sum(1), out.sequence_scores, atol=1e-5)


@pytest.mark.parametrize("name, fields", [("greedy", {}), ("beam", {"num_beams": 3, "num_return_sequences": 2})])
@pytest.mark.parametrize("seed", SEEDS)
def test_cache_equals_no_cache(seed, name, fields):
    model, images = eos_model(seed, n_images=4)
    cached = decode_direct(model, images, name, max_length=MAX_SEQ, **fields)
    full = decode_direct(model, images, name, decoder=NoCacheDecoder(model.decoder), max_length=MAX_SEQ, **fields)
    assert torch.equal(cached.sequences, full.sequences)
    assert torch.allclose(cached.sequence_scores, full.sequence_scores, atol=1e-5)
    assert torch.allclose(cached.token_scores, full.token_scores, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_one_beam_equals_greedy(seed):
    model, images = eos_model(seed)
    greedy = generate_caption(model, images, max_length=MAX_SEQ, return_dict_in_generate=True)
    beam = generate_caption(
        model, images, max_length=MAX_SEQ, strategy="beam", num_beams=1, return_dict_in_generate=True
    )
    assert torch.equal(beam.sequences, greedy.sequences)
    assert torch.allclose(beam.sequence_scores, greedy.sequence_scores, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("warp", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "temperature": 0.3}])
def test_degenerate_sampling_equals_greedy(seed, warp):
    model, images = eos_model(seed)
    greedy = generate_caption(model, images, max_length=MAX_SEQ)
    sampled = generate_caption(
        model, images, max_length=MAX_SEQ, do_sample=True, seed=seed, **{"temperature": 0.7, **warp}
    )
    assert torch.equal(sampled, greedy)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fields", [{}, {"num_beams": 3}, {"num_beams": 4, "num_return_sequences": 2}])
def test_batched_equals_one_at_a_time(seed, fields):
    model, images = eos_model(seed, **fields)
    batched = generate_caption(model, images, max_length=MAX_SEQ, return_dict_in_generate=True, **fields)
    assert len(set(lengths_of(batched.sequences))) > 1, "captions must end at different lengths"
    singles = [
        generate_caption(model, image[None], max_length=MAX_SEQ, return_dict_in_generate=True, **fields)
        for image in images
    ]
    assert [trimmed(r) for r in batched.sequences] == [trimmed(r) for s in singles for r in s.sequences]
    single_scores = torch.cat([s.sequence_scores for s in singles])
    assert torch.allclose(batched.sequence_scores, single_scores, atol=1e-5)


def test_finished_rows_leave_the_batch():
    model, images = eos_model(0)
    seen: list[int] = []

    class Spy(NoCacheDecoder):
        def init_cache(self, features, max_length):
            return self.decoder.init_cache(features, max_length)

        def step(self, input_ids, cache, output_attentions=False):
            seen.append(input_ids.shape[0])
            return self.decoder.step(input_ids, cache, output_attentions)

    out = decode_direct(model, images, "greedy", decoder=Spy(model.decoder), max_length=MAX_SEQ)
    lengths = lengths_of(out.sequences)
    # step t (1-based) runs on the rows whose caption is still open: length > t
    assert seen == [sum(n > t for n in lengths) for t in range(1, len(seen) + 1)]
    assert seen[-1] < seen[0]


# ---- beam search optimality -------------------------------------------------------------------------


def exhaustive_best(model, image, vocab: int, new_tokens: int, length_penalty: float):
    """Every caption of at most ``new_tokens`` tokens after <bos> (ended by <eos> or the cap),
    scored like beam search; returns the best (tokens, penalised score)."""
    features = model.encode(image[None])
    plain = [t for t in range(vocab) if t != EOS]
    best = (None, -math.inf)
    for size in range(new_tokens):
        prefixes = [list(p) for p in itertools.product(plain, repeat=size)]
        ids = torch.tensor([[BOS, *p] for p in prefixes])
        logp = torch.log_softmax(model.decoder(ids, features.expand(len(prefixes), -1, -1)).float(), -1)
        for i, p in enumerate(prefixes):
            so_far = sum(float(logp[i, j, tok]) for j, tok in enumerate(p))
            for tok in range(vocab):
                if tok != EOS and size + 1 < new_tokens:
                    continue  # not finished yet: counted among longer prefixes
                total = so_far + float(logp[i, size, tok])
                score = total / (size + 1) ** length_penalty
                if score > best[1]:
                    best = ((BOS, *p, tok), score)
    return best


@pytest.mark.parametrize("seed", SEEDS)
def test_wide_beam_finds_the_exhaustive_optimum(seed):
    vocab, new_tokens = 5, 4
    images = make_images(seed, 3)
    width = sum((vocab - 1) ** k for k in range(new_tokens)) + (vocab - 1) ** new_tokens  # all captions
    lp_matters = False
    for eos_bias in (0, 2, 4, 6, 8):  # from long to short optimal captions
        model = make_model(seed, vocab=vocab, eos_bias=float(eos_bias))
        winners = {row: set() for row in range(len(images))}
        for lp in (0.0, 1.0, 2.0):
            out = beam_search_decode(
                model,
                images,
                num_beams=width,
                max_new_tokens=new_tokens,
                length_penalty=lp,
                return_dict_in_generate=True,
            )
            with torch.inference_mode():
                for row, image in enumerate(images):
                    tokens, score = exhaustive_best(model, image, vocab, new_tokens, lp)
                    assert trimmed(out.sequences[row]) == tokens
                    assert out.scores_penalised[row].item() == pytest.approx(score, abs=1e-5)
                    winners[row].add(tokens)
        lp_matters |= any(len(w) > 1 for w in winners.values())
    assert lp_matters, "length_penalty should change which caption wins somewhere"


@pytest.mark.parametrize("seed", SEEDS)
def test_early_stopping_only_stops_sooner(seed):
    model, images = eos_model(seed)
    best = {}
    for mode in (True, False, "never"):
        out = beam_search_decode(
            model,
            images,
            num_beams=3,
            max_length=MAX_SEQ,
            early_stopping=mode,
            length_penalty=1.5,
            return_dict_in_generate=True,
        )
        best[mode] = out.scores_penalised
    assert torch.all(best[True] <= best[False] + 1e-6) and torch.all(best[False] <= best["never"] + 1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_beam_without_eos_returns_unfinished_beams(seed):
    model = make_model(seed, eos_bias=-1e4)
    out = beam_search_decode(
        model, make_images(seed, 3), num_beams=3, num_return_sequences=2, max_length=9, return_dict_in_generate=True
    )
    assert out.sequences.shape == (6, 9)
    assert not (out.sequences == EOS).any()
    assert torch.isfinite(out.sequence_scores).all()


# ---- constraints -------------------------------------------------------------------------------------


def has_repeated_ngram(tokens: tuple[int, ...], n: int) -> bool:
    grams = [tokens[i : i + n] for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_size(seed, n):
    model, images = make_model(seed, eos_bias=-1e4), make_images(seed, 6)  # full-length captions
    runs = [
        {},
        {"do_sample": True, "seed": seed, "num_return_sequences": 2},
        {"num_beams": 3, "num_return_sequences": 3},
    ]
    free = [trimmed(r) for fields in runs for r in generate_caption(model, images, max_length=MAX_SEQ, **fields)]
    assert any(has_repeated_ngram(t, n) for t in free), "the ban must have something to do"
    for fields in runs:
        out = generate_caption(model, images, max_length=MAX_SEQ, no_repeat_ngram_size=n, **fields)
        assert out.shape[1] == MAX_SEQ
        for row in out:
            assert not has_repeated_ngram(trimmed(row), n)


@pytest.mark.parametrize("fields", [{}, {"do_sample": True, "seed": 0}, {"num_beams": 3}])
def test_bans_never_leave_a_row_without_tokens(fields):
    """5 tokens, no token twice, no <eos> before 8: from step 5 every token is banned; the caption
    must still come out (repeating, since min_length outranks the n-gram ban), without NaN."""
    model = make_model(0, vocab=5, eos_bias=-2.0)
    out = generate_caption(
        model,
        make_images(0, 2),
        max_length=10,
        min_length=8,
        no_repeat_ngram_size=1,
        return_dict_in_generate=True,
        **fields,
    )
    assert all(n >= 9 for n in lengths_of(out.sequences))
    assert torch.isfinite(out.sequence_scores).all()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "fields", [{"do_sample": True, "num_return_sequences": 3}, {"num_beams": 4, "num_return_sequences": 3}]
)
def test_num_return_sequences(seed, fields):
    model, images = eos_model(seed, n_images=3)
    out = generate_caption(model, images, max_length=MAX_SEQ, return_dict_in_generate=True, **seeded(fields, seed))
    assert out.sequences.shape[0] == 9
    if fields.get("num_beams"):
        for image in range(3):
            rows = range(3 * image, 3 * image + 3)
            assert len({trimmed(out.sequences[r]) for r in rows}) == 3
            scores = out.scores_penalised[3 * image : 3 * image + 3]
            assert torch.all(scores[:-1] >= scores[1:])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fields", [{}, {"do_sample": True}, {"num_beams": 3}])
def test_min_and_max_length(seed, fields):
    model, images = eos_model(seed, **fields)
    shortest = min(lengths_of(generate_caption(model, images, max_length=MAX_SEQ, **seeded(fields, seed))))
    assert shortest < 12, "some caption must end early for min_length to matter"
    out = generate_caption(model, images, max_length=14, min_length=shortest, **seeded(fields, seed))
    assert out.shape[1] <= 14
    assert all(n > shortest for n in lengths_of(out))  # <eos> banned until `shortest` tokens stand
    out = generate_caption(model, images, max_new_tokens=4, **seeded(fields, seed))
    assert out.shape[1] <= 5
    exact = generate_caption(model, images, max_new_tokens=5, min_length=6, **seeded(fields, seed))
    assert exact.shape[1] == 6 and not (exact == EOS).any()
    capped = generate_caption(model, images, max_length=100, **seeded(fields, seed))  # beyond max_seq_len
    assert capped.shape[1] <= MAX_SEQ


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fields", [{}, {"do_sample": True}, {"num_beams": 3, "num_return_sequences": 2}])
def test_eos_then_padding(seed, fields):
    model, images = eos_model(seed)
    out = generate_caption(model, images, max_length=MAX_SEQ, **seeded(fields, seed))
    assert (out[:, 0] == BOS).all()
    for row, length in zip(out.tolist(), lengths_of(out)):
        assert row.count(EOS) <= 1
        assert all(tok == PAD for tok in row[length:])
    assert out.shape[1] == max(lengths_of(out))  # no all-padding columns


@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_sampling(seed):
    model, images = eos_model(seed)
    kwargs = dict(max_length=MAX_SEQ, do_sample=True, temperature=1.5)
    first = generate_caption(model, images, seed=seed, **kwargs)
    assert torch.equal(first, generate_caption(model, images, seed=seed, **kwargs))
    gen = torch.Generator().manual_seed(seed)
    assert torch.equal(first, generate_caption(model, images, generator=gen, **kwargs))
    assert not torch.equal(first, generate_caption(model, images, seed=seed + 100, **kwargs))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fields", [{}, {"num_beams": 3, "num_return_sequences": 2}])
def test_output_attentions(seed, fields):
    model, images = eos_model(seed, n_images=4)
    out = generate_caption(
        model, images, max_length=MAX_SEQ, output_attentions=True, return_dict_in_generate=True, **fields
    )
    lengths = lengths_of(out.sequences)
    assert len(out.cross_attentions) == out.sequences.shape[1] - 1
    for t, att in enumerate(out.cross_attentions, start=1):
        assert att.shape[0] == out.sequences.shape[0] and att.shape[-1] == 16  # 4x4 patches
        for row, n in enumerate(lengths):
            expected = 1.0 if t < n else 0.0  # zeros once the caption has ended
            assert torch.allclose(att[row].sum(-1), torch.full(att.shape[1:3], expected), atol=1e-5)


def test_processors_follow_hf():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    prefix = torch.tensor([[0, 1, 1]])
    config = GenerationConfig(repetition_penalty=2.0)
    assert process_logits(logits.clone(), prefix, 3, config).tolist() == [[1.0, -2.0, 0.5, 3.0]]
    config = GenerationConfig(min_length=4)
    assert process_logits(logits.clone(), prefix, 3, config)[0, EOS] == -math.inf
    assert process_logits(logits.clone(), prefix, 4, config)[0, EOS] == 0.5
    config = GenerationConfig(suppress_tokens=[0, 3, 99])  # 99: beyond the vocabulary, ignored
    assert process_logits(logits.clone(), prefix, 3, config).tolist() == [[-math.inf, -1.0, 0.5, -math.inf]]
    # temperature before top-p: at T=0.5 the top token alone passes 0.8, at T=1 it would not
    warped = warp_logits(torch.tensor([[2.0, 1.0, 0.0]]), GenerationConfig(do_sample=True, temperature=0.5, top_p=0.8))
    assert torch.isfinite(warped).tolist() == [[True, False, False]]
    # top-k keeps ties at the cut, as HF does
    warped = warp_logits(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), GenerationConfig(do_sample=True, top_k=2))
    assert torch.isfinite(warped).tolist() == [[True, True, True, False]]


# ---- API ---------------------------------------------------------------------------------------------


def test_readme_snippets_run():
    model = create_pixel_llm(vocab_size=50, preset="tiny", text_num_layers=1, max_seq_len=24).eval()
    images = torch.randn(2, 3, 32, 32)
    gen_config = GenerationConfig(max_length=100, temperature=0.7, do_sample=True, top_k=50, top_p=0.95)
    caption_ids = generate_caption(model, images, config=gen_config)
    assert caption_ids.dtype == torch.long and caption_ids.shape[0] == 2 and caption_ids.shape[1] <= 24
    assert beam_search_decode(model, images, num_beams=5).shape[0] == 2
    assert model.generate(images, max_length=50).shape[0] == 2
    assert model.generate(images[0], max_length=5, num_beams=2).shape[0] == 1  # one image, no batch dim
    model.train()
    generate_caption(model, images, max_length=4)
    assert model.training and all(m.training for m in model.modules())


def test_texts_with_a_tokenizer():
    model = make_model(0, eos_bias=2.0)

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i <= 3))

    out = generate_caption(model, make_images(0, 2), tokenizer=Tokenizer(), return_dict_in_generate=True, max_length=8)
    assert out.texts == [Tokenizer().decode(row.tolist()) for row in out.sequences]


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
        ({"num_return_sequences": 2}, "num_return_sequences"),
        ({"min_length": 10, "max_length": 5}, "min_length"),
        ({"min_length": 10, "max_new_tokens": 5}, "min_length"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"do_sample": True, "num_beams": 2}, "do_sample"),
        ({"strategy": "greedy", "num_beams": 3}, "strategy"),
        ({"early_stopping": "sometimes"}, "early_stopping"),
        ({"eos_token_id": -1}, "eos_token_id"),
        ({"max_lenght": 5}, "max_lenght"),
    ],
)
def test_invalid_config_names_the_field(fields, field):
    with pytest.raises(ValidationError, match=field):
        GenerationConfig(**fields)


def test_for_model_takes_the_length_and_special_ids_of_the_model_config():
    limits = SimpleNamespace(max_seq_len=17, bos_token_id=5, eos_token_id=6, pad_token_id=4)
    config = GenerationConfig.for_model(limits, num_beams=3)
    assert (config.max_length, config.bos_token_id, config.eos_token_id, config.pad_token_id) == (17, 5, 6, 4)
    assert config.num_beams == 3 and config.generation_mode == "beam"
    assert GenerationConfig.for_model(limits, max_length=9).max_length == 9  # fields win
    with pytest.raises(ValidationError, match="num_return_sequences"):
        GenerationConfig.for_model(limits, num_return_sequences=2)  # validated as the constructor is


def test_invalid_overrides_and_unknown_strategy():
    model = make_model(0)
    images = make_images(0, 1)
    unchecked = GenerationConfig().model_copy(update={"num_return_sequences": 3})  # skips validation
    with pytest.raises(ValidationError, match="num_return_sequences"):
        generate_caption(model, images, config=unchecked)
    assert generate_caption(model, images, config={"max_new_tokens": 3}).shape[1] <= 4  # a dict works too
    with pytest.raises(ValidationError, match="num_return_sequences"):
        generate_caption(model, images, num_beams=2, num_return_sequences=3)
    with pytest.raises(ComponentError, match="greedy"):  # lists the registered strategies
        generate_caption(model, images, strategy="nucleus")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenerationConfig(strategy="beam", num_beams=1)  # explicit strategy, HF-style beam of one


@pytest.mark.parametrize("num_beams", [1, 3])
def test_a_tokenizer_smaller_than_the_vocabulary_only_gets_ids_it_can_decode(num_beams):
    """A model whose vocab_size exceeds its tokenizer never emits the ids the tokenizer lacks."""
    from geometry_os.systems.pixel_llm.resolution import get_component

    vocab = get_component("tokenizer", "simple").load().train(["a red square", "a blue circle"])
    model = make_model(0, vocab=64)  # random weights: the extra ids are as likely as any
    images = make_images(0, 4)
    unrestricted = generate_caption(model, images, max_length=12, num_beams=num_beams)
    assert int(unrestricted.max()) >= len(vocab)  # without the tokenizer they do come up
    out = generate_caption(
        model, images, max_length=12, num_beams=num_beams, tokenizer=vocab, return_dict_in_generate=True
    )
    assert int(out.sequences.max()) < len(vocab) and len(out.texts) == 4


# ---- edge cases: no new tokens, lengths beyond the model, bans that leave nothing, ignored options -----

STRATEGIES = [
    {},
    {"do_sample": True, "seed": 0},
    {"do_sample": True, "seed": 0, "num_return_sequences": 2},
    {"num_beams": 3},
    {"num_beams": 3, "num_return_sequences": 2},
]


@pytest.mark.parametrize("fields", STRATEGIES)
@pytest.mark.parametrize("length", [{"max_new_tokens": 0}, {"max_length": 1}])
def test_no_new_tokens_gives_the_bos_alone_in_every_strategy(fields, length):
    """HF's meaning of max_new_tokens=0 (max_length=1 with a <bos> prompt): nothing is generated; the
    caption is empty and its log-probability the empty sum, 0 -- the same from every strategy."""
    model = make_model(0, eos_bias=-2.0)
    rows = 2 * fields.get("num_return_sequences", 1)

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i <= 3))

    out = generate_caption(
        model,
        make_images(0, 2),
        tokenizer=Tokenizer(),
        return_dict_in_generate=True,
        output_scores=True,
        output_attentions=True,
        **length,
        **fields,
    )
    assert out.sequences.tolist() == [[BOS]] * rows
    assert out.sequence_scores.tolist() == [0.0] * rows and out.scores_penalised.tolist() == [0.0] * rows
    assert out.token_scores.shape == (rows, 0) and out.cross_attentions == []
    assert out.texts == [""] * rows


@pytest.mark.parametrize("fields", STRATEGIES)
def test_one_new_token_in_every_strategy(fields):
    out = generate_caption(make_model(1), make_images(1, 2), max_new_tokens=1, return_dict_in_generate=True, **fields)
    assert out.sequences.shape == (2 * fields.get("num_return_sequences", 1), 2)
    assert torch.isfinite(out.sequence_scores).all()


def test_a_length_beyond_max_seq_len_is_a_notice_not_a_silent_cut():
    from geometry_os.systems.pixel_llm.inference import GenerationLengthWarning

    model, images = make_model(0, eos_bias=-9.0), make_images(0, 1)  # never ends early: runs to the cap
    for fields, named in [
        ({"max_length": 100}, "max_length=100"),
        ({"max_new_tokens": 40}, "max_new_tokens=40"),
        ({"max_length": 100, "num_beams": 2}, "max_length=100"),
    ]:
        with pytest.warns(GenerationLengthWarning, match=f"{named} is beyond the model's max_seq_len={MAX_SEQ}"):
            out = generate_caption(model, images, **fields)
        assert out.shape[1] == MAX_SEQ
    with warnings.catch_warnings(record=True) as caught:  # the default (64) was not asked for: no notice
        warnings.simplefilter("always")
        generate_caption(model, images)
        generate_caption(model, images, config=GenerationConfig(num_beams=2), max_length=MAX_SEQ)
    assert not [w for w in caught if issubclass(w.category, GenerationLengthWarning)]


ALL_BUT_EOS = [t for t in range(32) if t != EOS]


@pytest.mark.parametrize("fields", [{}, {"do_sample": True, "seed": 0}, {"num_beams": 3}])
def test_suppressing_every_token_but_eos_gives_finite_scores(fields):
    out = generate_caption(
        make_model(0),
        make_images(0, 2),
        suppress_tokens=ALL_BUT_EOS,
        output_scores=True,
        return_dict_in_generate=True,
        **fields,
    )
    assert out.sequences.tolist() == [[BOS, EOS]] * 2
    assert out.sequence_scores.tolist() == [0.0, 0.0] and out.token_scores.tolist() == [[0.0], [0.0]]


@pytest.mark.parametrize("fields", [{}, {"do_sample": True, "seed": 0}, {"num_beams": 3}])
@pytest.mark.parametrize(
    "bans, message",
    [
        (
            {"suppress_tokens": list(range(32))},
            "suppress_tokens bans all 32 tokens of the vocabulary: no token can be generated",
        ),
        (
            {"suppress_tokens": ALL_BUT_EOS, "min_length": 3},
            "bans every token but eos_token_id=2, which min_length=3 bans",
        ),
    ],
)
def test_bans_that_leave_no_token_are_refused_in_one_line(fields, bans, message):
    from geometry_os.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as caught:
        generate_caption(make_model(0), make_images(0, 2), **bans, **fields)
    assert "\n" not in str(caught.value)


def test_beam_needs_as_many_possible_captions_as_it_returns():
    """Only <eos> and token 5 allowed, 2 new tokens: exactly 3 captions exist ("<eos>", "5 <eos>", "5 5")."""
    from geometry_os.errors import ConfigError

    model, images = make_model(0), make_images(0, 2)
    bans = [t for t in range(32) if t not in (EOS, 5)]
    out = generate_caption(
        model,
        images,
        suppress_tokens=bans,
        max_new_tokens=2,
        num_beams=4,
        num_return_sequences=3,
        return_dict_in_generate=True,
    )
    assert torch.isfinite(out.sequence_scores).all()
    for image in range(2):
        assert {trimmed(r) for r in out.sequences[3 * image : 3 * image + 3]} == {
            (BOS, EOS),
            (BOS, 5, EOS),
            (BOS, 5, 5),
        }
    with pytest.raises(ConfigError, match="num_return_sequences=4: suppress_tokens leaves only 3 possible caption"):
        generate_caption(model, images, suppress_tokens=bans, max_new_tokens=2, num_beams=4, num_return_sequences=4)
    with pytest.raises(ConfigError, match="leaves only 1 possible caption"):
        generate_caption(model, images, suppress_tokens=ALL_BUT_EOS, num_beams=3, num_return_sequences=2)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"temperature": 0.7}, "temperature=0.7 is a sampling option, which greedy decoding would ignore"),
        ({"top_k": 5, "top_p": 0.9}, "top_k=5, top_p=0.9 are sampling options, which greedy decoding would ignore"),
        ({"seed": 3}, "seed=3 is a sampling option"),
        ({"num_beams": 3, "top_p": 0.9}, r"which beam search \(num_beams=3\) would ignore"),
        ({"strategy": "greedy", "temperature": 2.0}, "greedy decoding would ignore"),
    ],
)
def test_sampling_options_without_sampling_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        GenerationConfig(**fields)
    model = make_model(0)
    with pytest.raises(ValidationError, match=message):  # the same through every entry point
        model.generate(make_images(0, 1), **fields)


def test_sampling_options_with_sampling_are_accepted():
    GenerationConfig(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, seed=1)
    GenerationConfig(strategy="sample", temperature=0.7)
    GenerationConfig(temperature=1.0, seed=None)  # the defaults change nothing: not an error
