"""The output folder of `sdrt generate`: checked before any work, running numbers reserved without races.

Each call takes the next free running number NNNNN (one more than the highest of the folder's
`NNNNN-*.png` and of the reservations in flight) and reserves it by creating `.NNNNN.reserved`
with O_CREAT | O_EXCL: of two processes that pick the same number at once, exactly one gets it and
the other takes the next; a number whose files appeared between the scan and the reservation (its
writer already finished) is given back and the scan repeated. The images are then written atomically (`sdrt.atomic`), and the
reservation is removed once they are all in place, or when the call fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from sdrt.errors import SdrtError

_NUMBERED = re.compile(r"^\.?(\d{5,})[-.]")
RESERVATION = ".{:05d}.reserved"


def check_writable(folder: str | os.PathLike) -> Path:
    """Prove that files can be written in `folder` (or, when it does not exist yet, created in its
    nearest existing parent), before any generation; nothing is created here."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SdrtError(f"--out {folder}: {existing} is a file, not a folder: choose another --out")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".sdrt-probe."):
            pass
    except OSError as e:
        raise SdrtError(f"--out {folder} is not writable ({e.strerror or e} in {existing}): choose another "
                        f"--out or fix its permissions") from None
    return folder


def next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=0) + 1


@contextlib.contextmanager
def reserved_number(folder: Path) -> Iterator[int]:
    """A running number no other writer of `folder` holds or has used; released on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        number = next_number(folder)
        marker = folder / RESERVATION.format(number)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue  # another process holds it: the next scan sees its marker
        # Another writer may have held this number, written its files and released it between our
        # scan and our marker: its files are in place before its marker goes, so look again.
        if not any(p.name.startswith(f"{number:05d}-") for p in folder.iterdir()):
            break
        marker.unlink(missing_ok=True)
    try:
        yield number
    finally:
        marker.unlink(missing_ok=True)
