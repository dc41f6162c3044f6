"""The pixel_llm workflows as library functions: ``train``, ``caption`` and ``evaluate``.

These are what ``geo-os pixel-llm train / caption / eval / demo`` and the ``pixel_llm.train / .caption /
.evaluate`` system calls run; a Python user calls them directly. They raise the project's own errors
(``geometry_os.errors``: ``ConfigError``, ``UsageError``, ``CheckpointError``, ``DataError``, ...) with
one-line messages, report through ``logging`` (logger ``geometry_os.systems.pixel_llm.workflows``: notes
as warnings, progress lines as info) or a ``progress`` callback, and never print, import click or change
how warnings are shown: the command line does that around its own call.

The trainer is the registry's ``trainer`` component (or the one named), driven through the ``Trainer``
protocol (``protocols.py``); the core imports no plugin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from geometry_os.errors import CheckpointError, ConfigError, TrainingError, UsageError, format_validation_error

from .config import PixelLLMConfig, TrainerConfig, load_config
from .generation_config import GenerationConfig
from .init_source import Converter, apply_init, describe, read_init_source
from .resolution import resolve_model
from .run_folder import STATE, new_run_refusal, read_state, resolve_checkpoint
from .vocabulary import tokenizer_misfit

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .captioning import CaptionResult
    from .modeling import PixelLLM
    from .protocols import Trainer

logger = logging.getLogger(__name__)

TRAINER_SECTION = {"trainer", *TrainerConfig.model_fields}  # --set keys that leave the model's sizes alone
# ``train`` keyword (the command's flag) -> trainer field, for the settings every run changes
TRAINER_FLAGS = {
    "out": "checkpoint_dir",
    "data_path": "data",
    "val_path": "val_data",
    "num_scenes": "num_scenes",
    "image_root": "image_root",
    "val_image_root": "val_image_root",
    "max_steps": "max_steps",
    "epochs": "num_epochs",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "max_time": "max_time_s",
    "tokenizer": "tokenizer",
}


def _is_main_process() -> bool:
    """Rank 0 (or no ``torchrun``): the one process that reports."""
    return os.environ.get("RANK", "0") == "0"


# ---- train --------------------------------------------------------------------------------------------


def train(
    config_path: str | None = None,
    preset: str | None = None,
    data_path: str | None = None,
    val_path: str | None = None,
    overrides: Sequence[str] = (),
    resume: str | None = None,
    quiet: bool = False,
    out: str | None = None,
    num_scenes: int | None = None,
    controls: dict[str, Any] | None = None,
    init_from: str | None = None,
    *,
    trainer: str | None = None,
    convert: Converter | None = None,
    progress: Callable[[str], None] | None = None,
    **flags: Any,
) -> dict[str, Any] | None:
    """Train a Pixel LLM captioner as ``geo-os pixel-llm train`` does: config, data, model, training.

    The model config comes from ``config_path`` / ``preset`` / ``overrides`` (``key=value`` strings, as
    ``--set``); ``data_path`` / ``val_path`` are ``[FORMAT:]PATH`` caption data (default: the synthetic
    scenes, ``num_scenes`` of them); ``out`` is the checkpoint folder. ``resume`` (a checkpoint folder, a
    run's folder or ``"latest"``) continues a run with its model, tokenizer and saved trainer settings;
    ``init_from`` starts a new run from a checkpoint's matching tensors (its model config is used unless a
    preset, config file or model override is given; other sources are converted with ``convert``).
    ``controls``: more ``trainer`` fields (``{"freeze": ["encoder"], "lora_rank": 8}``); ``flags``: the
    other ``train`` flags by keyword (``image_root``, ``max_steps``, ``epochs``, ``batch_size``, ``lr``,
    ``max_time``, ``tokenizer``, ...; see ``TRAINER_FLAGS``). ``trainer`` names the trainer component
    (default: the registry's). ``quiet``: no notes and no progress display. ``progress`` receives the
    lines describing an ``init_from`` load (default: logged at INFO).

    Returns the trainer's summary (``checkpoint_dir``, ``global_step``, ``train_time_s``, ``best_metric``,
    ``best_checkpoint``, ...) on the main process, None on the other ``torchrun`` ranks.

    Raises TypeError for an unknown keyword in ``flags``; UsageError for options that contradict each
    other; ConfigError for an invalid setting; TrainingError for a checkpoint folder that already holds a
    run (a new run would take it over); CheckpointError for an unreadable checkpoint; DataError for
    unreadable caption data; the trainer's own ``GeometryOSError`` subclasses (``TrainingError``) while
    training.
    """
    from pydantic import ValidationError

    unknown = sorted(set(flags) - set(TRAINER_FLAGS))
    if unknown:
        raise TypeError(f"train() got unknown flags: {', '.join(unknown)}")
    overrides = list(overrides)
    config = load_config(config_path, overrides, preset)
    resolve_model(config, source=str(config_path or "config"))  # an unknown component or option: before any data
    for name in controls or {}:
        if name not in type(config.trainer).model_fields:
            raise UsageError(f"controls: {name!r} is not a trainer field")
    values = {**flags, "out": out, "data_path": data_path, "val_path": val_path, "num_scenes": num_scenes}
    fields = {**(controls or {}), **{TRAINER_FLAGS[flag]: v for flag, v in values.items() if v is not None}}
    for name, value in fields.items():  # assignment marks the field as set, like the file and --set
        try:
            setattr(config.trainer, name, value)
        except ValidationError as exc:  # a flag's value as a control's: one ConfigError line
            raise ConfigError("trainer." + format_validation_error(exc)) from None
    import torch

    tokenizer, folder, init, model = None, None, None, None
    if init_from and resume:
        raise UsageError("--init-from starts a new run; --resume continues one: give one of them")
    if init_from:
        init = read_init_source(init_from, convert)
        tokenizer = init.tokenizer
        if not (config_path or preset or any(not o.strip().startswith("trainer.") for o in overrides)):
            config = PixelLLMConfig.model_validate({**init.config.model_dict(), "trainer": config.trainer})
    if resume:
        folder, model, tokenizer = _load_resume(config, resume)
        # the model (and so image size, sequence length) from the checkpoint; the run's own trainer settings
        # and data, under whatever the config file, --set or the flags say now
        settings = resumed_trainer_settings(folder, config.trainer)
        config = PixelLLMConfig.model_validate({**model.config.model_dict(), "trainer": settings})
    t = config.trainer
    if not resume:  # the trainer refuses too; here before data and model are built
        refusal = new_run_refusal(Path(t.checkpoint_dir))
        if refusal:
            raise TrainingError(refusal)
    _absolute_data_paths(t)
    if t.val_data and not t.data:
        raise UsageError("--val-data needs --data (the synthetic set brings its own validation split)")
    train_set, val_set, tokenizer = build_datasets(config, tokenizer)
    if model is not None and tokenizer_misfit(tokenizer, model.config.vocab_size):  # a checkpoint without its tokenizer
        raise CheckpointError(
            f"{folder}: has no tokenizer, and the one trained on the data has {len(tokenizer)} tokens, more than the "
            f"model's vocab_size={model.config.vocab_size}; resume from a checkpoint saved with its tokenizer"
        )
    if model is None:
        config = fit_vocabulary(config, tokenizer, quiet)
        model = _new_model(config, init, quiet, (preset, config_path, overrides), progress)
    trainer_cls = _trainer_class(trainer)
    t = config.trainer
    train_loader = _loader(trainer_cls, train_set, config, shuffle=True, pin_memory=torch.cuda.is_available())
    val_loader = (
        _loader(trainer_cls, val_set, config, shuffle=False, pin_memory=torch.cuda.is_available())
        if val_set is not None
        else None
    )
    run = trainer_cls(model, t, train_loader, val_loader, tokenizer=tokenizer, quiet=quiet)
    if folder is not None:
        run.load_checkpoint(folder)
    summary = run.train()
    return summary if run.world.is_main else None


def _absolute_data_paths(t: TrainerConfig) -> None:
    """Image folders and data specs saved with the run as absolute paths, so that a resume from another
    working directory finds them; one image folder for both files unless told otherwise."""
    from .formats import absolute_spec

    if t.val_image_root is None and t.image_root is not None and t.val_data:
        t.val_image_root = t.image_root
    for name in ("image_root", "val_image_root"):
        if getattr(t, name):
            setattr(t, name, str(Path(getattr(t, name)).resolve()))
    for name in ("data", "val_data"):
        if getattr(t, name):
            setattr(t, name, absolute_spec(getattr(t, name)))


def _new_model(
    config: PixelLLMConfig,
    init: Any,
    quiet: bool,
    sources: tuple[str | None, str | None, Sequence[str]],
    progress: Callable[[str], None] | None,
) -> torch.nn.Module:
    """A freshly initialised model (seeded by ``trainer.seed``), with ``init``'s matching tensors loaded."""
    import torch

    from .modeling import PixelLLM

    torch.manual_seed(config.trainer.seed)
    model = PixelLLM(config)
    note = None if init is not None else size_note(*sources, model)
    if note and not quiet and _is_main_process():
        logger.warning(note)
    if init is not None:
        report = apply_init(model, init)
        if _is_main_process():
            for line in describe(report, init):
                (progress or logger.info)(line)
    return model


