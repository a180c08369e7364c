"""The runtime tokenizer gives transformers' CLIPTokenizer ids, on the real CLIP vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")

from sdrt.export.tokenizer_files import build_clip_tokenizer, clip_vocab, write_tokenizer  # noqa: E402

SD1_PAD, SD2_PAD = "<|endoftext|>", "!"
BOS, EOS = 49406, 49407
LONG = " ".join(f"word{i} and a red apple" for i in range(30))

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "A PHOTO Of A CaT, highly detailed, 8k",
    "Café crème brûlée à la française, naïve façade, Ångström, señor",
    "e\u0301te\u0301 (combining accents) vs été",
    "一只猫坐在月球上，日本語のテキスト，한국어 문장",
    "hello, world!!! (masterpiece:1.2) [foo] {bar} <baz> --no ~tilde~ @user #tag $5 & 100% ^_^",
    "1234567890 3.14159 1e-5 2024-01-31 1,000,000 ½ ² ³",
    "🐱🚀 a cat 👩‍🚀 astronaut 🇫🇷 flag ❤️",
    "a    cat \t\t on   the\n\nmat   ",
    "line one\nline two\r\nline\tthree",
    "   leading and trailing   ",
    "it's don't we'll they're I'M YOU'VE she'd",
    "text with <|endoftext|> and <|startoftext|> inside",
    "!!! ! ?! wow!",
    "ﬁ ligature, ｆｕｌｌｗｉｄｔｈ, Ⅻ",
    LONG,
]


@pytest.fixture(scope="module", params=[SD1_PAD, SD2_PAD], ids=["sd1-pad", "sd2-pad"])
def pair(request, tmp_path_factory):
    """(runtime tokenizer read from a written folder, transformers' CLIPTokenizer, folder)."""
    reference = build_clip_tokenizer(pad_token=request.param)
    folder = write_tokenizer(reference, tmp_path_factory.mktemp("tokenizer"))
    return ClipTokenizer.from_folder(folder), reference, folder


def reference_ids(tokenizer, prompts):
    return np.array(tokenizer(prompts, padding="max_length", max_length=77, truncation=True).input_ids)


def test_vocabulary_is_clips():
    vocab, merges = clip_vocab()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    assert vocab["!"] == 0 and vocab["!</w>"] == 256


def test_known_ids_of_the_real_vocabulary(pair):
    runtime, _, _ = pair
    ids = runtime(["a photo of a cat"])[0]
    assert ids[:7].tolist() == [BOS, 320, 1125, 539, 320, 2368, EOS]  # CLIP's published ids


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_ids_equal_transformers(pair, prompt):
    runtime, reference, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = runtime([prompt])
    np.testing.assert_array_equal(got, reference_ids(reference, [prompt]))


def test_batch_equals_transformers_and_a_reloaded_folder(pair):
    runtime, reference, folder = pair
    reloaded = transformers.CLIPTokenizer.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = runtime(PROMPTS)
    assert got.dtype == np.int32 and got.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(got, reference_ids(reference, PROMPTS))
    np.testing.assert_array_equal(got, reference_ids(reloaded, PROMPTS))


def test_pad_conventions(pair):
    runtime, reference, _ = pair
    ids = runtime("a cat")  # a single string is a batch of one
    assert ids.shape == (1, 77) and runtime.model_max_length == 77
    assert ids[0, :4].tolist() == [BOS, 320, 2368, EOS]
    expected_pad = 0 if reference.pad_token == SD2_PAD else EOS
    assert runtime.pad_token_id == expected_pad and set(ids[0, 4:].tolist()) == {expected_pad}


def test_long_prompt_is_truncated_with_a_warning_saying_how_many_tokens(pair):
    runtime, reference, _ = pair
    full = len(reference(LONG).input_ids)  # untruncated, BOS and EOS included
    assert full > 77
    with pytest.warns(UserWarning, match=rf"\b{full - 77} tokens were dropped") as record:
        ids = runtime(["short", LONG])
    assert len(record) == 1 and "prompt 1" in str(record[0].message)
    assert ids[1, -1] == EOS and ids[1, 0] == BOS


def test_short_prompts_do_not_warn(pair):
    runtime, _, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime(PROMPTS[:-1])
        assert runtime([]).shape == (0, 77)


def test_pad_token_comes_from_the_config_in_its_older_dict_form(tmp_path):
    """A folder as older transformers wrote it: no padding in tokenizer.json, pad as a dict."""
    folder = write_tokenizer(build_clip_tokenizer(pad_token=SD2_PAD), tmp_path)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["padding"] = data["truncation"] = None
    (folder / "tokenizer.json").write_text(json.dumps(data))
    (folder / "special_tokens_map.json").unlink()
    config = {"model_max_length": 77, "pad_token": {"content": "!", "lstrip": False, "__type": "AddedToken"}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ids = ClipTokenizer.from_folder(folder)(["a cat"])
    assert ids[0, 4:].tolist() == [0] * 73


def test_missing_or_corrupt_tokenizer_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SdrtError, match="tokenizer.json is missing"):
        ClipTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(SdrtError, match="not a tokenizers file"):
        ClipTokenizer.from_folder(tmp_path)


def test_non_string_prompt_is_rejected(pair):
    with pytest.raises(SdrtError, match="string"):
        pair[0]([1, 2])


def test_runtime_tokenizer_imports_neither_torch_nor_transformers(pair):
    folder = pair[2]
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from sdrt.runtime.tokenizer import ClipTokenizer\n"
        f"print(ClipTokenizer.from_folder({str(folder)!r})(['a cat'])[0, :4].tolist())"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([BOS, 320, 2368, EOS])


@pytest.mark.parametrize("pad", [SD1_PAD, SD2_PAD], ids=["sd1-pad", "sd2-pad"])
def test_a_released_style_folder_without_tokenizer_json(tmp_path, pad):
    """SD repos ship vocab.json + merges.txt + configs only: export converts, the ids stay."""
    source = tmp_path / "source"
    write_tokenizer(build_clip_tokenizer(pad_token=pad), source)
    (source / "tokenizer.json").unlink()
    special = lambda t: {"content": t, "lstrip": False, "normalized": True, "rstrip": False,  # noqa: E731
                         "single_word": False, "__type": "AddedToken"}
    config = {"add_prefix_space": False, "bos_token": special("<|startoftext|>"), "do_lower_case": True,
              "eos_token": special("<|endoftext|>"), "errors": "replace", "model_max_length": 77,
              "pad_token": pad, "tokenizer_class": "CLIPTokenizer", "unk_token": special("<|endoftext|>")}
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    user = transformers.CLIPTokenizer.from_pretrained(source)
    runtime = ClipTokenizer.from_folder(write_tokenizer(user, tmp_path / "exported"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(runtime(PROMPTS), reference_ids(user, PROMPTS))
    assert runtime.pad_token == pad
