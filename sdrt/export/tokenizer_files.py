"""CLIP tokenizer files: build one from the shipped BPE vocabulary, write one for the runtime.

The presets tokenize with the real CLIP vocabulary (``sdrt/data/bpe_simple_vocab_16e6.txt.gz``,
MIT, from open-clip-torch) so token ids mean what they mean in every released SD checkpoint.
The export writes ``tokenizer/tokenizer.json``, the one file the torch-free runtime reads with
the ``tokenizers`` library, next to the vocab/merges/config files transformers reads.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
from pathlib import Path
from typing import Any

from sdrt.spec import TOKEN_LENGTH

VOCAB_RESOURCE = "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: CLIP keeps the first 49152 - 256 - 2 merges of the file (its first line is a header).
NUM_MERGES = 49152 - 256 - 2


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes, in byte order of CLIP's vocab."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    # CLIP lists the printable bytes first, then the remapped ones (dict insertion order).
    return list(chars.values())


@functools.lru_cache(maxsize=1)
def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (49,408 tokens) and merges, derived from the shipped BPE file as CLIP does."""
    data = (importlib.resources.files("sdrt") / "data" / VOCAB_RESOURCE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer(pad_token: str = EOS, model_max_length: int = TOKEN_LENGTH) -> Any:
    """transformers' CLIPTokenizer on the real vocabulary; SD 1.x pads with EOS, SD 2.x with "!"."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def _fast_backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` behind a transformers tokenizer (converted if it is a slow one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend
    from transformers.convert_slow_tokenizer import convert_slow_tokenizer

    return convert_slow_tokenizer(tokenizer)


def _token_text(token: Any) -> str | None:
    return None if token is None else str(getattr(token, "content", token))


def write_tokenizer(tokenizer: Any, out_dir: str | Path) -> Path:
    """Write a CLIP tokenizer into ``out_dir`` (the model folder's ``tokenizer/``).

    ``tokenizer.json`` is what the runtime loads; it carries the SD convention (truncate and pad to
    ``model_max_length`` with the pad token) so a plain ``tokenizers`` user gets diffusers' ids.
    vocab.json, merges.txt and the two config files let transformers load the folder too.
    """
    from tokenizers import Tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A copy: transformers mutates its backend's padding/truncation on every call.
    backend = Tokenizer.from_str(_fast_backend(tokenizer).to_str())
    max_len = int(tokenizer.model_max_length)
    if max_len > 10_000:  # transformers' "no limit" sentinel: SD's text encoders take 77 tokens
        max_len = TOKEN_LENGTH
    pad = _token_text(tokenizer.pad_token) or _token_text(tokenizer.eos_token)
    backend.enable_truncation(max_length=max_len)
    backend.enable_padding(length=max_len, pad_id=backend.token_to_id(pad), pad_token=pad)
    backend.save(str(out / "tokenizer.json"))
    backend.model.save(str(out))  # vocab.json and merges.txt

    special = {
        key: _token_text(getattr(tokenizer, key, None))
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    special = {k: v for k, v in special.items() if v is not None}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_len,
        "do_lower_case": True,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
    return out
