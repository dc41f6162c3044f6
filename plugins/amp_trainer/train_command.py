"""``geo-os pixel-llm train``: model config from preset/file/--set, the ``trainer`` section for training.

Data: ``--data FILE`` (JSON, JSON Lines or COCO captions; the tokenizer is trained on its captions), or
by default the synthetic ``shapes`` scenes; both are ``trainer`` settings too (``data``, ``val_data``,
``num_scenes``). ``--resume`` takes the model and tokenizer from the checkpoint and the trainer settings,
data included, from the run it continues; a config file, ``--set`` and the flags still override them.
Runs the same under ``torchrun --nproc_per_node N`` (one process per device).
Torch is imported inside the command, so ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geometry_os.systems.pixel_llm.plugin_api import config_file_option, image_root_option, preset_option, set_option


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
    from geometry_os.systems.pixel_llm.plugin_api import get_cli_host, workflows

    from .init_from import convert

    get_cli_host(ctx)
    flags = {name: options.pop(name) for name in list(options) if name in workflows.TRAINER_FLAGS}
    controls = options  # the fine-tuning flags
    controls["freeze"] = list(controls["freeze"]) or None
    summary = workflows.train(
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
        convert=convert,
        progress=lambda line: click.echo(line, err=True),
        **flags,
    )
    if summary is not None:
        _report(summary)


def _report(summary: dict[str, Any]) -> None:
    """Where the run's checkpoints are: its folder, ``latest`` and ``best`` (with its metric)."""
    from geometry_os.systems.pixel_llm.plugin_api import BEST, LATEST, read_latest

    checkpoint_dir = Path(summary["checkpoint_dir"])
    latest = read_latest(checkpoint_dir).name
    click.echo(f"trained {summary['global_step']} steps in {summary['train_time_s']:.0f} s")
    click.echo(f"checkpoints: {checkpoint_dir.resolve()}")
    click.echo(f"  {LATEST}: {checkpoint_dir / latest}")
    if (checkpoint_dir / BEST).is_dir() and summary["best_metric"] is not None:
        click.echo(
            f"  {BEST}: {checkpoint_dir / BEST} ({summary['best_checkpoint']}, metric {summary['best_metric']:.4f})"
        )
