"""The ``simple`` and ``bpe`` tokenizers: fixed special ids, round trips, save/load, bad files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from geometry_os.plugins.bpe import BPEOptions
from geometry_os.plugins.bpe import register_tokenizers as register_bpe
from geometry_os.plugins.bpe.tokenizer import BPETokenizer
from geometry_os.plugins.simple_vocab import SimpleVocabularyOptions
from geometry_os.plugins.simple_vocab import register_tokenizers as register_simple
from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary, detokenize, normalize
from geometry_os.systems.pixel_llm.protocols import Tokenizer

WORDS = [
    "a",
    "small",
    "large",
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "left",
    "of",
    "above",
    "below",
    "cat",
    "sitting",
    "on",
    "couch",
    "dog",
    "park",
    "the",
    "ça",
    "naïve",
]
CAPTIONS = [
    "A small red circle left of a large blue square.",
    "A cat sitting on a couch",
    "a dog, playing in the park!",
    " ".join(WORDS),
]
settings.register_profile(
    "fast", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("fast")

texts = st.lists(
    st.tuples(
        st.sampled_from(WORDS), st.sampled_from(["", ",", ".", "!"]), st.booleans(), st.sampled_from([" ", "  ", "\t"])
    ),
    max_size=12,
).map(lambda parts: "".join((w.upper() if up else w) + p + sep for w, p, up, sep in parts))


@pytest.fixture(scope="module")
def vocab() -> SimpleVocabulary:
    return SimpleVocabulary(CAPTIONS)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer(CAPTIONS * 5, vocab_size=300, min_frequency=2)


@pytest.fixture(params=["simple", "bpe"])
def tok(request, vocab, bpe):
    return {"simple": vocab, "bpe": bpe}[request.param]


# ------------------------------------------------------------------------------------ both tokenizers


def test_protocol_and_special_ids(tok):
    assert isinstance(tok, Tokenizer)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert len(tok) == tok.vocab_size > 4


def test_encode_adds_bos_eos(tok):
    ids = tok.encode("a small red circle")
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and 2 not in ids[1:-1]
    assert tok.encode("a small red circle", add_special_tokens=False) == ids[1:-1]


def test_decode_stops_at_first_eos_and_skips_specials(tok):
    ids = tok.encode("a red circle")
    padded = [*ids, *tok.encode("the dog")[1:], 0, 0]
    assert tok.decode(padded) == "a red circle"
    assert tok.decode(torch.tensor(padded)) == "a red circle"
    assert "<eos>" in tok.decode(padded, skip_special_tokens=False)
    assert tok.batch_decode(torch.tensor([ids, ids])) == ["a red circle"] * 2


def test_decode_rejects_2d_and_out_of_range(tok):
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([1, len(tok) + 5])


def test_text_spelling_a_special_token_is_not_special(tok):
    assert tok.encode("a <eos> b <pad>").count(2) == 1
    assert 0 not in tok.encode("a <eos> b <pad>")


@given(text=texts)
def test_round_trip_property(tok, text):
    ids = tok.encode(text)
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.decode(ids) == (
        detokenize(normalize(text)) if tok.__class__ is SimpleVocabulary else " ".join(text.lower().split())
    )


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(str(path))
    json.loads(path.read_text())  # plain JSON, no pickle
    assert os.listdir(tmp_path) == ["tok.json"]  # the temporary file is gone
    again = type(tok).load(str(path))
    for text in CAPTIONS:
        assert again.encode(text) == tok.encode(text)
    assert len(again) == len(tok)


def test_save_replaces_atomically(tok, tmp_path):
    path = tmp_path / "tok.json"
    path.write_text("old")
    tok.save(path)
    assert type(tok).load(path).encode("a cat") == tok.encode("a cat")


def test_pickles_for_dataloader_workers(tok):
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode("a <eos> cat") == tok.encode("a <eos> cat")


@pytest.mark.parametrize("content", ["{not json", "[1, 2", ""])
def test_load_malformed_json_names_file_and_position(tok, tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"broken\.json:1:\d+: malformed"):
        type(tok).load(path)


def test_load_binary_file_names_it(tok, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x89PNG\xff\xfe")
    with pytest.raises(ValueError, match=r"model\.safetensors: not UTF-8 text"):
        type(tok).load(path)


# --------------------------------------------------------------------------------------------- simple


def test_simple_ordering_is_frequency_then_alphabetical():
    v = SimpleVocabulary(["b a", "a c", "c a d"])
    assert v.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "c", "b", "d"]


def test_a_single_string_is_one_text(tok):
    assert type(tok)("zebra crossing").encode("zebra crossing") == type(tok)(["zebra crossing"]).encode(
        "zebra crossing"
    )


def test_simple_min_freq_max_size_and_unk():
    v = SimpleVocabulary(["b a", "a c", "c a d"], min_freq=2)
    assert v.itos[4:] == ["a", "c"]
    assert v.encode("a b zebra") == [1, 4, 3, 3, 2]
    assert v.decode(v.encode("a b")) == "a <unk>"
    assert SimpleVocabulary(["b a", "a c", "c a d"], max_size=5).itos[4:] == ["a"]
    with pytest.raises(ValueError, match="min_freq"):
        SimpleVocabulary([], min_freq=0)
    with pytest.raises(ValueError, match="max_size"):
        SimpleVocabulary([], max_size=3)


def test_simple_normalisation_and_detokenisation(vocab):
    assert normalize("A Cat,  sitting.") == ["a", "cat", ",", "sitting", "."]
    assert vocab.decode(vocab.encode("A dog, playing in the PARK!")) == "a dog, playing in the park!"


def test_simple_train_with_options():
    assert SimpleVocabulary.train(["a a b"], SimpleVocabularyOptions(min_freq=2)).itos[4:] == ["a"]
    assert SimpleVocabulary.train(["a a b"], {"max_size": 5}).itos[4:] == ["a"]
    assert SimpleVocabulary.train(["a a b"], None).itos[4:] == ["a", "b"]
    with pytest.raises(ValidationError, match="min_freq"):
        SimpleVocabularyOptions(min_freq=0)
    with pytest.raises(ValidationError, match="minfreq"):
        SimpleVocabularyOptions(minfreq=2)


def _vocab_file(tmp_path, **changes):
    data = {
        "format": "geometry_os.simple_vocab",
        "version": 1,
        "min_freq": 1,
        "max_size": None,
        "tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "a"],
    }
    data.update(changes)
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tokens": "a b"}, '"tokens" must be a list'),
        ({"tokens": ["<pad>", "<bos>", "<eos>", "<unk>", 5]}, r'"tokens"\[4\] must be a non-empty string'),
        ({"tokens": ["<pad>", "<bos>", "<eos>", "a"]}, "first tokens must be"),
        ({"tokens": ["<bos>", "<pad>", "<eos>", "<unk>"]}, "first tokens must be"),
        ({"tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "a", "<eos>"]}, r"duplicate token '<eos>'"),
        ({"tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "a", "a"]}, r"duplicate token 'a'"),
        ({"format": "other"}, '"format" must be'),
        ({"version": 9}, 'unsupported "version"'),
        ({"extra": 1}, "unknown key 'extra'"),
    ],
)
def test_simple_load_rejects_bad_vocab_files(tmp_path, changes, message):
    path = _vocab_file(tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as info:
        SimpleVocabulary.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_simple_load_rejects_non_object(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="vocab.json: .*expected a JSON object"):
        SimpleVocabulary.load(path)


def test_simple_load_rejects_a_bpe_file(tmp_path, bpe):
    bpe.save(tmp_path / "bpe.json")
    with pytest.raises(ValueError, match='bpe.json: .*"format" must be'):
        SimpleVocabulary.load(tmp_path / "bpe.json")


# ------------------------------------------------------------------------------------------------ bpe


def test_bpe_is_byte_level_so_nothing_is_unknown(bpe):
    ids = bpe.encode("Zebra 日本 ünïcode")
    assert 3 not in ids
    assert bpe.decode(ids) == "zebra 日本 ünïcode"


def test_bpe_learns_merges(bpe):
    assert len(bpe.encode("circle", add_special_tokens=False)) < len("circle")


def test_bpe_train_with_options():
    t = BPETokenizer.train(CAPTIONS, BPEOptions(vocab_size=270, min_frequency=1))
    assert len(t) <= 270
    assert len(BPETokenizer.train(CAPTIONS, {"vocab_size": 280})) <= 280
    with pytest.raises(ValidationError, match="vocab_size"):
        BPEOptions(vocab_size=100)


def test_bpe_load_rejects_non_tokenizer_json(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text('{"model": 1}')
    with pytest.raises(ValueError, match=r"tok\.json: not a valid tokenizers JSON"):
        BPETokenizer.load(path)


def test_bpe_load_rejects_wrong_special_ids(tmp_path, bpe):
    data = json.loads(bpe.backend.to_str())
    vocab = data["model"]["vocab"]
    vocab["<pad>"], vocab["<bos>"] = vocab["<bos>"], vocab["<pad>"]
    for added in data["added_tokens"]:
        added["id"] = vocab[added["content"]]
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"tok\.json: special token <pad> must have id 0"):
        BPETokenizer.load(path)


def test_bpe_load_rejects_a_simple_vocab(tmp_path, vocab):
    vocab.save(tmp_path / "v.json")
    with pytest.raises(ValueError, match=r"v\.json: not a valid tokenizers JSON"):
        BPETokenizer.load(tmp_path / "v.json")


# --------------------------------------------------------------------------------------- registration


def test_hookimpls_register_lazy_factories_with_options():
    calls = []
    register_simple(lambda *args, **kw: calls.append(args))
    register_bpe(lambda *args, **kw: calls.append(args))
    assert calls == [
        ("simple", "geometry_os.plugins.simple_vocab.vocab:SimpleVocabulary", SimpleVocabularyOptions),
        ("bpe", "geometry_os.plugins.bpe.tokenizer:BPETokenizer", BPEOptions),
    ]


def test_registry_finds_both_tokenizers():
    from geometry_os.systems.pixel_llm.resolution import get_component

    assert get_component("tokenizer", "simple").load() is SimpleVocabulary
    assert get_component("tokenizer", "bpe").load() is BPETokenizer


def test_plugin_modules_do_not_import_torch():
    code = (
        "import sys, geometry_os.plugins.simple_vocab, geometry_os.plugins.bpe, geometry_os.plugins.datasets; "
        "import geometry_os.plugins.simple_vocab.vocab; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
