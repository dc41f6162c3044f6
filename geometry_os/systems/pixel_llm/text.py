"""Caption text: the one normalisation shared by the word tokenizer, exact match and every caption metric.

``caption_tokens(text)``: NFKC, lowercase, curly quotes made straight (’ -> ', “ ” -> "), then the
words and punctuation marks of the text, in order:

* A **word** is a run of Unicode letters, combining marks and numbers (general categories L*, M*, N*:
  a vowel sign or virama stays inside its word, ``লাল`` is one word); zero-width (non-)joiners inside a
  word stay in it. Inside a word an apostrophe or hyphen joins two runs (``man's``, ``don't``,
  ``well-known``), and ``.``/``,``/``:`` join two digit runs (``3.5``, ``1,000``, ``10:30``).
* Every other non-space character is a **punctuation** token of its own (one extended grapheme cluster,
  so an emoji sequence stays whole); a run of hyphens (``--``) is one token.

``detokenize(tokens)`` writes tokens back with English spacing: no space before ``. , ! ? ; : ) ] } %``,
none after ``( [ { $ £ € #``; straight quotes alternate between opening (space before, none after) and
closing (none before, space after), as the Moses detokenizer pairs them, except that an apostrophe
with no quote open after a word ending in ``s`` is a plural possessive (``the cats' bowl``); two tokens
whose characters would merge into one grapheme cluster (a token that starts with a combining mark) keep
a space between them. ``normalize_caption(text)`` is ``detokenize(caption_tokens(text))``:
``"A man’s  hat , red."`` -> ``"a man's hat, red."``. It is a fixed point (normalising twice changes
nothing) and it is what the ``simple`` tokenizer's ``decode(encode(text))`` gives.

``caption_words(text)``: the words only. Metrics and exact match compare these, for predictions and
references alike; punctuation is not scored, as in the COCO caption evaluation (whose PTB tokenizer drops
it). An empty text has no words: zero length, never a placeholder word.

Word boundaries follow Unicode general categories as the ``regex`` module knows them (``\\p{L}``,
``\\p{M}``, ``\\p{N}``); Python's ``re`` ``\\w`` has no combining marks (Mn/Mc/Me), which would split
Bengali, Devanagari, Thai, Tamil or a decomposed ``é`` inside a word.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import regex

_W = r"[\p{L}\p{M}\p{N}]"
_RUN = rf"{_W}(?:{_W}|[\u200c\u200d](?={_W}))*"  # joiners only between word characters
_JOIN = r"(?:['-]|(?<=\p{N})[.,:](?=\p{N}))"
WORD = rf"{_RUN}(?:{_JOIN}{_RUN})*"
_TOKEN_RE = regex.compile(rf"{WORD}|-{{2,}}|(?!\s)\X")  # "--" is one dash
# The same tokens for ASCII text (no marks, no multi-character clusters, NFKC-stable) by the standard
# library's engine, about 3x faster: captions are tokenized once per data set, COCO has 600k of them.
_ASCII_TOKEN_RE = re.compile(r"[a-z0-9]+(?:(?:['-]|(?<=[0-9])[.,:](?=[0-9]))[a-z0-9]+)*|-{2,}|[^\t\n\v\f\r ]")
_WORD_START = regex.compile(_W)
_CLUSTER = regex.compile(r"\X")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})

NO_SPACE_BEFORE = frozenset(".,!?;:)]}%…")
NO_SPACE_AFTER = frozenset("([{$£€#¿¡")
STRAIGHT_QUOTES = frozenset("'\"")


def prepare(text: str) -> str:
    """NFKC, lowercase (NFKC again: lowercasing can leave a composable pair), straight quotes."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).lower()).translate(_QUOTES)


def is_word(token: str) -> bool:
    """Whether ``token`` (one of ``caption_tokens``) is a word rather than a punctuation mark."""
    return bool(_WORD_START.match(token))


def caption_tokens(text: str) -> list[str]:
    """The words and punctuation marks of ``text`` after ``prepare`` (see the module docstring)."""
    if text.isascii():
        return _ASCII_TOKEN_RE.findall(text.lower())
    return _TOKEN_RE.findall(prepare(text))


def caption_words(text: str) -> list[str]:
    """The words of ``text``: what exact match and the metrics compare ("" -> [])."""
    return [tok for tok in caption_tokens(text) if is_word(tok)]


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens with English spacing (punctuation attached, straight quotes paired by alternation)."""
    out: list[str] = []
    open_quotes: set[str] = set()  # quote characters whose next occurrence closes
    glue_next = False  # the previous token opened something: no space after it
    for tok in tokens:
        glue = glue_next or tok in NO_SPACE_BEFORE
        glue_next = tok in NO_SPACE_AFTER
        if tok in STRAIGHT_QUOTES:
            if tok == "'" and tok not in open_quotes and out and is_word(out[-1]) and out[-1].endswith("s"):
                glue = True  # the cats' bowl
            elif tok in open_quotes:
                open_quotes.discard(tok)
                glue = True
            else:
                open_quotes.add(tok)
                glue_next = True
        if out and (not glue or _merges(out[-1], tok)):
            out.append(" ")
        out.append(tok)
    return "".join(out)


def _merges(left: str, right: str) -> bool:
    """Whether ``right`` written straight after ``left`` would join its last character's grapheme cluster."""
    return bool(left and right) and len(_CLUSTER.findall(left[-1] + right[0])) < 2


def normalize_caption(text: str) -> str:
    """The normal form of a caption: ``detokenize(caption_tokens(text))``."""
    return detokenize(caption_tokens(text))
