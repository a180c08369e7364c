"""Textual-inversion embeddings without re-export: the web UI's and diffusers' files, named in the prompt in
both syntaxes; the embedding changes the image only when named, its vectors reach the text encoder as a
PyTorch CLIP with an extended table computes them, LoRA switches keep it, and bad files are one line."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime.torch_pickle import load as load_pickle

CALL = dict(num_inference_steps=2, guidance_scale=5.0, height=64, width=64, seed=3, output_type="np")
WIDTH = 32  # the tiny preset's text encoder


def vectors(n: int, seed: int = 0, width: int = WIDTH) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * 0.5).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    save_file({"emb_params": vectors(2, 1)}, str(tmp_path / "shinycat.safetensors"))  # the web UI's
    torch.save({"string_to_param": {"*": torch.from_numpy(vectors(3, 2))}, "name": "x", "step": 100},
               tmp_path / "oldstyle.pt")  # the web UI's .pt
    torch.save({"<toy>": torch.from_numpy(vectors(1, 3)[0])}, tmp_path / "learned_embeds.bin")  # diffusers'
    return tmp_path


@pytest.fixture
def pipe(tiny_onnx):
    from sdrt.runtime import Pipeline

    pipe = Pipeline.load(tiny_onnx, backend="ort-cpu")
    yield pipe
    pipe.close()


def test_an_embedding_changes_the_image_only_when_named(pipe, files) -> None:
    before = pipe("a cat on a sofa", **CALL).images
    assert pipe.load_textual_inversion(files / "shinycat.safetensors") == "shinycat"
    assert np.array_equal(pipe("a cat on a sofa", **CALL).images, before)
    named = pipe("a shinycat on a sofa", **CALL)
    assert not np.array_equal(named.images, before)
    assert named.parameters["textual_inversions"][0]["name"] == "shinycat"
    weighted = pipe("a (shinycat:1.3) on a sofa", prompt_syntax="a1111", **CALL)
    assert not np.array_equal(weighted.images, named.images)
    assert np.array_equal(pipe("a (ShinyCat:1.0) on a sofa", prompt_syntax="a1111", **CALL).images, named.images)
    pipe.unload_textual_inversion()
    assert np.array_equal(pipe("a cat on a sofa", **CALL).images, before)


def test_the_vectors_reach_the_encoder_as_an_extended_table_does(pipe, files, preset_source) -> None:
    torch = pytest.importorskip("torch")
    import transformers

    pipe.load_textual_inversion(files / "oldstyle.pt")
    pipe.load_textual_inversion(files / "learned_embeds.bin")
    prompt = "a <toy> and an oldstyle cat"
    got = pipe.encode_prompts([prompt], [""], 1, False).hidden[0]
    source = preset_source("tiny")
    tok = transformers.CLIPTokenizer.from_pretrained(source / "tokenizer")
    model = transformers.CLIPTextModel.from_pretrained(source / "text_encoder").eval()
    table = model.get_input_embeddings().weight.detach().numpy()
    vocab = table.shape[0]
    extended = np.concatenate([table, vectors(3, 2), vectors(1, 3)])  # oldstyle: vocab..+2, <toy>: vocab+3
    ids = [tok.bos_token_id]
    for word in prompt.split():
        word_ids = tok(word, add_special_tokens=False)["input_ids"]
        ids += {"oldstyle": [vocab, vocab + 1, vocab + 2], "<toy>": [vocab + 3]}.get(word, word_ids)
    ids += [tok.eos_token_id] * (77 - len(ids))
    model.resize_token_embeddings(len(extended))
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(torch.from_numpy(extended))
        want = model(torch.tensor([ids])).last_hidden_state[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_lora_switch_keeps_the_embedding(pipe, files, tmp_path) -> None:
    from tests.runtime.lora.helpers import map_shapes, write_kohya

    pipe.load_textual_inversion(files / "shinycat.safetensors")
    named = pipe("a shinycat", **CALL).images
    lora = write_kohya(tmp_path / "l.safetensors", map_shapes(pipe.manifest.folder, text=True), seed=2)
    pipe.set_loras([(lora, 0.8)])
    with_lora = pipe("a shinycat", **CALL).images
    assert not np.array_equal(with_lora, named)
    pipe.set_loras([])
    assert np.array_equal(pipe("a shinycat", **CALL).images, named)


def test_pickles_are_read_without_running_them(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    import os

    class Payload:
        def __reduce__(self):
            return os.system, ("echo never",)

    torch.save({"string_to_param": {"*": Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(SdrtError, match="holds posix.system, which is not a tensor"):
        load_pickle(tmp_path / "evil.pt")


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "wide.safetensors", {"emb_params": vectors(1, width=64)}), "64-wide vectors"),
    (lambda d: (d / "xl.safetensors", {"clip_g": vectors(1, width=WIDTH)}), "trained for another model family"),
    (lambda d: (d / "two.safetensors", {"a": vectors(1), "b": vectors(1)}), "not an embedding this sdrt reads"),
    (lambda d: (d / "missing.safetensors", None), "does not exist"),
    (lambda d: (d / "image.png", None), "not an embedding file"),
])
def test_bad_embeddings_are_one_line_and_leave_the_pipeline_as_it_was(pipe, tmp_path, make, message) -> None:
    from safetensors.numpy import save_file

    path, tensors = make(tmp_path)
    if tensors is not None:
        save_file(tensors, str(path))
    elif path.suffix == ".png":
        path.write_bytes(b"\x89PNG")
    before = pipe("a cat", **CALL).images
    with pytest.raises(SdrtError, match=message):
        pipe.load_textual_inversion(path)
    assert not pipe.embeddings.active and np.array_equal(pipe("a cat", **CALL).images, before)


def test_two_files_of_one_name(pipe, files, tmp_path) -> None:
    from safetensors.numpy import save_file

    pipe.load_textual_inversion(files / "shinycat.safetensors")
    (tmp_path / "other").mkdir()
    save_file({"emb_params": vectors(1, 9)}, str(tmp_path / "other" / "shinycat.safetensors"))
    with pytest.raises(SdrtError, match="named 'shinycat' is loaded already"):
        pipe.load_textual_inversion(tmp_path / "other" / "shinycat.safetensors")
    assert pipe.load_textual_inversion(tmp_path / "other" / "shinycat.safetensors", token="othercat") == "othercat"


def test_unload_by_name(pipe, files) -> None:
    pipe.load_textual_inversion(files / "shinycat.safetensors")
    pipe.load_textual_inversion(files / "learned_embeds.bin")
    with pytest.raises(SdrtError, match="no embedding named 'nope' is loaded \\(loaded: shinycat, <toy>\\)"):
        pipe.unload_textual_inversion("nope")
    toy = pipe("a <toy>", **CALL).images
    pipe.unload_textual_inversion("shinycat")
    assert list(pipe.embeddings.embeddings) == ["<toy>"]
    assert np.array_equal(pipe("a <toy>", **CALL).images, toy)  # the other one keeps working


def test_openvino_takes_the_longer_table(tiny_onnx, files, pipe) -> None:
    pytest.importorskip("openvino")
    from sdrt.runtime import Pipeline
    from sdrt.runtime.images import psnr

    pipe.load_textual_inversion(files / "shinycat.safetensors")
    want = pipe("a shinycat", **CALL).images
    ov = Pipeline.load(tiny_onnx, backend="openvino")
    try:
        before = ov("a shinycat", **CALL).images
        ov.load_textual_inversion(files / "shinycat.safetensors")
        got = ov("a shinycat", **CALL).images
    finally:
        ov.close()
    assert not np.allclose(before, got) and psnr(got, want) >= 40.0
