"""geometry_os.fileio: atomic writes keep what a plain write would give (contents, permissions) and
leave nothing behind when the writer fails; atomic folders replace only folders of their own files;
malformed JSON errors name the source and position."""

from __future__ import annotations

import os
import stat

import pytest

from geometry_os.errors import CheckpointError, ConfigError
from geometry_os.fileio import AtomicFolder, atomic_save, atomic_write_text, parse_json, write_json_atomic


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_gets_the_umask_default_not_owner_only(tmp_path, umask_022):
    plain, atomic = tmp_path / "plain.txt", tmp_path / "atomic.txt"
    plain.write_text("x")
    atomic_write_text(atomic, "x")
    assert mode(atomic) == mode(plain) == 0o644


def test_replacing_a_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "data.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    write_json_atomic(path, {"a": 1})
    assert mode(path) == 0o640
    assert parse_json(path.read_text(), path) == {"a": 1}


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_save_sees_a_temporary_with_the_target_suffix(tmp_path):
    seen = []
    atomic_save(tmp_path / "weights.safetensors", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"w")))
    assert seen[0].suffix == ".safetensors" and seen[0].parent == tmp_path and seen[0].name.startswith(".")
    assert (tmp_path / "weights.safetensors").read_bytes() == b"w"


def test_malformed_json_names_source_line_and_column():
    with pytest.raises(ValueError, match=r"^captions\.json:2:8: malformed JSON: "):
        parse_json('{\n  "a": oops}', "captions.json")


def test_an_integer_beyond_the_digit_limit_is_malformed_json_not_a_crash():
    with pytest.raises(ValueError, match=r"^config\.json: malformed JSON: .*digits"):
        parse_json('{"n": ' + "9" * 5000 + "}", "config.json")


def test_errors_name_the_target_not_the_hidden_temporary(tmp_path):
    missing = tmp_path / "no-such-folder" / "out.json"
    with pytest.raises(FileNotFoundError) as info:
        write_json_atomic(missing, {})
    assert info.value.filename == str(missing) and ".tmp" not in str(info.value)


def test_atomic_folder_replaces_a_folder_of_its_own_files_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "config.json").write_text("old")
    (dest / "model.safetensors").write_text("old")
    with AtomicFolder(dest, replaces=("config.json", "model.safetensors")) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-")
        (tmp / "config.json").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in dest.iterdir()] == ["config.json"] and (dest / "config.json").read_text() == "new"


def test_atomic_folder_refuses_a_folder_with_other_files_before_writing(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("the user's")
    with pytest.raises(
        CheckpointError, match=r"mine: refusing to replace a folder that holds other files \(notes\.txt\)"
    ):
        with AtomicFolder(dest, replaces=("config.json",)):
            raise AssertionError("not reached")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        with AtomicFolder(tmp_path / "file", replaces=None, error=ConfigError):
            raise AssertionError("not reached")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"] and (dest / "notes.txt").is_file()


def test_atomic_folder_keeps_the_old_folder_when_the_writer_fails(tmp_path):
    dest = tmp_path / "best"
    dest.mkdir()
    (dest / "config.json").write_text("previous")
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicFolder(dest, replaces=None) as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["best"] and (dest / "config.json").read_text() == "previous"
