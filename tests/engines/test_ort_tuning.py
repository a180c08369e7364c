"""CPU tuning levers: graph rewrites keep the numbers, are cached, and reach the ort-cpu backend."""

import numpy as np
import onnx
import pytest

from sdrt.engines.ort_graph_rewrites import attention_to_mha, group_norm_to_instance_norm
from sdrt.engines.ort_tuning import CPU_PRESETS, backend_options, rewritten_model
from sdrt.errors import SdrtError

REWRITES = ("attention_to_mha", "group_norm_to_instance_norm")


def _feeds(component: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "unet": {"sample": rng.standard_normal((2, 4, 16, 16), dtype=np.float32),
                 "timestep": np.array([10.0, 10.0], np.float32),
                 "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)},
        "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, 16, 16), dtype=np.float32)},
    }[component]


def _run(model, feeds):
    import onnxruntime as ort

    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("component, expect", [("unet", {"mha": True, "gn": True}),
                                                ("vae_decoder", {"mha": True, "gn": True})])
def test_rewrites_keep_the_numbers(tiny_onnx, component, expect):
    path = tiny_onnx / component / "model.onnx"
    model = onnx.load(str(path))
    n_mha, n_gn = attention_to_mha(model), group_norm_to_instance_norm(model)
    assert (n_mha > 0, n_gn > 0) == (expect["mha"], expect["gn"])
    ops = {n.op_type for n in model.graph.node}
    assert "MultiHeadAttention" in ops and "GroupNormalization" not in ops
    feeds = _feeds(component)
    np.testing.assert_allclose(_run(model, feeds), _run(path, feeds), atol=1e-4, rtol=1e-4)


def test_rewritten_model_is_cached_and_keyed(tiny_onnx, tmp_path):
    path = tiny_onnx / "unet" / "model.onnx"
    first = rewritten_model(path, REWRITES, tmp_path)
    assert first != path and first.is_file()
    mtime = first.stat().st_mtime_ns
    assert rewritten_model(path, REWRITES, tmp_path) == first and first.stat().st_mtime_ns == mtime
    only_gn = rewritten_model(path, ("group_norm_to_instance_norm",), tmp_path)
    assert only_gn != first  # another set of rewrites, another entry
    with pytest.raises(SdrtError, match="unknown graph rewrite"):
        rewritten_model(path, ("warp_speed",), tmp_path)


def test_rewritten_model_is_keyed_by_content_not_mtime(tiny_onnx, tmp_path):
    """The backend passes the manifest's component hash; without one the files' sha256 is the key."""
    import os
    import shutil

    src = tmp_path / "unet"
    shutil.copytree(tiny_onnx / "unet", src)
    path = src / "model.onnx"
    given = rewritten_model(path, REWRITES, tmp_path / "a", "a" * 64)
    assert rewritten_model(path, REWRITES, tmp_path / "a", "a" * 64) == given
    assert rewritten_model(path, REWRITES, tmp_path / "a", "b" * 64) != given  # a new export: a new entry
    computed = rewritten_model(path, REWRITES, tmp_path / "c")
    os.utime(path, ns=(1, 1))
    assert rewritten_model(path, REWRITES, tmp_path / "c") == computed  # touched: the same entry
    model = onnx.load(str(path), load_external_data=False)
    model.doc_string = "another export"
    onnx.save(model, str(path))  # other bytes: another entry
    assert rewritten_model(path, REWRITES, tmp_path / "c") != computed


def test_rewritten_model_links_external_weights(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save(model, str(src / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    # nothing to rewrite in a MatMul: the original is returned, and remembered
    assert rewritten_model(src / "model.onnx", REWRITES, tmp_path / "cache") == src / "model.onnx"
    assert list((tmp_path / "cache").glob("rewrites-*/unchanged"))


def test_backend_runs_the_rewritten_graphs(tiny_onnx, tmp_path):
    import shutil

    from sdrt.runtime.pipeline import Pipeline

    folder = tmp_path / "tiny"
    shutil.copytree(tiny_onnx, folder)
    latents = np.random.default_rng(0).standard_normal((1, 4, 32, 32), dtype=np.float32)
    args = dict(num_inference_steps=2, latents=latents, output_type="np", seed=0)
    plain = Pipeline.load(folder, "ort-cpu")("a cat", **args).images
    tuned = Pipeline.load(folder, "ort-cpu", **backend_options("ort-cpu", "fast"))("a cat", **args).images
    np.testing.assert_allclose(tuned, plain, atol=1e-4)
    assert list((folder / "engines" / "ort-cpu").glob("rewrites-*/model.onnx"))


def test_presets():
    assert backend_options("ort-cpu", "default") == {}
    assert backend_options("ort-cpu", "fast")["graph_rewrites"] == REWRITES
    assert backend_options("ort-cuda", "fast") == {}  # CPU levers only
    assert set(CPU_PRESETS) >= {"default", "fast"}
    with pytest.raises(SdrtError, match="tuning preset 'nope'"):
        backend_options("ort-cpu", "nope")


def test_rewritten_model_survives_losing_a_race(tiny_onnx, tmp_path, monkeypatch):
    """Another process wrote the same rewrite first: ours is dropped, theirs is used, no temp is left."""
    import os
    import shutil

    from sdrt import atomic

    path = tiny_onnx / "unet" / "model.onnx"
    real_rename = os.rename

    def other_process_first(src, dst):
        shutil.copytree(src, dst)  # the other writer's identical result lands just before ours
        return real_rename(src, dst)  # -> OSError: the target is a non-empty folder

    monkeypatch.setattr(atomic.os, "rename", other_process_first)
    first = rewritten_model(path, REWRITES, tmp_path)
    assert first.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.parent.name]
