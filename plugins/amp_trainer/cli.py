"""``geo-os pixel-llm train``: model config from preset/file/--set, the ``trainer`` section for training.

Data: ``--data FILE`` (JSON, JSON Lines or COCO captions; the tokenizer is trained on its captions), or
by default the synthetic ``shapes`` scenes; both are ``trainer`` settings too (``data``, ``val_data``,
``num_scenes``). ``--resume`` takes the model and tokenizer from the checkpoint and the trainer settings,
data included, from the run it continues; a config file, ``--set`` and the flags still override them.
Runs the same under ``torchrun --nproc_per_node N`` (one process per device).
Torch is imported inside the command, so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from geometry_os.cli import echo_warning
from geometry_os.plugins.commands import config_file_option, image_root_option, preset_option, set_option
from geometry_os.systems.pixel_llm.config import TrainerConfig

TRAINER_SECTION = {"trainer", *TrainerConfig.model_fields}  # --set keys that leave the model's sizes alone
# flag -> trainer field, for the settings every run changes (the rest: --set, docs/configuration.md)
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


@click.command(
    "train",
    epilog="Every other setting is a --set key (e.g. --set trainer.warmup_steps=50); all of them "
    "are listed in docs/configuration.md, and `geo-os pixel-llm info` shows their values.",
)
@config_file_option
@preset_option
@click.option(
    "--data",
    "data_path",
    metavar="[FORMAT:]PATH",
    help="Training captions: a file or folder of a registered format (json, jsonl, coco, karpathy, flickr, "
    "imagefolder, ...), inferred when unambiguous; a split file gives its train split.",
)
@click.option(
    "--val-data", "val_path", metavar="[FORMAT:]PATH", help="Validation captions (a split file: its val split)."
)
@image_root_option
@click.option(
    "--val-image-root",
    type=click.Path(exists=True, file_okay=False),
    help="The same for --val-data (default: --image-root when given, else the validation file's folder).",
)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Passes over the training data [default: 10].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per step [default: 32].")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Peak learning rate [default: 1e-4]."
)
@click.option(
    "--max-time",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds of training.",
)
@click.option(
    "--tokenizer",
    default=None,
    help="Tokenizer trained on --data's captions: simple, bpe, ... (geo-os pixel-llm components tokenizer) "
    "[default: the registry's].",
)
@set_option
@click.option("--resume", metavar="DIR|latest", help="Continue from a checkpoint folder, a checkpoint dir or 'latest'.")
@click.option(
    "--init-from",
    "init_from",
    metavar="CKPT|FOLDER",
    help="Start a new run from these weights (a checkpoint, or a HF / timm / torchvision source converted "
    "as `import` does): matching tensors load, the rest start fresh; lists both.",
)
@click.option("--quiet", is_flag=True, help="No progress bar or log lines.")
@click.option("--out", type=click.Path(file_okay=False), help="Checkpoint folder (overrides trainer.checkpoint_dir).")
@click.option(
    "--num-scenes",
    type=click.IntRange(min=1),
    default=None,
    help="Synthetic training scenes when no --data is given (validation: a tenth, at most 1000) [default: 10000].",
)
@click.option(
    "--freeze",
    "freeze",
    multiple=True,
    metavar="PATTERN",
    help="Parameters that do not train: encoder, decoder or a name pattern like 'encoder.blocks.0-7.*' "
    "(repeatable; trainer.freeze).",
)
@click.option(
    "--encoder-learning-rate", type=float, default=None, help="Peak LR of the encoder (trainer.encoder_learning_rate)."
)
@click.option(
    "--layer-decay",
    type=float,
    default=None,
    help="Layer-wise LR decay of the encoder, e.g. 0.75 (trainer.layer_decay).",
)
@click.option(
    "--gradient-checkpointing",
    is_flag=True,
    default=None,
    help="Recompute block activations in backward: less memory (trainer.gradient_checkpointing).",
)
@click.option(
    "--lora-rank",
    type=click.IntRange(min=0),
    default=None,
    help="Train LoRA adapters of this rank on trainer.lora_targets; everything else frozen (trainer.lora_rank).",
)
@click.option(
    "--early-stopping-patience",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many validations without a new best (trainer.early_stopping_patience).",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    default=None,
    help="Also write TensorBoard events to <out>/tensorboard (trainer.tensorboard; 'tensorboard' extra).",
)
@click.pass_context
def train_command(
    ctx: click.Context,
    config_path: str | None,
    preset: str | None,
    data_path: str | None,
    val_path: str | None,
    overrides: tuple[str, ...],
    resume: str | None,
    init_from: str | None,
    quiet: bool,
    out: str | None,
    num_scenes: int | None,
    **options: Any,
) -> None:
    """Train a Pixel LLM captioner; prints where the checkpoints are.

    Without --preset (or a --config that sets the sizes) the model is the full-size `base` one; on a CPU
    start with --preset small.
    """
    from geometry_os.cli import get_cli_host

    get_cli_host(ctx)
    flags = {name: options.pop(name) for name in list(options) if name in TRAINER_FLAGS}
    controls = options  # the fine-tuning flags
    controls["freeze"] = list(controls["freeze"]) or None
    summary = run_training(
        config_path,
        preset,
        data_path,
        val_path,
        overrides,
        resume,
        quiet,
        out,
        num_scenes,
        controls={k: v for k, v in controls.items() if v is not None},
        init_from=init_from,
        **flags,
    )
    if summary is not None:
        _report(summary)


def run_training(
    config_path: str | None = None,
    preset: str | None = None,
    data_path: str | None = None,
    val_path: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    resume: str | None = None,
    quiet: bool = False,
    out: str | None = None,
    num_scenes: int | None = None,
    controls: dict[str, Any] | None = None,
    init_from: str | None = None,
    **flags: Any,
) -> dict[str, Any] | None:
    """What ``train`` does, callable from Python (the ``pixel_llm.train`` system call, the demo).
    ``controls``: more ``trainer`` fields, set like the flags (``{"freeze": ["encoder"], "lora_rank": 8}``).
    ``init_from``: see ``init_from.py``; its model config is used unless a preset, config file or model
    ``--set`` is given. ``flags``: the other ``train`` flags by their parameter names (``image_root``,
    ``max_steps``, ``epochs``, ``batch_size``, ``lr``, ``max_time``, ``tokenizer``, ...; see ``TRAINER_FLAGS``).
    Returns the trainer's summary on the main process, None on other ranks."""
    from pydantic import ValidationError

    from geometry_os.errors import format_validation_error
    from geometry_os.systems.pixel_llm.config import PixelLLMConfig, load_config

    unknown = sorted(set(flags) - set(TRAINER_FLAGS))
    if unknown:
        raise TypeError(f"run_training() got unknown flags: {', '.join(unknown)}")
    config = load_config(config_path, list(overrides), preset)
    from geometry_os.systems.pixel_llm.components import resolve_model

    resolve_model(config, source=str(config_path or "config"))  # an unknown component or option: before any data
    for field, value in (controls or {}).items():
        if field not in type(config.trainer).model_fields:
            raise click.ClickException(f"controls: {field!r} is not a trainer field")
        try:
            setattr(config.trainer, field, value)
        except ValidationError as exc:
            raise click.ClickException("trainer." + format_validation_error(exc)) from None
    values = {**flags, "out": out, "data_path": data_path, "val_path": val_path, "num_scenes": num_scenes}
    for flag, value in values.items():  # assignment marks the field as set, like the file and --set
        if value is not None:
            setattr(config.trainer, TRAINER_FLAGS[flag], value)
    import torch

    from geometry_os.systems.pixel_llm.data import DataError

    tokenizer, folder, init = None, None, None
    if init_from and resume:
        raise click.ClickException("--init-from starts a new run; --resume continues one: give one of them")
    if init_from:
        from geometry_os.plugins.amp_trainer.init_from import read_init_source

        init = read_init_source(init_from)
        tokenizer = init.tokenizer
        if not (config_path or preset or any(not o.strip().startswith("trainer.") for o in overrides)):
            config = PixelLLMConfig.model_validate({**init.config.model_dict(), "trainer": config.trainer})
    if resume:
        folder, model, tokenizer = _load_resume(config, resume)
        # the model (and so image size, sequence length) from the checkpoint; the run's own trainer settings
        # and data, under whatever the config file, --set or the flags say now
        trainer = _resumed_trainer_settings(folder, config.trainer)
        config = PixelLLMConfig.model_validate({**model.config.model_dict(), "trainer": trainer})
    t = config.trainer
    if not resume:  # the trainer refuses too; here before data and model are built
        from geometry_os.plugins.amp_trainer.checkpointing import new_run_refusal

        refusal = new_run_refusal(Path(t.checkpoint_dir))
        if refusal:
            raise click.ClickException(refusal)
    if t.val_image_root is None and t.image_root is not None and t.val_data:
        t.val_image_root = t.image_root  # one folder of images for both files unless told otherwise
    from geometry_os.systems.pixel_llm.formats import absolute_spec

    for field in ("image_root", "val_image_root"):  # saved with the run as absolute paths, as the data below
        if getattr(t, field):
            setattr(t, field, str(Path(getattr(t, field)).resolve()))
    for field in ("data", "val_data"):  # saved with the run as absolute paths: a resume from elsewhere finds them
        if getattr(t, field):
            setattr(t, field, absolute_spec(getattr(t, field)))
    if t.val_data and not t.data:
        raise click.ClickException("--val-data needs --data (the synthetic set brings its own validation split)")
    try:
        train_set, val_set, tokenizer = _datasets(config, tokenizer)
    except DataError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None
    from geometry_os.systems.pixel_llm.vocabulary import tokenizer_misfit

    if resume and tokenizer_misfit(
        tokenizer, model.config.vocab_size
    ):  # a checkpoint without its tokenizer got a new one
        raise click.ClickException(
            f"{folder}: has no tokenizer, and the one trained on the data has {len(tokenizer)} tokens, more than the "
            f"model's vocab_size={model.config.vocab_size}; resume from a checkpoint saved with its tokenizer"
        )
    if not resume:
        config = _fit_vocabulary(config, tokenizer, quiet)
        from geometry_os.systems.pixel_llm.model import PixelLLM

        torch.manual_seed(config.trainer.seed)
        model = PixelLLM(config)
        note = None if init is not None else size_note(preset, config_path, overrides, model)
        if note and not quiet and os.environ.get("RANK", "0") == "0":
            echo_warning(note)
        if init is not None:
            from geometry_os.plugins.amp_trainer.init_from import apply_init, describe

            report = apply_init(model, init)
            if os.environ.get("RANK", "0") == "0":
                for line in describe(report, init):
                    click.echo(line, err=True)
    trainer_cls = _trainer_class()
    t = config.trainer
    loader_options = dict(
        num_workers=t.num_workers, pad_token_id=config.pad_token_id, pin_memory=torch.cuda.is_available()
    )
    from torch.utils.data import IterableDataset

    from geometry_os.systems.pixel_llm.data import create_dataloader

    def loader(dataset: Any, shuffle: bool) -> Any:  # a stream (WebDataset) orders itself
        if isinstance(dataset, IterableDataset):
            return create_dataloader(dataset, t.batch_size, shuffle=False, **loader_options)
        return trainer_cls.make_dataloader(dataset, t.batch_size, shuffle=shuffle, seed=t.seed, **loader_options)

    train_loader = loader(train_set, True)
    val_loader = loader(val_set, False) if val_set is not None else None
    with _one_line_warnings():
        trainer = trainer_cls(model, t, train_loader, val_loader, tokenizer=tokenizer, quiet=quiet)
        if folder is not None:
            trainer.load_checkpoint(folder)
        summary = trainer.train()
    return summary if trainer.world.is_main else None


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Training warnings (collapsed captions, skipped steps) as ``Warning: ...`` lines."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        echo_warning(message)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _trainer_class() -> Any:
    from geometry_os.systems.pixel_llm.components import get_component

    return get_component("trainer").load()


