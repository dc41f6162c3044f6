"""Property tests (hypothesis, bounded examples): tokenizer round trips, config validation that fails only
with the documented errors, and caption-file parsing that fails only with ``DataError``.
"""

from __future__ import annotations

import json
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from geometry_os.errors import ConfigError

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
FASTER = settings(FAST, max_examples=30)

# ---- tokenizers ---------------------------------------------------------------------------------------

WORD_CHARS = string.ascii_lowercase + string.digits + "éüßøçñ_"
PUNCTUATION = ".,!?;:()[]{}%-'\"/&+*#@<>=~"
word = st.text(alphabet=WORD_CHARS, min_size=1, max_size=8)
token = st.one_of(word, word, st.sampled_from(PUNCTUATION))


@pytest.fixture(scope="module")
def simple_cls():
    from geometry_os.systems.pixel_llm.resolution import get_component

    return get_component("tokenizer", "simple").load()


@pytest.fixture(scope="module")
def bpe():
    from geometry_os.systems.pixel_llm.resolution import get_component

    corpus = [
        "a small red circle left of a large blue square",
        "a green triangle above a white diamond",
        "émile's café, naïve façade: 42 (or 7)!",
    ] * 5
    return get_component("tokenizer", "bpe").load().train(corpus, {"vocab_size": 300, "min_frequency": 1})


@FAST
@given(tokens=st.lists(token, min_size=1, max_size=25))
def test_simple_round_trip_over_its_normalised_alphabet(simple_cls, tokens):
    """A text already in the normalised form (lowercase words and punctuation, joined the way the
    vocabulary joins them) comes back exactly."""
    from geometry_os.plugins.simple_vocab.vocab import detokenize, normalize

    text = detokenize(tokens)
    assume(normalize(text) == tokens)  # e.g. ["a", "b"] joined as "a b", but ["ab"] never splits
    vocab = simple_cls([text])
    ids = vocab.encode(text)
    assert ids[0] == vocab.bos_token_id and ids[-1] == vocab.eos_token_id
    assert vocab.unk_token_id not in ids
    assert vocab.decode(ids) == text


@FAST
@given(text=st.text(max_size=60))
def test_simple_round_trip_of_any_text_is_its_normal_form(simple_cls, text):
    from geometry_os.plugins.simple_vocab.vocab import detokenize, normalize

    vocab = simple_cls([text])
    assert vocab.decode(vocab.encode(text)) == detokenize(normalize(text))
    unseen = simple_cls(["something else entirely"])
    assert all(0 <= i < len(unseen) for i in unseen.encode(text))  # unknown words are <unk>, never out of range


@FAST
@given(
    tokens=st.lists(
        st.text(alphabet=string.ascii_lowercase + string.digits + "éß", min_size=1, max_size=8)
        | st.sampled_from(list(".,!?;:'\"()-")),
        min_size=1,
        max_size=20,
    )
)
def test_bpe_round_trip_over_its_normalised_alphabet(bpe, tokens):
    """Lowercase NFKC text with single spaces and no outer whitespace decodes to itself (byte-level BPE
    has no unknown tokens)."""
    text = " ".join(tokens)
    assert unicodedata.normalize("NFKC", text) == text
    ids = bpe.encode(text)
    assert ids[0] == bpe.bos_token_id and ids[-1] == bpe.eos_token_id and bpe.unk_token_id not in ids
    assert bpe.decode(ids) == text


@FAST
@given(text=st.text(max_size=60))
def test_bpe_round_trip_of_any_text_is_stable(bpe, text):
    """Any text: ids stay in range, and decoding is a fixed point after one round (the normal form)."""
    ids = bpe.encode(text)
    assert all(0 <= i < len(bpe) for i in ids)
    once = bpe.decode(ids)
    assert bpe.decode(bpe.encode(once)) == once


@FASTER
@given(text=st.text(max_size=40))
def test_saved_and_loaded_tokenizers_encode_the_same(tmp_path, simple_cls, bpe, text):
    vocab = simple_cls([text, "a red circle"])
    vocab.save(tmp_path / "simple.json")
    bpe.save(tmp_path / "bpe.json")
    assert simple_cls.load(tmp_path / "simple.json").encode(text) == vocab.encode(text)
    assert type(bpe).load(tmp_path / "bpe.json").encode(text) == bpe.encode(text)


# ---- configs ---------------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "vit",
            "xattn",
            "simple",
            "bpe",
            "beam",
            "greedy",
            "sample",
            "auto",
            "cpu",
            "cuda",
            "learned",
            "sincos",
            "cosine",
            "raise",
            "skip",
            "bfloat16",
            "never",
        ]
    ),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def field_dicts(model: type) -> st.SearchStrategy[dict]:
    """Dicts whose keys are mostly the model's own fields (so validation gets deep), plus a few others."""
    names = sorted(model.model_fields)
    keys = st.one_of(st.sampled_from(names), st.sampled_from(names), st.text(max_size=10))
    return st.dictionaries(keys, json_values, max_size=8)


def assert_only_validation_errors(model: type, data: dict) -> None:
    try:
        model.model_validate(data)
    except (ValidationError, ConfigError):
        pass


