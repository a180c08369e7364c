"""Keep the calling thread's alternate signal stack across a native library call.

OpenVINO's CPU plugin, when it loads a model from its compiled-model cache, leaves the calling
thread's alternate signal stack (sigaltstack) pointing at memory of its own that it frees later.
Python installs its signal handlers with SA_ONSTACK, so the next signal the process handles on that
thread (SIGTERM during `sdrt generate`, say) runs on freed memory and the process dies with a
segmentation fault instead of cleaning up. Saving the stack before the call and restoring it after
keeps signal handling where Python (or faulthandler) put it. Linux/glibc only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager
from typing import Iterator


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "sigaltstack") else None
    except OSError:
        return None


_LIBC = _libc()


@contextmanager
def preserved_signal_stack() -> Iterator[None]:
    """Restore this thread's alternate signal stack after the block if the block changed it."""
    if _LIBC is None:
        yield
        return
    before = _StackT()
    if _LIBC.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        after = _StackT()
        if _LIBC.sigaltstack(None, ctypes.byref(after)) == 0 and (after.ss_sp, after.ss_size) != (
                before.ss_sp, before.ss_size):
            restore = _StackT(before.ss_sp, before.ss_flags & ~1, before.ss_size)  # SS_ONSTACK is not settable
            _LIBC.sigaltstack(ctypes.byref(restore), None)
