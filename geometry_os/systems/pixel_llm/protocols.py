"""The contract of the pixel_llm system: what each kind of component provides. Read with ``hookspecs.py``
(how a plugin registers a component of each kind); plugins import these names from ``plugin_api``.

- ``Encoder``: images (B, 3, H, W) float -> features (B, N, D).
- ``Decoder`` and its ``DecoderCache``: token ids (B, T) + features (B, N, D) -> logits (B, T, vocab), and
  one step at a time with a KV cache for generation.
- ``Tokenizer``: text <-> ids, with the special ids it declares.
- ``DecodingStrategy``: features + ``GenerationConfig`` -> token ids; built with its own options model.
- ``DatasetReader``: a caption-data format (``FORMAT:PATH``); a data set yields ``CaptionItem``s and the
  collator turns a list of them into a ``CaptionBatch``. ``SYNTHETIC_DATA``: what the data set a run trains
  on without caption data serves.
- ``Trainer`` (with its ``TrainingWorld``): the loop the train workflow drives.
- ``Importer``: converts pretrained weights into a checkpoint folder (``train --init-from``, ``import``).

These are structural (``typing.Protocol``) types: a plugin need not inherit from them. Torch is only
imported for type checking, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

    from .generation_config import GenerationConfig
    from .inference import GenerationOutput
    from .records import Read

# the special ids of the tokenizers trained here (simple, bpe); a pretrained tokenizer declares its own
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")

# What the ``dataset`` component a run trains on without caption data declares it serves
# (``register(name, factory, options, serves=[SYNTHETIC_DATA])``); the core looks it up by this purpose.
SYNTHETIC_DATA = "synthetic"


@runtime_checkable
class Encoder(Protocol):
    """``nn.Module``: images (B, 3, H, W) -> features (B, N, embed_dim).

    ``patch_grid(height, width)`` gives the (rows, cols) of the N features, so that attention over
    them can be drawn on the image; an encoder whose features are not a grid returns None.
    """

    embed_dim: int

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, N, embed_dim) of images (B, 3, H, W), float, normalised."""

    def patch_grid(self, height: int, width: int) -> tuple[int, int] | None:
        """(rows, cols) of the N features for an image of ``height`` x ``width`` pixels; None: not a grid."""


@runtime_checkable
class DecoderCache(Protocol):
    """Decoding state of a batch: self-attention K/V grow one step at a time, cross-attention K/V
    are computed once per image. Rows can be selected (beam reorder, dropping finished rows) or
    repeated (beams, return sequences) without re-encoding the image."""

    @property
    def length(self) -> int:
        """Tokens already processed (the position of the next one)."""

    @property
    def batch_size(self) -> int:
        """Rows in the cache (images x beams / return sequences)."""

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (LongTensor, any length <= batch, repeats allowed), in place."""

    def expand(self, n: int) -> None:
        """Repeat every row ``n`` times (``repeat_interleave``), in place."""


def reorder_cache(cache: DecoderCache, index: torch.Tensor, images: torch.Tensor | None = None) -> None:
    """Keep rows ``index`` of ``cache`` where every new row comes from its own image's rows (beam search,
    re-ranking): the cache's optional ``reorder_groups(index, images)`` then narrows the images'
    cross-attention K/V instead of copying them per row; a cache without it gets ``reorder(index)``.
    ``images``: the kept images' positions (None: all of them)."""
    if hasattr(cache, "reorder_groups"):
        cache.reorder_groups(index, images)
    else:
        cache.reorder(index)


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

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``: ``[bos, ..., eos]`` with ``add_special_tokens``, else the text's alone."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; with ``skip_special_tokens`` the special tokens are left out and decoding stops
        at the first eos after the leading bos."""

    def save(self, path: str) -> None:
        """Write one JSON file (atomically); ``load(path)`` is a classmethod that reads it back."""

    # The ``tokenizer`` component's factory is the class itself, with two classmethods:
    # ``cls.train(texts, options) -> Tokenizer`` (ValueError when it cannot be trained, e.g. a pretrained
    # model's own tokenizer) and ``cls.load(path) -> Tokenizer`` (the file ``save`` wrote).


@runtime_checkable
class DatasetReader(Protocol):
    """A caption-data format: how a third-party plugin adds one (docs/plugins.md, "A caption-format plugin").
    A format may declare file suffixes it serves (``serves=[".json"]``): a file with that suffix that no
    format detects is read by it, so that its reader names the problem.

    Registered as a ``dataset`` component whose factory is the reader object itself:
    ``register("tsv", "pkg.mod:TSV", TsvOptions)`` (options: a ``DatasetConfig`` with ``data_path``).
    ``formats.read_caption_data`` (and through it ``ImageTextDataset``, ``train``, ``eval``, ``lint-data``)
    finds every registered reader, picks one for ``FORMAT:PATH`` by ``name`` or for a bare ``PATH`` by
    ``claims`` / ``detect``, and calls ``read``.
    ``dataset.CaptionFormat`` implements the optional members (no streaming, claims nothing, building
    the component gives an ``ImageTextDataset``): subclass it and write ``detect`` and ``read``.
    """

    name: ClassVar[str]  # the component name, and FORMAT in FORMAT:PATH
    has_splits: ClassVar[bool]  # whether ``read`` understands split="train"/"val"/"test"
    streaming: ClassVar[bool]  # read through ``stream`` (an IterableDataset), not ``read``

    def claims(self, spec: str) -> bool:
        """Whether a spec that is not one existing path is this format's (e.g. a shard pattern)."""

    def detect(self, path: Path) -> bool:
        """Whether ``path`` (an existing file or folder) looks like this format; cheap (reads a little).
        ``OSError`` is reported as a one-line ``DataError`` naming the path."""

    def read(self, path: str, image_root: str | None, on_error: str, split: str | None) -> Read:
        """(records, skipped (position, message), reasons) of ``path``; image paths resolve against
        ``image_root`` (None: the format's default, usually the file's folder). Fill a
        ``records.Records`` and return its ``result()``. Raises ``DataError`` for whole-file problems,
        and for entry problems when ``on_error="raise"`` (``Records.bad`` does both)."""

    def stream(self, spec: str, tokenizer: Any, config: Any, seed: int = 0, **options: Any) -> Any:
        """A streaming format's ``IterableDataset`` of ``spec`` yielding ``CaptionItem``s."""

    def __call__(self, options: Any, tokenizer: Any = None) -> Any:
        """The ``dataset`` component factory: a data set of ``options.data_path``."""


