"""The runtime's T5 tokenizer gives transformers' T5TokenizerFast ids for the same folder.

The folder is what export writes for the presets (the shipped SentencePiece Unigram vocabulary, see
sdrt/export/tokenizer_t5.py); the call is SD3's and Flux's: padding="max_length", truncation=True,
max_length=max_sequence_length.
"""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest

from sdrt.errors import SdrtError
from sdrt.runtime.t5_tokenizer import T5Tokenizer

transformers = pytest.importorskip("transformers")

from sdrt.export.tokenizer_t5 import (  # noqa: E402
    EXTRA_IDS,
    RESOURCE,
    VOCAB_SIZE,
    build_t5_tokenizer,
    train_preset_tokenizer,
    write_t5_tokenizer,
)
from tests.runtime.test_tokenizer import PROMPTS  # noqa: E402  (unicode, spacing, punctuation, emoji, ...)

LONG = " ".join(f"a red apple number {i} on a table" for i in range(80))
T5_PROMPTS = PROMPTS + [
    LONG, "<extra_id_0> sentinel </s> and <pad> and <unk> in text", "x\u200by zero width", "\u00a0nbsp\u3000ideographic",
    "Ｔ５ ＦＵＬＬ", "ǅ ǈ ǋ titlecase digraphs", "ﬀ ﬃ ﬄ", "a" * 300,
]
LENGTHS = [1, 2, 8, 77, 256, 512]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_t5_tokenizer(build_t5_tokenizer(), tmp_path_factory.mktemp("tokenizer_3"))


@pytest.fixture(scope="module")
def reference(folder):
    return transformers.T5TokenizerFast.from_pretrained(str(folder))


def _ref_ids(reference, prompts, length):
    return np.asarray(reference(prompts, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True).input_ids, dtype=np.int32)


@pytest.mark.parametrize("length", LENGTHS)
def test_ids_equal_transformers(folder, reference, length):
    ours = T5Tokenizer.from_folder(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(T5_PROMPTS, length)
    want = _ref_ids(reference, T5_PROMPTS, length)
    assert got.shape == want.shape == (len(T5_PROMPTS), length) and got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_empty_prompt_is_eos_then_padding(folder):
    ids = T5Tokenizer.from_folder(folder)("", 6)
    assert ids.tolist() == [[1, 0, 0, 0, 0, 0]]


def test_truncation_keeps_eos_and_warns(folder, reference):
    ours = T5Tokenizer.from_folder(folder)
    with pytest.warns(UserWarning, match="truncated"):
        ids = ours(LONG, 16)
    assert ids[0, -1] == 1 and (ids[0] != 0).all()
    np.testing.assert_array_equal(ids, _ref_ids(reference, [LONG], 16))


def test_unicode_goes_through_the_normaliser(folder):
    """NFKC-like folding (the precompiled nmt_nfkc charsmap): full-width letters equal ASCII ones."""
    ours = T5Tokenizer.from_folder(folder)
    assert ours("ＡＢＣ ｆｉｎｅ", 12).tolist() == ours("ABC fine", 12).tolist()


def test_the_shipped_vocabulary_is_t5s_kind():
    from importlib.resources import files

    data = json.loads(gzip.decompress((files("sdrt") / "data" / RESOURCE).read_bytes()))
    assert data["model"]["type"] == "Unigram" and data["model"]["unk_id"] == 2
    assert [p for p, _ in data["model"]["vocab"][:3]] == ["<pad>", "</s>", "<unk>"]
    normalizers = data["normalizer"].get("normalizers", [data["normalizer"]])
    assert any(n["type"] == "Precompiled" for n in normalizers)
    tok = build_t5_tokenizer()
    assert len(tok) == VOCAB_SIZE + EXTRA_IDS
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [VOCAB_SIZE + EXTRA_IDS - 1, VOCAB_SIZE]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)


@pytest.mark.slow  # ~6 s alone, ~55 s on a busy 2-core machine; not needed for the ids proof above
def test_the_shipped_vocabulary_is_what_the_training_script_makes(tmp_path):
    """sentencepiece trains it again byte for byte (deterministic text, one thread)."""
    from importlib.resources import files

    again = train_preset_tokenizer(tmp_path / "again.json.gz")
    shipped = (files("sdrt") / "data" / RESOURCE).read_bytes()
    assert gzip.decompress(again.read_bytes()) == gzip.decompress(shipped)


@pytest.mark.parametrize("length,words", [(513, "above the T5 tokenizer's 512"), (0, "positive integer"),
                                          (2.5, "positive integer")])
def test_bad_length_is_one_line(folder, length, words):
    with pytest.raises(SdrtError, match=words):
        T5Tokenizer.from_folder(folder)("a cat", length)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(SdrtError, match="tokenizer.json is missing"):
        T5Tokenizer.from_folder(tmp_path)


def test_model_max_length_from_the_folder(folder, tmp_path):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "t")
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 128}))
    assert T5Tokenizer.from_folder(copy).model_max_length == 128
