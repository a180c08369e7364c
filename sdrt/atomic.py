"""Atomic file writes: every file sdrt writes appears whole under its real name, or not at all.

`replacing(path)` yields a temporary sibling path (same folder, so the final `os.replace` is atomic
on the same file system) for code that writes to a path itself (PIL, matplotlib, onnx, ONNX
Runtime's optimized-model cache); on success the temporary file replaces `path`, on any exception
(Ctrl-C included, and SIGTERM inside `terminate_as_exception`) it is removed. `write_bytes` and
`write_text` are the common cases. A full disk is one `SdrtError` line naming the file and the
free space left. What is not guaranteed: durability across a power cut (no fsync of the folder),
and SIGKILL, which no process can clean up after (it leaves only a hidden `.name.*.tmp` file).

`terminate_as_exception` turns SIGTERM into an `Interrupted` error for the length of a block, so
`finally` blocks and `replacing` clean up as they do on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from sdrt.errors import SdrtError

TMP_SUFFIX = ".tmp"


class Interrupted(SdrtError):
    """SIGTERM: unwinds like Ctrl-C so temporary files and folders are removed."""

    exit_code = 130


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
    return SdrtError(f"no space left on device writing {path} ({free_space(path.parent)} free there): "
                     f"free some space or write elsewhere; nothing partial was left")


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; it becomes `path` on success, vanishes otherwise."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        friendly = disk_error(path, e)
        if friendly is not None:
            raise friendly from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


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
    tmp = Path(tempfile.mkdtemp(prefix=".staged.", suffix=TMP_SUFFIX, dir=folder))
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
