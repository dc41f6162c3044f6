"""The ``xattn`` decoder plugin: options, masking, KV-cache decoding, and a tiny end-to-end fit."""

import importlib

import pluggy
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from geometry_os.plugins import xattn as xattn_plugin
from geometry_os.plugins.vit.model import VisionEncoder
from geometry_os.plugins.xattn import XAttnOptions, cross_attention_layers
from geometry_os.plugins.xattn.model import LanguageDecoder
from geometry_os.systems.pixel_llm import hookspecs
from geometry_os.systems.pixel_llm.protocols import Decoder, DecoderCache

V, D, N = 20, 32, 5
TINY = dict(vocab_size=V, embed_dim=D, num_layers=2, num_heads=2, max_seq_len=16)


def make(**kw) -> LanguageDecoder:
    torch.manual_seed(0)
    return LanguageDecoder(**{**TINY, **kw}).eval()


def data(B=2, T=6, width=D, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randn(B, N, width, generator=g)


def test_registration_is_lazy_and_builds_from_options():
    pm = pluggy.PluginManager("pixel_llm")
    pm.add_hookspecs(hookspecs)
    pm.register(xattn_plugin)
    seen = []
    pm.hook.register_decoders(register=lambda *args, **kw: seen.append(args))
    assert seen == [("xattn", "geometry_os.plugins.xattn.model:LanguageDecoder", XAttnOptions)]

    module, attr = seen[0][1].split(":")
    dec = getattr(importlib.import_module(module), attr)(XAttnOptions(**TINY))
    assert isinstance(dec, Decoder)
    assert (dec.vocab_size, dec.embed_dim, dec.max_seq_len) == (V, D, 16)
    ids, feats = data()
    assert isinstance(dec.init_cache(feats, 4), DecoderCache)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(max_seq_len=-1), "max_seq_len"),
        (dict(embed_dim=30, num_heads=4), "embed_dim=30"),
        (dict(num_cross_attention_layers=3), "num_cross_attention_layers=3"),
        (dict(num_cross_attention_layers=0), "num_cross_attention_layers"),
        (dict(cross_attention_dim=0), "cross_attention_dim"),
        (dict(pad_token_id=20), "pad_token_id=20"),
        (dict(dropout=-0.1), "dropout"),
        (dict(num_layer=2), "num_layer"),  # typo: extra fields are forbidden
    ],
)
def test_options_validation_names_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        XAttnOptions(**{**TINY, **kwargs})
    with pytest.raises(ValidationError, match=field):  # keyword construction validates too
        LanguageDecoder(**{**TINY, **kwargs})


def test_cross_attention_layer_rule():
    assert cross_attention_layers(12, None) == tuple(range(12))
    assert cross_attention_layers(12, 4) == (2, 5, 8, 11)
    assert cross_attention_layers(6, 4) == (1, 2, 4, 5)
    assert cross_attention_layers(7, 3) == (1, 4, 6)
    assert cross_attention_layers(5, 1) == (4,)
    for L in range(1, 13):
        for k in range(1, L + 1):
            layers = cross_attention_layers(L, k)
            assert len(set(layers)) == k and list(layers) == sorted(layers) and layers[-1] == L - 1
            # the documented rule: round((j+1)*L/k) - 1, halves rounded up
            assert layers == tuple(int((j + 1) * L / k + 0.5) - 1 for j in range(k))

    dec = make(num_layers=4, num_cross_attention_layers=2)
    assert [b.has_cross for b in dec.blocks] == [False, True, False, True]
    ids, feats = data()
    cache = dec.init_cache(feats, 8)
    assert cache.cross_kv.shape[0] == 2
    full = dec(ids, feats)
    for t in range(ids.shape[1]):
        torch.testing.assert_close(dec.step(ids[:, t : t + 1], cache), full[:, t], atol=1e-5, rtol=0)


def test_forward_shape_and_causality():
    dec = make()
    ids, feats = data()
    logits = dec(ids, feats)
    assert logits.shape == (2, 6, V)
    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] + 1) % V
    other = dec(changed, feats)
    torch.testing.assert_close(other[:, :3], logits[:, :3])
    assert not torch.allclose(other[:, 3:], logits[:, 3:])


def test_right_padding_matches_each_sequence_alone():
    dec = make()
    ids, feats = data()
    lengths = [6, 4]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    padded = ids.masked_fill(mask == 0, 0)
    batch = dec(padded, feats, attention_mask=mask)
    for i, n in enumerate(lengths):
        alone = dec(ids[i : i + 1, :n], feats[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1, :n], alone, atol=1e-5, rtol=0)