def _load_resume(config: Any, resume: str) -> tuple[Path, Any, Any]:
    """The checkpoint folder, its model (config from the checkpoint) and its tokenizer."""
    from geometry_os.plugins.amp_trainer.checkpointing import resolve_checkpoint
    from geometry_os.systems.pixel_llm.model import load_pretrained

    folder = resolve_checkpoint(resume, Path(config.trainer.checkpoint_dir))
    model, tokenizer = load_pretrained(folder)
    model.train()
    return folder, model, tokenizer


def _resumed_trainer_settings(folder: Path, current: Any) -> dict[str, Any]:
    """The resumed run's saved trainer settings, overridden by the fields set now (config file, --set,
    flags). Settings of the machine it ran on (device, workers, compile) are this machine's. A resumed
    run keeps writing next to its checkpoint unless told otherwise; a plain saved model starts a new run."""
    from pydantic import ValidationError

    from geometry_os.errors import CheckpointError, format_validation_error
    from geometry_os.plugins.amp_trainer.checkpointing import STATE, read_state

    state = read_state(folder) or {}
    saved = state.get("trainer_config")
    machine = {"device", "num_workers", "compile"}
    fields = set(type(current).model_fields) - machine
    saved = {k: v for k, v in saved.items() if k in fields} if isinstance(saved, dict) else {}
    try:
        type(current).model_validate(saved)
    except ValidationError as exc:
        raise CheckpointError(format_validation_error(exc, source=f"{folder / STATE}: trainer_config")) from None
    if state and "data" not in saved and current.data is None and os.environ.get("RANK", "0") == "0":
        echo_warning(
            f"{folder / STATE} does not record the run's training data (written by an "
            "older version); without --data this resume trains on the synthetic shapes scenes"
        )
    if state:
        saved["checkpoint_dir"] = str(folder.parent)
    return {**saved, **current.model_dump(include=current.model_fields_set)}


