"""OpenVINO must not leave the thread's alternate signal stack on memory it frees (a SIGTERM then segfaults)."""

import ctypes
import signal

import numpy as np
import pytest

from sdrt.engines import signal_stack
from tests.engines.test_openvino import _folder, _run

pytest.importorskip("openvino")
pytestmark = pytest.mark.skipif(signal_stack._LIBC is None, reason="sigaltstack via glibc (Linux) only")


def _current() -> tuple[int | None, int]:
    s = signal_stack._StackT()
    assert signal_stack._LIBC.sigaltstack(None, ctypes.byref(s)) == 0
    return s.ss_sp, s.ss_size


def test_openvino_leaves_the_signal_stack_where_it_was(tmp_path):
    from sdrt.engines import openvino as ovb

    before = _current()
    manifest = _folder(tmp_path)
    ovb.OpenVinoBackend().load(manifest, "unet")
    engine = ovb.OpenVinoBackend().load(manifest, "unet")  # the second load comes from the cache
    _run(engine, np.random.default_rng(0))
    assert _current() == before


def test_sigterm_after_a_cached_load_unwinds_instead_of_crashing(tmp_path):
    from sdrt.engines import openvino as ovb

    manifest = _folder(tmp_path)
    ovb.OpenVinoBackend().load(manifest, "unet")
    ovb.OpenVinoBackend().load(manifest, "unet")

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Stop):
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
