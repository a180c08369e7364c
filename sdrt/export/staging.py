"""All-or-nothing output folders: write into a temporary sibling, rename into place at the end.

An exception, Ctrl-C, SIGTERM or a full disk while writing removes the temporary folder; the old
folder (with --force) is replaced only once the new one is complete. The sibling lives in the
same directory, so the final rename is atomic on the same file system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from sdrt import atomic
from sdrt.atomic import Interrupted  # noqa: F401 - re-exported for callers of the export
from sdrt.errors import SdrtError

TMP_SUFFIX = ".sdrt-tmp"


def check_target(out: Path, force: bool) -> None:
    """Fail before any work when `out` cannot be written."""
    if out.exists() and not force:
        raise SdrtError(f"{out} already exists: choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise SdrtError(f"{out} is a file, not a folder: choose another --out")
    if out.parent.exists() and not out.parent.is_dir():
        raise SdrtError(f"{out.parent} is not a folder: choose another --out")


def terminate_as_exception() -> contextlib.AbstractContextManager:
    """SIGTERM during an export unwinds like Ctrl-C, so the temporary folder is removed."""
    return atomic.terminate_as_exception("export interrupted (SIGTERM): nothing was written")


@contextlib.contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; on success it becomes `out`, otherwise it vanishes."""
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TMP_SUFFIX, dir=out.parent))
    old = None
    try:
        yield tmp
        if out.exists() and force:
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", suffix=TMP_SUFFIX, dir=out.parent))
            os.rename(out, old / out.name)
        os.rename(tmp, out)  # fails if another writer created `out` meanwhile: theirs stays
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SdrtError(f"disk full while writing {out}: free space on {out.parent} and export again; "
                            f"nothing was written") from None
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and not force:
            raise SdrtError(f"{out} was created by someone else during this export: choose another --out "
                            f"or pass --force") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if not out.exists() and (old / out.name).exists():  # the final rename failed: put the old one back
                os.rename(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
