"""``cache_implementation="static"``: fixed-shape KV cache, and on CUDA a decoder step captured in a
CUDA graph. Same captions as the dynamic cache (greedy, sampling with the same seed, penalties),
scores within float tolerance; unsupported combinations are refused by name."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from test_decoding import MAX_SEQ, decode_direct, eos_model, lengths_of, make_images, make_model

from geometry_os.errors import ComponentError
from geometry_os.systems.pixel_llm.inference import GenerationConfig, generate_caption

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_torch_thread")]

CASES = [
    {},
    {"do_sample": True, "seed": 3},
    {"do_sample": True, "seed": 4, "top_k": 5, "num_return_sequences": 2},
    {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
    {"min_length": 6},
    {"max_new_tokens": 3},
]


def both(model, images, **fields):
    config = dict(max_length=MAX_SEQ, return_dict_in_generate=True, output_scores=True, **fields)
    dynamic = generate_caption(model, images, **config)
    static = generate_caption(model, images, cache_implementation="static", **config)
    return dynamic, static


@pytest.mark.parametrize("fields", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_static_cache_gives_the_dynamic_captions(seed, fields):
    model, images = eos_model(seed)
    dynamic, static = both(model, images, **fields)
    if "max_new_tokens" not in fields and "min_length" not in fields:  # rows must finish at different steps
        assert len(set(lengths_of(dynamic.sequences))) > 1
    assert torch.equal(static.sequences, dynamic.sequences)
    assert torch.allclose(static.token_scores, dynamic.token_scores, atol=1e-5)
    assert torch.allclose(static.sequence_scores, dynamic.sequence_scores, atol=1e-5)


def test_static_cache_in_bf16_agrees_with_fp32():
    """bf16 weights and cache: scores of the fp32 captions within bf16 tolerance."""
    model, images = eos_model(0)
    fp32 = generate_caption(model, images, max_length=MAX_SEQ, return_dict_in_generate=True, output_scores=True)
    half = generate_caption(
        model.to(torch.bfloat16),
        images,
        max_length=MAX_SEQ,
        cache_implementation="static",
        return_dict_in_generate=True,
        output_scores=True,
    )
    agree = (half.sequences[:, :2] == fp32.sequences[:, :2]).float().mean()
    assert agree >= 0.8  # first tokens mostly the same; later ones may diverge after a near-tie
    assert torch.isfinite(half.sequence_scores).all()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_beams": 3}, "beam search"),
        ({"output_attentions": True}, "output_attentions"),
    ],
)
def test_unsupported_combinations_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        GenerationConfig(cache_implementation="static", **fields)
    with pytest.raises(ValidationError, match="cache_implementation"):
        GenerationConfig(cache_implementation="offloaded")


def test_a_decoder_without_a_static_cache_is_named():
    class NoStatic:
        def __init__(self, decoder):
            self.max_seq_len = decoder.max_seq_len

    model = make_model(0)
    with pytest.raises(ComponentError, match="NoStatic has no static cache"):
        decode_direct(
            model,
            make_images(0, 2),
            "greedy",
            decoder=NoStatic(model.decoder),
            max_length=8,
            cache_implementation="static",
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_cuda_graph_gives_the_dynamic_captions(dtype):
    """The captured step, reused across calls with other images and batch sizes, and rebuilt when the
    weights are replaced."""
    from geometry_os.plugins.decoding import static

    model, images = eos_model(1)
    model = model.to("cuda", dtype)
    for batch in (images[:4], images[2:6], images[:1], images[:4]):
        dynamic, captured = both(model, batch.cuda())
        assert torch.equal(captured.sequences, dynamic.sequences)
        assert torch.allclose(
            captured.sequence_scores, dynamic.sequence_scores, atol=1e-4 if dtype == torch.float32 else 0.1
        )
    assert len(static._CAPTURED[model.decoder]) == 1  # one graph kept per decoder
    model.to("cpu").to("cuda")  # new parameter tensors: the old graph must not be replayed
    dynamic, captured = both(model, images[:4].cuda())
    assert torch.equal(captured.sequences, dynamic.sequences)
    # unset on CUDA: the captured step (same ids, a graph kept for the decoder); "dynamic" forces the other
    static._CAPTURED.clear()
    default = generate_caption(model, images[:4].cuda(), max_length=MAX_SEQ)
    assert torch.equal(default, captured.sequences) and model.decoder in static._CAPTURED
    static._CAPTURED.clear()
    forced = generate_caption(model, images[:4].cuda(), max_length=MAX_SEQ, cache_implementation="dynamic")
    assert torch.equal(forced, dynamic.sequences) and model.decoder not in static._CAPTURED
