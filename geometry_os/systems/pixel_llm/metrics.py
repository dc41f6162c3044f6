"""Caption metrics without Java: BLEU-1..4, ROUGE-L and CIDEr-D from pycocoevalcap's pure-Python
scorers, exact match, and diversity statistics.

Tokenisation (applied to candidates and references alike, instead of the Java PTB tokenizer): the words
of ``text.caption_words``: NFKC, lowercase, Unicode words (letters, combining marks, numbers; ``man's``
and ``well-known`` are one word each), punctuation dropped. ``"A Red, circle!"`` -> ``["a", "red",
"circle"]``. Exact match compares these word lists, so a prediction matches a reference that differs
only in case, spacing or punctuation.

An empty caption (or one of punctuation only) has zero words: it is scored as zero length, with no
placeholder word. BLEU and CIDEr-D are pycocoevalcap's scores of the empty token list; ROUGE-L of an
empty hypothesis is 0 (pycocoevalcap would split ``""`` into one empty token, which matches an empty
reference); an empty hypothesis equals an empty reference in exact match.

CIDEr-D's idf comes from the evaluated references by default (as in coco-caption); pass
``idf_corpus`` (a list of reference lists, e.g. the training captions) to take it from elsewhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from .text import caption_words


def tokenize(text: str) -> list[str]:
    """The words the metrics compare (``text.caption_words``)."""
    return caption_words(text)


def normalize(text: str) -> str:
    """The words of ``text`` joined by single spaces: the form every scorer sees ("" for no words)."""
    return " ".join(caption_words(text))


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions whose words equal the words of one of their references.

    Raises:
        ValueError: when there are no predictions.
    """
    if not predictions:
        raise ValueError("no predictions to score")
    hits = sum(normalize(p) in {normalize(r) for r in refs} for p, refs in zip(predictions, references))
    return hits / len(predictions)


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean sentence ROUGE-L (F with beta 1.2, best reference) by pycocoevalcap's ``Rouge.calc_score``;
    an empty hypothesis scores 0 (zero length: no common subsequence)."""
    from pycocoevalcap.rouge.rouge import Rouge

    rouge = Rouge()
    scores = []
    for prediction, refs in zip(predictions, references):
        hypothesis = normalize(prediction)
        scores.append(float(rouge.calc_score([hypothesis], [normalize(r) for r in refs])) if hypothesis else 0.0)
    return sum(scores) / len(scores)


def _cider_scorer(idf_corpus: Sequence[Sequence[str]] | None) -> Any:
    import numpy as np
    from pycocoevalcap.cider.cider_scorer import CiderScorer, cook_refs

    if idf_corpus is None:
        return CiderScorer(n=4, sigma=6.0)
    corpus = idf_corpus  # bound for the class below: the narrowing of idf_corpus does not reach into it

    class CorpusIdfCiderScorer(CiderScorer):
        """CIDEr-D whose document frequencies come from ``idf_corpus`` instead of the evaluated refs."""

        def __init__(self) -> None:
            self._corpus = [cook_refs([normalize(r) for r in refs]) for refs in corpus]
            super().__init__(n=4, sigma=6.0)

        ref_len = property(lambda self: np.log(float(len(self._corpus))), lambda self, value: None)

        def compute_doc_freq(self) -> None:
            for refs in self._corpus:
                for ngram in {ngram for ref in refs for ngram in ref}:
                    self.document_frequency[ngram] += 1

        def compute_score(self, option=None, verbose=0):
            self.compute_doc_freq()
            scores = self.compute_cider()
            return float(np.mean(scores)), np.array(scores)

    return CorpusIdfCiderScorer()


def cider_d(
    predictions: Sequence[str], references: Sequence[Sequence[str]], idf_corpus: Sequence[Sequence[str]] | None = None
) -> float:
    """Mean CIDEr-D (pycocoevalcap's ``CiderScorer``, n=4, sigma=6) of each prediction against its references;
    0 when no reference has a word (pycocoevalcap's scorer fails on an empty document frequency)."""
    if idf_corpus is None and not any(normalize(r) for refs in references for r in refs):
        return 0.0
    scorer = _cider_scorer(idf_corpus)
    for prediction, refs in zip(predictions, references):
        scorer += (normalize(prediction), [normalize(r) for r in refs])
    score, _ = scorer.compute_score()
    return float(score)


def diversity(predictions: Sequence[str]) -> dict[str, float]:
    """distinct-1/2 (unique n-grams / all n-grams over every caption) and collapse statistics."""
    out: dict[str, float] = {}
    tokens = [tokenize(p) for p in predictions]
    for n in (1, 2):
        grams = [tuple(t[i : i + n]) for t in tokens for i in range(len(t) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    counts = Counter(normalize(p) for p in predictions)
    total = max(len(predictions), 1)
    out["identical_fraction"] = 1.0 - len(counts) / total if predictions else 0.0
    out["most_common_fraction"] = counts.most_common(1)[0][1] / total if predictions else 0.0
    return out


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    idf_corpus: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Corpus-level metrics for one prediction per image against that image's references.

    Raises:
        ValueError: when the numbers of predictions and reference lists differ, there are no predictions, or
            an image has no reference.
    """
    from pycocoevalcap.bleu.bleu import Bleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every image needs at least one reference caption")
    res = {i: [normalize(p)] for i, p in enumerate(predictions)}  # "" stays "": zero length
    gts = {i: [normalize(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics = {
        "exact_match": exact_match(predictions, references),
        **{f"bleu_{n + 1}": float(bleu[n]) for n in range(4)},
        "rouge_l": rouge_l(predictions, references),
        "cider_d": cider_d(predictions, references, idf_corpus),
    }
    metrics.update(diversity(predictions))
    metrics["num_images"] = float(len(predictions))
    return metrics
