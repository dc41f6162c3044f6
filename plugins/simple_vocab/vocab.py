"""A word-level vocabulary: small, readable, exact for closed vocabularies such as the synthetic scenes.

Tokens are the core caption tokens (``geometry_os.systems.pixel_llm.text``): NFKC, lowercase, Unicode
words (letters, combining marks and numbers, with inner apostrophes and hyphens: ``man's``,
``well-known``, ``লাল``) and single punctuation marks. ``decode`` writes them back with English spacing,
so ``decode(encode(text))`` is the caption's normal form (``text.normalize_caption``): ``"A man’s hat,
red."`` -> ``"a man's hat, red."`` when every word is in the vocabulary.

Files of format version 1 keep the tokens they were built with (``re.findall(r"\\w+|[^\\w\\s]")``, words
and punctuation joined by spaces), so a checkpoint trained with one encodes and captions as it always did.
Ids: ``<pad>=0 <bos>=1 <eos>=2 <unk>=3``, then words by frequency (descending), ties alphabetically,
so the same captions always give the same ids. Saved as plain JSON (never pickle).
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from geometry_os.fileio import atomic_write_text, parse_json, read_utf8
from geometry_os.systems.pixel_llm.plugin_api import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    as_id_list,
    caption_tokens,
    check_file_header,
    check_ids,
    invalid_file,
)
from geometry_os.systems.pixel_llm.plugin_api import detokenize as join_tokens

FORMAT = "geometry_os.simple_vocab"
VERSION = 2  # 1: the tokens of _legacy_tokens, written back by _legacy_detokenize
_LEGACY_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_LEGACY_NO_SPACE_BEFORE = set(".,!?;:)]}%")
_LEGACY_NO_SPACE_AFTER = set("([{")


def normalize(text: str) -> list[str]:
    """The tokens of ``text`` (``text.caption_tokens``): NFKC, lowercase, words and punctuation marks."""
    return caption_tokens(text)


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens back to text with English spacing (``text.detokenize``): ``"a man's hat, red."``."""
    return join_tokens(tokens)


def _legacy_tokens(text: str) -> list[str]:
    """Version-1 tokens: runs of ``\\w`` and single other characters (splits at combining marks)."""
    return _LEGACY_TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


def _legacy_detokenize(tokens: Sequence[str]) -> str:
    """Version-1 text: spaces between tokens except before closing and after opening punctuation."""
    out: list[str] = []
    for tok in tokens:
        if out and tok not in _LEGACY_NO_SPACE_BEFORE and out[-1] not in _LEGACY_NO_SPACE_AFTER:
            out.append(" ")
        out.append(tok)
    return "".join(out)


