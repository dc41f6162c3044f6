"""The Geometry OS host: reads registry.toml, loads each system's plugins with pluggy, routes system calls.

Loading order per system: the built-in plugins the registry names (in file order), then third-party
plugins from the ``geometry_os.plugins`` entry-point group. A plugin that fails to import, validate or
register is recorded (name, distribution, one-line reason) and skipped, so one broken plugin cannot
take the host down; ``GEO_OS_STRICT_PLUGINS=1`` turns such failures into errors.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geometry_os.components import Component, ComponentRegistry
from geometry_os.errors import (
    ConfigError,
    GeometryOSError,
    PluginError,
    RegistryError,
    format_validation_error,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENTRY_POINT_GROUP = "geometry_os.plugins"
ENV_REGISTRY = "GEO_OS_REGISTRY"
ENV_DISABLE = "GEO_OS_DISABLE_PLUGINS"
ENV_STRICT = "GEO_OS_STRICT_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin failed to load; the host carried on without it."""


# ---- registry.toml -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SystemEntry(_Strict):
    """A ``[systems.NAME]`` table of ``registry.toml``: the system's ``hookspecs`` module, the module whose
    ``CALLS`` lists its system calls, and its ``defaults`` (component kind -> the name used when a config
    names none)."""

    description: str = ""
    hookspecs: str
    calls: str | None = None
    defaults: dict[str, str] = Field(default_factory=dict)


class PluginEntry(_Strict):
    """A ``[plugins.NAME]`` table of ``registry.toml``: the ``system`` the plugin extends, the ``module`` that
    implements its hooks, and whether it is ``enabled``."""

    system: str
    module: str
    enabled: bool = True


class RegistryFile(_Strict):
    """A parsed ``registry.toml``: its systems and built-in plugins, by name."""

    systems: dict[str, SystemEntry]
    plugins: dict[str, PluginEntry] = Field(default_factory=dict)


def default_registry_path() -> Path:
    """The ``registry.toml`` shipped inside the installed ``geometry_os`` package."""
    return Path(str(resources.files("geometry_os") / "registry.toml"))


def read_registry(path: str | os.PathLike[str]) -> RegistryFile:
    """Parse and validate the registry file at ``path``. Raises ``RegistryError`` (naming the file) when it is
    missing, unreadable, not TOML, does not fit ``RegistryFile`` or lists a plugin of an unknown system."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read registry: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise RegistryError(f"{path}: invalid TOML: nested too deeply") from None
    try:
        registry = RegistryFile.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(format_validation_error(exc, source=str(path))) from None
    for name, plugin in registry.plugins.items():
        if plugin.system not in registry.systems:
            raise RegistryError(f"{path}: plugins.{name}.system: unknown system {plugin.system!r}")
    return registry


# ---- plugins and systems ---------------------------------------------------------------------------


@dataclass
class PluginInfo:
    """What the host knows about one plugin, for ``geo-os plugins``."""

    name: str
    system: str
    source: str  # "builtin" or "entry point"
    module: str
    distribution: str | None = None
    version: str | None = None
    enabled: bool = True
    hooks: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=list)  # "kind:name"
    error: str | None = None

    @property
    def status(self) -> str:
        """``loaded``, ``disabled`` or ``failed`` (with ``error`` saying why)."""
        return "disabled" if not self.enabled else ("failed" if self.error else "loaded")

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-able dict (``geo-os plugins --json``), ``status`` included."""
        return {
            "name": self.name,
            "system": self.system,
            "source": self.source,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "hooks": self.hooks,
            "components": self.components,
            "error": self.error,
        }


@dataclass
class SystemCall:
    """A system call (``Host.call``): its dotted ``name``, the pydantic model of its parameters, the function
    run as ``function(params, host)`` and its ``doc``."""

    name: str
    params_model: type[BaseModel]
    function: Callable[..., Any]
    doc: str = ""
    # The parameters a network caller may give (``geo-os pixel-llm serve``): a model accepting a subset
    # of ``params_model``'s fields, e.g. without those naming files on the server. None: the call is
    # not offered over the network.
    remote_params: type[BaseModel] | None = None


