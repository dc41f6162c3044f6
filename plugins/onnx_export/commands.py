"""``export`` and ``caption-onnx``. Torch is imported by ``export`` only, never by ``caption-onnx``."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint folder.")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True, help="Export format.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write (replaced if it holds an export).")
def export_command(checkpoint: str, fmt: str, out: str) -> None:
    """Export a checkpoint to ONNX: encoder, cross-attention K/V and one decoder step with its KV cache
    (dynamic batch and cache length), plus the tokenizer, preprocessing config and manifest.json.

    Each graph is checked against PyTorch with onnxruntime before the folder is written. Run the
    result with caption-onnx. Needs: pip install 'geometry-os[onnx]'.
    """
    from .export import export_onnx

    folder = export_onnx(checkpoint, out)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    worst = max(manifest["verified_max_abs_diff"].values())
    click.echo(f"exported {checkpoint} to {folder} (onnxruntime vs PyTorch: max abs diff {worst:.2g})")


@click.command("caption-onnx")
@click.argument("export_dir", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@click.option("--max-length", type=int, default=None, help="Longest caption in tokens (with <bos>).")
@click.option("--max-new-tokens", type=int, default=None, help="Tokens after <bos>; overrides --max-length.")
@click.option("--min-length", type=int, default=None, help="Ban <eos> while the caption is shorter.")
@click.option(
    "--suppress-token", "suppress_tokens", type=int, multiple=True, help="Never generate this id (repeatable)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images decoded together (memory grows with it).",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of {image, caption, score, ...}.")
@click.option("--recursive", "-r", is_flag=True, help="Also caption the images in the sub-folders of a folder.")
def caption_onnx_command(
    export_dir: str,
    images: tuple[str, ...],
    batch_size: int,
    threads: int | None,
    as_json: bool,
    recursive: bool,
    **options: Any,
) -> None:
    """Caption IMAGES (files, folders or glob patterns) with an exported folder and onnxruntime (greedy
    decoding; no torch is imported). Images are found and the output is printed as by the caption
    command (folders, --recursive); unreadable images are reported on stderr and skipped, the exit
    code is then 1. Beams, sampling and penalties are not supported by the exported runner.
    """
    from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, echo_caption_results, expand_image_args

    from .runtime import OnnxCaptioner

    fields = {k: v for k, v in options.items() if v is not None and v != ()}
    if "suppress_tokens" in fields:
        fields["suppress_tokens"] = list(fields["suppress_tokens"])
    generation = GenerationConfig(**fields)
    paths = expand_image_args(images, recursive=recursive)
    runner = OnnxCaptioner(export_dir, threads=threads)
    if echo_caption_results(runner.caption_files(paths, generation, batch_size=batch_size), as_json):
        raise SystemExit(1)
