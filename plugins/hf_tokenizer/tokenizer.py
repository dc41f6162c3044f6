"""A pretrained model's own tokenizer: any HF ``tokenizer.json`` (GPT-2 byte-level BPE included), run by
the ``tokenizers`` library, with the special ids that model declares.

Unlike ``simple`` and ``bpe``, the special ids are not 0-3: GPT-2 captioners use one id (50256,
``<|endoftext|>``) for bos, eos and pad. ``encode`` adds ``[bos] ... [eos]`` itself (the JSON's own
post-processor, if any, is not used), so a tokenizer without a bos template works. ``decode`` with
``skip_special_tokens`` drops a leading bos, stops at the first eos and drops every other special token,
which is what HF ``decode(skip_special_tokens=True)`` gives for a generated caption.

Saved as one JSON file: ``{"format": "geometry_os.hf_tokenizer", "version": 1, "bos_token_id": ...,
"eos_token_id": ..., "pad_token_id": ..., "unk_token_id": ..., "clean_up_tokenization_spaces": ...,
"tokenizer": <the tokenizers JSON>}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from geometry_os.fileio import atomic_write_text, parse_json, read_utf8
from geometry_os.systems.pixel_llm.plugin_api import (
    TokenizersBacked,
    as_id_list,
    check_file_header,
    check_ids,
    invalid_file,
    parse_tokenizers_json,
)

FORMAT = "geometry_os.hf_tokenizer"
KIND = "hf tokenizer file"  # what a file that fails the checks is not
VERSION = 1
ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
KEYS = frozenset({"format", "version", "clean_up_tokenization_spaces", "tokenizer", *ID_FIELDS})


def clean_up_tokenization(text: str) -> str:
    """HF ``PreTrainedTokenizerBase.clean_up_tokenization``: no space before punctuation and English contractions."""
    for old, new in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(old, new)
    return text


class HFTokenizer(TokenizersBacked):
    """Same interface as ``SimpleVocabulary`` (encode/decode/batch_decode/len/save/load), special ids given.

    ``unk_token_id`` may be None (byte-level BPE has no unknown token). Ids must lie inside the vocabulary.
    """

    def __init__(
        self,
        backend: Tokenizer,
        bos_token_id: int,
        eos_token_id: int,
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        clean_up_tokenization_spaces: bool = False,
        source: Any = "tokenizer",
    ):
        size = backend.get_vocab_size(with_added_tokens=True)
        ids = {
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "pad_token_id": eos_token_id if pad_token_id is None else pad_token_id,
            "unk_token_id": unk_token_id,
        }
        for name, value in ids.items():
            if value is None and name == "unk_token_id":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < size:
                raise ValueError(f"{source}: {name}={value!r} must be an id below the vocabulary size {size}")
        self.bos_token_id: int = bos_token_id
        self.eos_token_id: int = eos_token_id
        self.pad_token_id: int = eos_token_id if pad_token_id is None else pad_token_id
        self.unk_token_id: int | None = unk_token_id
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        backend.encode_special_tokens = True  # not saved in the JSON; "<|endoftext|>" typed in a caption is text
        self._tok = backend

    @classmethod
    def gpt2_from_vocab_merges(
        cls, vocab: str | os.PathLike, merges: str | os.PathLike, special_tokens: Sequence[str] = ("<|endoftext|>",)
    ) -> Tokenizer:
        """GPT-2's byte-level BPE backend (a ``tokenizers.Tokenizer``, for ``cls(backend, ...)``) from the slow
        tokenizer's ``vocab.json`` + ``merges.txt`` (no prefix space, as ``GPT2Tokenizer``); ``special_tokens``
        found in the vocabulary keep their ids and are marked special (skipped by
        ``decode(skip_special_tokens=True)``). A classmethod so that a plugin holding the class (the ``hf``
        tokenizer component) needs no import of this module."""
        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([t for t in dict.fromkeys(special_tokens) if tok.token_to_id(t) is not None])
        return tok

    @classmethod
    def from_file(cls, path: str | os.PathLike, **ids: Any) -> HFTokenizer:
        """A ``tokenizer.json`` (the ``tokenizers`` format) with the given ``*_token_id`` keywords."""
        text = read_utf8(path)
        parse_json(text, path, what="tokenizer JSON")
        return cls(parse_tokenizers_json(text, path), source=path, **ids)

    @classmethod
    def train(cls, texts: Any, options: Any = None) -> HFTokenizer:
        """Refused: the ``hf`` tokenizer comes with a pretrained model.

        Raises:
            ValueError: always, saying where an ``hf`` tokenizer comes from (``import``, ``train --init-from``).
        """
        raise ValueError(
            "the 'hf' tokenizer is not trained: it comes with a pretrained model "
            "(geo-os pixel-llm import, or train --init-from an imported checkpoint)"
        )

    def __getstate__(self) -> dict:
        return {"json": self._data()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(type(self)._from_data(state["json"], "pickled tokenizer").__dict__)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(size={len(self)}, bos={self.bos_token_id}, eos={self.eos_token_id}, pad={self.pad_token_id})"
        )

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or ``unk_token_id`` (None for byte-level vocabularies) for an unknown token."""
        found = self._tok.token_to_id(token)
        return self.unk_token_id if found is None else found

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``[bos, ids..., eos]`` (or just the ids); the JSON's own post-processor is not applied."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; when skipping specials, drop a leading bos, stop at the first eos after it and
        drop the other special tokens (as HF ``decode(skip_special_tokens=True)``)."""
        seq = as_id_list(ids)
        check_ids(seq, len(self))
        if skip_special_tokens:
            if seq and seq[0] == self.bos_token_id:
                seq = seq[1:]
            if self.eos_token_id in seq:
                seq = seq[: seq.index(self.eos_token_id)]
        text = self._tok.decode(seq, skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def _data(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            **{k: getattr(self, k) for k in ID_FIELDS},
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "tokenizer": json.loads(self._tok.to_str()),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer (special ids and the ``tokenizers`` JSON) to ``path`` atomically; ``load`` reads it."""
        atomic_write_text(path, json.dumps(self._data(), ensure_ascii=False) + "\n")

    @classmethod
    def _from_data(cls, data: Any, source: Any) -> HFTokenizer:
        data = check_file_header(data, source, KIND, FORMAT, (VERSION,), KEYS)
        if not isinstance(data.get("tokenizer"), dict):
            raise invalid_file(source, KIND, '"tokenizer" must be the tokenizers JSON object')
        backend = parse_tokenizers_json(json.dumps(data["tokenizer"]), source)
        return cls(
            backend,
            data.get("bos_token_id"),
            data.get("eos_token_id"),
            data.get("pad_token_id"),
            data.get("unk_token_id"),
            bool(data.get("clean_up_tokenization_spaces", False)),
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> HFTokenizer:
        """Read a file written by ``save``; problems are one-line ValueErrors naming the file."""
        return cls._from_data(parse_json(read_utf8(path), path, what="tokenizer JSON"), Path(path))
