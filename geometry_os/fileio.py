"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``.

Readers (and a process that crashes half-way) never see half a file, and an existing file is only
replaced once the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def parse_json(text: str, source: object, error: type[Exception] = ValueError, what: str = "JSON") -> Any:
    """``json.loads`` whose failures are one-line ``error``s naming ``source`` (and line:column)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source}:{e.lineno}:{e.colno}: malformed {what}: {e.msg}") from None
    except RecursionError:
        raise error(f"{source}: malformed {what}: nested too deeply") from None


def atomic_save(path: str | os.PathLike[str], save: Callable[[Path], None]) -> Path:
    """Call ``save(tmp_path)`` (tmp keeps ``path``'s suffix, for writers that look at it), then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        save(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
