"""Atomic file and folder writes, and reading text and JSON with one-line errors.

Files: a temporary file in the same folder, fsync, then ``os.replace``. Folders (:class:`AtomicFolder`): a
temporary sibling folder renamed into place. Readers (and a process that crashes half-way) never see half a
file or folder, and an existing one is only replaced once the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any

from geometry_os.errors import CheckpointError


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


def atomic_save(path: str | os.PathLike[str], save: Callable[[Path], object]) -> Path:
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
    """Write ``text`` to ``path`` as UTF-8, atomically (see :func:`atomic_save`); returns the path.

    Raises:
        OSError: when the folder is missing or not writable (naming ``path``, not the temporary file).
    """
    return atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` to ``path`` as indented JSON with a final newline, atomically; returns the path.

    Raises:
        TypeError: when ``data`` is not JSON-serialisable (nothing is written).
        OSError: as :func:`atomic_write_text`.
    """
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


class AtomicFolder:
    """``with AtomicFolder(dest, replaces=...) as tmp:`` write files into ``tmp``; on success it becomes ``dest``.

    An existing ``dest`` is moved aside first and deleted only after the new folder is in place; on any error
    the temporary folder (a hidden sibling ``.<name>.tmp-<hex>``) is removed and ``dest`` is left as it was.
    ``replaces``: the file names an existing ``dest`` may hold (None: any, for folders only the program
    writes); a folder with anything else in it is refused before anything is written, so no file of the
    user's is deleted.

    Raises:
        error (default :class:`~geometry_os.errors.CheckpointError`): on entering, when ``dest`` exists and is
            not a folder, or holds files outside ``replaces``.
        OSError: when the folder cannot be created, synced or renamed (``dest`` is then unchanged).
    """

    def __init__(
        self, dest: str | Path, replaces: Collection[str] | None, error: type[Exception] = CheckpointError
    ) -> None:
        self.dest = Path(dest)
        self.replaces = replaces
        self.error = error
        self.tmp = self.dest.with_name(f".{self.dest.name}.tmp-{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> Path:
        if self.dest.exists() or self.dest.is_symlink():
            if not self.dest.is_dir() or self.dest.is_symlink():
                raise self.error(f"{self.dest}: exists and is not a folder; save to a new or empty folder")
            if self.replaces is not None:
                others = sorted(p.name for p in self.dest.iterdir() if p.name not in self.replaces or not p.is_file())
                if others:
                    shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                    raise self.error(
                        f"{self.dest}: refusing to replace a folder that holds other files "
                        f"({shown}); save to a new or empty folder"
                    )
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            for file in self.tmp.iterdir():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
            fsync_dir(self.tmp)
            old = None
            if self.dest.exists():
                old = self.dest.with_name(f".{self.dest.name}.old-{uuid.uuid4().hex[:8]}")
                os.rename(self.dest, old)
            try:
                os.rename(self.tmp, self.dest)
            except BaseException:
                if old is not None:  # put the previous folder back rather than leave nothing under dest
                    os.rename(old, self.dest)
                raise
            fsync_dir(self.dest.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


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
