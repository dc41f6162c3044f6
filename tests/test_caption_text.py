"""The one caption normalisation (``pixel_llm.text``) shared by the ``simple`` tokenizer, exact match and
every metric; the metrics against pycocoevalcap on empty hypotheses and empty references.
"""

from __future__ import annotations

import json
import math
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geometry_os.plugins.simple_vocab.vocab import SimpleVocabulary
from geometry_os.systems.pixel_llm.metrics import caption_metrics, exact_match, normalize, tokenize
from geometry_os.systems.pixel_llm.text import caption_tokens, caption_words, normalize_caption

# ---- empty captions: zero length, no placeholder word ------------------------------------------------------


def pycocoevalcap_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """pycocoevalcap's own scorers on the same word strings ("" is the zero-length caption)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = {i: [normalize(p)] for i, p in enumerate(predictions)}
    gts = {i: [normalize(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge = Rouge()
    # Rouge splits "" into one empty token; a zero-length hypothesis has no common subsequence: 0.
    rouge_l = [rouge.calc_score(res[i], gts[i]) if res[i][0] else 0.0 for i in res]
    if any(r for refs in gts.values() for r in refs):
        cider, _ = Cider().compute_score(gts, res)
    else:  # pycocoevalcap's CIDEr fails (max() of no document frequencies): no reference n-grams, score 0
        cider = 0.0
    return {**{f"bleu_{n + 1}": bleu[n] for n in range(4)}, "rouge_l": sum(rouge_l) / len(rouge_l), "cider_d": cider}


EMPTY_CASES = {
    "issue: one empty hypothesis": (["a red circle", ""], [["a red circle"], ["a green square"]]),
    "every hypothesis empty": (["", ""], [["a red circle"], ["a green square", "green square"]]),
    "punctuation-only hypothesis": (["!?", "a green square"], [["a red circle"], ["a green square"]]),
    "an empty reference among others": (["a red circle", "a square"], [["", "a red circle"], ["a green square", ""]]),
    "empty hypothesis and empty reference": (["", "a big blue square"], [[""], ["a big blue square"]]),
    "every reference empty": (["a red circle", ""], [[""], ["..."]]),
    "all empty": (["", ""], [[""], [""]]),
    "long captions, one empty": (
        ["a small red circle left of a large blue square", "", "a green triangle above a white diamond"],
        [
            ["a small red circle left of a large blue square", "a red circle and a blue square"],
            ["a large white diamond"],
            ["a green triangle above a white diamond", "a triangle over a diamond"],
        ],
    ),
}


@pytest.mark.parametrize("case", EMPTY_CASES)
def test_every_metric_equals_pycocoevalcap_with_empty_captions(case):
    predictions, references = EMPTY_CASES[case]
    ours = caption_metrics(predictions, references)
    right = pycocoevalcap_scores(predictions, references)
    for name, value in right.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
        assert math.isfinite(ours[name])


def test_empty_hypothesis_bleu_is_the_hand_computed_value():
    """["a red circle", ""]: 3 of 3 words right, hypothesis length 3, closest reference length 3 + 3:
    BLEU-1 = exp(1 - 6/3) = 0.368 (a placeholder word made it 0.455)."""
    metrics = caption_metrics(["a red circle", ""], [["a red circle"], ["a green square"]])
    assert metrics["bleu_1"] == pytest.approx(math.exp(-1), abs=1e-9)
    assert metrics["exact_match"] == 0.5 and metrics["rouge_l"] == pytest.approx(0.5)


def test_exact_match_with_empty_captions_is_hand_computed():
    assert exact_match(["", "a"], [[""], ["a"]]) == 1.0  # the empty caption equals an empty reference
    assert exact_match(["", "..."], [["a"], ["!"]]) == 0.5  # "..." and "!" both have no words
    assert exact_match(["a b"], [["", "A, b!"]]) == 1.0
    assert caption_metrics(["", ""], [[""], [""]])["exact_match"] == 1.0


def test_no_placeholder_word_reaches_a_scorer(monkeypatch):
    """What BLEU sees for an empty caption is the empty string, never an invented word."""
    from pycocoevalcap.bleu import bleu as bleu_module

    seen: list[dict] = []
    original = bleu_module.Bleu.compute_score

    def spy(self, gts, res, verbose=0):
        seen.append(dict(res))
        return original(self, gts, res, verbose=verbose)

    monkeypatch.setattr(bleu_module.Bleu, "compute_score", spy)
    caption_metrics(["a red circle", "", "?"], [["a red circle"], ["a green square"], ["a cat"]])
    assert seen == [{0: ["a red circle"], 1: [""], 2: [""]}]


# ---- English punctuation: the tokenizer's round trip is the normal form ------------------------------------------

# caption -> its normal form: lowercase, single spaces, punctuation spaced the English way
ENGLISH = {
    "a man's hat": "a man's hat",
    "A Man’s hat.": "a man's hat.",
    "the dog's ball, the cats' bowl": "the dog's ball, the cats' bowl",
    "a dog that doesn't sit": "a dog that doesn't sit",
    "it's o'clock; they're here": "it's o'clock; they're here",
    "a well-known black-and-white cat": "a well-known black-and-white cat",
    "a cat -- or a dog": "a cat -- or a dog",
    "a cat - black": "a cat - black",
    "a red, round ball.": "a red, round ball.",
    "a cat , a dog .": "a cat, a dog.",
    'a sign that says "stop" here': 'a sign that says "stop" here',
    "a sign that says “STOP.”": 'a sign that says "stop."',
    "a man (in red) and 2 dogs!": "a man (in red) and 2 dogs!",
    "rock 'n' roll": "rock 'n' roll",
    "3.5 kg of apples, 1,000 birds at 10:30": "3.5 kg of apples, 1,000 birds at 10:30",
    "a $5 bill: 50% off?": "a $5 bill: 50% off?",
    "what?! no...": "what?! no...",
}


@pytest.mark.parametrize("caption", ENGLISH)
def test_simple_tokenizer_round_trip_is_the_normal_form(caption):
    vocab = SimpleVocabulary([caption])
    ids = vocab.encode(caption)
    assert vocab.unk_token_id not in ids
    assert vocab.decode(ids) == normalize_caption(caption) == ENGLISH[caption]
    assert vocab.encode(vocab.decode(ids)) == ids


def test_issue_example_contraction():
    vocab = SimpleVocabulary(["a man's hat"])
    text = vocab.decode(vocab.encode("a man's hat"))
    assert text == "a man's hat"
    metrics = caption_metrics([text], [["a man's hat"]])  # a model emitting exactly the reference's ids
    assert metrics["exact_match"] == 1.0 and metrics["bleu_1"] == pytest.approx(1.0)


@pytest.mark.parametrize("caption", ENGLISH)
def test_a_model_emitting_the_references_ids_scores_perfectly(caption):
    vocab = SimpleVocabulary(list(ENGLISH))
    prediction = vocab.decode(vocab.encode(caption))
    metrics = caption_metrics([prediction], [[caption]])
    assert metrics["exact_match"] == 1.0 and metrics["rouge_l"] == pytest.approx(1.0)
    assert tokenize(prediction) == tokenize(caption) == caption_words(ENGLISH[caption])


def test_metrics_normalise_predictions_and_references_alike():
    assert tokenize("A Red, circle!") == ["a", "red", "circle"] and normalize(" A  b ") == "a b"
    assert normalize("A man’s HAT.") == normalize("a man's hat") == "a man's hat"
    assert normalize("a well-known cat") == "a well-known cat" != normalize("a well known cat")
    assert exact_match(["A man’s hat."], [["a man's hat"]]) == 1.0
    assert exact_match(["a mans hat"], [["a man's hat"]]) == 0.0


# ---- Unicode words keep their combining marks -------------------------------------------------------------------

# (caption, its words): vowel signs, viramas and accents (Mn/Mc) stay inside their words
SCRIPTS = {
    "bengali": ("একটি লাল বল।", ["একটি", "লাল", "বল"]),  # ends with the danda, a punctuation mark
    "devanagari": ("एक लाल गेंद और हरा पत्ता", ["एक", "लाल", "गेंद", "और", "हरा", "पत्ता"]),
    "tamil": ("ஒரு சிவப்பு பந்து", ["ஒரு", "சிவப்பு", "பந்து"]),
    "thai": ("แมวสีดำ นั่งบนเก้าอี้", [unicodedata.normalize("NFKC", "แมวสีดำ"), "นั่งบนเก้าอี้"]),
    "decomposed latin": ("un cafe\u0301 nai\u0308f, q\u0303", ["un", "café", "naïf", "q\u0303"]),
    "vietnamese": ("con mèo đen ngồi trên ghế", ["con", "mèo", "đen", "ngồi", "trên", "ghế"]),
    "hebrew points": ("חָתוּל שָׁחוֹר", [unicodedata.normalize("NFKC", "חָתוּל"), unicodedata.normalize("NFKC", "שָׁחוֹר")]),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_words_keep_their_combining_marks(script):
    caption, words = SCRIPTS[script]
    assert caption_words(caption) == words
    assert tokenize(caption) == words  # the metrics' words are the same


@pytest.mark.parametrize("script", SCRIPTS)
def test_simple_tokenizer_keeps_words_whole_and_round_trips(script):
    caption, words = SCRIPTS[script]
    vocab = SimpleVocabulary([caption])
    assert set(words) <= set(vocab.itos)
    ids = vocab.encode(caption)
    assert vocab.unk_token_id not in ids
    assert vocab.decode(ids) == normalize_caption(caption)
    assert caption_words(vocab.decode(ids)) == words


@pytest.mark.parametrize(
    "a, b",
    [
        ("লাল বল", "লিল বল"),  # Bengali: a different vowel sign is a different word
        ("लाल", "लील"),  # Devanagari
        ("சிவப்பு", "சவப்பு"),  # Tamil
        ("cafe\u0301", "cafe\u0300"),  # decomposed é vs è
    ],
)
def test_words_differing_only_in_combining_marks_are_different(a, b):
    assert exact_match([a], [[b]]) == 0.0
    assert caption_metrics([a], [[b]])["bleu_1"] < 1.0
    vocab = SimpleVocabulary([a, b])
    assert vocab.encode(a) != vocab.encode(b)


# ---- the normal form is a fixed point; vocabulary files ------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHARS = st.sampled_from(list("abcs 0123'\"-.,!?()$%:;") + ["\u0301", "\u09be", "ল", "\u094d", "क", "\u200d", "’", "“"])


@PROPERTY
@given(text=st.text(CHARS, max_size=40) | st.text(max_size=40))
def test_normal_form_is_a_fixed_point_and_the_round_trip(text):
    once = normalize_caption(text)
    assert normalize_caption(once) == once
    assert caption_words(once) == caption_words(text)
    vocab = SimpleVocabulary([text])
    assert vocab.decode(vocab.encode(text)) == once


@PROPERTY
@given(text=st.text(st.characters(max_codepoint=127), max_size=40) | st.text(CHARS.filter(str.isascii), max_size=40))
def test_the_ascii_fast_path_gives_the_unicode_paths_tokens(text):
    from geometry_os.systems.pixel_llm import text as module

    assert caption_tokens(text) == module._TOKEN_RE.findall(module.prepare(text))


def test_caption_tokens_split_words_from_punctuation():
    assert caption_tokens("A Cat,  sitting.") == ["a", "cat", ",", "sitting", "."]
    assert caption_tokens("👨\u200d👩\u200d👧 family") == ["👨\u200d👩\u200d👧", "family"]  # one grapheme cluster


def test_vocab_files_of_version_1_keep_their_tokens(tmp_path):
    """A vocabulary saved before words kept apostrophes and marks encodes and decodes as it always did,
    so its checkpoint captions the same; new vocabularies are version 2."""
    old = {
        "format": "geometry_os.simple_vocab",
        "version": 1,
        "min_freq": 1,
        "max_size": None,
        "tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "a", "man", "'", "s", "hat", ",", "ল", "া"],
    }
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(old, ensure_ascii=False))
    vocab = SimpleVocabulary.load(path)
    assert vocab.encode("a man's hat, লাল") == [1, 4, 5, 6, 7, 8, 9, 10, 11, 10, 2]
    assert vocab.decode([1, 4, 5, 6, 7, 8, 9, 2]) == "a man ' s hat,"
    vocab.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["version"] == 1
    new = SimpleVocabulary(["a man's hat"])
    new.save(tmp_path / "new.json")
    assert json.loads((tmp_path / "new.json").read_text())["version"] == 2
    assert SimpleVocabulary.load(tmp_path / "new.json").decode(new.encode("a man's hat")) == "a man's hat"


def test_vocab_version_must_be_an_integer(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(
        json.dumps(
            {"format": "geometry_os.simple_vocab", "version": True, "tokens": ["<pad>", "<bos>", "<eos>", "<unk>"]}
        )
    )
    with pytest.raises(ValueError, match='unsupported "version" True'):
        SimpleVocabulary.load(path)


# ---- other readers of caption text use the same normalisation ------------------------------------------------


def test_lint_counts_words_and_finds_duplicates_after_normalisation(tmp_path):
    from PIL import Image

    from geometry_os.plugins.datasets.lint import lint_file

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "red.png")
    entries = [
        {"image": "red.png", "caption": "A man’s hat , red."},
        {"image": "red.png", "caption": "a man's hat, red."},
        {"image": "red.png", "caption": "लाल गेंद"},
    ]
    (tmp_path / "data.json").write_text(json.dumps(entries, ensure_ascii=False))
    report, _, _ = lint_file(str(tmp_path / "data.json"), None, None, 10**8, 1)
    assert any("entry 1: duplicates entry 0" in w for w in report["warnings"])
    assert report["caption_lengths"]["unit"] == "words"
    assert report["caption_lengths"]["max"] == 4 and report["caption_lengths"]["min"] == 2


def test_explain_prints_the_decoded_caption(tmp_path, monkeypatch):
    """explain's caption is the tokenizer's text ("a man's hat, red."), as caption prints it, not the panel
    words joined by spaces ("a man's hat , red .")."""
    import torch
    from PIL import Image

    from geometry_os.systems.pixel_llm import create_pixel_llm, explain, inference

    vocab = SimpleVocabulary(["a man's hat, red."])
    ids = vocab.encode("a man's hat, red.")
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(vocab), preset="tiny").eval()
    patches = (model.config.image_size // model.config.patch_size) ** 2

    class Out:
        sequences = torch.tensor([ids])
        cross_attentions = [torch.rand(1, 2, 2, patches) for _ in ids]

    monkeypatch.setattr(inference, "generate_caption", lambda *args, **kwargs: Out())
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    explanation = explain.explain_image(model, vocab, str(tmp_path / "red.png"))
    assert explanation.words == ["a", "man's", "hat", ",", "red", "."]
    assert explanation.caption == "a man's hat, red."


@pytest.mark.parametrize("script", SCRIPTS)
def test_bpe_words_keep_their_combining_marks(script):
    """A new BPE tokenizer splits words as Unicode does before merging (GPT-2's pattern split ``লাল`` at
    its vowel sign, so no token could span the word), and round-trips the text."""
    from geometry_os.plugins.bpe.tokenizer import BPETokenizer

    caption, words = SCRIPTS[script]
    bpe = BPETokenizer([caption] * 3, vocab_size=400, min_frequency=1)
    backend = bpe.backend
    pieces = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(caption))
    decoded = [backend.decoder.decode([piece]).strip() for piece, _ in pieces]
    assert [p for p in decoded if caption_words(p)] == words
    assert bpe.decode(bpe.encode(caption)) == " ".join(unicodedata.normalize("NFKC", caption).lower().split())


def test_bpe_files_saved_with_the_byte_level_pattern_keep_it(tmp_path):
    """A tokenizer JSON carries its own pipeline: one trained with ByteLevel's GPT-2 pattern loads and
    encodes exactly as the library does with that file."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from geometry_os.plugins.bpe.tokenizer import BPETokenizer

    old = Tokenizer(models.BPE(unk_token="<unk>"))
    old.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    old.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    old.decoder = decoders.ByteLevel()
    old.train_from_iterator(
        ["লাল বল", "a man's hat"] * 3,
        trainers.BpeTrainer(
            vocab_size=300,
            min_frequency=1,
            special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    old.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
    )
    (tmp_path / "tokenizer.json").write_text(old.to_str())
    loaded = BPETokenizer.load(tmp_path / "tokenizer.json")
    for text in ["লাল বল", "a man's hat", "লিল"]:
        assert loaded.encode(text) == old.encode(text).ids
        assert loaded.decode(loaded.encode(text)) == text


def test_a_checkpoint_with_a_version_1_vocabulary_captions_as_before(tmp_path, monkeypatch):
    """A checkpoint saved before version 2: from_pretrained gives a tokenizer with the same ids, and the
    caption path writes the model's ids with the old spacing."""
    import torch
    from PIL import Image

    from geometry_os.systems.pixel_llm import captioning, create_pixel_llm, inference
    from geometry_os.systems.pixel_llm.modeling import PixelLLM

    tokens = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "man", "'", "s", "hat", ",", "red", ".", "ল", "া"]
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(tokens), preset="tiny")
    model.save_pretrained(tmp_path / "ckpt", tokenizer=SimpleVocabulary(["placeholder"]))
    (tmp_path / "ckpt" / "tokenizer.json").write_text(
        json.dumps(
            {"format": "geometry_os.simple_vocab", "version": 1, "min_freq": 1, "max_size": None, "tokens": tokens},
            ensure_ascii=False,
        )
    )
    model, vocab = PixelLLM.from_pretrained(tmp_path / "ckpt")
    ids = [1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 12, 2]
    assert vocab.encode("A man's hat, red. লাল") == ids
    real_resolve = inference.resolve_strategy

    class Emits:  # the decoding strategy, answering with ``ids`` (its scores as the real one gives them)
        def __init__(self, resolved):
            self.resolved, self.component = resolved, resolved.component

        def build(self):
            strategy = self.resolved.build()

            class Strategy:
                def decode(self, *args, **kwargs):
                    out = strategy.decode(*args, **kwargs)
                    out.sequences = torch.tensor([ids])
                    return out

            return Strategy()

    monkeypatch.setattr(inference, "resolve_strategy", lambda config, components=None: Emits(real_resolve(config)))
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    (result,) = captioning.caption_images(model, vocab, [tmp_path / "red.png"])
    assert result.caption == "a man ' s hat, red. ল া ল"  # what it printed before version 2


def test_caption_texts_drop_the_prefix_space_a_byte_level_bpe_decodes_to():
    import torch

    from geometry_os.systems.pixel_llm import create_pixel_llm
    from geometry_os.systems.pixel_llm.inference import generate_output
    from geometry_os.systems.pixel_llm.resolution import get_component

    vocab = get_component("tokenizer", "simple").load().train(["a cat"], None)
    plain = vocab.decode

    class PrefixSpace(type(vocab)):  # decodes as a GPT-2-style BPE with add_prefix_space does: " a cat"
        def decode(self, ids, skip_special_tokens=True):
            return " " + plain(ids, skip_special_tokens=skip_special_tokens) + " "

    vocab.__class__ = PrefixSpace
    torch.manual_seed(0)
    model = create_pixel_llm(vocab_size=len(vocab), preset="tiny").eval()
    out = generate_output(model, torch.randn(2, 3, 32, 32), tokenizer=vocab, max_new_tokens=4)
    assert out.texts == [plain(row.tolist()).strip() for row in out.sequences]
    assert all(t == t.strip() for t in out.texts)
