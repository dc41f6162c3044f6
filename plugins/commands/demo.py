"""``geo-os pixel-llm demo``: the main job on a fresh machine, nothing downloaded.

Generates the synthetic geometry set, trains the ``small`` preset (``--quick``: a smoke test, the
``tiny`` preset on a 45-second training budget, about a minute in all), evaluates greedy captions on held-out test scenes, captions a few of them, draws where the
model looked, and writes a Markdown report with its pictures to ``--out``.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
import time
from pathlib import Path
from typing import Any

import click

from geometry_os.fileio import atomic_write_text

# Training recipes for the synthetic scenes: the packaged configs/shapes_small.toml (see docs/learning.md for
# how it was chosen) on a preset, with the time budget leaving room for evaluation.
RECIPE = "shapes_small.toml"  # in the geometry_os.configs package (the repository's configs/ folder)
FULL: dict[str, Any] = {
    "preset": "small",
    "config": RECIPE,
    "num_scenes": 30_000,
    "eval_scenes": 500,
    "overrides": [
        "trainer.max_time_s=540",
        "trainer.num_epochs=1000",
        "trainer.val_max_samples=200",
        "trainer.val_interval=300",
        "trainer.checkpoint_interval=300",
        "trainer.save_total_limit=2",
    ],
}
QUICK_BUDGET_S = 45  # seconds of training; data, evaluation and the report take the rest of the minute
QUICK: dict[str, Any] = {  # a smoke test: the same path on a time budget, long enough for varied, partly right captions
    "preset": "tiny",
    "config": RECIPE,
    "num_scenes": 3000,
    "eval_scenes": 100,
    "overrides": [
        "trainer.learning_rate=0.003",
        f"trainer.max_time_s={QUICK_BUDGET_S}",
        "trainer.num_epochs=1000",
        "trainer.val_max_samples=64",
        "trainer.val_interval=250",
        "trainer.checkpoint_interval=250",
        "trainer.save_total_limit=1",
    ],
    "smoke_test": True,
}


def recipe_path(name: str) -> str:
    """Path of the packaged training recipe ``name`` (a file of ``geometry_os.configs``), for ``train --config``."""
    return str(importlib.resources.files("geometry_os.configs") / name)


EXAMPLES = 6
OUTPUTS = ("checkpoints", "report.md", "metrics.json", "curves.png", "attention.png", "images")  # what --out gets


@click.command("demo")
@click.option(
    "--out",
    default="pixel-llm-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the checkpoints and the report (refused if it already holds either).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke test: the same path with a tiny model trained for 45 s (about a minute in all).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the training run (scenes, model, data order) and of the held-out test scenes.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo_command(out: str, quick: bool, seed: int, quiet: bool) -> None:
    """Train a captioner on synthetic geometry scenes and write a report (metrics, loss curve,
    example captions, an attention picture)."""
    from geometry_os.systems.pixel_llm.plugin_api import workflows

    recipe = QUICK if quick else FULL
    if quick:
        import torch

        # On a busy 2-core machine two threads waiting for each other trained the tiny model 10x slower than
        # one (15 vs 220 img/s measured at load average 5-8; see docs/learning.md).
        torch.set_num_threads(1)
    out_dir = Path(out)
    taken = [name for name in OUTPUTS if (out_dir / name).exists()]
    if taken:  # never overwrite: --out may be a folder of the user's
        raise click.ClickException(f"{out_dir} already holds {', '.join(taken)}: choose another --out or remove them")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = out_dir / "checkpoints"
    click.echo(f"training the {recipe['preset']} preset on {recipe['num_scenes']} synthetic scenes ...")
    start = time.perf_counter()
    summary = workflows.train(
        preset=recipe["preset"],
        config_path=recipe_path(recipe["config"]),
        overrides=[*recipe["overrides"], f"trainer.seed={seed}"],
        quiet=quiet,
        out=str(checkpoints),
        num_scenes=recipe["num_scenes"],
    )
    train_s = time.perf_counter() - start
    report = write_report(out_dir, checkpoints, recipe, seed, summary or {}, train_s)
    click.echo(f"report: {report.resolve()}")


def evaluate_by_shapes(model: Any, tokenizer: Any, n: int, seed: int) -> tuple[dict[str, Any], Any, list[str]]:
    """Greedy exact match on ``n`` held-out test scenes, overall and per number of shapes."""
    import torch

    from geometry_os.systems.pixel_llm.plugin_api import caption_metrics, generate_caption, get_component, per_image

    test = get_component("dataset", "shapes").build(
        {"n": n, "seed": seed, "split": "test", **model.config.image_options()}, tokenizer=tokenizer
    )
    predictions: list[str] = []
    for start in range(0, len(test), 64):
        images = torch.stack([test[i]["image"] for i in range(start, min(start + 64, len(test)))])
        predictions += [
            tokenizer.decode(row.tolist()).strip()
            for row in generate_caption(model, images, max_length=model.config.max_seq_len)
        ]
    metrics = caption_metrics(*per_image(test, predictions))  # one caption per image, all its references
    metrics["exact_match_by_shapes"] = {k: em for k, (em, _) in test.exact_match_by_shapes(predictions).items()}
    return metrics, test, predictions


def write_report(
    out_dir: Path, checkpoints: Path, recipe: dict[str, Any], seed: int, summary: dict[str, Any], train_s: float
) -> Path:
    """Evaluate the run's best checkpoint on held-out scenes and write ``report.md`` (with ``metrics.json``,
    example images, the curves and an attention picture) into ``out_dir``; returns the report's path."""
    from PIL import Image

    from geometry_os.systems.pixel_llm.plugin_api import (
        PixelLLM,
        explain_image,
        render_panels,
        resolve_checkpoint_folder,
    )

    best, _ = resolve_checkpoint_folder(checkpoints)
    model, tokenizer = PixelLLM.from_pretrained(best)
    metrics, test, predictions = evaluate_by_shapes(model, tokenizer, recipe["eval_scenes"], seed)

    images_dir = out_dir / "images"
    images_dir.mkdir(exist_ok=True)
    rows = []
    for i in range(min(EXAMPLES, len(test))):
        path = images_dir / f"example-{i}.png"
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).resize((128, 128), Image.Resampling.NEAREST).save(path)
        rows.append(f"| ![]({path.relative_to(out_dir)}) | {predictions[i]} | {test.captions[i]} |")
    example = images_dir / "example-0.png"
    attention = (
        render_panels(explain_image(model, tokenizer, str(example)), out_dir / "attention.png") if rows else None
    )
    curve = checkpoints / "curves.png"
    if curve.is_file():
        shutil.copyfile(curve, out_dir / "curves.png")

    atomic_write_text(
        out_dir / "metrics.json", json.dumps({"metrics": metrics, "summary": summary}, indent=2, default=str)
    )
    per_shapes = ", ".join(
        f"{k} shape{'s' if k > 1 else ''}: {v:.1%}" for k, v in metrics["exact_match_by_shapes"].items()
    )
    lines = [
        "# Pixel LLM demo",
        "",
        f"Trained the `{recipe['preset']}` preset on {recipe['num_scenes']} synthetic scenes (seed {seed}) for "
        f"{summary.get('global_step', '?')} steps in {train_s:.0f} s; evaluated with greedy decoding on "
        f"{len(test)} held-out test scenes.",
        "",
        *(
            [
                f"**This is a smoke test** (`--quick`): a tiny model trained for {QUICK_BUDGET_S} s of training time "
                "checks that the whole path works; its captions are varied and partly right, not good. "
                "`geo-os pixel-llm demo` without `--quick` trains the `small` model for 9 minutes "
                "(about 98 % exact match).",
                "",
            ]
            if recipe.get("smoke_test")
            else []
        ),
        "| metric | value |",
        "|---|---|",
        f"| exact match | {metrics['exact_match']:.1%} ({per_shapes}) |",
        f"| BLEU-4 | {metrics['bleu_4']:.3f} |",
        f"| CIDEr-D | {metrics['cider_d']:.3f} |",
        f"| ROUGE-L | {metrics['rouge_l']:.3f} |",
        f"| distinct-1 / distinct-2 | {metrics['distinct_1']:.3f} / {metrics['distinct_2']:.3f} |",
        "",
    ]
    if (out_dir / "curves.png").is_file():
        lines += ["## Training curves", "", "![loss and metrics](curves.png)", ""]
    lines += ["## Examples", "", "| image | generated | true |", "|---|---|---|", *rows, ""]
    if attention is not None:
        lines += [
            "## Where the model looked",
            "",
            "Cross-attention of each generated word over the image patches (mean over heads and layers):",
            "",
            "![attention](attention.png)",
            "",
        ]
    lines += [
        f"Checkpoint: `{best}` — caption your own images with `geo-os pixel-llm caption IMAGE --checkpoint {best}`.",
        "",
    ]
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report
