"""All-or-nothing export folders: `sdrt.atomic.staged_folder` with the export's checks and words.

An exception, Ctrl-C, SIGTERM or a full disk while writing removes the temporary sibling; the old
folder (with --force) is replaced only once the new one is complete, and put back if that fails.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from sdrt import atomic
from sdrt.atomic import Interrupted  # noqa: F401 - re-exported for callers of the export
from sdrt.errors import SdrtError


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
    try:
        with atomic.staged_folder(out, if_exists="replace" if force else "fail") as tmp:
            yield tmp
    except atomic.FolderExists:
        raise SdrtError(f"{out} was created by someone else during this export: choose another --out "
                        f"or pass --force") from None
