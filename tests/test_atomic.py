"""sdrt.atomic: staged folders and files appear whole or not at all, and with the umask's modes.

(The export's use of the staged folder — Ctrl-C, SIGTERM, a full disk, --force — is tested end to
end in tests/export/test_atomic.py.)
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from sdrt import atomic
from sdrt.errors import SdrtError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask022", "umask077"])
def umask(request):
    """(file mode, folder mode) a plain open() / mkdir() gives under the umask set for the test."""
    mask, file_mode, folder_mode = request.param
    previous = os.umask(mask)
    try:
        yield file_mode, folder_mode
    finally:
        os.umask(previous)


# -- staged folders --------------------------------------------------------------------------------
def test_staged_folder_appears_whole_on_success(tmp_path):
    target = tmp_path / "deep" / "out"
    with atomic.staged_folder(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.") and not target.exists()
        (tmp / "a.txt").write_text("a")
    assert _names(target) == ["a.txt"] and _names(target.parent) == ["out"]


def test_staged_folder_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.staged_folder(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"0")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    with pytest.raises(SdrtError) as caught:
        with atomic.staged_folder(tmp_path / "out"):
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(caught.value)
    assert "disk full" in message and str(tmp_path / "out") in message and "free there" in message
    assert "\n" not in message and _names(tmp_path) == []


def test_replace_swaps_the_old_folder_only_at_the_end(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.staged_folder(target, if_exists="replace") as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert _names(target) == ["old.txt"] and _names(tmp_path) == ["out"]  # a failed run keeps the old one
    with atomic.staged_folder(target, if_exists="replace") as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(target) == ["new.txt"] and _names(tmp_path) == ["out"]


def test_replace_puts_the_old_folder_back_when_the_final_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = os.rename

    def refuse_the_new_one(src, dst):
        if Path(dst) == target and ".old." not in str(src):
            raise OSError(errno.EIO, "I/O error")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", refuse_the_new_one)
    with pytest.raises(OSError, match="I/O error"):
        with atomic.staged_folder(target, if_exists="replace") as tmp:
            (tmp / "new.txt").write_text("new")
    assert _names(target) == ["old.txt"] and _names(tmp_path) == ["out"]


def test_keep_uses_the_folder_another_writer_finished_first(tmp_path):
    target = tmp_path / "entry"
    with atomic.staged_folder(target, if_exists="keep") as tmp:
        (tmp / "ours").write_text("ours")
        target.mkdir()
        (target / "theirs").write_text("theirs")  # the other process renamed its entry in meanwhile
    assert _names(target) == ["theirs"] and _names(tmp_path) == ["entry"]


def test_fail_refuses_a_folder_someone_else_created_meanwhile(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(atomic.FolderExists, match="created by someone else"):
        with atomic.staged_folder(target) as tmp:
            (tmp / "ours").write_text("ours")
            target.mkdir()
            (target / "theirs").write_text("theirs")
    assert _names(target) == ["theirs"] and _names(tmp_path) == ["out"]


# -- staged files ------------------------------------------------------------------------------------
def test_replacing_removes_its_temporary_file_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.replacing(tmp_path / "a.png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_fsync_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append((tmp_path / "r.json").exists())  # not yet under its name when synced
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    atomic.write_text(tmp_path / "r.json", "{}", fsync=True)
    assert synced == [False] and (tmp_path / "r.json").read_text() == "{}"
    atomic.write_text(tmp_path / "r.json", "[]")
    assert synced == [False]  # only when asked


# -- modes: what a plain open() / mkdir() would give under the umask ---------------------------------
def test_files_and_folders_get_the_umask_mode(tmp_path, umask):
    file_mode, folder_mode = umask
    assert _mode(atomic.write_text(tmp_path / "a.txt", "a")) == file_mode
    with atomic.replacing(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"png")
    assert _mode(tmp_path / "b.png") == file_mode
    with atomic.staged_folder(tmp_path / "out") as tmp:
        (tmp / "c.txt").write_text("c")
    assert _mode(tmp_path / "out") == folder_mode and _mode(tmp_path / "out" / "c.txt") == file_mode
    with atomic.staged_folder(tmp_path / "out", if_exists="replace") as tmp:
        pass
    assert _mode(tmp_path / "out") == folder_mode
    with atomic.staged_files(tmp_path / "cache", last="m.onnx") as stage:
        (stage / "m.onnx").write_bytes(b"m")
    assert _mode(tmp_path / "cache" / "m.onnx") == file_mode
