"""Long and weighted prompts (prompt_syntax="a1111"): chunking as the web UI documents it, the embeddings
against an independent implementation written here (transformers' tokenizer, the PyTorch text encoders),
BREAK, padding of the negative prompt, and the one line for a folder whose UNet takes 77 tokens only."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime.prompt_chunks import Chunker, emphasize, max_text_tokens
from sdrt.runtime.tokenizer import ClipTokenizer

LONG = ("masterpiece, best quality, (a lighthouse on a cliff:1.3), stormy sea, [blurry], dramatic sky, "
        "crashing waves, seagulls, ((golden hour)), rocks, moss, a small boat far away, rain, mist, "
        "old stone walls, a winding path, wildflowers, (lantern light:0.8), fishing nets, a red door, "
        "clouds, birds, a cat on a windowsill, an anchor, driftwood, a weathered sign, shells, sand")


# -- an independent reading of the documented rules (written for the test, not shared with sdrt) ----------
def reference_pieces(prompt: str) -> list:
    """(text, weight) pieces and "BREAK" for the few constructs the test prompts use: (x), (x:w), [x]."""
    out, weight_stack, text = [], [], ""
    i = 0
    while i < len(prompt):
        m = re.match(r":\s*([0-9.]+)\s*\)", prompt[i:])
        ch = prompt[i]
        if ch in "([" or m or ch in ")]":
            if text:
                out.append((text, float(np.prod(weight_stack)) if weight_stack else 1.0))
                text = ""
            if ch == "(":
                weight_stack.append(1.1)
            elif ch == "[":
                weight_stack.append(1 / 1.1)
            elif m:
                weight_stack.pop()
                out[-1] = (out[-1][0], out[-1][1] / 1.1 * float(m.group(1)))
                i += m.end()
                continue
            else:
                weight_stack.pop()
            i += 1
            continue
        if prompt.startswith("BREAK", i):
            out.append((text.rstrip(), float(np.prod(weight_stack)) if weight_stack else 1.0))
            out.append("BREAK")
            text = ""
            i += 5
            while i < len(prompt) and prompt[i] == " ":
                i += 1
            continue
        text += ch
        i += 1
    if text:
        out.append((text, float(np.prod(weight_stack)) if weight_stack else 1.0))
    return [p for p in out if p == "BREAK" or p[0]]


def reference_chunks(hf_tokenizer, prompt: str, backtrack: int = 20) -> list[tuple[list[int], list[float]]]:
    """75 tokens a chunk, BREAK closes one, a full chunk whose last comma is within `backtrack` tokens of its
    end hands the words after that comma to the next chunk; then BOS + 75 (EOS-padded) + EOS, pad after."""
    comma = hf_tokenizer.convert_tokens_to_ids(",</w>")
    stream = []  # (id, weight) and "BREAK"
    for piece in reference_pieces(prompt):
        if piece == "BREAK":
            stream.append("BREAK")
        else:
            stream += [(t, piece[1]) for t in hf_tokenizer(piece[0], add_special_tokens=False)["input_ids"]]
    chunks, current = [], []
    for item in stream:
        if item == "BREAK":
            chunks.append(current)
            current = []
            continue
        if len(current) == 75:
            commas = [k for k, (t, _) in enumerate(current) if t == comma]
            if item[0] != comma and commas and 75 - commas[-1] <= backtrack:
                chunks.append(current[:commas[-1] + 1])
                current = current[commas[-1] + 1:]
            else:
                chunks.append(current)
                current = []
        current.append(item)
    if current or not chunks:
        chunks.append(current)
    bos, eos, pad = hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id
    return [([bos] + [t for t, _ in c] + [eos] + [pad] * (75 - len(c)), [1.0] + [w for _, w in c] + [1.0] * (76 - len(c)))
            for c in chunks]


def reference_embedding(source: Path, family: str, prompt: str) -> tuple[np.ndarray, np.ndarray | None]:
    """[k*77, D] (and SDXL's pooled [P]) with the PyTorch encoders of the diffusers folder."""
    import torch
    import transformers

    encoders = [("tokenizer", "text_encoder", transformers.CLIPTextModel)]
    if family == "sdxl":
        encoders.append(("tokenizer_2", "text_encoder_2", transformers.CLIPTextModelWithProjection))
    parts, pooled = [], None
    for tok_name, enc_name, cls in encoders:
        tok = transformers.CLIPTokenizer.from_pretrained(source / tok_name)
        model = cls.from_pretrained(source / enc_name).eval()
        chunk_states = []
        for ids, weights in reference_chunks(tok, prompt):
            with torch.no_grad():
                out = model(torch.tensor([ids]), output_hidden_states=True)
            z = (out.hidden_states[-2] if family == "sdxl" else out.last_hidden_state)[0].numpy()
            if pooled is None and family == "sdxl" and enc_name == "text_encoder_2":
                pooled = out.text_embeds[0].numpy()
            w = np.asarray(weights, dtype=np.float32)[:, None]
            chunk_states.append(z * w * (z.mean() / (z * w).mean()))
        parts.append(np.concatenate(chunk_states))
    return np.concatenate(parts, axis=-1), pooled


# -- the tests ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_onnx):
    return ClipTokenizer.from_folder(tiny_onnx / "tokenizer")


def test_chunk_counts_follow_the_documented_rules(tiny_tokenizer) -> None:
    chunker = Chunker(tiny_tokenizer)
    word = "cat " * 75
    assert len(chunker.chunks(word.strip())) == 1  # exactly 75 tokens: one chunk
    assert len(chunker.chunks(word + "dog")) == 2  # 76: two
    assert len(chunker.chunks("a cat BREAK a dog")) == 2
    assert len(chunker.chunks("")) == 1 and chunker.chunks("")[0] == chunker.empty()
    two = chunker.chunks("a cat BREAK a dog")
    assert two[0].ids[:3] == [tiny_tokenizer.bos_token_id, *tiny_tokenizer.token_ids(["a cat"])[0]][:3]
    assert all(len(c.ids) == 77 and c.ids[0] == tiny_tokenizer.bos_token_id for c in two)


def test_comma_backtracking_moves_the_words_after_the_last_comma(tiny_tokenizer) -> None:
    chunker = Chunker(tiny_tokenizer)
    prompt = "cat " * 70 + ", red big dog sleeping here now"  # the chunk fills 5 tokens after the comma
    first, second = chunker.chunks(prompt)
    assert first.ids[71] == tiny_tokenizer.comma_token_id and first.ids[72] == tiny_tokenizer.eos_token_id
    assert second.ids[1:7] == tiny_tokenizer.token_ids(["red big dog sleeping here now"])[0]
    plain = Chunker(tiny_tokenizer, comma_backtrack=0).chunks(prompt)
    assert plain[0].ids[72] != tiny_tokenizer.eos_token_id  # off: the chunk is filled to 75


def test_unweighted_chunks_are_left_alone() -> None:
    hidden = np.random.default_rng(0).standard_normal((77, 8)).astype(np.float32)
    assert emphasize(hidden, np.ones(77, np.float32)) is hidden
    weighted = emphasize(hidden, np.r_[np.ones(10), np.full(67, 1.3)].astype(np.float32))
    assert weighted.mean() == pytest.approx(hidden.mean(), rel=1e-5)


def _encoded(pipe, prompt: str, negative: str = "", guidance: bool = False):
    return pipe.encode_prompts([prompt], [negative], 1, guidance, syntax="a1111")


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_long_prompt_embeddings_match_an_independent_implementation(family, tiny_onnx, tiny_sdxl_onnx,
                                                                    preset_source) -> None:
    from sdrt.runtime import Pipeline

    folder, source = (tiny_onnx, preset_source("tiny")) if family == "sd" else (tiny_sdxl_onnx, preset_source("tiny-sdxl"))
    pipe = Pipeline.load(folder, backend="ort-cpu")
    try:
        prompt = LONG + " BREAK (a second chunk:1.2), [quiet]"
        got = _encoded(pipe, prompt)
        want, pooled = reference_embedding(source, family, prompt)
        assert got.hidden.shape == (1, *want.shape) and want.shape[0] == 3 * 77
        np.testing.assert_allclose(got.hidden[0], want, rtol=1e-4, atol=1e-4)
        if pooled is not None:
            np.testing.assert_allclose(got.pooled[0], pooled, rtol=1e-4, atol=1e-4)
    finally:
        pipe.close()


def test_negative_prompt_is_padded_with_empty_chunks(pipelines) -> None:
    pipe = pipelines("tiny")
    both = _encoded(pipe, LONG, "ugly", guidance=True)
    empty = _encoded(pipe, "")
    ugly = _encoded(pipe, "ugly")
    assert both.hidden.shape[:2] == (2, 154)
    np.testing.assert_array_equal(both.hidden[0, :77], ugly.hidden[0])
    np.testing.assert_array_equal(both.hidden[0, 77:], empty.hidden[0])


def test_weight_one_is_the_plain_prompt_bit_for_bit(pipelines) -> None:
    pipe = pipelines("tiny")
    call = dict(num_inference_steps=2, guidance_scale=5.0, height=64, width=64, seed=3, output_type="np")
    plain = pipe("a red word", **call).images
    assert np.array_equal(pipe("a (red:1.0) word", prompt_syntax="a1111", **call).images, plain)
    assert np.array_equal(pipe("a red word", prompt_syntax="a1111", **call).images, plain)  # = diffusers' way
    assert not np.array_equal(pipe("a (red:1.4) word", prompt_syntax="a1111", **call).images, plain)
    assert not np.array_equal(pipe("a (red:1.0) word", **call).images, plain)  # default: brackets are text


def test_long_prompt_generates_and_is_recorded(pipelines) -> None:
    out = pipelines("tiny")(LONG, prompt_syntax="a1111", num_inference_steps=2, height=64, width=64, seed=1,
                            output_type="np")
    assert out.images.shape == (1, 64, 64, 3) and out.parameters["prompt_syntax"] == "a1111"


def test_unknown_syntax_is_one_line(pipelines) -> None:
    with pytest.raises(SdrtError, match="prompt_syntax 'comfy' is not known"):
        pipelines("tiny")("x", prompt_syntax="comfy", num_inference_steps=1)


def test_a_static_77_folder_names_the_reexport(tiny_onnx, tmp_path) -> None:
    from sdrt.runtime import Pipeline

    for entry in tiny_onnx.iterdir():  # the export, with the manifest of one written before L was dynamic
        if entry.name not in ("sdrt.json", "engines"):
            os.symlink(entry, tmp_path / entry.name)
    manifest = json.loads((tiny_onnx / "sdrt.json").read_text())
    for shape in manifest["components"]["unet"]["check"]["shapes"]:
        shape["dims"].pop("L", None)
    (tmp_path / "sdrt.json").write_text(json.dumps(manifest))
    pipe = Pipeline.load(tmp_path, backend="ort-cpu")
    try:
        assert max_text_tokens(pipe.manifest) == 77
        pipe("a (short:1.2) prompt", prompt_syntax="a1111", num_inference_steps=1, height=64, width=64)
        with pytest.raises(SdrtError, match="takes 77 .*export the model again"):
            pipe(LONG, prompt_syntax="a1111", num_inference_steps=1, height=64, width=64)
    finally:
        pipe.close()
