"""``caption`` and ``eval``: use a trained checkpoint on image files. Torch is imported inside the
command bodies only."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from geometry_os.systems.pixel_llm.plugin_api import dtype_option, echo_dtype_choice, image_root_option

CHECKPOINT_HELP = "Checkpoint folder, or a training run's folder (its best checkpoint, else its latest)."
STRATEGY_HELP = "Decoding strategy (a registered decoding_strategy: greedy, sample, beam, ...)."


def generation_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The decoding flags shared by caption and eval (HF generate argument names)."""
    options = [
        click.option("--strategy", default=None, help=STRATEGY_HELP),
        click.option(
            "--strategy-option",
            "strategy_options",
            multiple=True,
            metavar="KEY=VALUE",
            help="An option of the decoding strategy's own (repeatable; VALUE parsed as JSON when it can be), "
            "checked against the options the strategy declares.",
        ),
        click.option("--num-beams", type=int, default=None, help="Beams for beam search (implies --strategy beam)."),
        click.option(
            "--max-length", type=int, default=None, help="Longest caption in tokens (with <bos>; 1: no new tokens)."
        ),
        click.option("--temperature", type=float, default=None, help="Sampling temperature (selects sampling)."),
        click.option(
            "--top-k", type=int, default=None, help="Sample from the k most likely tokens (selects sampling)."
        ),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling probability mass (selects sampling)."),
        click.option("--length-penalty", type=float, default=None, help="Beam score = logprob / length**penalty."),
        click.option("--no-repeat-ngram-size", type=int, default=None, help="Never repeat an n-gram of this size."),
        click.option(
            "--guidance-scale",
            type=float,
            default=None,
            help="Classifier-free guidance against the caption prior: above 1, words the image supports more "
            "than the prior does gain (best with a model trained with trainer.image_dropout; 1: off).",
        ),
        click.option(
            "--rerank",
            type=click.Choice(["word_dropout"]),
            default=None,
            help="Re-order the beam's captions by how well the image alone supports each word, the word before "
            "it dropped (needs --num-beams > 1; best with a model trained with trainer.word_dropout).",
        ),
        click.option("--seed", type=int, default=None, help="Seed for sampling (selects sampling)."),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=16,
            show_default=True,
            help="Images captioned together (more is faster; memory grows with it).",
        ),
        click.option("--checkpoint", "checkpoint", required=True, type=click.Path(), help=CHECKPOINT_HELP),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ..."),
        dtype_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


GENERATION_FLAGS = (
    "strategy",
    "num_beams",
    "max_length",
    "temperature",
    "top_k",
    "top_p",
    "length_penalty",
    "no_repeat_ngram_size",
    "guidance_scale",
    "rerank",
    "seed",
)
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "seed")


def flag(name: str) -> str:
    """The command-line flag of a parameter name (``top_k`` -> ``--top-k``)."""
    return "--" + name.replace("_", "-")


def generation_config(params: dict[str, Any]) -> Any:
    """A validated GenerationConfig from the flags that were given.

    A sampling flag (``--temperature``, ``--top-k``, ``--top-p``, ``--seed``) selects sampling, as
    ``--num-beams`` selects beam search; with ``--strategy greedy``/``beam`` or ``--num-beams`` it is a
    usage error (it would be ignored).
    """
    from geometry_os.systems.pixel_llm.plugin_api import NOT_SAMPLING, GenerationConfig

    fields = {name: params[name] for name in GENERATION_FLAGS if params.get(name) is not None}
    sampling = [flag(name) for name in SAMPLING_FLAGS if name in fields]
    strategy = fields.get("strategy")
    if sampling and (strategy in NOT_SAMPLING or fields.get("num_beams", 1) > 1):
        chosen = f"--strategy {strategy}" if strategy else f"--num-beams {fields['num_beams']}"
        raise click.UsageError(
            ctx=click.get_current_context(),
            message=f"{', '.join(sampling)} only {'affects' if len(sampling) == 1 else 'affect'} sampling, which {chosen} "
            f"does not do: use --strategy sample (or leave {'it' if len(sampling) == 1 else 'them'} out)",
        )
    if strategy == "sample" or (sampling and strategy is None):
        fields["do_sample"] = True
    if strategy == "beam" and "num_beams" not in fields:
        fields["num_beams"] = 5
    if "rerank" in fields and fields.get("num_beams", 1) < 2:
        raise click.UsageError(
            ctx=click.get_current_context(),
            message="--rerank re-orders beam search's captions: add --num-beams N (N > 1), e.g. --num-beams 10",
        )
    if params.get("strategy_options"):
        from geometry_os.systems.pixel_llm.plugin_api import parse_overrides

        fields["strategy_options"] = parse_overrides(params["strategy_options"], flag="--strategy-option")
    generation = GenerationConfig(**fields)
    if generation.strategy_options:
        from geometry_os.systems.pixel_llm.plugin_api import resolve_strategy

        resolve_strategy(generation)  # options the strategy refuses: an error before the checkpoint is loaded
    return generation