def test_arbitrary_padding_hides_pads_and_never_nans():
    dec = make()
    ids, feats = data()
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 0, 1, 0, 1]])  # left padding; holes
    logits = dec(ids, feats, attention_mask=mask)
    assert torch.isfinite(logits).all()
    other_pads = torch.where(mask == 1, ids, (ids + 7) % V)  # what sits under a pad must not matter
    torch.testing.assert_close(dec(other_pads, feats, attention_mask=mask)[mask == 1], logits[mask == 1])
    # the explicit-mask path agrees with the is_causal path where they overlap (row 1, before the hole)
    torch.testing.assert_close(logits[1, :2], dec(ids, feats)[1, :2], atol=1e-5, rtol=0)


def test_cached_steps_match_full_forward():
    dec = make()
    ids, feats = data(T=8)
    full = dec(ids, feats)
    cache = dec.init_cache(feats, max_length=8)
    assert (cache.length, cache.batch_size) == (0, 2)
    for t in range(8):
        torch.testing.assert_close(dec.step(ids[:, t : t + 1], cache), full[:, t], atol=1e-5, rtol=0)
    assert cache.length == 8


def test_several_tokens_per_step_equal_one_at_a_time():
    dec = make()
    ids, feats = data(T=8)
    full = dec(ids, feats)
    cache = dec.init_cache(feats, max_length=8)
    for start, stop in [(0, 3), (3, 4), (4, 7), (7, 8)]:  # prefill, then blocks after a prefix
        logits = dec.step(ids[:, start:stop], cache)
        torch.testing.assert_close(logits, full[:, stop - 1], atol=1e-5, rtol=0)
    one = dec.init_cache(feats, max_length=8)
    for t in range(8):
        dec.step(ids[:, t : t + 1], one)
    torch.testing.assert_close(cache.self_kv, one.self_kv, atol=1e-5, rtol=0)


def test_cache_expand_and_reorder_match_full_forward():
    dec = make()
    ids, feats = data(T=8)
    cache = dec.init_cache(feats, max_length=8)
    dec.step(ids[:, :2], cache)

    cache.expand(3)  # rows: 0 0 0 1 1 1
    assert cache.batch_size == 6
    rows = torch.arange(2).repeat_interleave(3)
    seq, img = ids[rows].clone(), feats[rows]
    seq[:, 2:] = torch.randint(0, V, (6, 6), generator=torch.Generator().manual_seed(5))  # beams diverge
    full = dec(seq, img)
    for t in (2, 3):
        torch.testing.assert_close(dec.step(seq[:, t : t + 1], cache), full[:, t], atol=1e-5, rtol=0)

    index = torch.tensor([5, 0, 0, 3])  # fewer rows, repeated rows: a beam reorder that drops rows
    cache.reorder(index)
    assert cache.batch_size == 4 and cache.length == 4
    seq, img = seq[index].clone(), img[index]
    seq[:, 4:] = torch.randint(0, V, (4, 4), generator=torch.Generator().manual_seed(6))
    full = dec(seq, img)
    for t in range(4, 8):
        torch.testing.assert_close(dec.step(seq[:, t : t + 1], cache), full[:, t], atol=1e-5, rtol=0)

    cache.reorder(torch.tensor([1, 2, 3, 0, 0]))  # more rows than it holds: a fresh buffer
    assert cache.batch_size == 5


def test_step_returns_cross_attention_weights():
    dec = make(num_layers=3, num_cross_attention_layers=2)
    ids, feats = data()
    cache, plain = dec.init_cache(feats, 6), dec.init_cache(feats, 6)
    dec.step(ids[:, :3], cache), dec.step(ids[:, :3], plain)
    logits, attn = dec.step(ids[:, 3:4], cache, output_attentions=True)
    assert attn.shape == (2, 2, 2, N)  # (B, cross layers, heads, N)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 2))
    torch.testing.assert_close(logits, dec.step(ids[:, 3:4], plain), atol=1e-5, rtol=0)


def test_cache_limits_raise():
    dec = make()
    ids, feats = data()
    with pytest.raises(ValueError, match="max_length"):
        dec.init_cache(feats, max_length=17)  # beyond max_seq_len=16
    cache = dec.init_cache(feats, max_length=4)
    dec.step(ids[:, :3], cache)
    with pytest.raises(ValueError, match="max_length=4"):
        dec.step(ids[:, :2], cache)
    with pytest.raises(ValueError, match="max_seq_len"):
        dec(torch.zeros(1, 17, dtype=torch.long), feats[:1])