def _datasets(config: Any, tokenizer: Any):
    """(train set, validation set or None, tokenizer) from ``config.trainer``'s data settings."""
    t = config.trainer
    data_path, val_path, num_scenes = t.data, t.val_data, t.num_scenes
    if data_path is None:
        from geometry_os.systems.pixel_llm.components import get_component

        shapes = get_component("dataset", "shapes")
        # scenes are drawn at image_size: no resize, so only size and normalisation apply
        image = {k: v for k, v in config.image_options().items() if k in ("image_size", "mean", "std")}
        common = {"seed": config.trainer.seed, "hold_out": config.trainer.synthetic_hold_out or [], **image}
        mix = config.trainer.synthetic_shape_weights
        if tokenizer is None and t.tokenizer is not None:  # else the grammar's own word list
            tokenizer = get_component("tokenizer", t.tokenizer).name
        train_set = shapes.build(
            {**common, "n": num_scenes, "split": "train", "shape_weights": mix}, tokenizer=tokenizer
        )
        val_n = max(1, min(1000, num_scenes // 10))
        val_set = shapes.build({**common, "n": val_n, "split": "val"}, tokenizer=train_set.tokenizer)
        return train_set, val_set, train_set.tokenizer
    from geometry_os.systems.pixel_llm.data import ImageTextDataset
    from geometry_os.systems.pixel_llm.data_config import DatasetConfig
    from geometry_os.systems.pixel_llm.formats import read_caption_data, resolve, split_for, split_spec

    dataset_config = DatasetConfig(max_length=config.max_seq_len, **config.image_options())  # as captioning
    train_fmt, _ = resolve(data_path)
    if train_fmt is not None and train_fmt.streaming:  # WebDataset shards: an IterableDataset of its own order
        train_set = train_fmt.stream(split_spec(data_path)[1], tokenizer, dataset_config, seed=t.seed)
        val_set = None
        if val_path:
            val_fmt, val_spec = resolve(val_path)
            val_set = (
                val_fmt.stream(val_spec, train_set.tokenizer, dataset_config, shuffle_buffer=0)
                if val_fmt is not None and val_fmt.streaming
                else ImageTextDataset(
                    val_path,
                    tokenizer=train_set.tokenizer,
                    config=dataset_config,
                    split=split_for(val_path, "val"),
                    image_root=t.val_image_root,
                )
            )
        return train_set, val_set, train_set.tokenizer
    train_split = split_for(data_path, "train")  # a split file (karpathy) trains on its train split
    if tokenizer is None:
        from geometry_os.systems.pixel_llm.components import get_component

        records, _, _ = read_caption_data(data_path, t.image_root, on_error="skip", split=train_split)
        tokenizer = get_component("tokenizer", t.tokenizer).load().train([r.caption for r in records], None)
    train_set = ImageTextDataset(
        data_path, tokenizer=tokenizer, config=dataset_config, split=train_split, image_root=t.image_root
    )
    val_set = None
    if val_path:
        val_set = ImageTextDataset(
            val_path,
            tokenizer=tokenizer,
            config=dataset_config,
            split=split_for(val_path, "val"),
            image_root=t.val_image_root,
        )
    return train_set, val_set, tokenizer


def _fit_vocabulary(config: Any, tokenizer: Any, quiet: bool) -> Any:
    """A new model gets exactly the tokenizer's vocabulary and special ids: a preset's size is only a guess,
    and ids the tokenizer cannot decode would be wasted rows that greedy decoding can still pick."""
    from geometry_os.systems.pixel_llm.config import PixelLLMConfig
    from geometry_os.systems.pixel_llm.data import special_id

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

    if not quiet and os.environ.get("RANK", "0") == "0":
        echo_warning(f"vocab_size set to {len(tokenizer)}, the tokenizer's size (the config said {config.vocab_size})")
    return PixelLLMConfig.model_validate({**config.model_dump(), "vocab_size": len(tokenizer)})


def size_note(preset: str | None, config_path: str | None, overrides: Any, model: Any) -> str | None:
    """What a run without --preset, --config or size overrides trains: the full-size ``base`` model (the
    original description's defaults), which a CPU trains at a few images per second."""
    if preset or config_path or any(str(o).split("=")[0].split(".")[0] not in TRAINER_SECTION for o in overrides):
        return None
    count = sum(p.numel() for p in model.parameters())
    return (
        f"no --preset: training the full-size base model ({count / 1e6:.0f}M parameters, "
        f"{model.config.image_size}-px images); on a CPU start with --preset small"
    )


def _report(summary: dict[str, Any]) -> None:
    from geometry_os.plugins.amp_trainer.checkpointing import BEST, LATEST, read_latest

    checkpoint_dir = Path(summary["checkpoint_dir"])
    latest = read_latest(checkpoint_dir).name
    click.echo(f"trained {summary['global_step']} steps in {summary['train_time_s']:.0f} s")
    click.echo(f"checkpoints: {checkpoint_dir.resolve()}")
    click.echo(f"  {LATEST}: {checkpoint_dir / latest}")
    if (checkpoint_dir / BEST).is_dir() and summary["best_metric"] is not None:
        click.echo(
            f"  {BEST}: {checkpoint_dir / BEST} ({summary['best_checkpoint']}, metric {summary['best_metric']:.4f})"
        )