class CaptionItem(TypedDict):
    """One sample of a caption data set (``ImageTextDataset``, the synthetic shapes, WebDataset shards)."""

    image: torch.Tensor  # (3, S, S) float, normalised
    input_ids: torch.Tensor  # (T,) long: [bos, ..., eos], at most max_length
    caption: str
    image_path: str
    index: int  # the sample's position in its data set; -1 where a stream has none


class CaptionBatch(TypedDict):
    """What ``collate.CaptionCollator`` makes of a list of ``CaptionItem``s; T is the longest caption."""

    images: torch.Tensor  # (B, 3, S, S)
    input_ids: torch.Tensor  # (B, T) long, padded with the tokenizer's pad id
    attention_mask: torch.Tensor  # (B, T) long, 1 for real tokens
    labels: torch.Tensor  # (B, T) long: input_ids with padding IGNORE_INDEX (targets.ignore_padding)
    captions: list[str]
    image_paths: list[str]
    indices: torch.Tensor  # (B,) long


@runtime_checkable
class DecodingStrategy(Protocol):
    """What ``factory(options)`` of a ``decoding_strategy`` component returns. ``options`` is an instance of
    the strategy's own options model (the ``config_model`` it was registered with, a pydantic model), validated
    from ``GenerationConfig.strategy_options`` (``caption --strategy-option key=value``); the factory is called
    with no argument when the strategy registered no model. ``serves=[mode, ...]`` names the generation modes
    (``greedy``, ``sample``, ``beam``) the strategy implements when the config names no strategy.

    ``decode`` gets the model in eval mode under ``torch.inference_mode()``, the encoded images
    ``features`` (B, N, D), the validated ``GenerationConfig`` and an optional seeded ``generator``; it
    returns a ``GenerationOutput`` whose ``sequences`` are (B * num_return_sequences, T) token ids from
    ``<bos>`` (and, for the caption path, ``sequence_scores`` / ``scores_penalised`` per row). It drives
    ``model.decoder.init_cache`` / ``step`` and encodes nothing.
    """

    def decode(
        self, model: Any, features: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None = None
    ) -> GenerationOutput:
        """Token ids (B * num_return_sequences, T) from ``<bos>`` for the images' ``features`` (B, N, D),
        with per-row scores (see the class docstring)."""


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

    def load_checkpoint(self, folder: Any) -> Any:
        """Restore model, optimizer and run state from the checkpoint ``folder`` of a run being resumed."""

    def train(self) -> dict[str, Any]:
        """Run the loop; the run's summary (``checkpoint_dir``, ``global_step``, ``train_time_s``,
        ``best_metric``, ``best_checkpoint`` ...)."""


@runtime_checkable
class Importer(Protocol):
    """Converts pretrained weights (a HF folder, a timm / torchvision state dict ...) into a Pixel LLM checkpoint
    folder. A plugin provides it through the ``pretrained_importer`` hook; ``train --init-from`` uses it for a
    source that is not a checkpoint."""

    def __call__(self, source: str | Path, dest: str | Path) -> Path:
        """The checkpoint folder ``dest`` (written atomically) made from ``source``. Raises
        ``CheckpointError`` naming ``source`` when it cannot be converted."""
