"""The gpu and tensorrt markers ask for one thing each (tests/conftest.py)."""

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