class System:
    """One system: its plugin manager, components and calls."""

    def __init__(self, name: str, entry: SystemEntry, host: Host) -> None:
        self.name = name
        self.description = entry.description
        self.host = host
        self.hookspecs = _import_named(entry.hookspecs, f"systems.{name}.hookspecs")
        kinds = getattr(self.hookspecs, "COMPONENT_KINDS", None)
        if not isinstance(kinds, dict):
            raise RegistryError(
                f"systems.{name}.hookspecs: module {entry.hookspecs!r} defines no COMPONENT_KINDS mapping"
            )
        self.pm = pluggy.PluginManager(name)
        self.pm.add_hookspecs(self.hookspecs)
        self.components = ComponentRegistry(kinds, entry.defaults)
        self.plugins: dict[str, PluginInfo] = {}
        self._calls_module = entry.calls
        self._calls: dict[str, SystemCall] | None = None

    # -- loading
    def load_plugin(self, info: PluginInfo, load: Callable[[], Any]) -> None:
        """Import, register, validate and collect one plugin; failures are recorded, not raised, except on a
        strict host (``GEO_OS_STRICT_PLUGINS``), where they raise ``PluginError``."""
        self.plugins[info.name] = info
        if not info.enabled:
            self.pm.set_blocked(info.name)
            return
        try:
            plugin = load()
            self.pm.register(plugin, name=info.name)
            try:
                self.pm.check_pending()
            except pluggy.PluginValidationError:
                self.pm.unregister(name=info.name)
                raise
            info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or ())
            self._collect_components(info, plugin)
        except (Exception, SystemExit) as exc:  # sys.exit() in a plugin's import must not end the host either
            info.error = _reason(exc)
            if self.pm.has_plugin(info.name):
                self.pm.unregister(name=info.name)
            self.components.remove_plugin(info.name)
            info.components = []
            if self.host.strict:
                raise PluginError(f"plugin '{info.name}'{_dist(info)} failed to load: {info.error}") from exc
            warnings.warn(
                f"plugin '{info.name}'{_dist(info)} failed to load: {info.error}", PluginLoadWarning, stacklevel=2
            )

    def _collect_components(self, info: PluginInfo, plugin: object) -> None:
        for kind, hook_name in self.components.kinds.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(
                    name: str,
                    factory: Callable[..., Any] | str,
                    config_model: type[BaseModel] | None = None,
                    *,
                    override: bool = False,
                    serves: tuple[str, ...] | list[str] = (),
                    _kind: str = kind,
                ) -> None:
                    _check_registration(info.name, _kind, name, factory, config_model, serves)
                    component = Component(_kind, name, factory, config_model, info.name, tuple(serves))
                    self.components.add(component, override)
                    info.components.append(f"{_kind}:{name}")

                impl.function(register=register)

    def add_commands(self, cli: Any) -> None:
        """Let every loaded plugin add click commands; a failing plugin is recorded and skipped (on a strict
        host it raises ``PluginError``)."""
        for impl in reversed(self.pm.hook.register_commands.get_hookimpls()):
            try:
                impl.function(cli=cli)
            except (Exception, SystemExit) as exc:
                info = self.plugins.get(impl.plugin_name)
                reason = _reason(exc)
                if info is not None:
                    info.error = f"register_commands: {reason}"
                if self.host.strict:
                    raise PluginError(f"plugin '{impl.plugin_name}' failed to add commands: {reason}") from exc
                warnings.warn(
                    f"plugin '{impl.plugin_name}' failed to add commands: {reason}", PluginLoadWarning, stacklevel=2
                )

    # -- calls
    @property
    def calls(self) -> dict[str, SystemCall]:
        """The system's calls by name, imported from its ``calls`` module on first use."""
        if self._calls is None:
            self._calls = {}
            if self._calls_module:
                module = _import_named(self._calls_module, f"systems.{self.name}.calls")
                for call in getattr(module, "CALLS", ()):
                    self._calls[call.name] = call
        return self._calls


def _import_named(module: str, field: str) -> Any:
    """Import a module a registry names; a wrong name is a RegistryError naming the registry field."""
    try:
        return importlib.import_module(module)
    except (ImportError, ValueError, TypeError) as exc:  # ValueError/TypeError: an empty or relative name
        raise RegistryError(f"{field}: cannot import {module!r}: {exc}") from None


