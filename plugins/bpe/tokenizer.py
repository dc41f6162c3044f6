"""Byte-level BPE on HF ``tokenizers``: open vocabulary (no ``<unk>`` in practice), compact ids.

Pipeline: normalise (NFKC, lowercase, collapse whitespace, strip, then a prefix space, so a word has the
same tokens at the start of a caption as inside it) -> split into words by GPT-2's pattern with combining
marks kept in their words (``\\p{M}`` beside ``\\p{L}``: GPT-2's own pattern splits ``লাল`` at its vowel
sign, so no merge could span it) -> byte-level alphabet -> BPE -> template
``<bos> $A <eos>``. Specials have the fixed ids ``<pad>=0 <bos>=1 <eos>=2 <unk>=3``; text that spells a
special token (``"<eos>"``) is encoded as ordinary bytes. Saved as the library's own tokenizer JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from geometry_os.fileio import atomic_write_text, parse_json, read_utf8
from geometry_os.systems.pixel_llm.plugin_api import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    TokenizersBacked,
    as_id_list,
    check_ids,
    parse_tokenizers_json,
)

# GPT-2's pre-tokenizer pattern (tokenizers' ByteLevel use_regex) with \p{M} in the letter classes.
# Files saved with the earlier ByteLevel pipeline keep it: a tokenizer JSON carries its own pipeline.
WORD_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}\p{M}]+| ?\p{N}+| ?[^\s\p{L}\p{M}\p{N}]+|\s+(?!\S)|\s+"


def _new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Prepend(" "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


class BPETokenizer(TokenizersBacked):
    """Same interface as ``SimpleVocabulary``: encode/decode/batch_decode/len/save/load/train."""

    pad_token_id, bos_token_id, eos_token_id, unk_token_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    special_tokens = SPECIAL_TOKENS

    def __init__(self, texts: Iterable[str] = (), vocab_size: int = 1000, min_frequency: int = 2):
        if isinstance(texts, str):  # one caption, not an iterable of characters
            texts = [texts]
        tok = _new_tokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)]
        )
        self._attach(tok, source="trained tokenizer")

    def _attach(self, tok: Tokenizer, source: Any) -> None:
        for i, special in enumerate(SPECIAL_TOKENS):
            if tok.token_to_id(special) != i:
                raise ValueError(f"{source}: special token {special} must have id {i}, got {tok.token_to_id(special)}")
        if tok.post_processor is None:
            raise ValueError(f"{source}: no post-processor adding <bos>/<eos>")
        tok.encode_special_tokens = True  # not saved in the JSON; "<eos>" typed in a caption is just text
        self._tok = tok

    def __getstate__(self) -> dict:
        """Pickle (DataLoader workers) through the JSON, which keeps every setting but one: re-attached."""
        return {"json": self._tok.to_str()}

    def __setstate__(self, state: dict) -> None:
        self._attach(Tokenizer.from_str(state["json"]), source="pickled tokenizer")

    @classmethod
    def train(cls, texts: Iterable[str], options: Any = None) -> BPETokenizer:
        """Train on captions; ``options`` is a ``BPEOptions``, a dict, or None (defaults)."""
        if isinstance(options, dict):
            from geometry_os.plugins.bpe import BPEOptions

            options = BPEOptions(**options)
        return cls(
            texts,
            vocab_size=getattr(options, "vocab_size", 1000),
            min_frequency=getattr(options, "min_frequency", 2),
        )

    def __repr__(self) -> str:
        return f"BPETokenizer(size={len(self)})"

    def token_to_id(self, token: str) -> int:
        """The id of ``token``, or the ``<unk>`` id for a token outside the vocabulary."""
        found = self._tok.token_to_id(token)
        return UNK_ID if found is None else found

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens``: wrapped in ``<bos>`` ... ``<eos>``."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; when skipping specials, stop at the first ``<eos>``."""
        seq = as_id_list(ids)
        check_ids(seq, len(self))
        if skip_special_tokens and EOS_ID in seq:
            seq = seq[: seq.index(EOS_ID)]
        return self._tok.decode(seq, skip_special_tokens=skip_special_tokens).strip()

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer to ``path`` as a ``tokenizers`` JSON file (atomically); ``load`` reads it back."""
        atomic_write_text(path, self._tok.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer JSON written by ``save``; problems are one-line ValueErrors naming the file."""
        text = read_utf8(path)
        parse_json(text, path, what="tokenizer JSON")
        tok = parse_tokenizers_json(text, path)
        self = cls.__new__(cls)
        self._attach(tok, source=path)
        return self
