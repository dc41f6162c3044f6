"""What each kind of component must provide. Read with ``hookspecs.py``: together they are the contract.

These are structural (``typing.Protocol``) types: a plugin need not inherit from them. Torch is only
imported for type checking, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

# the special ids of the tokenizers trained here (simple, bpe); a pretrained tokenizer declares its own
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


@runtime_checkable
class Encoder(Protocol):
    """``nn.Module``: images (B, 3, H, W) -> features (B, N, embed_dim).

    ``patch_grid(height, width)`` gives the (rows, cols) of the N features, so that attention over
    them can be drawn on the image; an encoder whose features are not a grid returns None.
    """

    embed_dim: int

    def forward(self, images: torch.Tensor) -> torch.Tensor: ...

    def patch_grid(self, height: int, width: int) -> tuple[int, int] | None: ...


@runtime_checkable
class DecoderCache(Protocol):
    """Decoding state of a batch: self-attention K/V grow one step at a time, cross-attention K/V
    are computed once per image. Rows can be selected (beam reorder, dropping finished rows) or
    repeated (beams, return sequences) without re-encoding the image."""

    @property
    def length(self) -> int:
        """Tokens already processed (the position of the next one)."""

    @property
    def batch_size(self) -> int: ...

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (LongTensor, any length <= batch, repeats allowed), in place."""

    def expand(self, n: int) -> None:
        """Repeat every row ``n`` times (``repeat_interleave``), in place."""


@runtime_checkable
class Decoder(Protocol):
    """``nn.Module``: causal text decoder with cross-attention to encoder features.

    Optional, for ``GenerationConfig(cache_implementation="static")`` (see the ``xattn`` decoder):
    ``cross_kv(features)``, ``init_static_cache(features, max_length, rows)`` and
    ``static_step(input_ids (rows, 1), cache) -> logits (rows, vocab)`` with fixed shapes and tensor
    addresses at every position, so that a CUDA graph can capture the step.
    """

    embed_dim: int
    vocab_size: int
    max_seq_len: int

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for every position; ``attention_mask`` (B, T) is 1 for real tokens."""

    def init_cache(self, encoder_hidden_states: torch.Tensor, max_length: int) -> DecoderCache:
        """A cache for up to ``max_length`` tokens, with cross-attention K/V already computed."""

    def step(self, input_ids: torch.Tensor, cache: DecoderCache, output_attentions: bool = False) -> Any:
        """Feed (B, T_new) tokens, extend the cache, return logits (B, vocab) of the last position.

        With ``output_attentions`` returns ``(logits, cross_attentions)`` where cross_attentions is
        (B, num_cross_layers, heads, N) for the last position.
        """


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> ids, with the special ids the tokenizer declares (``simple`` and ``bpe``: ``<pad> <bos>
    <eos> <unk>`` = 0-3; a GPT-2 tokenizer: 50256 for bos, eos and pad). ``eos == pad`` and ``bos == eos``
    are allowed; ``unk_token_id`` may be None. ``encode`` gives ``[bos, ..., eos]``; ``decode`` with
    ``skip_special_tokens`` stops at the first eos after the leading bos. Generation, truncation,
    collation and every command read these attributes, never constants."""

    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    unk_token_id: int | None

    def __len__(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def save(self, path: str) -> None:
        """Write one JSON file (atomically); ``load(path)`` is a classmethod that reads it back."""


@runtime_checkable
class TrainingWorld(Protocol):
    """The processes a trainer runs in (one, or one per device under ``torchrun``)."""

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and reports (rank 0, or the only one)."""


@runtime_checkable
class Trainer(Protocol):
    """A trained-model loop, as the train workflow drives it. The ``trainer`` component's factory gives the
    class; the workflow calls, in order:

    - ``make_dataloader(dataset, batch_size, *, shuffle, seed, num_workers, pad_token_id, pin_memory)``
      (a static method) for each map-style dataset, so that the trainer controls the data order;
    - ``cls(model, trainer_config, train_dataloader, val_dataloader, tokenizer=..., quiet=...)``: the model
      (a ``PixelLLM``), the ``TrainerConfig`` and the loaders (``val_dataloader`` may be None);
    - ``load_checkpoint(folder)`` when a run is resumed;
    - ``train()``, which returns the run's summary: a JSON-serialisable dict with at least
      ``checkpoint_dir``, ``global_step``, ``train_time_s``, ``best_metric`` and ``best_checkpoint``;
    - ``world.is_main``: only the main process returns the summary to its caller.

    Errors the user can fix are raised as ``geometry_os.errors.GeometryOSError`` subclasses (e.g.
    ``TrainingError``); warnings go through ``warnings.warn``.
    """

    world: TrainingWorld

    def __init__(
        self,
        model: torch.nn.Module,
        config: Any,
        train_dataloader: Any,
        val_dataloader: Any = None,
        tokenizer: Tokenizer | None = None,
        *,
        quiet: bool = False,
    ) -> None: ...

    @staticmethod
    def make_dataloader(dataset: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0, **options: Any) -> Any:
        """A DataLoader over ``dataset`` in an order the trainer can resume (``batch_size`` per process)."""

    def load_checkpoint(self, folder: Any) -> Any: ...

    def train(self) -> dict[str, Any]: ...