def _check_registration(plugin: str, kind: str, name: Any, factory: Any, config_model: Any, serves: Any = ()) -> None:
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin '{plugin}' registered a {kind} with an invalid name {name!r}")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise PluginError(
            f"plugin '{plugin}': {kind} '{name}' factory must be callable or 'module:attr', got {factory!r}"
        )
    if config_model is not None and not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
        raise PluginError(f"plugin '{plugin}': {kind} '{name}' config_model must be a pydantic model class")
    if not isinstance(serves, (tuple, list)) or not all(isinstance(s, str) and s for s in serves):
        raise PluginError(f"plugin '{plugin}': {kind} '{name}' serves must be a list of names, got {serves!r}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, GeometryOSError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _dist(info: PluginInfo) -> str:
    return f" ({info.distribution} {info.version})" if info.distribution else ""


class Host:
    """Loads the registry's systems and their plugins. ``Host()`` reads the environment overrides."""

    def __init__(
        self,
        registry: str | os.PathLike[str] | None = None,
        *,
        disabled: list[str] | None = None,
        strict: bool | None = None,
        entry_points: bool = True,
        contents: RegistryFile | None = None,
    ) -> None:
        """``registry``: the registry file (default: ``GEO_OS_REGISTRY``, else the packaged one);
        ``contents``: that file already read with ``read_registry`` (it is not read again). Raises
        ``RegistryError`` for an unreadable or invalid registry, ``PluginError`` for a failing plugin
        when ``strict``."""
        env_registry = os.environ.get(ENV_REGISTRY)
        self.registry_path = Path(registry or env_registry or default_registry_path())
        if disabled is None:
            disabled = [p.strip() for p in os.environ.get(ENV_DISABLE, "").split(",") if p.strip()]
        self.disabled = set(disabled)
        self.strict = strict if strict is not None else os.environ.get(ENV_STRICT, "") not in ("", "0", "false")
        self.registry = contents if contents is not None else read_registry(self.registry_path)
        self.systems: dict[str, System] = {
            name: System(name, entry, self) for name, entry in self.registry.systems.items()
        }
        for name, entry in self.registry.plugins.items():
            info = PluginInfo(
                name=name,
                system=entry.system,
                source="builtin",
                module=entry.module,
                distribution="geometry-os",
                version=_version("geometry-os"),
                enabled=entry.enabled and name not in self.disabled,
            )
            self.systems[entry.system].load_plugin(info, functools.partial(importlib.import_module, entry.module))
        if entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        """Third-party plugins; today every entry point plugs into the pixel_llm system."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                system="pixel_llm",
                source="entry point",
                module=ep.value,
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
                enabled=ep.name not in self.disabled,
            )
            system = self.systems.get(info.system)
            if system is None:  # a registry without that system: nothing to plug into
                continue
            if info.name in system.plugins:
                info.error = f"a plugin named '{info.name}' is already loaded"
                info.name = f"{info.name} [{info.distribution}]"
                system.plugins[info.name] = info
                warnings.warn(
                    f"plugin '{ep.name}'{_dist(info)} not loaded: {info.error}", PluginLoadWarning, stacklevel=2
                )
                continue
            system.load_plugin(info, ep.load)

    # -- queries
    def system(self, name: str) -> System:
        """The loaded system ``name``. Raises ``GeometryOSError`` naming the known systems when there is none."""
        try:
            return self.systems[name]
        except KeyError:
            raise GeometryOSError(f"unknown system {name!r}; systems: {', '.join(self.systems)}") from None

    @property
    def plugins(self) -> list[PluginInfo]:
        """Every plugin of every system, loaded, disabled or failed."""
        return [info for system in self.systems.values() for info in system.plugins.values()]

    @property
    def failures(self) -> list[PluginInfo]:
        """The plugins that failed to load (``error`` set)."""
        return [info for info in self.plugins if info.error]

    # -- system calls
    def call_names(self) -> list[str]:
        """The dotted names of every system call of the loaded systems, sorted."""
        return sorted(call for system in self.systems.values() for call in system.calls)

    def call(self, name: str, **params: Any) -> Any:
        """Run system call ``name`` (e.g. ``pixel_llm.info``) with validated parameters; JSON-able result.
        Raises ``GeometryOSError`` for an unknown call, ``ConfigError`` for parameters that do not fit it, and
        whatever the call itself raises."""
        system_name = name.split(".", 1)[0]
        call = self.systems[system_name].calls.get(name) if system_name in self.systems else None
        if call is None:
            raise GeometryOSError(f"unknown system call {name!r}; known calls: {', '.join(self.call_names())}")
        try:
            validated = call.params_model.model_validate(params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source=name)) from None
        with self.active():  # the call resolves and builds components against this host, not another one
            result = call.function(validated, self)
        return result.model_dump(mode="json") if isinstance(result, BaseModel) else result

    @contextmanager
    def active(self) -> Iterator[Host]:
        """Make this host the one ``get_host()`` returns inside the ``with`` block (in this thread or
        asyncio task only: a ``contextvars`` variable), restoring the previous one afterwards."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- the process-wide host -------------------------------------------------------------------------

_HOST: Host | None = None
# The host of a running ``Host.call`` / ``with host.active():`` block, which takes precedence over ``_HOST``.
_ACTIVE: ContextVar[Host | None] = ContextVar("geometry_os_active_host", default=None)


def get_host() -> Host:
    """The host in use: the one of the enclosing ``Host.call`` (or ``with host.active():``), else the
    host of this process, created on first use from the environment (``RegistryError`` when its
    registry file is unreadable)."""
    global _HOST
    active = _ACTIVE.get()
    if active is not None:
        return active
    if _HOST is None:
        _HOST = Host()
    return _HOST


def set_host(host: Host | None) -> Host | None:
    """Replace the process-wide host (``None`` resets it); returns the previous one."""
    global _HOST
    previous, _HOST = _HOST, host
    return previous


__all__ = [
    "ENTRY_POINT_GROUP",
    "Host",
    "PluginInfo",
    "PluginLoadWarning",
    "System",
    "SystemCall",
    "get_host",
    "set_host",
]
