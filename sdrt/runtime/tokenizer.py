"""The prompt tokenizer of the torch-free runtime: `tokenizer/tokenizer.json` read with `tokenizers`.

It gives the ids diffusers gets from ``tokenizer(prompt, padding="max_length",
max_length=77, truncation=True)``: BOS, the prompt's tokens, EOS, then the pad token
(``<|endoftext|>`` for SD 1.x, ``!`` for SD 2.x, as the folder's tokenizer_config.json says).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError, warn
from sdrt.spec import TOKEN_LENGTH

#: Where a tokenizer folder may name its pad token and length, first match wins (transformers' order).
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
DEFAULT_PAD = "<|endoftext|>"
#: transformers writes a huge model_max_length to mean "no limit"; SD's text encoders read 77.
NO_LIMIT = 10_000


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SdrtError(f"{path} is not readable JSON ({e}): re-export the model folder") from None


def _token_text(token: Any) -> str | None:
    """A special token as tokenizer configs spell it: "!" or {"content": "!", ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


class ClipTokenizer:
    """CLIP prompt tokenizer: list of prompts -> int32 ids [N, model_max_length]."""

    def __init__(self, tokenizer: Any, *, pad_token: str = DEFAULT_PAD, model_max_length: int = TOKEN_LENGTH):
        from tokenizers import Tokenizer

        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise SdrtError(f"pad token {pad_token!r} is not in the tokenizer's vocabulary: re-export the model folder")
        self.model_max_length = int(model_max_length)
        self.pad_token, self.pad_token_id = pad_token, pad_id
        # Two copies: one counts a prompt's full length (for the warning), one gives the ids.
        self._full = Tokenizer.from_str(tokenizer.to_str())
        self._full.no_truncation()
        self._full.no_padding()
        self._fixed = Tokenizer.from_str(tokenizer.to_str())
        self._fixed.enable_truncation(max_length=self.model_max_length)
        self._fixed.enable_padding(length=self.model_max_length, pad_id=pad_id, pad_token=pad_token)
        # the ids a chunk of a long prompt starts and ends with (what the post-processor adds around text)
        ends = self._full.encode("").ids
        self.bos_token_id, self.eos_token_id = (ends[0], ends[-1]) if len(ends) == 2 else (None, None)
        self.comma_token_id = tokenizer.token_to_id(",</w>")  # CLIP's BPE spells a word-final comma so

    @classmethod
    def from_folder(cls, path: str | Path) -> "ClipTokenizer":
        """Load a model folder's ``tokenizer/`` (tokenizer.json plus its config files)."""
        from tokenizers import Tokenizer

        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise SdrtError(f"{file} is missing: re-export the model folder (sdrt export) to write it")
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as e:  # the tokenizers library raises its own Exception type
            raise SdrtError(f"{file} is not a tokenizers file ({e}): re-export the model folder") from None
        configs = [_read_json(folder / name) for name in CONFIG_FILES]
        padding = json.loads(tokenizer.to_str()).get("padding") or {}
        pads = [_token_text(c.get("pad_token")) for c in configs] + [padding.get("pad_token"), DEFAULT_PAD]
        lengths = [c.get("model_max_length") for c in configs] + [TOKEN_LENGTH]
        max_len = next(int(n) for n in lengths if isinstance(n, (int, float)) and 0 < n < NO_LIMIT)
        return cls(tokenizer, pad_token=next(p for p in pads if p), model_max_length=max_len)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, without BOS/EOS, uncut (the pieces long prompts are chunked from)."""
        return [e.ids for e in self._full.encode_batch(list(texts), add_special_tokens=False)]

    def __call__(self, prompts: str | Sequence[str]) -> np.ndarray:
        """Token ids, int32 [N, model_max_length]; prompts past it are cut, with a warning."""
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in batch):
            raise SdrtError("a prompt must be a string or a list of strings")
        for i, full in enumerate(self._full.encode_batch(batch)):
            dropped = len(full.ids) - self.model_max_length
            if dropped > 0:
                # diffusers' convention: say what was cut; the ids between the kept ones and EOS.
                text = self._full.decode(full.ids[self.model_max_length - 1 : -1]).replace("</w>", " ").strip()
                shown = text if len(text) <= 60 else text[:57] + "..."
                warn(f"prompt {i} was truncated: CLIP reads at most {self.model_max_length} tokens, "
                     f"{dropped} tokens were dropped: {shown!r}")
        ids = [e.ids for e in self._fixed.encode_batch(batch)]
        return np.asarray(ids, dtype=np.int32).reshape(len(batch), self.model_max_length)