@FAST
@given(data=st.data())
def test_pixel_llm_config_fails_only_with_validation_errors(data):
    from geometry_os.systems.pixel_llm.config import PRESETS, TRAINER_FIELDS, PixelLLMConfig

    base = data.draw(st.sampled_from([{}, dict(PRESETS["tiny"])]))
    extra = data.draw(field_dicts(PixelLLMConfig))
    flat = data.draw(st.dictionaries(st.sampled_from(sorted(TRAINER_FIELDS)), json_values, max_size=3))
    assert_only_validation_errors(PixelLLMConfig, {**base, **extra, **flat})


@pytest.mark.parametrize("name", ["TrainerConfig", "GenerationConfig", "DatasetConfig"])
@FAST
@given(data=st.data())
def test_other_configs_fail_only_with_validation_errors(name, data):
    from geometry_os.systems.pixel_llm import config as config_module

    model = getattr(config_module, name)
    assert_only_validation_errors(model, data.draw(field_dicts(model)))


override_keys = st.one_of(
    st.sampled_from(
        [
            "image_size",
            "patch_size",
            "vision_embed_dim",
            "text_num_layers",
            "encoder",
            "decoder",
            "trainer.learning_rate",
            "trainer.batch_size",
            "encoder_options.pool",
            "decoder_options.num_layers",
            "trainer",
            "vision_num_heads",
            "max_seq_len",
            "vocab_size",
        ]
    ),
    st.text(alphabet=string.ascii_lowercase + "._", max_size=12),
)


@FAST
@given(
    items=st.lists(st.tuples(override_keys, st.one_of(st.text(max_size=10), json_values.map(json.dumps))), max_size=5),
    preset=st.sampled_from([None, "tiny", "small"]),
)
def test_load_config_with_any_set_flags_fails_only_with_config_error(items, preset):
    """``--set KEY=VALUE`` as typed on the command line: the only failure is a one-line ConfigError."""
    from geometry_os.systems.pixel_llm.config import load_config

    try:
        load_config(None, [f"{k}={v}" for k, v in items], preset=preset)
    except ConfigError as exc:
        assert "\n" not in str(exc)


# ---- caption files --------------------------------------------------------------------------------------

entry = st.fixed_dictionaries(
    {},
    optional={
        "image": json_values | st.just("a.png"),
        "caption": json_values | st.just("a red circle"),
        "captions": json_values | st.just(["a", "b"]),
        "extra": json_values,
    },
)
caption_documents = st.one_of(
    json_values,
    st.lists(entry | json_values, max_size=5),
    st.fixed_dictionaries(
        {
            "images": st.lists(
                st.fixed_dictionaries(
                    {}, optional={"id": json_values, "file_name": json_values | st.just("a.png"), "width": json_values}
                )
                | json_values,
                max_size=3,
            ),
            "annotations": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "image_id": json_values | st.integers(0, 3),
                        "caption": json_values | st.just("a red circle"),
                        "id": json_values,
                    },
                )
                | json_values,
                max_size=3,
            ),
        },
        optional={"info": json_values, "bogus": json_values},
    ),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("caption-files")


@FAST
@given(
    document=caption_documents, suffix=st.sampled_from([".json", ".jsonl"]), on_error=st.sampled_from(["raise", "skip"])
)
def test_read_caption_file_fails_only_with_data_error(scratch, document, suffix, on_error):
    from geometry_os.systems.pixel_llm.data import DataError, read_caption_file

    path = scratch / f"captions{suffix}"
    if suffix == ".jsonl" and isinstance(document, list):
        path.write_text("\n".join(json.dumps(item) for item in document))
    else:
        path.write_text(json.dumps(document))
    try:
        records, skipped, reasons = read_caption_file(path, on_error=on_error)
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    for record in records:
        assert isinstance(record.caption, str) and record.caption.strip() and isinstance(record.image, str)
    assert len(skipped) == len(reasons)


@FASTER
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_read_caption_file_of_any_bytes_fails_only_with_data_error(scratch, raw):
    from geometry_os.systems.pixel_llm.data import DataError, read_caption_file

    for suffix in (".json", ".jsonl"):
        path = scratch / f"raw{suffix}"
        path.write_bytes(raw)
        try:
            read_caption_file(path, on_error="skip")
        except DataError as exc:
            assert "\n" not in str(exc)


# ---- the failures these properties found, kept as plain regression tests -----------------------------


@pytest.mark.parametrize("trainer", [[1], "fast", 5])
def test_flat_trainer_field_next_to_a_non_object_trainer_is_a_validation_error(trainer):
    """Found by the PixelLLMConfig property: lifting ``learning_rate`` into ``trainer=[1]`` raised TypeError."""
    from geometry_os.systems.pixel_llm.config import PixelLLMConfig

    with pytest.raises(ValidationError, match="trainer"):
        PixelLLMConfig.model_validate({"learning_rate": 0.1, "trainer": trainer})


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_caption_file_is_a_data_error(scratch, suffix):
    """json.loads raises RecursionError on deep nesting; the reader turns it into a DataError."""
    from geometry_os.systems.pixel_llm.data import DataError, read_caption_file

    path = scratch / f"nested{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000)
    try:
        read_caption_file(path, on_error="skip")
    except DataError as exc:
        assert "nested too deeply" in str(exc)
    with pytest.raises(DataError, match="nested too deeply"):
        read_caption_file(path, on_error="raise")
