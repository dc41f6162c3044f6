"""The component registry of a system: what plugins registered, by kind and name, and how to build it.

A component is ``(kind, name, factory, config_model)`` plus the plugin that registered it. Factories
given as ``"module:attribute"`` strings are imported on first use, so listing components never
imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from geometry_os.errors import ComponentError, ConfigError, first_line, format_validation_error

OptionsT = TypeVar("OptionsT", bound=BaseModel)


@dataclass
class Component:
    kind: str
    name: str
    factory: Callable[..., Any] | str
    config_model: type[BaseModel] | None
    plugin: str
    # What the component declares it serves, for a lookup by purpose rather than by name (a decoding
    # strategy: the generation modes it implements, e.g. ("beam",)); empty: only ever picked by name.
    serves: tuple[str, ...] = ()
    _loaded: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.name}' (plugin '{self.plugin}')"

    def load(self) -> Callable[..., Any]:
        """The factory itself, importing it if it was registered as a string."""
        if self._loaded is None:
            if callable(self.factory):
                self._loaded = self.factory
            else:
                module_name, _, attr = self.factory.partition(":")
                try:
                    obj: Any = importlib.import_module(module_name)
                    for part in attr.split(".") if attr else ():
                        obj = getattr(obj, part)
                except (Exception, SystemExit) as exc:  # a plugin's import error (or sys.exit), named
                    raise ComponentError(
                        f"{self.label}: cannot load factory {self.factory!r}: {type(exc).__name__}: {first_line(exc)}"
                    ) from exc
                if not callable(obj):
                    raise ComponentError(f"{self.label}: factory {self.factory!r} is not callable")
                self._loaded = obj
        return self._loaded

    def options(self, values: BaseModel | dict[str, Any] | None = None) -> BaseModel | None:
        """Validate ``values`` against the component's config model (errors name the component)."""
        if self.config_model is None:
            if values:
                raise ConfigError(f"{self.label} takes no options, got {sorted(dict(values))}")
            return None
        if isinstance(values, self.config_model):
            return values
        if isinstance(values, BaseModel):
            values = values.model_dump()
        try:
            return self.config_model.model_validate(values or {})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source=f"{self.kind} '{self.name}'")) from None

    def build(self, options: BaseModel | dict[str, Any] | None = None, **runtime: Any) -> Any:
        """Call the factory with validated options; a failure inside it names the plugin."""
        factory = self.load()
        cfg = self.options(options)
        args = () if cfg is None else (cfg,)
        try:
            return factory(*args, **runtime)
        except (ComponentError, ConfigError):
            raise
        except Exception as exc:
            raise ComponentError(f"{self.label} failed to build: {type(exc).__name__}: {first_line(exc)}") from exc


class ComponentRegistry:
    """Components by kind and name, in registration order."""

    def __init__(self, kinds: dict[str, str], defaults: dict[str, str] | None = None) -> None:
        self.kinds = dict(kinds)  # kind -> the hook that registers it
        self._by_kind: dict[str, dict[str, Component]] = {kind: {} for kind in kinds}
        self._shadowed: dict[tuple[str, str], list[Component]] = {}  # what overrides replaced, oldest first
        self.defaults = dict(defaults or {})

    def add(self, component: Component, override: bool = False) -> None:
        if component.kind not in self._by_kind:
            raise ComponentError(f"unknown component kind {component.kind!r}; kinds: {', '.join(self.kinds)}")
        existing = self._by_kind[component.kind].get(component.name)
        if existing is not None and not override:
            raise ComponentError(
                f"{component.kind} '{component.name}' is registered by both plugin '{existing.plugin}' "
                f"and plugin '{component.plugin}'; the later one must pass override=True to replace it"
            )
        if existing is not None:
            self._shadowed.setdefault((component.kind, component.name), []).append(existing)
        self._by_kind[component.kind][component.name] = component

    def remove_plugin(self, plugin: str) -> None:
        """Drop a plugin's components; a component it had overridden comes back (a plugin that fails
        after ``override=True`` must not leave the host without the built-in it replaced)."""
        for kind, table in self._by_kind.items():
            for name in [n for n, c in table.items() if c.plugin == plugin]:
                del table[name]
                earlier = [c for c in self._shadowed.pop((kind, name), []) if c.plugin != plugin]
                if earlier:
                    table[name] = earlier.pop()
                    if earlier:
                        self._shadowed[(kind, name)] = earlier

    def names(self, kind: str) -> list[str]:
        return list(self._table(kind))

    def get(self, kind: str, name: str | None = None) -> Component:
        table = self._table(kind)
        name = name or self.defaults.get(kind)
        if name is None:
            raise ComponentError(f"no default {kind} is set in the registry; registered: {_listing(table)}")
        try:
            return table[name]
        except KeyError:
            raise ComponentError(f"unknown {kind} {name!r}; registered {plural(kind)}: {_listing(table)}") from None

    def serving(self, kind: str, purpose: str) -> Component:
        """The component of ``kind`` that serves ``purpose`` (see ``Component.serves``): the registry's
        default when it serves it, else the first registered one that does. Raises ``ComponentError``
        (naming the purpose and the registered components) when none does."""
        table = self._table(kind)
        default = table.get(self.defaults.get(kind, ""))
        if default is not None and purpose in default.serves:
            return default
        for component in table.values():
            if purpose in component.serves:
                return component
        raise ComponentError(f"no registered {kind} serves {purpose!r}; registered {plural(kind)}: {_listing(table)}")

    def __iter__(self) -> Iterator[Component]:
        for table in self._by_kind.values():
            yield from table.values()

    def _table(self, kind: str) -> dict[str, Component]:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise ComponentError(f"unknown component kind {kind!r}; kinds: {', '.join(self.kinds)}") from None


def plural(kind: str) -> str:
    """A component kind as the registry's messages (and ``components KIND``) name it: encoders, decoding_strategies."""
    return kind[:-1] + "ies" if kind.endswith("y") else kind + "s"


def _listing(table: dict[str, Component]) -> str:
    return ", ".join(table) if table else "(none)"


def options_with(
    model: type[OptionsT], opts: OptionsT | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> OptionsT:
    """A component's options as ``model``, from an options object, a mapping or nothing, with ``overrides``
    (plain keywords) on top; all of it goes through ``model``'s validation.

    ``opts`` already a ``model`` and no overrides: returned as is. Any other options object is read
    through ``model_dump()``. Raises ``pydantic.ValidationError`` for a value ``model`` rejects (the
    constructor of a component built by hand reports it as pydantic does).
    """
    if opts is None:
        return model(**overrides)
    if isinstance(opts, model) and not overrides:
        return opts
    data = dict(opts) if isinstance(opts, Mapping) else opts.model_dump()
    return model(**{**data, **overrides})
