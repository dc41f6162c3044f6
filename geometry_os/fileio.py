"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``.

Readers (and a process that crashes half-way) never see half a file, and an existing file is only
replaced once the new one is complete.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parse_json(text: str, source: object, error: type[Exception] = ValueError, what: str = "JSON") -> Any:
    """``json.loads`` whose failures are one-line ``error``s naming ``source`` (and line:column)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{source}:{e.lineno}:{e.colno}: malformed {what}: {e.msg}") from None
    except RecursionError:
        raise error(f"{source}: malformed {what}: nested too deeply") from None
    except ValueError as e:  # e.g. an integer beyond Python's digit limit
        raise error(f"{source}: malformed {what}: {' '.join(str(e).split())}") from None


def read_utf8(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> str:
    """A text file's contents; a file that is not UTF-8 is a one-line ``error`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def atomic_save(path: str | os.PathLike[str], save: Callable[[Path], None]) -> Path:
    """Call ``save(tmp_path)`` (tmp keeps ``path``'s suffix, for writers that look at it), then move it into place.

    The result has the permissions a plain write would give: a replaced file keeps its mode, a new one
    gets 0o666 minus the umask (not ``mkstemp``'s owner-only 0o600).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()
        try:
            try:
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
            except FileNotFoundError:
                pass
            save(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:  # name the file the caller asked for, not the hidden temporary
        if exc.filename in (str(tmp), tmp) and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise
    fsync_dir(path.parent)  # the rename itself survives a power loss before anything relies on it
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename or new entry in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse it
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# JSON files a loader reads whole (configs, pointers, adapter configs): anything larger is refused unread.
MAX_JSON_BYTES = 64 * 1024 * 1024


def safe_file(folder: Path, name: str, required: bool = True, error: type[Exception] | None = None) -> Path | None:
    """``folder/name`` if it is a regular file inside ``folder`` (a symlink out of it is refused); None
    when it does not exist and is not ``required``. Raises ``error`` (default ``CheckpointError``), one
    line naming the file: missing, pointing outside the folder, or not a regular file."""
    from geometry_os.errors import CheckpointError

    fail = error or CheckpointError
    path = folder / name
    if not path.exists() and not path.is_symlink():
        if required:
            raise fail(f"{folder}: missing {name}")
        return None
    resolved = path.resolve()
    if folder.resolve() not in resolved.parents:
        raise fail(f"{path}: points outside the checkpoint folder ({resolved}); refusing to read it")
    if not resolved.is_file():
        raise fail(f"{path}: not a regular file")
    return path


def read_json(path: Path, error: type[Exception] | None = None) -> Any:
    """The JSON document in ``path`` (at most ``MAX_JSON_BYTES``). Raises ``error`` (default
    ``CheckpointError``), one line naming the file: too large, not UTF-8, or malformed."""
    from geometry_os.errors import CheckpointError

    fail = error or CheckpointError
    if path.stat().st_size > MAX_JSON_BYTES:
        raise fail(f"{path}: file too large for a JSON config ({path.stat().st_size} bytes)")
    return parse_json(read_utf8(path, fail), path, fail)
