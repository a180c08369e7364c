"""The markers: gpu and tensorrt ask for one thing each (tests/conftest.py); slow is what `make test-fast` leaves out."""

from tests.conftest import skip_reason

NO_GPU, GPU = (lambda: None), (lambda: "GPU 0: NVIDIA H100")
NO_TRT, RTX = (lambda: None), (lambda: "tensorrt_rtx")


def test_a_tensorrt_rtx_build_test_runs_without_a_gpu():
    assert skip_reason({"tensorrt"}, NO_GPU, RTX) is None


def test_each_marker_skips_for_its_own_reason():
    assert "NVIDIA GPU" in skip_reason({"gpu"}, NO_GPU, RTX)
    assert "TensorRT" in skip_reason({"tensorrt"}, GPU, NO_TRT)
    assert "NVIDIA GPU" in skip_reason({"gpu", "tensorrt"}, NO_GPU, RTX)
    assert skip_reason({"gpu", "tensorrt"}, GPU, RTX) is None
    assert skip_reason(set(), NO_GPU, NO_TRT) is None


def recipe(makefile: str, target: str) -> str:
    """The command lines of a Makefile target."""
    lines = makefile.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return "\n".join(body)


def test_make_test_fast_leaves_out_the_slow_tests_and_make_test_runs_all(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    assert '-m "not slow"' in recipe(makefile, "test-fast")
    full = recipe(makefile, "test")
    assert "not slow" not in full and "--durations=20" in full
    # the selection, under the project's pytest settings: a slow test is left out, a mistyped marker is an error
    (tmp_path / "test_x.py").write_text("import pytest\n\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n\n\n"
                                        "def test_fast():\n    pass\n")
    (tmp_path / "test_typo.py").write_text("import pytest\n\n\n@pytest.mark.slwo\ndef test_typo():\n    pass\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(root / "pyproject.toml"),
               "--rootdir", str(tmp_path)]
    fast = subprocess.run([*command, "-m", "not slow", str(tmp_path / "test_x.py")], capture_output=True, text=True,
                          timeout=120)
    assert "1 passed, 1 deselected" in fast.stdout, fast.stdout + fast.stderr
    typo = subprocess.run([*command, str(tmp_path / "test_typo.py")], capture_output=True, text=True, timeout=120)
    assert typo.returncode != 0 and "slwo" in typo.stdout + typo.stderr
