"""Name patterns that choose parameters (``trainer.freeze``), and freezing them.

A pattern is ``encoder`` / ``decoder`` (everything under it), a parameter or module name
(``encoder.patch_embed``), or a name with ``*`` (any text, dots included), ``?`` (one character) and, as a
whole dotted part, a range ``N-M`` of block numbers: ``encoder.blocks.0-7.*`` is blocks 0 to 7. A pattern
matches a parameter when it matches its full name or a leading part of it that ends at a dot.
No torch here: the config validates patterns before anything is built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The compiled regex of one pattern (raises ``ValueError`` naming a bad range or an empty part)."""
    parts = []
    for part in pattern.split("."):
        if not part:
            raise ValueError(f"{pattern!r} has an empty part between dots")
        m = _RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"{pattern!r}: range {part} runs backwards")
            parts.append("(?:" + "|".join(str(i) for i in range(lo, hi + 1)) + ")")
        else:
            parts.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in part))
    return re.compile(r"\.".join(parts) + r"(?:\..*)?")


def matching(names: Iterable[str], pattern: str) -> list[str]:
    """The ``names`` (parameter or module names) that ``pattern`` (see :func:`pattern_regex`) matches whole."""
    regex = pattern_regex(pattern)
    return [n for n in names if regex.fullmatch(n)]


def freeze(model: Any, patterns: Iterable[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter a pattern matches; returns their names.
    Raises ``ConfigError`` when a pattern matches no parameter (a typo must not train everything)."""
    from geometry_os.errors import ConfigError

    params = dict(model.named_parameters())
    frozen: set[str] = set()
    for pattern in patterns:
        hits = matching(params, pattern)
        if not hits:
            tops = sorted({".".join(n.split(".")[:2]) for n in params})
            raise ConfigError(
                f"trainer.freeze: {pattern!r} matches no parameter (names start with: {', '.join(tops[:8])})"
            )
        frozen.update(hits)
    for name in frozen:
        params[name].requires_grad_(False)
    return sorted(frozen)
