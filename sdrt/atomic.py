"""Atomic writes: every file and folder sdrt writes appears whole under its real name, or not at all.

Files: `replacing(path)` yields a temporary sibling path (same folder, so the final `os.replace` is
atomic on the same file system) for code that writes to a path itself (PIL, matplotlib, onnx, ONNX
Runtime's optimized-model cache); on success the temporary file replaces `path`, on any exception
(Ctrl-C included, and SIGTERM inside `terminate_as_exception`) it is removed. `write_bytes` and
`write_text` are the common cases. `staged_files(folder)` does the same for a writer that makes
several files at once (a model and its external data).

Folders: `staged_folder(target)` yields a temporary sibling folder to fill; it is renamed to
`target` at the end. What happens when `target` already exists is the caller's choice: fail,
replace it (the old folder is moved aside and put back if the final rename fails), or keep it
(another process wrote the same cache entry first: theirs is used, ours dropped).

Modes: temporary files and folders are created like a plain `open()` / `mkdir()` would create
them, under the process's umask (not `mkstemp`'s 0600 / `mkdtemp`'s 0700), so what is renamed
into place is readable by whom the user's umask says.

A full disk is one `SdrtError` line naming the file and the free space left. What is not
guaranteed: durability across a power cut (no fsync of the folder; `fsync=True` syncs a file's
bytes), and SIGKILL, which no process can clean up after (it leaves only a hidden `.name.*.tmp`).

`terminate_as_exception` turns SIGTERM into an `Interrupted` error for the length of a block, so
`finally` blocks and the helpers above clean up as they do on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import Iterator, Literal

from sdrt.errors import SdrtError

TMP_SUFFIX = ".tmp"
_TRIES = 100


class Interrupted(SdrtError):
    """SIGTERM: unwinds like Ctrl-C so temporary files and folders are removed."""

    exit_code = 130


class FolderExists(SdrtError):
    """`staged_folder(..., if_exists="fail")`: another writer created the target meanwhile."""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_space(folder: Path) -> str:
    """Free space on the file system of `folder`, for messages ("unknown" when it cannot be read)."""
    try:
        return _human(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"


def disk_error(path: Path, error: OSError) -> SdrtError | None:
    """The one-line error for a full disk (or quota) while writing `path`; None for other errors."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return SdrtError(f"disk full: no space left on device writing {path} ({free_space(path.parent)} free there): "
                     f"free some space or write elsewhere; nothing partial was left")


def _new_temp(folder: Path, prefix: str, suffix: str, make) -> Path:
    """A new, unique `folder/<prefix><random><suffix>` made by `make(path)` (which fails if it exists)."""
    for _ in range(_TRIES):
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            make(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, f"no free temporary name {prefix}*{suffix}", str(folder))


def temp_file(folder: str | os.PathLike, prefix: str, suffix: str = TMP_SUFFIX) -> Path:
    """A new empty file in `folder`, with the mode `open()` gives under the umask (mkstemp's is 0600)."""
    def make(path: Path) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))

    return _new_temp(Path(folder), prefix, suffix, make)


def temp_folder(folder: str | os.PathLike, prefix: str, suffix: str = TMP_SUFFIX) -> Path:
    """A new empty folder in `folder`, with the mode `mkdir()` gives under the umask (mkdtemp's is 0700)."""
    return _new_temp(Path(folder), prefix, suffix, os.mkdir)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it becomes `path` on success, vanishes otherwise.

    `fsync`: the bytes reach the disk before the rename (a results file a resumed run trusts)."""
    path = Path(path)
    tmp = temp_file(path.parent, f".{path.name}.")
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        friendly = disk_error(path, e)
        if friendly is not None:
            raise friendly from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    path = Path(path)
    with replacing(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", *, fsync: bool = False) -> Path:
    return write_bytes(path, text.encode(encoding), fsync=fsync)


def write_result(folder: str | os.PathLike, result: object, markdown: str) -> Path:
    """``folder/result.json`` (``result`` as indented JSON) and ``folder/result.md``, each atomically."""
    import json

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "result.md", markdown)
    return out


@contextlib.contextmanager
def staged_files(folder: str | os.PathLike, last: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder inside `folder` for a writer that makes several files (a model and its
    external data); on success each is renamed into `folder`, `last` after all others (readers test
    for it, so they never see it without its companions). On failure nothing appears."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(folder, ".staged.")
    try:
        yield tmp
        for name in sorted((p.name for p in tmp.iterdir() if p.is_file()), key=lambda n: n == last):
            os.replace(tmp / name, folder / name)
    except OSError as e:
        friendly = disk_error(folder / (last or "."), e)
        if friendly is not None:
            raise friendly from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


IfExists = Literal["fail", "replace", "keep"]


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike, *, if_exists: IfExists = "fail") -> Iterator[Path]:
    """Yield a temporary sibling folder of `target` to fill; on success it is renamed to `target`,
    on any failure it vanishes (and a full disk is one line).

    When `target` exists at the end: ``"fail"`` raises `FolderExists` (theirs stays); ``"replace"``
    moves the old folder aside, renames the new one into place and deletes the old one, putting it
    back if the rename failed; ``"keep"`` keeps theirs and drops ours (a cache entry another process
    finished first: the caller reads what is there).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(target.parent, f".{target.name}.")
    old = None
    try:
        yield tmp
        if if_exists == "replace" and target.exists():
            old = temp_folder(target.parent, f".{target.name}.old.")
            os.rename(target, old / target.name)
        try:
            os.rename(tmp, target)  # fails when another writer created a non-empty `target` meanwhile
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or if_exists == "replace":
                raise
            if if_exists == "fail":
                raise FolderExists(f"{target} was created by someone else meanwhile: nothing of this run "
                                   f"was written there; choose another name or replace it") from None
    except OSError as e:
        friendly = disk_error(target, e)
        if friendly is not None:
            raise friendly from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; ours after a lost race or a failure
        if old is not None:
            if not target.exists() and (old / target.name).exists():  # the final rename failed: put it back
                os.rename(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def terminate_as_exception(what: str = "interrupted (SIGTERM): nothing partial was written") -> Iterator[None]:
    """Turn SIGTERM into `Interrupted(what)` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(what)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