@click.command("caption")
@click.argument("images", nargs=-1, required=True)
@generation_options
@click.option("--json", "as_json", is_flag=True, help="A JSON array of {image, caption, score, ...}.")
@click.option("--recursive", "-r", is_flag=True, help="Also caption the images in the sub-folders of a folder.")
def caption_command(images: tuple[str, ...], as_json: bool, recursive: bool, **params: Any) -> None:
    """Caption IMAGES (files, folders or glob patterns) with a trained checkpoint.

    A folder gives its image files (dot-files skipped); its sub-folders, and folders a pattern
    matches, are searched only with --recursive (else a warning names them). Unreadable images are reported on stderr (one line each) and skipped; the exit
    code is then 1.
    """
    from geometry_os.systems.pixel_llm.plugin_api import echo_caption_results, workflows

    generation = generation_config(params)
    results = workflows.caption(
        params["checkpoint"],
        images,
        generation,
        batch_size=params["batch_size"],
        device=params["device"],
        recursive=recursive,
        dtype=params["dtype"],
    )
    echo_dtype_choice(params["dtype"], params["device"])
    if echo_caption_results(results, as_json):
        raise SystemExit(1)


@click.command("eval")
@click.option(
    "--data",
    required=True,
    metavar="[FORMAT:]PATH",
    help="Caption data of a registered format (json, jsonl, coco, karpathy, flickr, imagefolder, ...).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test"]),
    default=None,
    help="Only this part of a split file (karpathy; restval counts as train).",
)
@image_root_option
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Evaluate the first N images only.")
@click.option("--sweep", is_flag=True, help="Compare greedy, beam and sampling settings in one table.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@generation_options
def eval_command(
    data: str,
    split: str | None,
    image_root: str | None,
    max_images: int | None,
    sweep: bool,
    as_json: bool,
    **params: Any,
) -> None:
    """Caption every image of a caption file and report BLEU-1..4, ROUGE-L, CIDEr-D, exact match."""
    from geometry_os.systems.pixel_llm.plugin_api import workflows

    if sweep:
        fixed = [
            flag(name)
            for name in GENERATION_FLAGS
            if name not in ("max_length", "seed") and params.get(name) is not None
        ] + (["--strategy-option"] if params.get("strategy_options") else [])
        if fixed:
            raise click.UsageError(
                ctx=click.get_current_context(),
                message=f"--sweep compares its own decoding settings; "
                f"{', '.join(fixed)} would be ignored (only --max-length and --seed apply to it)",
            )
        settings = sweep_settings(params)
    else:
        settings = [("chosen", generation_config(params))]
    rows = workflows.evaluate_settings(
        params["checkpoint"],
        data,
        settings,
        split=split,
        image_root=image_root,
        max_images=max_images,
        batch_size=params["batch_size"],
        device=params["device"],
        dtype=params["dtype"],
    )
    echo_dtype_choice(params["dtype"], params["device"])
    if as_json:
        click.echo(json.dumps(rows if sweep else rows[0], indent=2))
        return
    print_metrics_table(rows)


def sweep_settings(params: dict[str, Any]) -> list[tuple[str, Any]]:
    """The named decoding settings ``eval --sweep`` compares (greedy, beam search variants, nucleus sampling),
    with the given ``--max-length`` and ``--seed``."""
    from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig

    common = {"max_length": params["max_length"]} if params.get("max_length") else {}
    seed = params.get("seed") if params.get("seed") is not None else 0
    return [
        ("greedy", GenerationConfig(**common)),
        ("beam-5", GenerationConfig(num_beams=5, **common)),
        ("beam-5 lp=0", GenerationConfig(num_beams=5, length_penalty=0.0, **common)),
        ("beam-5 no-repeat-3", GenerationConfig(num_beams=5, no_repeat_ngram_size=3, **common)),
        ("top-p 0.9 T=0.7", GenerationConfig(do_sample=True, top_p=0.9, temperature=0.7, seed=seed, **common)),
        ("top-p 0.9 T=1.0", GenerationConfig(do_sample=True, top_p=0.9, temperature=1.0, seed=seed, **common)),
    ]


COLUMNS = [
    ("exact_match", "exact"),
    ("bleu_4", "BLEU-4"),
    ("cider_d", "CIDEr-D"),
    ("rouge_l", "ROUGE-L"),
    ("distinct_1", "dist-1"),
    ("distinct_2", "dist-2"),
    ("identical_fraction", "identical"),
    ("seconds_per_image", "s/img"),
]


def print_metrics_table(rows: list[dict[str, Any]]) -> None:
    """One line per setting with the main metrics (fractions and seconds per image), then the image count."""
    width = max(len("setting"), *(len(r["setting"]) for r in rows))
    click.echo(f"{'setting':<{width}}  " + "  ".join(f"{title:>9}" for _, title in COLUMNS))
    for row in rows:
        cells = "  ".join(f"{row[key]:>9.4f}" for key, _ in COLUMNS)
        click.echo(f"{row['setting']:<{width}}  {cells}")
    click.echo(f"images: {int(rows[0]['num_images'])}")


@click.command("explain")
@click.argument("image", type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(), help=CHECKPOINT_HELP)
@click.option("--out", default="attn.png", show_default=True, type=click.Path(), help="PNG to write.")
@click.option("--max-length", type=click.IntRange(min=2), default=None, help="Longest caption in tokens.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
def explain_command(image: str, checkpoint: str, out: str, max_length: int | None, device: str) -> None:
    """Caption IMAGE and draw, per generated word, where the decoder's cross-attention looked
    (averaged over heads and layers) as a heatmap over the image."""
    from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, explain_image, load_checkpoint, render_panels

    model, tokenizer = load_checkpoint(checkpoint, device)
    generation = GenerationConfig(max_length=max_length) if max_length else GenerationConfig()
    explanation = explain_image(model, tokenizer, image, generation)
    path = render_panels(explanation, out)
    click.echo(explanation.caption)
    click.echo(f"wrote {path} ({len(explanation.words)} panels)")
