"""The T5 prompt tokenizer of the torch-free runtime: a folder's ``tokenizer.json`` read with `tokenizers`.

It gives the ids SD3's and Flux's pipelines get from transformers' T5 tokenizer:
``tokenizer(prompt, padding="max_length", max_length=max_sequence_length, truncation=True)`` — the
SentencePiece pieces (the file's precompiled normaliser and Metaspace pre-tokeniser), then ``</s>``,
then ``<pad>`` up to the length; a prompt past it keeps its first length - 1 pieces and the ``</s>``.
The length changes from call to call (``max_sequence_length``), so it is an argument, not a setting.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError, warn

PAD, EOS = "<pad>", "</s>"
#: transformers' model_max_length for T5 tokenizers (a folder's tokenizer_config.json may say otherwise)
DEFAULT_MAX_LENGTH = 512


class T5Tokenizer:
    """Prompts -> int32 ids [N, length], for any length up to `model_max_length`."""

    def __init__(self, tokenizer: Any, *, model_max_length: int = DEFAULT_MAX_LENGTH):
        from tokenizers import Tokenizer

        self.pad_token_id = tokenizer.token_to_id(PAD)
        self.eos_token_id = tokenizer.token_to_id(EOS)
        if self.pad_token_id is None or self.eos_token_id is None:
            raise SdrtError(f"the T5 tokenizer has no {PAD} or {EOS} token: re-export the model folder")
        self.model_max_length = int(model_max_length)
        self._source = tokenizer.to_str()
        self._full = Tokenizer.from_str(self._source)
        self._full.no_truncation()
        self._full.no_padding()
        self._fixed: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, path: str | Path) -> "T5Tokenizer":
        """Load a model folder's T5 tokenizer (``tokenizer.json``; ``model_max_length`` from its config)."""
        from tokenizers import Tokenizer

        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise SdrtError(f"{file} is missing: re-export the model folder (sdrt export writes it; a folder "
                            "with only spiece.model needs that conversion)")
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as e:  # the tokenizers library raises its own Exception type
            raise SdrtError(f"{file} is not a tokenizers file ({e}): re-export the model folder") from None
        max_length = DEFAULT_MAX_LENGTH
        config = folder / "tokenizer_config.json"
        if config.is_file():
            try:
                value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
            except (OSError, ValueError) as e:
                raise SdrtError(f"{config} is not readable JSON ({e}): re-export the model folder") from None
            if isinstance(value, (int, float)) and 0 < value < 1_000_000:
                max_length = int(value)
        return cls(tokenizer, model_max_length=max_length)

    def _fixed_for(self, length: int) -> Any:
        from tokenizers import Tokenizer

        with self._lock:
            if length not in self._fixed:
                fixed = Tokenizer.from_str(self._source)
                fixed.enable_truncation(max_length=length)
                fixed.enable_padding(length=length, pad_id=self.pad_token_id, pad_token=PAD)
                self._fixed[length] = fixed
            return self._fixed[length]

    def __call__(self, prompts: str | Sequence[str], length: int) -> np.ndarray:
        """Token ids, int32 [N, length]; a prompt past `length` is cut (with a warning, as diffusers does)."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in batch):
            raise SdrtError("a prompt must be a string or a list of strings")
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 1:
            raise SdrtError(f"max_sequence_length must be a positive integer, got {length!r}")
        if length > self.model_max_length:
            raise SdrtError(f"max_sequence_length {length} is above the T5 tokenizer's {self.model_max_length}; "
                            f"use at most {self.model_max_length}")
        for i, full in enumerate(self._full.encode_batch(batch)):
            dropped = len(full.ids) - length
            if dropped > 0:
                text = self._full.decode(full.ids[length - 1 : -1])
                shown = text if len(text) <= 60 else text[:57] + "..."
                warn(f"prompt {i} was truncated: T5 reads max_sequence_length={length} tokens here, "
                     f"{dropped} tokens were dropped: {shown!r}")
        ids = [e.ids for e in self._fixed_for(int(length)).encode_batch(batch)]
        return np.asarray(ids, dtype=np.int32).reshape(len(batch), int(length))
