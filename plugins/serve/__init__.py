"""Built-in plugin: ``geo-os pixel-llm serve``, an HTTP captioning service with dynamic batching,
the host's remote-safe system calls and a small web page (see docs/deploy.md).

Registering imports only click: the web stack (the optional ``serve`` extra: starlette, uvicorn,
python-multipart) and torch are imported when the command runs.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import click

from geometry_os.systems.pixel_llm.plugin_api import dtype_option, echo_dtype_choice, hookimpl

WEB_STACK = ("starlette", "uvicorn", "multipart")


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add the ``serve`` command to the ``pixel-llm`` command group ``cli``."""
    cli.add_command(serve_command)


@click.command("serve")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint folder.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to bind; anything but loopback wants --token."
)
@click.option("--port", type=int, default=8000, show_default=True, help="TCP port (0: any free port).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@dtype_option
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes, each loading the model.")
@click.option("--max-batch-size", type=int, default=16, show_default=True, help="Images decoded together at most.")
@click.option(
    "--max-wait-ms",
    type=float,
    default=10.0,
    show_default=True,
    help="How long a queued request waits for others to batch with.",
)
@click.option("--max-upload-bytes", type=int, default=20_000_000, show_default=True, help="Request body limit.")
@click.option(
    "--max-image-pixels",
    type=int,
    default=24_000_000,
    show_default=True,
    help="Width x height limit per image, checked before decoding.",
)
@click.option("--max-images", type=int, default=16, show_default=True, help="Images per request.")
@click.option(
    "--max-queue", type=int, default=512, show_default=True, help="Images waiting for the model; more get 429."
)
@click.option(
    "--request-timeout", type=float, default=30.0, show_default=True, help="Seconds per caption request; then 504."
)
@click.option(
    "--max-num-beams", type=int, default=8, show_default=True, help="Largest num_beams a request may ask for."
)
@click.option(
    "--token",
    default=None,
    envvar="GEO_OS_SERVE_TOKEN",
    show_envvar=True,
    help="Bearer token required on /v1/* and /metrics.",
)
@click.option("--allow-train", is_flag=True, help="Offer the pixel_llm.train system call over HTTP.")
@click.pass_context
def serve_command(ctx: click.Context, **flags: Any) -> None:
    """Serve captions over HTTP: POST /v1/captions, POST /v1/calls/NAME, a web page at /, /healthz,
    /readyz, /metrics. Concurrent requests are decoded together (dynamic batching)."""
    missing = [name for name in WEB_STACK if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"serve needs the web stack ({', '.join(missing)} missing): pip install 'geometry-os[serve]'"
        )
    from pydantic import ValidationError

    from geometry_os.systems.pixel_llm.plugin_api import echo_warning, get_cli_host, load_checkpoint

    from .server import run
    from .settings import ServeSettings

    try:
        settings = ServeSettings(**flags)
    except ValidationError as exc:  # name the flag, not the settings field
        raise click.ClickException(
            "; ".join(
                f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']} (got {e.get('input')!r})"
                for e in exc.errors()
            )
        ) from None
    if not settings.loopback and not settings.token:
        echo_warning(f"serving on {settings.host} without --token: anyone who can reach it can use it")
    host = get_cli_host(ctx)
    # a bad checkpoint fails before binding
    model, tokenizer = load_checkpoint(settings.checkpoint, settings.device, settings.dtype)
    echo_dtype_choice(settings.dtype, settings.device)
    if settings.workers > 1:
        del model, tokenizer  # each worker process loads its own
        model = tokenizer = None
    run(settings, model, tokenizer, host)
