"""Atomic image writes and the output folder: a failure leaves nothing partial; numbers never collide."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from sdrt import atomic
from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.runtime import outputs
from sdrt.runtime.images import save_png


def _image():
    return Image.fromarray(np.zeros((8, 8, 3), np.uint8))


def _full_disk_after(limit):
    """A PIL file write that fails with ENOSPC once `limit` bytes are written (a truncated file first)."""
    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > limit:
                self.f.write(bytes(data)[: max(0, limit - (self.n - len(data)))])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if "w" in mode else f

    return fake_open


def test_full_disk_leaves_no_file_and_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr("builtins.open", _full_disk_after(100))
    target = tmp_path / "00001-1-0.png"
    with pytest.raises(SdrtError) as info:
        save_png(_image(), target, {"parameters": "x" * 1000})
    message = str(info.value)
    assert str(target) in message and "free there" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_interrupt_mid_write_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_png(_image(), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_whole(tmp_path):
    atomic.write_text(tmp_path / "r.md", "old")
    atomic.write_text(tmp_path / "r.md", "new")
    assert (tmp_path / "r.md").read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_reservations_never_collide(tmp_path):
    (tmp_path / "00007-1-0.png").write_bytes(b"")
    with outputs.reserved_number(tmp_path) as a, outputs.reserved_number(tmp_path) as b:
        assert (a, b) == (8, 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00007-1-0.png"]


def test_two_processes_racing_for_numbers(tmp_path):
    """Two processes take 40 numbers each from one folder at the same moment: 80 distinct numbers
    (once failed with 39 of 40 distinct, before a reservation re-checked for files of its number)."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from sdrt.runtime import outputs
        folder = Path({str(tmp_path)!r})
        while not (folder / "go").exists():
            time.sleep(0.001)
        for _ in range(40):
            with outputs.reserved_number(folder) as n:
                (folder / f"{{n:05d}}-{{sys.argv[1]}}-0.png").write_bytes(b"")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, tag]) for tag in ("a", "b")]
    (tmp_path / "go").write_text("")
    assert all(p.wait(timeout=120) == 0 for p in procs)
    numbers = [p.name[:5] for p in tmp_path.glob("*.png")]
    assert len(numbers) == 80 and len(set(numbers)) == 80


def test_unwritable_out_is_found_before_loading(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["generate", "--model", str(tmp_path / "no-such-model"), "--prompt", "x",
               "--out", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "is a file, not a folder" in err and err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = main(["generate", "--model", str(tmp_path), "--prompt", "x", "--out", str(ro)])
    finally:
        ro.chmod(0o700)
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and err.count("\n") == 1


def test_generate_full_disk_is_one_line_and_leaves_nothing(tiny_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("builtins.open", _full_disk_after(200))
    out = tmp_path / "out"
    rc = main(["generate", "--model", str(tiny_onnx), "--prompt", "x", "--steps", "1", "--height", "16",
               "--width", "16", "--num-images", "2", "--seed", "1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on device writing" in err and err.count("\n") == 1
    assert list(out.iterdir()) == []


def test_sigterm_during_generate_leaves_nothing_partial(tiny_onnx, tmp_path):
    """SIGTERM arrives while the PNG is being written: exit 130, one line, no file under a real name."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from PIL import Image
        real = Image.Image.save
        def slow_save(self, fp, *a, **k):
            real(self, fp, *a, **k)          # the temporary file is complete ...
            os.kill(os.getpid(), signal.SIGTERM)  # ... and the signal lands before the rename
        Image.Image.save = slow_save
        from sdrt.cli import main
        sys.exit(main(["generate", "--model", {str(tiny_onnx)!r}, "--prompt", "x", "--steps", "1",
                       "--height", "16", "--width", "16", "--out", {str(out)!r}, "--quiet"]))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 130, run.stderr
    assert "interrupted (SIGTERM)" in run.stderr and "Traceback" not in run.stderr
    assert list(out.iterdir()) == []


def test_batch_size_splits_and_keeps_per_image_seeds(tiny_onnx, tmp_path, capsys):
    import json as _json

    from sdrt.runtime.images import read_png_text

    common = ["generate", "--model", str(tiny_onnx), "--prompt", "x", "--steps", "1", "--height", "16",
              "--width", "16", "--seed", "7", "--scheduler", "euler_a", "--quiet"]
    assert main([*common, "--num-images", "3", "--batch-size", "2", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--num-images", "3", "--out", str(tmp_path / "b")]) == 0
    a, b = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert [p.name for p in a] == ["00001-7-0.png", "00001-8-1.png", "00001-9-2.png"] == [p.name for p in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(Image.open(x), np.float32), np.asarray(Image.open(y), np.float32),
                                   atol=1)
    assert _json.loads(read_png_text(a[2])["sdrt"])["seed"] == 9


def test_engine_allocation_failure_is_one_line(pipelines, monkeypatch):
    pipe = pipelines("tiny")
    unet = pipe.engine("unet")

    def no_memory(*a, **k):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                           "running Softmax node. Failed to allocate memory for requested buffer of size "
                           "137438953472")

    monkeypatch.setattr(unet, "run", no_memory)
    with pytest.raises(SdrtError) as info:
        pipe("a cat", num_inference_steps=1, height=16, width=16, seed=0)
    message = str(info.value)
    assert "out of memory on ort-cpu generating 1 image(s) at 16x16 (one buffer of 128.0 GiB)" in message
    assert "--batch-size" in message


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_generated_images_follow_the_umask(tiny_onnx, tmp_path, umask, file_mode, folder_mode):
    """A web server or another user can read what `sdrt generate` wrote when the umask says so (the
    temporary file renamed into place once kept mkstemp's 0600 whatever the umask)."""
    import stat

    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        rc = main(["generate", "--model", str(tiny_onnx), "--prompt", "x", "--steps", "1", "--height", "16",
                   "--width", "16", "--seed", "1", "--out", str(out), "--quiet"])
    finally:
        os.umask(previous)
    (image,) = out.glob("*.png")
    assert rc == 0 and stat.S_IMODE(image.stat().st_mode) == file_mode
    assert stat.S_IMODE(out.stat().st_mode) == folder_mode
