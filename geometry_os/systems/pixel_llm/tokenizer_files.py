"""What tokenizer plugins share: their saved files' header checks, token-id checks and a base class for
tokenizers backed by the ``tokenizers`` library.

A tokenizer file is a JSON object whose ``format`` and ``version`` say which tokenizer wrote it; a file that
is not one is a one-line ``ValueError`` naming the file (``<source>: not a valid <kind>: <why>``), which the
checkpoint loader turns into its own error.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def invalid_file(source: object, kind: str, why: str) -> ValueError:
    """The error for a tokenizer file ``source`` that is not a valid ``kind``: ``<source>: not a valid <kind>: <why>``."""
    return ValueError(f"{source}: not a valid {kind}: {why}")


def check_file_header(
    data: Any, source: object, kind: str, format: str, versions: Sequence[int], keys: Collection[str]
) -> dict[str, Any]:
    """Check a parsed tokenizer file's header: a JSON object with ``"format": format``, an integer ``"version"``
    among ``versions`` and no key outside ``keys``; returns ``data``.

    Raises:
        ValueError: naming ``source`` and the first problem (see :func:`invalid_file`).
    """
    if not isinstance(data, dict):
        raise invalid_file(source, kind, f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != format:
        raise invalid_file(source, kind, f'"format" must be "{format}", got {data.get("format")!r}')
    version = data.get("version")
    if type(version) is not int or version not in versions:
        expected = " or ".join(str(v) for v in versions)
        raise invalid_file(source, kind, f'unsupported "version" {version!r} (expected {expected})')
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise invalid_file(source, kind, f"unknown key {unknown[0]!r}")
    return data


def as_id_list(ids: Any) -> list[int]:
    """One caption's token ids (a 1-D tensor, array or sequence of ints) as a list of ints.

    Raises:
        ValueError: for a single int or a batch (nested sequences); batches go to ``batch_decode``.
    """
    seq = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if isinstance(seq, int) or any(isinstance(i, (list, tuple)) for i in seq):
        raise ValueError("decode expects a 1-D sequence of ids; use batch_decode for a batch")
    return [int(i) for i in seq]


def check_ids(ids: Sequence[int], size: int) -> None:
    """Raise ``ValueError`` naming the first id outside ``[0, size)`` (a vocabulary of ``size`` tokens)."""
    for i in ids:
        if not 0 <= i < size:
            raise ValueError(f"token id {i} is out of range for a vocabulary of {size}")


def parse_tokenizers_json(text: str, source: object) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from its JSON ``text`` (read from ``source``).

    Raises:
        ValueError: ``<source>: not a valid tokenizers JSON: <first line of the library's reason>``.
    """
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # the Rust library raises a bare Exception
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{source}: not a valid tokenizers JSON: {reason}") from None


class TokenizersBacked:
    """Base of tokenizers that wrap a ``tokenizers.Tokenizer`` (``self._tok``): its size, tokens and batches.

    Subclasses set ``_tok`` and implement ``decode(ids, skip_special_tokens)``.
    """

    _tok: Tokenizer

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def __len__(self) -> int:
        """Vocabulary size, added (special) tokens included."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def vocab_size(self) -> int:
        """Vocabulary size, added (special) tokens included (``len(tokenizer)``)."""
        return len(self)

    def id_to_token(self, index: int) -> str:
        """The token string of id ``index``.

        Raises:
            ValueError: for an id outside the vocabulary.
        """
        token = self._tok.id_to_token(index)
        if token is None:
            raise ValueError(f"token id {index} is out of range for a vocabulary of {len(self)}")
        return token

    def tokenize(self, text: str) -> list[str]:
        """The token strings of ``text``, without special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False).tokens)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of one caption's ids (implemented by each tokenizer)."""
        raise NotImplementedError

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = True) -> list[str]:
        """Text of each row of ``sequences`` (a 2-D tensor or a list of id lists), as ``decode`` gives it.

        Raises:
            ValueError: for an id outside the vocabulary.
        """
        rows = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        return [self.decode(row, skip_special_tokens) for row in rows]
