"""``geo-os``: the host's command line. Each system contributes its own group (``geo-os pixel-llm``)
through the ``register_commands`` hook; the host is only loaded when such a group is used, and no
plugin imports torch to print help.

User errors (bad files, configs, flags, plugins) print one line on stderr and exit 1, no traceback.
Every diagnostic line has one of two prefixes, click's form: ``Error: ...`` (also for one failing
item among many, e.g. an unreadable image, while the others go on) and ``Warning: ...`` (Python
warnings and ``geometry_os`` log records raised while a command runs are printed that way too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from geometry_os import __version__
from geometry_os.errors import GeometryOSError, one_line

# Options shared by the commands of every system; each has one meaning wherever it appears.
config_file_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Model config file (TOML or JSON)."
)
preset_option = click.option("--preset", default=None, help="Start from a preset: tiny, small or base.")
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field (repeatable); every key is listed in docs/configuration.md.",
)
# The one meaning of --image-root, on every command that reads caption files.
image_root_option = click.option(
    "--image-root",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder the caption file's relative image paths start from (default: the caption file's own folder).",
)

# The one meaning of --dtype, on every command that captions with a checkpoint.
dtype_option = click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Weights and activations: auto is bfloat16 where the hardware computes it natively (CUDA, CPUs with "
    "AVX512-BF16 or AMX), else float32.",
)


def echo_dtype_choice(dtype: str, device: str) -> None:
    """With ``--dtype auto``, say on stderr when it chose something other than float32 on ``device``
    (captions can then differ from float32's in a close call)."""
    if dtype != "auto":
        return
    from geometry_os.systems.pixel_llm.cpu_bf16 import inference_dtype

    chosen = str(inference_dtype("auto", device)).removeprefix("torch.")
    if chosen != "float32":
        click.echo(f"dtype: {chosen} (--dtype auto on {device})", err=True)


def one_line_text(message: object) -> str:
    """``message`` as text with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


def echo_error(message: object) -> None:
    """``Error: <message>`` on stderr, as click prints a failed command: for one failing item among many."""
    click.echo(f"Error: {one_line_text(message)}", err=True)


def echo_warning(message: object) -> None:
    """``Warning: <message>`` on stderr, one line."""
    click.echo(f"Warning: {one_line_text(message)}", err=True)


def echo_caption_results(results: Iterable[Any], as_json: bool) -> int:
    """Print captioning results as they come: ``IMAGE<TAB>CAPTION`` lines, or a JSON list of their
    ``to_dict()`` (streamed, one item per line); a result with ``error`` is one ``Error:`` line on
    stderr instead. Returns the number of failed images."""
    failures, first = 0, True
    if as_json:
        click.echo("[")
    for result in results:
        if result.error:
            failures += 1
            echo_error(result.error)
            continue
        if as_json:
            click.echo(("" if first else ",\n") + "  " + json.dumps(result.to_dict()), nl=False)
            first = False
        else:
            click.echo(f"{result.image}\t{result.caption}")
    if as_json:
        click.echo("\n]")
    return failures


class _OneLineLogHandler(logging.Handler):
    """``geometry_os`` log records (e.g. skipped caption-file entries) as ``Warning:`` / ``Error:`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            (echo_error if record.levelno >= logging.ERROR else echo_warning)(record.getMessage())
        except Exception:  # logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def one_line_diagnostics() -> Iterator[None]:
    """While a command runs: Python warnings (filters unchanged) and ``geometry_os`` warnings logged
    print as single ``Warning:`` lines instead of Python's two-line ``file:line: Category: ...`` form."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        echo_warning(message)

    logger = logging.getLogger("geometry_os")
    handler = _OneLineLogHandler(logging.WARNING)
    logger.addHandler(handler)
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous
        logger.removeHandler(handler)


# The status a shell reports for a command ended by SIGPIPE (128 + 13), as `yes | head` ends `yes`.
SIGPIPE_STATUS = 141


def stdout_is_closed() -> bool:
    """Whether the reader of our stdout has gone (``geo-os ... | head`` after head exits): a pipe's write
    end then polls as an error. False when it cannot tell (stdout is not a file descriptor)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR)
        return bool(poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no fileno (captured output), no poll (Windows)
        return False


def silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null, so that no later flush (the interpreter's at exit
    included) can fail on the closed pipe and print a message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def end_quietly_on_closed_stdout(ctx: click.Context) -> None:
    """End as Unix tools do when the reader of the output goes away: no message, status 141."""
    silence_stdout()
    ctx.exit(SIGPIPE_STATUS)


def system_command_name(system: str) -> str:
    """The command group of a system (``pixel_llm`` -> ``pixel-llm``)."""
    return system.replace("_", "-")


class GeoOSGroup(click.Group):
    """Root group: built-in commands plus one lazily built group per system in the registry."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The built-in commands and one group per system of the registry, sorted."""
        return sorted([*super().list_commands(ctx), *map(system_command_name, _system_names(ctx, quiet=True))])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """A built-in command, or the group of the system ``name`` (built on first use), or None."""
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        for system in _system_names(ctx, quiet=False):  # a bad registry is named, not "No such command"
            if system_command_name(system) == name:
                return build_system_group(ctx, system)
        return None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, except that a system is described from the registry file: ``geo-os -h``
        imports no plugin (and so still works when one is broken)."""
        systems = {system_command_name(name): description for name, description in _systems(ctx).items()}
        names = [n for n in self.list_commands(ctx) if n in systems or not self.commands[n].hidden]
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        rows = [(n, systems[n] if n in systems else self.commands[n].get_short_help_str(limit)) for n in names]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command with one-line diagnostics. Raises click.ClickException (one line, exit 1) for a
        ``GeometryOSError``, an OSError or a pydantic error; a usage error names where to find the usage;
        Ctrl-C exits 130 and a closed stdout 141."""
        try:
            with one_line_diagnostics():
                return super().invoke(ctx)
        except KeyboardInterrupt:  # click would say "Aborted!" and exit 1; shells expect 130 for SIGINT
            echo_error("interrupted")
            ctx.exit(130)
        except click.UsageError as exc:  # a bad flag or argument: one line too, with where to find the usage
            if exc.ctx is None:
                raise
            # the exit code stays 2: click gives every usage error that code as a class attribute
            raise click.UsageError(f"{exc.format_message()} (see '{exc.ctx.command_path} -h')") from None
        except BrokenPipeError as exc:
            if stdout_is_closed():
                end_quietly_on_closed_stdout(ctx)
            raise click.ClickException(one_line(exc)) from None
        except (GeometryOSError, OSError) as exc:
            raise click.ClickException(one_line(exc)) from None
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            from pydantic import ValidationError

            if isinstance(exc, ValidationError):
                raise click.ClickException(one_line(exc)) from None
            raise


def _systems(ctx: click.Context, quiet: bool = True) -> dict[str, str]:
    """System names and descriptions from the registry file alone (cheap: no plugin is imported). An
    unreadable registry gives none when only listing (help still works), else a one-line error naming it."""
    from geometry_os.host import ENV_REGISTRY, default_registry_path, read_registry

    root = ctx.find_root()
    path = root.params.get("registry") or os.environ.get(ENV_REGISTRY) or default_registry_path()
    try:
        registry = read_registry(path)
        root.meta["geometry_os.registry"] = (str(path), registry)  # the host reads it from here, not again
        return {name: entry.description or "" for name, entry in registry.systems.items()}
    except GeometryOSError as exc:
        if quiet:
            return {}
        raise click.ClickException(one_line(exc)) from None


def _system_names(ctx: click.Context, quiet: bool) -> list[str]:
    return list(_systems(ctx, quiet))


def get_cli_host(ctx: click.Context):
    """The host for this invocation (created once, honouring ``--registry``); plugin warnings go to stderr."""
    from geometry_os.host import ENV_REGISTRY, Host, default_registry_path, set_host

    root = ctx.find_root()
    host = root.meta.get("geometry_os.host")
    if host is None:
        path = root.params.get("registry") or os.environ.get(ENV_REGISTRY) or default_registry_path()
        read_path, contents = root.meta.get("geometry_os.registry", (None, None))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            host = Host(root.params.get("registry"), contents=contents if read_path == str(path) else None)
        for warning in caught:
            echo_warning(warning.message)
        set_host(host)
        root.meta["geometry_os.host"] = host
    return host


def build_system_group(ctx: click.Context, system_name: str) -> click.Group:
    """The ``geo-os <system>`` group, filled by the system's ``register_commands`` hooks (their warnings as
    ``Warning:`` lines). Raises click.ClickException (one line) when the host cannot be built."""
    try:
        host = get_cli_host(ctx)
    except GeometryOSError as exc:
        raise click.ClickException(one_line(exc)) from None
    system = host.system(system_name)

    @click.group(name=system_command_name(system_name), help=system.description or f"The {system_name} system.")
    def group() -> None:
        pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        system.add_commands(group)
    for warning in caught:
        echo_warning(warning.message)
    return group


@click.group(cls=GeoOSGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--registry",
    type=click.Path(dir_okay=False),
    envvar="GEO_OS_REGISTRY",
    help="Registry file to use instead of the installed registry.toml.",
)
@click.version_option(__version__, prog_name="geo-os")
def cli(registry: str | None) -> None:
    """Geometry OS: a host for plugin-built systems. Pixel LLM lives under `geo-os pixel-llm`."""


def plugin_rows(plugins: list[Any], show_all: bool) -> list[dict[str, Any]]:
    """The ``PluginInfo.to_dict()`` rows to list: third-party and failed plugins, or all with ``show_all``."""
    rows = [p.to_dict() for p in plugins if show_all or p.source != "builtin" or p.error]
    return rows


def print_plugins(plugins: list[Any], show_all: bool, as_json: bool) -> None:
    """Print the plugins (``plugin_rows``) as JSON or as one line each with their errors, components and hooks."""
    rows = plugin_rows(plugins, show_all)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No third-party plugins installed (use --all to list the built-in ones).")
        return
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        dist = f" [{row['distribution']}{version}]" if row["distribution"] else ""
        click.echo(f"{row['name']}{dist} ({row['source']}, {row['system']}): {row['status']}")
        if row["error"]:
            click.echo(f"    error: {row['error']}")
        if row["components"]:
            click.echo(f"    components: {', '.join(row['components'])}")
        if row["hooks"]:
            click.echo(f"    hooks: {', '.join(row['hooks'])}")


def plugin_list_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a command that lists plugins with ``print_plugins``: ``--json`` (``as_json``) and
    ``--all`` (``show_all``); ``geo-os plugins`` and each system's own ``plugins`` take the same ones."""
    command = click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")(command)
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(command)


@cli.command("plugins")
@plugin_list_options
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """List plugins: source, distribution and version, hooks, components, failures."""
    host = get_cli_host(ctx)
    print_plugins(host.plugins, show_all, as_json)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. Raises SystemExit with the command's status (141 when stdout was closed)."""
    try:
        cli.main(args=argv, prog_name="geo-os")
    except SystemExit as done:
        # output written before a command runs (`geo-os --help | head`): click ends quietly with 1
        if done.code == 1 and stdout_is_closed():
            silence_stdout()
            raise SystemExit(SIGPIPE_STATUS) from None
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