def _trainer_class(name: str | None = None) -> type[Trainer]:
    """The class of the trainer component ``name`` (default: the registry's)."""
    from .resolution import get_component

    return cast("type[Trainer]", get_component("trainer", name).load())


def _loader(trainer_cls: Any, dataset: Any, config: PixelLLMConfig, *, shuffle: bool, pin_memory: bool) -> Any:
    """A DataLoader of ``dataset``: the trainer's (whose order it can resume), except for a stream
    (WebDataset), which orders itself."""
    from torch.utils.data import IterableDataset

    from .data import create_dataloader

    t = config.trainer
    options: dict[str, Any] = dict(num_workers=t.num_workers, pad_token_id=config.pad_token_id, pin_memory=pin_memory)
    if isinstance(dataset, IterableDataset):
        return create_dataloader(dataset, t.batch_size, shuffle=False, **options)
    return trainer_cls.make_dataloader(dataset, t.batch_size, shuffle=shuffle, seed=t.seed, **options)


def _load_resume(config: PixelLLMConfig, resume: str) -> tuple[Path, Any, Any]:
    """The checkpoint folder, its model (config from the checkpoint) and its tokenizer."""
    from .modeling import load_pretrained

    folder = resolve_checkpoint(resume, Path(config.trainer.checkpoint_dir))
    model, tokenizer = load_pretrained(folder)
    model.train()
    return folder, model, tokenizer


