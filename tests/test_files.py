"""Atomic writes (singleshot.files): whole content or the old file, never half; normal permissions."""

import os
import stat

import pytest

from singleshot.files import atomic_write, write_bytes_atomic, write_text_atomic


def test_content_round_trips_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    assert atomic_write(path, lambda f: f.write(b"\x00\x01first")) == path
    assert path.read_bytes() == b"\x00\x01first"
    write_bytes_atomic(str(path), b"second, longer than the first")
    assert path.read_bytes() == b"second, longer than the first"
    write_text_atomic(path, "caf\u00e9 \u2713\n")
    assert path.read_text(encoding="utf-8") == "caf\u00e9 \u2713\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "old")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_new_file_has_the_permissions_of_open(tmp_path, umask_022):
    path = write_bytes_atomic(tmp_path / "new.bin", b"x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with open(tmp_path / "plain.bin", "wb") as f:  # what open() gives under the same umask
        f.write(b"x")
    assert stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode) == 0o644


def test_the_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_bytes_atomic(tmp_path / "group.bin", b"x")
        assert os.umask(0o027) == 0o027  # the helper put the umask back
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_missing_folder_is_an_os_error_and_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_bytes_atomic(tmp_path / "no" / "such" / "a.bin", b"x")
    assert list(tmp_path.iterdir()) == []
