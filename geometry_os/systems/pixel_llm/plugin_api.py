"""The namespace a pixel_llm plugin imports from: ``from geometry_os.systems.pixel_llm.plugin_api import ...``.

A plugin depends on the core through this module (plus ``geometry_os.errors`` and ``geometry_os.fileio``,
which it re-exports too) and through nothing else; ``tests/test_dependency_rule.py`` enforces it. What is
listed in ``__all__`` is what a plugin author may rely on, by group:

- **Registration**: ``hookimpl`` (mark the ``register_*`` hooks of ``hookspecs.py``) and ``COMPONENT_KINDS``
  (kind of component -> its hook).
- **Contract** (``protocols.py``): what each kind of component provides - ``Encoder``, ``Decoder``,
  ``DecoderCache``, ``Tokenizer``, ``DecodingStrategy``, ``DatasetReader`` and the ``CaptionItem`` /
  ``CaptionBatch`` a data set yields, ``Trainer`` / ``TrainingWorld``, ``Importer``; the special ids of the
  tokenizers trained here (``PAD_ID`` ... ``SPECIAL_TOKENS``); ``SYNTHETIC_DATA``, what the data set a
  run trains on without caption data serves; ``reorder_cache`` (a beam reorder through the cache's optional
  ``reorder_groups``, else ``reorder``).
- **Errors**: the project's one-line errors (``GeometryOSError`` and its subclasses, ``DataError``) and
  ``format_validation_error`` / ``one_line`` to word them. Raise these for anything a user can fix.
- **Config**: the pydantic base of every options model (``StrictModel``: unknown fields are errors), the model,
  trainer, generation and data configs, presets and ``parse_overrides`` (``--set key=value``).
- **Components**: ``get_component(kind, name=None)`` (None: the registry's default), ``current_components()``
  (the registry of the host in use), ``resolve_strategy``, ``pretrained_importer()`` (the ``Importer`` a
  plugin provides, or None), ``get_host``, ``plural``, ``options_with`` (a component's options
  from a model instance and keyword overrides).
- **Model**: ``PixelLLM``, ``generate_caption`` / ``GenerationOutput``, ``caption_lengths``, ``freeze``, the ``lora`` module, and the
  CPU bfloat16 helpers an encoder or decoder uses (``attention``, ``linear``, ``bf16``, ``upcast_bf16``, ``native_bf16``).
- **Checkpoints**: the run-folder layout (``BEST``, ``LATEST``, ``CONFIG``, ``WEIGHTS``, ``TOKENIZER``,
  ``STATE`` ...), reading and writing model files, and ``--init-from`` sources (``InitSource``,
  ``read_init_source``, ``apply_init``).
- **Tokenizers**: the saved-file helpers of ``tokenizer_files.py`` (``check_file_header``, ``check_ids``,
  ``TokenizersBacked`` ...) and the tokenizer/model fit checks (``tokenizer_misfit``, ``undecodable_ids``).
- **Data**: what a caption-format reader is made of (``CaptionFormat`` to subclass, ``Records`` / ``Read`` /
  ``CaptionRecord``, ``read_text``, ``read_caption_file``, ``head``), the data set and its batches
  (``ImageTextDataset``, ``CaptionedImages``, ``CaptionTokens``, ``CaptionCollator``, ``IGNORE_INDEX``,
  ``count_targets``), images (``load_image``, ``to_rgb``, ``build_transform``), and the format look-up
  (``read_caption_data``, ``resolve_format``, ``split_spec``).
- **Text**: caption normalisation and metrics (``normalize_caption``, ``caption_metrics``, the ``metrics`` module).
- **Workflows**: the core's ``workflows`` (``train``, ``caption``, ``evaluate``), ``load_checkpoint``, the
  caption path's helpers (``expand_image_args``, ``CaptionResult``, ``read_ahead``, ``loader_threads``, ``usable_cpus``) and attention maps (``explain_image``).
- **CLI**: the shared click options (``config_file_option``, ``preset_option``, ``set_option``,
  ``image_root_option``, ``dtype_option``), ``get_cli_host``, ``echo_dtype_choice``, one-line output (``echo_error``, ``echo_warning``,
  ``echo_caption_results``) and ``print_plugins``.
- **File I/O**: atomic writes (``atomic_write_text``, ``atomic_save``, ``write_json_atomic``, ``AtomicFolder``)
  and strict reads (``read_utf8``, ``parse_json``, ``read_json``).

Importing this module imports no torch: each name is looked up in its home module on first access (the
table ``_LAZY``), so a plugin's registration module can import from here and stay cheap. The look-up is
not cached here, so the name always is the home module's current attribute.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - what the table gives, for type checkers
    from geometry_os import __version__ as __version__
    from geometry_os.cli import config_file_option as config_file_option
    from geometry_os.cli import dtype_option as dtype_option
    from geometry_os.cli import echo_caption_results as echo_caption_results
    from geometry_os.cli import echo_dtype_choice as echo_dtype_choice
    from geometry_os.cli import echo_error as echo_error
    from geometry_os.cli import echo_warning as echo_warning
    from geometry_os.cli import get_cli_host as get_cli_host
    from geometry_os.cli import image_root_option as image_root_option
    from geometry_os.cli import plugin_list_options as plugin_list_options
    from geometry_os.cli import preset_option as preset_option
    from geometry_os.cli import print_plugins as print_plugins
    from geometry_os.cli import set_option as set_option
    from geometry_os.components import options_with as options_with
    from geometry_os.components import plural as plural
    from geometry_os.errors import CheckpointError as CheckpointError
    from geometry_os.errors import ComponentError as ComponentError
    from geometry_os.errors import ConfigError as ConfigError
    from geometry_os.errors import GeometryOSError as GeometryOSError
    from geometry_os.errors import TrainingError as TrainingError
    from geometry_os.errors import format_validation_error as format_validation_error
    from geometry_os.errors import one_line as one_line
    from geometry_os.fileio import AtomicFolder as AtomicFolder
    from geometry_os.fileio import atomic_save as atomic_save
    from geometry_os.fileio import atomic_write_text as atomic_write_text
    from geometry_os.fileio import parse_json as parse_json
    from geometry_os.fileio import read_json as read_json
    from geometry_os.fileio import read_utf8 as read_utf8
    from geometry_os.fileio import write_json_atomic as write_json_atomic
    from geometry_os.host import get_host as get_host
    from geometry_os.systems.pixel_llm import lora as lora
    from geometry_os.systems.pixel_llm import metrics as metrics
    from geometry_os.systems.pixel_llm import workflows as workflows
    from geometry_os.systems.pixel_llm.captioning import CaptionResult as CaptionResult
    from geometry_os.systems.pixel_llm.captioning import expand_image_args as expand_image_args
    from geometry_os.systems.pixel_llm.captioning import loader_threads as loader_threads
    from geometry_os.systems.pixel_llm.captioning import preprocessing_config as preprocessing_config
    from geometry_os.systems.pixel_llm.captioning import read_ahead as read_ahead
    from geometry_os.systems.pixel_llm.captioning import usable_cpus as usable_cpus
    from geometry_os.systems.pixel_llm.checkpoint import BEST as BEST
    from geometry_os.systems.pixel_llm.checkpoint import CONFIG as CONFIG
    from geometry_os.systems.pixel_llm.checkpoint import LATEST as LATEST
    from geometry_os.systems.pixel_llm.checkpoint import STEP_RE as STEP_RE
    from geometry_os.systems.pixel_llm.checkpoint import TOKENIZER as TOKENIZER
    from geometry_os.systems.pixel_llm.checkpoint import WEIGHTS as WEIGHTS
    from geometry_os.systems.pixel_llm.checkpoint import check_weights_header as check_weights_header
    from geometry_os.systems.pixel_llm.checkpoint import is_run_folder as is_run_folder
    from geometry_os.systems.pixel_llm.checkpoint import load_tokenizer as load_tokenizer
    from geometry_os.systems.pixel_llm.checkpoint import load_weights as load_weights
    from geometry_os.systems.pixel_llm.checkpoint import read_checkpoint_config as read_checkpoint_config
    from geometry_os.systems.pixel_llm.checkpoint import read_latest as read_latest
    from geometry_os.systems.pixel_llm.checkpoint import resolve_checkpoint_folder as resolve_checkpoint_folder
    from geometry_os.systems.pixel_llm.checkpoint import safe_file as safe_file
    from geometry_os.systems.pixel_llm.checkpoint import step_folders as step_folders
    from geometry_os.systems.pixel_llm.checkpoint import write_model_files as write_model_files
    from geometry_os.systems.pixel_llm.collate import CaptionCollator as CaptionCollator
    from geometry_os.systems.pixel_llm.config import PRESETS as PRESETS
    from geometry_os.systems.pixel_llm.config import PixelLLMConfig as PixelLLMConfig
    from geometry_os.systems.pixel_llm.config import StrictModel as StrictModel
    from geometry_os.systems.pixel_llm.config import TrainerConfig as TrainerConfig
    from geometry_os.systems.pixel_llm.config import default_num_heads as default_num_heads
    from geometry_os.systems.pixel_llm.config import num_heads_for as num_heads_for
    from geometry_os.systems.pixel_llm.config import parse_overrides as parse_overrides
    from geometry_os.systems.pixel_llm.config import preset_config as preset_config
    from geometry_os.systems.pixel_llm.cpu_bf16 import attention as attention
    from geometry_os.systems.pixel_llm.cpu_bf16 import bf16 as bf16
    from geometry_os.systems.pixel_llm.cpu_bf16 import inference_dtype as inference_dtype
    from geometry_os.systems.pixel_llm.cpu_bf16 import linear as linear
    from geometry_os.systems.pixel_llm.cpu_bf16 import native_bf16 as native_bf16
    from geometry_os.systems.pixel_llm.cpu_bf16 import upcast_bf16 as upcast_bf16
    from geometry_os.systems.pixel_llm.data_config import IMAGENET_MEAN as IMAGENET_MEAN
    from geometry_os.systems.pixel_llm.data_config import IMAGENET_STD as IMAGENET_STD
    from geometry_os.systems.pixel_llm.data_config import DatasetConfig as DatasetConfig
    from geometry_os.systems.pixel_llm.data_config import dataset_config as dataset_config
    from geometry_os.systems.pixel_llm.dataset import CaptionedImages as CaptionedImages
    from geometry_os.systems.pixel_llm.dataset import CaptionFormat as CaptionFormat
    from geometry_os.systems.pixel_llm.dataset import ImageTextDataset as ImageTextDataset
    from geometry_os.systems.pixel_llm.dataset import group_references as group_references
    from geometry_os.systems.pixel_llm.dataset import per_image as per_image
    from geometry_os.systems.pixel_llm.explain import draw_panels as draw_panels
    from geometry_os.systems.pixel_llm.explain import explain_image as explain_image
    from geometry_os.systems.pixel_llm.explain import render_panels as render_panels
    from geometry_os.systems.pixel_llm.formats import head as head
    from geometry_os.systems.pixel_llm.formats import read_caption_data as read_caption_data
    from geometry_os.systems.pixel_llm.formats import resolve as resolve_format
    from geometry_os.systems.pixel_llm.formats import split_spec as split_spec
    from geometry_os.systems.pixel_llm.freeze import freeze as freeze
    from geometry_os.systems.pixel_llm.generation_config import NOT_SAMPLING as NOT_SAMPLING
    from geometry_os.systems.pixel_llm.generation_config import GenerationConfig as GenerationConfig
    from geometry_os.systems.pixel_llm.hookspecs import COMPONENT_KINDS as COMPONENT_KINDS
    from geometry_os.systems.pixel_llm.hookspecs import hookimpl as hookimpl
    from geometry_os.systems.pixel_llm.images import DataError as DataError
    from geometry_os.systems.pixel_llm.images import load_image as load_image
    from geometry_os.systems.pixel_llm.images import to_rgb as to_rgb
    from geometry_os.systems.pixel_llm.inference import GenerationOutput as GenerationOutput
    from geometry_os.systems.pixel_llm.inference import generate_caption as generate_caption
    from geometry_os.systems.pixel_llm.init_source import VOCAB_TENSORS as VOCAB_TENSORS
    from geometry_os.systems.pixel_llm.init_source import InitSource as InitSource
    from geometry_os.systems.pixel_llm.init_source import apply_init as apply_init
    from geometry_os.systems.pixel_llm.init_source import describe as describe
    from geometry_os.systems.pixel_llm.init_source import read_init_source as read_init_source
    from geometry_os.systems.pixel_llm.metrics import caption_metrics as caption_metrics
    from geometry_os.systems.pixel_llm.metrics import normalize as normalize
    from geometry_os.systems.pixel_llm.modeling import PixelLLM as PixelLLM
    from geometry_os.systems.pixel_llm.protocols import BOS_ID as BOS_ID
    from geometry_os.systems.pixel_llm.protocols import EOS_ID as EOS_ID
    from geometry_os.systems.pixel_llm.protocols import PAD_ID as PAD_ID
    from geometry_os.systems.pixel_llm.protocols import SPECIAL_TOKENS as SPECIAL_TOKENS
    from geometry_os.systems.pixel_llm.protocols import SYNTHETIC_DATA as SYNTHETIC_DATA
    from geometry_os.systems.pixel_llm.protocols import UNK_ID as UNK_ID
    from geometry_os.systems.pixel_llm.protocols import CaptionBatch as CaptionBatch
    from geometry_os.systems.pixel_llm.protocols import CaptionItem as CaptionItem
    from geometry_os.systems.pixel_llm.protocols import DatasetReader as DatasetReader
    from geometry_os.systems.pixel_llm.protocols import Decoder as Decoder
    from geometry_os.systems.pixel_llm.protocols import DecoderCache as DecoderCache
    from geometry_os.systems.pixel_llm.protocols import DecodingStrategy as DecodingStrategy
    from geometry_os.systems.pixel_llm.protocols import Encoder as Encoder
    from geometry_os.systems.pixel_llm.protocols import Importer as Importer
    from geometry_os.systems.pixel_llm.protocols import Tokenizer as Tokenizer
    from geometry_os.systems.pixel_llm.protocols import Trainer as Trainer
    from geometry_os.systems.pixel_llm.protocols import TrainingWorld as TrainingWorld
    from geometry_os.systems.pixel_llm.protocols import reorder_cache as reorder_cache
    from geometry_os.systems.pixel_llm.records import CaptionRecord as CaptionRecord
    from geometry_os.systems.pixel_llm.records import Read as Read
    from geometry_os.systems.pixel_llm.records import Records as Records
    from geometry_os.systems.pixel_llm.records import read_caption_file as read_caption_file
    from geometry_os.systems.pixel_llm.records import read_text as read_text
    from geometry_os.systems.pixel_llm.rerank import caption_lengths as caption_lengths
    from geometry_os.systems.pixel_llm.resolution import current_components as current_components
    from geometry_os.systems.pixel_llm.resolution import get_component as get_component
    from geometry_os.systems.pixel_llm.resolution import pretrained_importer as pretrained_importer
    from geometry_os.systems.pixel_llm.resolution import resolve_strategy as resolve_strategy
    from geometry_os.systems.pixel_llm.run_folder import STATE as STATE
    from geometry_os.systems.pixel_llm.run_folder import STATE_FORMAT as STATE_FORMAT
    from geometry_os.systems.pixel_llm.run_folder import is_number as is_number
    from geometry_os.systems.pixel_llm.run_folder import new_run_refusal as new_run_refusal
    from geometry_os.systems.pixel_llm.run_folder import read_state as read_state
    from geometry_os.systems.pixel_llm.run_folder import resolve_checkpoint as resolve_checkpoint
    from geometry_os.systems.pixel_llm.targets import IGNORE_INDEX as IGNORE_INDEX
    from geometry_os.systems.pixel_llm.targets import count_targets as count_targets
    from geometry_os.systems.pixel_llm.text import caption_tokens as caption_tokens
    from geometry_os.systems.pixel_llm.text import caption_words as caption_words
    from geometry_os.systems.pixel_llm.text import detokenize as detokenize
    from geometry_os.systems.pixel_llm.text import normalize_caption as normalize_caption
    from geometry_os.systems.pixel_llm.tokenizer_files import TokenizersBacked as TokenizersBacked
    from geometry_os.systems.pixel_llm.tokenizer_files import as_id_list as as_id_list
    from geometry_os.systems.pixel_llm.tokenizer_files import check_file_header as check_file_header
    from geometry_os.systems.pixel_llm.tokenizer_files import check_ids as check_ids
    from geometry_os.systems.pixel_llm.tokenizer_files import invalid_file as invalid_file
    from geometry_os.systems.pixel_llm.tokenizer_files import parse_tokenizers_json as parse_tokenizers_json
    from geometry_os.systems.pixel_llm.tokens import CaptionTokens as CaptionTokens
    from geometry_os.systems.pixel_llm.tokens import resolve_tokenizer as resolve_tokenizer
    from geometry_os.systems.pixel_llm.tokens import special_id as special_id
    from geometry_os.systems.pixel_llm.tokens import truncate as truncate
    from geometry_os.systems.pixel_llm.transforms import build_transform as build_transform
    from geometry_os.systems.pixel_llm.vocabulary import tokenizer_misfit as tokenizer_misfit
    from geometry_os.systems.pixel_llm.vocabulary import undecodable_ids as undecodable_ids
    from geometry_os.systems.pixel_llm.workflows import load_checkpoint as load_checkpoint

# home module -> the names exported from it, by group (``exported=attribute`` where the two differ)
_HOMES: dict[str, str] = {
    # Registration
    "geometry_os.systems.pixel_llm.hookspecs": "hookimpl COMPONENT_KINDS",
    # Contract
    "geometry_os.systems.pixel_llm.protocols": (
        "Encoder Decoder DecoderCache Tokenizer DecodingStrategy DatasetReader CaptionItem "
        "CaptionBatch Trainer TrainingWorld Importer PAD_ID BOS_ID EOS_ID UNK_ID SPECIAL_TOKENS "
        "SYNTHETIC_DATA reorder_cache"
    ),
    # Errors
    "geometry_os.errors": (
        "GeometryOSError ComponentError ConfigError CheckpointError TrainingError format_validation_error one_line"
    ),
    # Config
    "geometry_os.systems.pixel_llm.config": (
        "StrictModel PixelLLMConfig TrainerConfig PRESETS preset_config parse_overrides default_num_heads num_heads_for"
    ),
    "geometry_os.systems.pixel_llm.generation_config": "GenerationConfig NOT_SAMPLING",
    "geometry_os.systems.pixel_llm.data_config": "DatasetConfig dataset_config IMAGENET_MEAN IMAGENET_STD",
    # Components
    "geometry_os.systems.pixel_llm.resolution": "get_component current_components resolve_strategy pretrained_importer",
    "geometry_os.host": "get_host",
    "geometry_os.components": "plural options_with",
    # Model
    "geometry_os.systems.pixel_llm.modeling": "PixelLLM",
    "geometry_os.systems.pixel_llm.inference": "GenerationOutput generate_caption",
    "geometry_os.systems.pixel_llm.rerank": "caption_lengths",
    "geometry_os.systems.pixel_llm.freeze": "freeze",
    "geometry_os.systems.pixel_llm.cpu_bf16": "attention bf16 inference_dtype linear native_bf16 upcast_bf16",
    # Checkpoints
    "geometry_os.systems.pixel_llm.checkpoint": (
        "BEST CONFIG LATEST STEP_RE TOKENIZER WEIGHTS check_weights_header is_run_folder "
        "load_tokenizer load_weights read_checkpoint_config read_latest resolve_checkpoint_folder "
        "safe_file step_folders write_model_files"
    ),
    "geometry_os.systems.pixel_llm.run_folder": (
        "STATE STATE_FORMAT is_number new_run_refusal read_state resolve_checkpoint"
    ),
    "geometry_os.systems.pixel_llm.init_source": "InitSource VOCAB_TENSORS apply_init describe read_init_source",
    # Tokenizers
    "geometry_os.systems.pixel_llm.tokenizer_files": (
        "TokenizersBacked as_id_list check_file_header check_ids invalid_file parse_tokenizers_json"
    ),
    "geometry_os.systems.pixel_llm.vocabulary": "tokenizer_misfit undecodable_ids",
    # Data (DataError, raised by the data helpers, is one of the errors)
    "geometry_os.systems.pixel_llm.images": "DataError load_image to_rgb",
    "geometry_os.systems.pixel_llm.records": "Records Read CaptionRecord read_text read_caption_file",
    "geometry_os.systems.pixel_llm.formats": "head read_caption_data split_spec resolve_format=resolve",
    "geometry_os.systems.pixel_llm.transforms": "build_transform",
    "geometry_os.systems.pixel_llm.dataset": (
        "CaptionFormat CaptionedImages ImageTextDataset group_references per_image"
    ),
    "geometry_os.systems.pixel_llm.tokens": "resolve_tokenizer truncate special_id CaptionTokens",
    "geometry_os.systems.pixel_llm.collate": "CaptionCollator",
    "geometry_os.systems.pixel_llm.targets": "count_targets IGNORE_INDEX",
    # Text
    "geometry_os.systems.pixel_llm.text": "caption_tokens caption_words detokenize normalize_caption",
    "geometry_os.systems.pixel_llm.metrics": "caption_metrics normalize",
    # Workflows
    "geometry_os.systems.pixel_llm.captioning": "CaptionResult expand_image_args loader_threads preprocessing_config read_ahead usable_cpus",
    "geometry_os.systems.pixel_llm.explain": "draw_panels explain_image render_panels",
    "geometry_os.systems.pixel_llm.workflows": "load_checkpoint",
    # CLI
    "geometry_os.cli": (
        "config_file_option echo_caption_results echo_dtype_choice echo_error echo_warning get_cli_host "
        "dtype_option image_root_option plugin_list_options preset_option print_plugins set_option"
    ),
    # File I/O
    "geometry_os.fileio": (
        "AtomicFolder atomic_save atomic_write_text parse_json read_json read_utf8 write_json_atomic"
    ),
    # Version
    "geometry_os": "__version__",
}
# modules exported whole
_MODULES = {
    "lora": "geometry_os.systems.pixel_llm.lora",
    "metrics": "geometry_os.systems.pixel_llm.metrics",
    "workflows": "geometry_os.systems.pixel_llm.workflows",
}
# exported name -> (home module, attribute there; None: the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    **{
        exported: (module, attribute or exported)
        for module, names in _HOMES.items()
        for exported, _, attribute in (name.partition("=") for name in names.split())
    },
    **{name: (module, None) for name, module in _MODULES.items()},
}

__all__ = [
    "hookimpl",
    "COMPONENT_KINDS",
    "Encoder",
    "Decoder",
    "DecoderCache",
    "Tokenizer",
    "DecodingStrategy",
    "DatasetReader",
    "CaptionItem",
    "CaptionBatch",
    "Trainer",
    "TrainingWorld",
    "Importer",
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "UNK_ID",
    "SPECIAL_TOKENS",
    "SYNTHETIC_DATA",
    "reorder_cache",
    "GeometryOSError",
    "ComponentError",
    "ConfigError",
    "CheckpointError",
    "TrainingError",
    "format_validation_error",
    "one_line",
    "DataError",
    "StrictModel",
    "PixelLLMConfig",
    "TrainerConfig",
    "PRESETS",
    "preset_config",
    "parse_overrides",
    "default_num_heads",
    "num_heads_for",
    "GenerationConfig",
    "NOT_SAMPLING",
    "DatasetConfig",
    "dataset_config",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "get_component",
    "current_components",
    "resolve_strategy",
    "pretrained_importer",
    "get_host",
    "plural",
    "options_with",
    "PixelLLM",
    "GenerationOutput",
    "generate_caption",
    "caption_lengths",
    "freeze",
    "attention",
    "bf16",
    "linear",
    "upcast_bf16",
    "native_bf16",
    "lora",
    "BEST",
    "CONFIG",
    "LATEST",
    "STEP_RE",
    "TOKENIZER",
    "WEIGHTS",
    "check_weights_header",
    "is_run_folder",
    "load_tokenizer",
    "load_weights",
    "read_checkpoint_config",
    "read_latest",
    "resolve_checkpoint_folder",
    "safe_file",
    "step_folders",
    "write_model_files",
    "STATE",
    "STATE_FORMAT",
    "is_number",
    "new_run_refusal",
    "read_state",
    "resolve_checkpoint",
    "InitSource",
    "VOCAB_TENSORS",
    "apply_init",
    "describe",
    "read_init_source",
    "TokenizersBacked",
    "as_id_list",
    "check_file_header",
    "check_ids",
    "invalid_file",
    "parse_tokenizers_json",
    "tokenizer_misfit",
    "undecodable_ids",
    "Records",
    "Read",
    "CaptionRecord",
    "read_text",
    "read_caption_file",
    "head",
    "read_caption_data",
    "split_spec",
    "resolve_format",
    "load_image",
    "to_rgb",
    "build_transform",
    "CaptionFormat",
    "CaptionedImages",
    "ImageTextDataset",
    "group_references",
    "per_image",
    "resolve_tokenizer",
    "truncate",
    "special_id",
    "CaptionTokens",
    "CaptionCollator",
    "count_targets",
    "IGNORE_INDEX",
    "caption_tokens",
    "caption_words",
    "detokenize",
    "normalize_caption",
    "caption_metrics",
    "normalize",
    "metrics",
    "CaptionResult",
    "expand_image_args",
    "preprocessing_config",
    "read_ahead",
    "loader_threads",
    "usable_cpus",
    "inference_dtype",
    "draw_panels",
    "explain_image",
    "render_panels",
    "load_checkpoint",
    "workflows",
    "config_file_option",
    "echo_caption_results",
    "echo_error",
    "echo_warning",
    "get_cli_host",
    "image_root_option",
    "dtype_option",
    "echo_dtype_choice",
    "plugin_list_options",
    "preset_option",
    "print_plugins",
    "set_option",
    "AtomicFolder",
    "atomic_save",
    "atomic_write_text",
    "parse_json",
    "read_json",
    "read_utf8",
    "write_json_atomic",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The exported ``name`` from its home module (imported on first use); AttributeError for any other."""
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    """The module's own names and every exported one (for completion and ``dir()``)."""
    return sorted(set(globals()) | set(__all__))