def resumed_trainer_settings(folder: Path, current: TrainerConfig) -> dict[str, Any]:
    """The resumed run's saved trainer settings (a dict of ``TrainerConfig`` fields), overridden by the
    fields set now (``current.model_fields_set``: config file, ``--set``, flags).

    Settings of the machine it ran on (device, workers, compile) are this machine's. A resumed run keeps
    writing next to its checkpoint unless told otherwise; a plain saved model starts a new run. Raises
    CheckpointError when the saved settings are invalid.
    """
    from pydantic import ValidationError

    state = read_state(folder) or {}
    saved = state.get("trainer_config")
    machine = {"device", "num_workers", "compile"}
    fields = set(type(current).model_fields) - machine
    saved = {k: v for k, v in saved.items() if k in fields} if isinstance(saved, dict) else {}
    try:
        type(current).model_validate(saved)
    except ValidationError as exc:
        raise CheckpointError(format_validation_error(exc, source=f"{folder / STATE}: trainer_config")) from None
    if state and "data" not in saved and current.data is None and _is_main_process():
        logger.warning(
            f"{folder / STATE} does not record the run's training data (written by an "
            "older version); without --data this resume trains on the synthetic shapes scenes"
        )
    if state:
        saved["checkpoint_dir"] = str(folder.parent)
    return {**saved, **current.model_dump(include=current.model_fields_set)}