def test_cross_attention_dim_differs_from_embed_dim():
    dec = make(cross_attention_dim=48)
    ids, feats = data(width=48)
    full = dec(ids, feats)
    assert full.shape == (2, 6, V)
    cache = dec.init_cache(feats, 6)
    for t in range(6):
        torch.testing.assert_close(dec.step(ids[:, t : t + 1], cache), full[:, t], atol=1e-5, rtol=0)


def test_tied_head_has_no_shared_tensors_and_untied_works():
    tied = make()
    assert not any("lm_head" in k for k in tied.state_dict())
    untied = make(tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.wte.weight.data_ptr()
    ids, feats = data()
    cache = untied.init_cache(feats, 6)
    torch.testing.assert_close(untied.step(ids, cache), untied(ids, feats)[:, -1], atol=1e-5, rtol=0)


def test_gradients_reach_the_encoder_through_cross_attention():
    torch.manual_seed(0)
    enc = VisionEncoder(image_size=32, patch_size=8, embed_dim=24, num_layers=1, num_heads=2)
    dec = LanguageDecoder(**TINY, cross_attention_dim=24)
    ids = torch.randint(0, V, (2, 5))
    logits = dec(ids[:, :-1], enc(torch.randn(2, 3, 32, 32)))
    F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1)).backward()
    assert enc.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in dec.parameters())


def test_bf16_autocast_on_cpu():
    dec = make()
    ids, feats = data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = dec(ids, feats, attention_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))
        cache = dec.init_cache(feats, 6)
        step = dec.step(ids[:, :3], cache)
        step = dec.step(ids[:, 3:4], cache)
    assert logits.shape == (2, 6, V) and torch.isfinite(logits.float()).all()
    assert step.shape == (2, V) and torch.isfinite(step.float()).all()
    torch.testing.assert_close(step.float(), dec(ids[:, :4], feats)[:, -1], atol=0.1, rtol=0.1)


def test_tiny_encoder_decoder_overfits_four_pairs():
    torch.manual_seed(0)
    enc = VisionEncoder(image_size=32, patch_size=8, embed_dim=32, num_layers=2, num_heads=2, pos_embed="sincos")
    dec = LanguageDecoder(**TINY)
    images = torch.randn(4, 3, 32, 32)
    captions = torch.tensor(  # <bos> ... <eos> <pad>: distinct captions sharing words
        [[1, 4, 5, 6, 7, 2, 0], [1, 4, 8, 6, 9, 2, 0], [1, 10, 5, 11, 2, 0, 0], [1, 12, 13, 14, 15, 16, 2]]
    )
    inputs, targets = captions[:, :-1], captions[:, 1:].masked_fill(captions[:, 1:] == 0, -100)
    mask = (inputs != 0).long()
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    for _ in range(200):  # ~80 steps, ~2 s on 2 idle cores
        logits = dec(inputs, enc(images), attention_mask=mask)
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05, loss.item()

    # greedy decoding with the cache reproduces the captions
    enc.eval(), dec.eval()
    with torch.no_grad():
        cache = dec.init_cache(enc(images), max_length=7)
        tokens = captions[:, :1]
        for _ in range(6):
            tokens = torch.cat([tokens, dec.step(tokens[:, -1:], cache).argmax(-1, keepdim=True)], dim=1)
    real = captions != 0
    assert torch.equal(tokens[real], captions[real])


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_gradient_is_dense_and_exact(tied, monkeypatch):
    """With a tied head on a CPU the lookup's gradient is sparse inside autograd (no zero-filled
    (vocab, D) tensor); the weight's gradient must still be the dense sum of both uses."""
    from geometry_os.plugins.xattn import model as xattn_model

    lookups: list[bool] = []
    embedding = F.embedding
    monkeypatch.setattr(xattn_model.F, "embedding", lambda *a: lookups.append(a[-1]) or embedding(*a))
    dec = make(tie_word_embeddings=tied).train()
    ids, feats = data()
    F.cross_entropy(dec(ids, feats).flatten(0, 1), ids.flatten()).backward()
    monkeypatch.undo()
    assert lookups == [tied]  # the sparse lookup only where the head adds its dense gradient
    grad = dec.wte.weight.grad
    assert grad.layout == torch.strided
    dense = make(tie_word_embeddings=tied).train()
    dense.load_state_dict(dec.state_dict())
    dense._embed = lambda input_ids: F.embedding(input_ids, dense.wte.weight)  # the plain dense lookup
    F.cross_entropy(dense(ids, feats).flatten(0, 1), ids.flatten()).backward()
    torch.testing.assert_close(grad, dense.wte.weight.grad, atol=1e-7, rtol=1e-5)
    torch.optim.AdamW(dec.parameters(), fused=True).step()  # the trainer's optimizer takes it
