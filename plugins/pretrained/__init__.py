"""Plugin: ``geo-os pixel-llm import``, pretrained weights into a checkpoint folder (see ``convert.py``).

Registering stays cheap: click only; torch is imported inside the command.
"""

from __future__ import annotations

from typing import Any

import click

from geometry_os.systems.pixel_llm.plugin_api import hookimpl


@click.command("import")
@click.argument("source", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
@click.option(
    "--preset",
    default="small",
    show_default=True,
    help="Sizes of the half that starts fresh when SOURCE is an encoder or a decoder alone.",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=1),
    default=None,
    help="Image side for a timm / torchvision state dict (default: from its position table).",
)
def import_command(source: str, out: str, preset: str, image_size: int | None) -> None:
    """Convert pretrained weights into a checkpoint folder: a HF VisionEncoderDecoder (ViT + GPT-2) folder,
    a HF ViT / CLIP / SigLIP vision folder, a HF GPT-2 folder, or a timm / torchvision ViT state dict."""
    import json

    from .convert import import_pretrained

    dest = import_pretrained(source, out, preset=preset, image_size=image_size)
    data = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    fresh = data.get("import", {}).get("fresh", [])
    click.echo(
        f"wrote {dest} ({'with' if data.get('tokenizer') else 'no'} tokenizer; {len(fresh)} tensors start fresh)"
    )


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add the ``import`` command to the ``pixel-llm`` command group ``cli``."""
    cli.add_command(import_command)


@hookimpl
def pretrained_importer() -> Any:
    """``convert.import_pretrained``: what ``train --init-from`` converts a non-checkpoint source with."""
    from .convert import import_pretrained

    return import_pretrained