class SimpleVocabulary:
    """Word-level tokenizer; ``encode`` gives ``[<bos>, words..., <eos>]``, unknown words map to ``<unk>``."""

    pad_token_id, bos_token_id, eos_token_id, unk_token_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    special_tokens = SPECIAL_TOKENS

    def __init__(self, texts: Iterable[str] = (), min_freq: int = 1, max_size: int | None = None):
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        if max_size is not None and max_size < len(SPECIAL_TOKENS):
            raise ValueError(f"max_size must be >= {len(SPECIAL_TOKENS)}, got {max_size}")
        if isinstance(texts, str):  # one caption, not an iterable of characters
            texts = [texts]
        # ``...`` stands for "more captions" in examples (``["caption 1", "caption 2", ...]``): skipped.
        texts = [text for text in texts if text is not Ellipsis]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
        counts = Counter(tok for text in texts for tok in normalize(text))
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIAL_TOKENS)]
        self.min_freq, self.max_size, self.version = min_freq, max_size, VERSION
        self._set_tokens([*SPECIAL_TOKENS, *words])

    def _set_tokens(self, tokens: list[str]) -> None:
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}

    @classmethod
    def train(cls, texts: Iterable[str], options: Any = None) -> SimpleVocabulary:
        """Build from captions; ``options`` is a ``SimpleVocabularyOptions``, a dict, or None (defaults)."""
        if isinstance(options, dict):
            from geometry_os.plugins.simple_vocab import SimpleVocabularyOptions

            options = SimpleVocabularyOptions(**options)
        return cls(texts, min_freq=getattr(options, "min_freq", 1), max_size=getattr(options, "max_size", None))

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, the four special tokens included (``len(vocab)``)."""
        return len(self.itos)

    def __repr__(self) -> str:
        return f"SimpleVocabulary(size={len(self)})"

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, or the ``<unk>`` id for a word outside the vocabulary."""
        return self.stoi.get(token, UNK_ID)

    def id_to_token(self, index: int) -> str:
        """The token of id ``index``.

        Raises:
            IndexError: for an id beyond the vocabulary.
        """
        return self.itos[index]

    def tokenize(self, text: str) -> list[str]:
        """The words of ``text`` as the vocabulary splits them (lowercase, punctuation as separate tokens)."""
        return normalize(text) if self.version == VERSION else _legacy_tokens(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (unknown words are ``<unk>``); ``add_special_tokens``: wrapped in ``<bos>`` ... ``<eos>``."""
        ids = [self.stoi.get(tok, UNK_ID) for tok in self.tokenize(text)]
        return [BOS_ID, *ids, EOS_ID] if add_special_tokens else ids

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; when skipping specials, stop at the first ``<eos>`` and drop pad/bos.

        ``<unk>`` is kept in the text: it stands for a word the vocabulary cannot name.

        Raises:
            ValueError: for a batch (use ``batch_decode``) or an id outside the vocabulary.
        """
        seq = as_id_list(ids)
        check_ids(seq, len(self.itos))
        if skip_special_tokens:
            if EOS_ID in seq:
                seq = seq[: seq.index(EOS_ID)]
            seq = [i for i in seq if i not in (PAD_ID, BOS_ID)]
        tokens = [self.itos[i] for i in seq]
        return detokenize(tokens) if self.version == VERSION else _legacy_detokenize(tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True) -> list[str]:
        """Text of each row of ``sequences`` (a 2-D tensor or a list of id lists), as ``decode`` gives it.

        Raises:
            ValueError: for an id outside the vocabulary.
        """
        rows = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        return [self.decode(row, skip_special_tokens) for row in rows]

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary to ``path`` as JSON (atomically); ``load`` reads it back."""
        data = {
            "format": FORMAT,
            "version": self.version,
            "min_freq": self.min_freq,
            "max_size": self.max_size,
            "tokens": self.itos,
        }
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> SimpleVocabulary:
        """Read a file written by ``save``; any problem is a one-line ValueError naming the file."""
        data = parse_json(read_utf8(path), path, what="vocabulary JSON")
        tokens = _check_vocab_json(data, path)
        vocab = cls.__new__(cls)
        vocab.min_freq, vocab.max_size, vocab.version = data.get("min_freq", 1), data.get("max_size"), data["version"]
        vocab._set_tokens(tokens)
        return vocab


def _check_vocab_json(data: Any, path: Any) -> list[str]:
    def fail(why: str) -> ValueError:
        return invalid_file(path, "simple vocabulary", why)

    data = check_file_header(
        data, path, "simple vocabulary", FORMAT, (1, VERSION), ("format", "version", "min_freq", "max_size", "tokens")
    )
    tokens = data.get("tokens")
    if not isinstance(tokens, list):
        raise fail(f'"tokens" must be a list of strings, got {type(tokens).__name__}')
    for i, tok in enumerate(tokens):
        if not isinstance(tok, str) or not tok:
            raise fail(f'"tokens"[{i}] must be a non-empty string, got {tok!r}')
    if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise fail(f"the first tokens must be {list(SPECIAL_TOKENS)}, got {tokens[: len(SPECIAL_TOKENS)]}")
    seen: set[str] = set()
    for i, tok in enumerate(tokens):
        if tok in seen:
            raise fail(f'duplicate token {tok!r} at "tokens"[{i}]')
        seen.add(tok)
    return tokens