def build_datasets(config: PixelLLMConfig, tokenizer: Any) -> tuple[Any, Any, Any]:
    """(train set, validation set or None, tokenizer) from ``config.trainer``'s data settings.

    Without ``trainer.data``: the synthetic dataset (``trainer.num_scenes`` scenes, a tenth of them, at
    most 1000, for validation). Otherwise the caption data through its registered format, the tokenizer
    (when not given) trained on the training captions. Raises DataError for unreadable data and
    ComponentError for an unknown tokenizer or format.
    """
    from .protocols import SYNTHETIC_DATA
    from .resolution import current_components, get_component

    t = config.trainer
    data_path, val_path, num_scenes = t.data, t.val_data, t.num_scenes
    if data_path is None:
        synthetic = current_components().serving("dataset", SYNTHETIC_DATA)
        # scenes are drawn at image_size: no resize, so only size and normalisation apply
        image = {k: v for k, v in config.image_options().items() if k in ("image_size", "mean", "std")}
        common = {"seed": t.seed, "hold_out": t.synthetic_hold_out or [], **image}
        if tokenizer is None and t.tokenizer is not None:  # else the grammar's own word list
            tokenizer = get_component("tokenizer", t.tokenizer).name
        train_set = synthetic.build(
            {**common, "n": num_scenes, "split": "train", "shape_weights": t.synthetic_shape_weights},
            tokenizer=tokenizer,
        )
        val_n = max(1, min(1000, num_scenes // 10))
        val_set = synthetic.build({**common, "n": val_n, "split": "val"}, tokenizer=train_set.tokenizer)
        return train_set, val_set, train_set.tokenizer
    from .data import ImageTextDataset
    from .data_config import DatasetConfig
    from .formats import read_caption_data, resolve, split_for, split_spec

    dataset_config = DatasetConfig(max_length=config.max_seq_len, **config.image_options())  # as captioning

    def caption_file(spec: str, split: str, image_root: str | None, tok: Any) -> Any:
        return ImageTextDataset(
            spec, tokenizer=tok, config=dataset_config, split=split_for(spec, split), image_root=image_root
        )

    train_fmt, _ = resolve(data_path)
    if train_fmt is not None and train_fmt.streaming:  # WebDataset shards: an IterableDataset of its own order
        train_set = train_fmt.stream(split_spec(data_path)[1], tokenizer, dataset_config, seed=t.seed)
        val_set = None
        if val_path:
            val_fmt, val_spec = resolve(val_path)
            val_set = (
                val_fmt.stream(val_spec, train_set.tokenizer, dataset_config, shuffle_buffer=0)
                if val_fmt is not None and val_fmt.streaming
                else caption_file(val_path, "val", t.val_image_root, train_set.tokenizer)
            )
        return train_set, val_set, train_set.tokenizer
    if tokenizer is None:
        train_split = split_for(data_path, "train")  # a split file (karpathy) trains on its train split
        records, _, _ = read_caption_data(data_path, t.image_root, on_error="skip", split=train_split)
        tokenizer_cls: Any = get_component("tokenizer", t.tokenizer).load()
        tokenizer = tokenizer_cls.train([r.caption for r in records], None)
    train_set = caption_file(data_path, "train", t.image_root, tokenizer)
    val_set = caption_file(val_path, "val", t.val_image_root, tokenizer) if val_path else None
    return train_set, val_set, tokenizer


def fit_vocabulary(config: PixelLLMConfig, tokenizer: Any, quiet: bool) -> PixelLLMConfig:
    """The config of a new model: exactly the tokenizer's vocabulary size and special ids (a preset's size
    is only a guess, and ids the tokenizer cannot decode would be wasted rows that greedy decoding can
    still pick). Logs a warning when ``vocab_size`` changes, unless ``quiet``."""
    from .data import special_id

    if tokenizer is None:
        return config
    ids = {
        name: special_id(tokenizer, name, getattr(config, name))
        for name in ("pad_token_id", "bos_token_id", "eos_token_id")
    }
    if any(getattr(config, name) != value for name, value in ids.items()):
        config = PixelLLMConfig.model_validate(
            {**config.model_dump(), "vocab_size": max(config.vocab_size, len(tokenizer)), **ids}
        )
    if len(tokenizer) == config.vocab_size:
        return config
    if not quiet and _is_main_process():
        logger.warning(
            f"vocab_size set to {len(tokenizer)}, the tokenizer's size (the config said {config.vocab_size})"
        )
    return PixelLLMConfig.model_validate({**config.model_dump(), "vocab_size": len(tokenizer)})


def size_note(preset: str | None, config_path: str | None, overrides: Sequence[str], model: PixelLLM) -> str | None:
    """What a run without a preset, config file or size overrides trains: the full-size ``base`` model (the
    original description's defaults), which a CPU trains at a few images per second. None otherwise."""
    if preset or config_path or any(str(o).split("=")[0].split(".")[0] not in TRAINER_SECTION for o in overrides):
        return None
    count = sum(p.numel() for p in model.parameters())
    return (
        f"no --preset: training the full-size base model ({count / 1e6:.0f}M parameters, "
        f"{model.config.image_size}-px images); on a CPU start with --preset small"
    )


# ---- caption and evaluate -----------------------------------------------------------------------------


def check_device(device: str) -> None:
    """``device`` (``cpu``, ``cuda``, ``cuda:1``, ...) is one this machine has; else ConfigError in one
    line, not torch's traceback."""
    import torch

    from geometry_os.errors import first_line

    try:
        torch.empty(0, device=device)
    except Exception as exc:  # RuntimeError (no such type / no driver), NotImplementedError, AssertionError
        raise ConfigError(f"--device {device!r}: {first_line(exc) or type(exc).__name__}") from None


def load_checkpoint(path: str | Path, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """The model (eval mode, on ``device``, in ``dtype``: ``float32``, ``bfloat16``, ``float16`` or
    ``auto``, see ``cpu_bf16.inference_dtype``) and tokenizer of a checkpoint folder or of a training run's
    folder (its best checkpoint, else its latest; ``from_pretrained`` logs which).

    Raises ConfigError for an unknown device or dtype, CheckpointError for an unreadable checkpoint or one
    without a tokenizer (its captions could not be turned into text).
    """
    from .cpu_bf16 import inference_dtype
    from .modeling import PixelLLM

    check_device(device)
    try:
        torch_dtype = inference_dtype(dtype, device)
    except ValueError as exc:
        raise ConfigError(f"--dtype: {exc}") from None
    model, tokenizer = PixelLLM.from_pretrained(path, map_location=device)
    if tokenizer is None:
        raise CheckpointError(f"{path}: this checkpoint has no tokenizer, so captions cannot be turned into text")
    return model.to(torch_dtype), tokenizer


def caption(
    checkpoint: str | Path,
    images: Sequence[str],
    generation: GenerationConfig | None = None,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    recursive: bool = False,
    dtype: str = "float32",
) -> Iterator[CaptionResult]:
    """Caption ``images`` (files, folders or glob patterns; sub-folders with ``recursive``) with a
    checkpoint, ``batch_size`` images at a time, on ``device`` in ``dtype`` (see ``load_checkpoint``).

    The images are listed and the checkpoint loaded before this returns (so their errors are raised
    here: DataError for no images, ConfigError / CheckpointError as ``load_checkpoint``); the results
    then come as they are computed, one ``CaptionResult`` per image in order, an unreadable image as a
    result with ``error`` set.
    """
    from .captioning import caption_images, expand_image_args

    paths = expand_image_args(images, recursive=recursive)
    model, tokenizer = load_checkpoint(checkpoint, device, dtype)
    return caption_images(model, tokenizer, paths, generation or GenerationConfig.model_validate({}), batch_size)


def evaluate(
    checkpoint: str | Path,
    data: str,
    generation: GenerationConfig | None = None,
    *,
    split: str | None = None,
    image_root: str | None = None,
    max_images: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Caption every image of the caption data ``data`` (``[FORMAT:]PATH``; ``split``: one part of a split
    file; the first ``max_images`` only) and score each caption against all of that image's references
    (the model on ``device`` in ``dtype``, see ``load_checkpoint``).

    Returns the metrics: ``bleu_1``..``bleu_4``, ``rouge_l``, ``cider_d``, ``exact_match`` (fractions in
    [0, 1], CIDEr-D up to 10), ``distinct_1/2``, ``identical_fraction``, ``seconds_per_image``,
    ``num_images``. Raises as ``load_checkpoint``, and DataError for unreadable caption data.
    """
    rows = evaluate_settings(
        checkpoint,
        data,
        [("chosen", generation or GenerationConfig.model_validate({}))],
        split=split,
        image_root=image_root,
        max_images=max_images,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )
    return {k: v for k, v in rows[0].items() if k != "setting"}


def evaluate_settings(
    checkpoint: str | Path,
    data: str,
    settings: Sequence[tuple[str, GenerationConfig]],
    *,
    split: str | None = None,
    image_root: str | None = None,
    max_images: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[dict[str, Any]]:
    """``evaluate`` once per named decoding setting, the checkpoint loaded once: one row per setting,
    ``{"setting": name, **metrics}``, in order."""
    from .captioning import evaluate_dataset
    from .data import ImageTextDataset

    model, tokenizer = load_checkpoint(checkpoint, device, dtype)
    references = ImageTextDataset(data, tokenizer=tokenizer, image_root=image_root, split=split).references
    references = references[:max_images] if max_images else references
    return [
        {"setting": name, **evaluate_dataset(model, tokenizer, references, generation, batch_size)}
        for name, generation in settings
    ]
