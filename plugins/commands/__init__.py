"""Built-in plugin: the basic ``geo-os pixel-llm`` commands (plugins, components, info).

Later commands (train, caption, eval, demo) live in their own modules here; torch is only imported
inside command bodies, so ``--help`` stays fast.
"""

from __future__ import annotations

import json

import click

from geometry_os.systems.pixel_llm.plugin_api import (
    config_file_option,
    hookimpl,
    plugin_list_options,
    preset_option,
    set_option,
)


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add plugins, components, info, caption, eval, explain and demo to the ``geo-os pixel-llm`` group."""
    from .caption import caption_command, eval_command, explain_command
    from .demo import demo_command

    for command in (
        plugins_command,
        components_command,
        info_command,
        caption_command,
        eval_command,
        explain_command,
        demo_command,
    ):
        cli.add_command(command)


@click.command("plugins")
@plugin_list_options
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """List the plugins of the pixel_llm system."""
    from geometry_os.systems.pixel_llm.plugin_api import get_cli_host, print_plugins

    host = get_cli_host(ctx)
    print_plugins(list(host.system("pixel_llm").plugins.values()), show_all, as_json)


@click.command("components")
@click.argument("kind", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def components_command(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """List registered components (encoders, decoders, tokenizers, ...), optionally of one KIND."""
    from geometry_os.systems.pixel_llm.plugin_api import get_cli_host

    registry = get_cli_host(ctx).system("pixel_llm").components
    kinds = list(registry.kinds)
    if kind is not None:
        from geometry_os.systems.pixel_llm.plugin_api import plural

        kind = {plural(k): k for k in kinds}.get(kind, kind)
        if kind not in kinds:
            raise click.BadParameter(f"unknown kind {kind!r}; kinds: {', '.join(kinds)}", param_hint="KIND")
        kinds = [kind]
    rows = [
        {"kind": c.kind, "name": c.name, "plugin": c.plugin, "default": registry.defaults.get(c.kind) == c.name}
        for k in kinds
        for c in registry
        if c.kind == k
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for k in kinds:
        click.echo(f"{k}:")
        names = [r for r in rows if r["kind"] == k]
        if not names:
            click.echo("  (none)")
        for row in names:
            mark = " (default)" if row["default"] else ""
            click.echo(f"  {row['name']}{mark}  [plugin {row['plugin']}]")


@click.command("info")
@config_file_option
@preset_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def info_command(
    ctx: click.Context, config_path: str | None, preset: str | None, overrides: tuple[str, ...], as_json: bool
) -> None:
    """Show the resolved model config, its parameter count and the trainer settings."""
    from geometry_os.systems.pixel_llm.plugin_api import get_cli_host

    host = get_cli_host(ctx)
    result = host.call("pixel_llm.info", config=config_path, preset=preset, overrides=list(overrides))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"encoder: {result['config']['encoder']}  decoder: {result['config']['decoder']}")
    click.echo(
        f"parameters: {result['parameters']['total']:,} (encoder {result['parameters']['encoder']:,}, "
        f"decoder {result['parameters']['decoder']:,})"
    )
    click.echo("config:")
    for key, value in result["config"].items():
        click.echo(f"  {key} = {json.dumps(value)}")
    click.echo("trainer:")
    for key, value in result.get("trainer", {}).items():
        click.echo(f"  {key} = {json.dumps(value)}")
