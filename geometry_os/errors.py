"""User-facing errors: each carries a one-line message naming the file, field or value at fault.

The CLI prints a failure as ``Error: <message>`` (click's form; also a per-item one while others go on,
an image among many), then exits non-zero without a traceback; warnings are ``Warning: <message>``
lines; Ctrl-C is ``Error: interrupted`` (exit 130).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class GeometryOSError(Exception):
    """Base of every error caused by the user's input, files or plugins (not by a bug)."""


class ConfigError(GeometryOSError, ValueError):
    """A config file or value is invalid."""


class RegistryError(ConfigError):
    """registry.toml is missing or invalid."""


class PluginError(GeometryOSError):
    """A plugin failed to import, validate or register; the message names the plugin."""


class ComponentError(GeometryOSError, LookupError):
    """An unknown, duplicated or failing component; the message names it and its plugin."""


class CheckpointError(GeometryOSError, ValueError):
    """A checkpoint is missing, incomplete, mismatched or unsafe."""


class UsageError(GeometryOSError, ValueError):
    """Options of a workflow that contradict each other or name nothing (``resume`` with ``init_from``,
    an unknown trainer field); the message names the options."""


class TrainingError(GeometryOSError):
    """Training cannot start or go on (the message says why and what to change)."""


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line (torch appends C++ stack traces and advice to some messages)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def one_line(exc: BaseException) -> str:
    """Collapse an exception message to one line (pydantic errors get a compact form)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return format_validation_error(exc)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def format_validation_error(exc: ValidationError, source: str | None = None) -> str:
    """``source: field.path: message (got value)`` for each error, joined by '; '."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = err.get("msg", "invalid value")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        text = f"{loc}: {msg}" if loc else msg
        if err.get("type") not in {"missing", "value_error"} and "input" in err:
            value = err["input"]
            if not isinstance(value, (dict, list)):
                text += f" (got {value!r})"
        parts.append(text)
    body = "; ".join(parts)
    prefix = f"{source}: " if source else ""
    return " ".join((prefix + body).split())
