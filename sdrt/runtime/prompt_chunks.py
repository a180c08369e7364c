"""Long and weighted prompts the way AUTOMATIC1111 reads them: 77-token chunks, emphasis, mean restoration.

What the web UI documents (its wiki: "Infinite prompt length", "BREAK", "Attention/emphasis"), built
on `sdrt.runtime.prompt_syntax`:

- the prompt is parsed into weighted pieces; each piece is tokenized on its own (no BOS/EOS);
- tokens fill chunks of 75; a full chunk whose last comma is within the last 20 tokens moves the
  text after that comma to the next chunk (the web UI's "padding from the last comma" setting, 20 by
  default); ``BREAK`` closes the current chunk; every chunk is padded to 75 and wrapped in BOS ... EOS
  (77 ids, padded with the tokenizer's pad token after EOS, as diffusers pads one chunk);
- each chunk runs through the text encoder on its own; each token's hidden state is multiplied by
  its weight, then the chunk is rescaled so its mean equals the unweighted mean (the web UI's
  "Original" emphasis);
- the chunks are concatenated along the tokens: the UNet attends to 77·k tokens. Prompts of one call
  (the negative ones too) are padded to the same k with the encoding of an empty chunk (the web UI's
  "pad prompt/negative prompt to be same length" setting: one UNet batch);
- SDXL: each encoder chunks and weights on its own, the hidden states side by side as usual; the
  pooled embedding is the first chunk's.

One difference, on purpose: the web UI takes a chunk's mean over its whole batch of prompts, sdrt per
prompt, so an image never depends on what it was batched with (the same for a batch of one).
A prompt with no brackets, no BREAK and at most 75 tokens gives exactly the ids and embeddings of the
diffusers behaviour (the default), so ``(word:1.0)`` is the plain ``word`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from sdrt.errors import SdrtError
from sdrt.runtime.prompt_syntax import BREAK, parse
from sdrt.runtime.prompts import Encoder, TextConditioning, select_layer
from sdrt.spec import N, TOKEN_LENGTH

#: the web UI's default for "padding from the last comma within n tokens" (0 turns it off)
COMMA_BACKTRACK = 20


class EmbeddingLookup(Protocol):
    """Where a textual-inversion embedding is named in a piece's tokens (sdrt.runtime.textual_inversion)."""

    def find(self, tokenizer: Any, ids: Sequence[int], position: int) -> tuple[list[int], int] | None:
        """(the ids its vectors take, how many prompt tokens its name spans), or None."""


@dataclass
class Chunk:
    """One text-encoder input: 77 ids (BOS, up to 75 tokens, EOS, padding) and a weight per id."""

    ids: list[int]
    weights: list[float]

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


class Chunker:
    """Chunks the prompts of one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer: Any, *, comma_backtrack: int = COMMA_BACKTRACK,
                 embeddings: EmbeddingLookup | None = None):
        self.tokenizer = tokenizer
        self.length = int(tokenizer.model_max_length)
        self.size = self.length - 2  # tokens between BOS and EOS
        self.comma_backtrack = comma_backtrack
        self.embeddings = embeddings
        if tokenizer.bos_token_id is None:
            raise SdrtError("this tokenizer adds no BOS/EOS around a prompt: A1111 prompt syntax needs CLIP's "
                            "tokenizer (re-export the model folder)")

    def wrap(self, tokens: list[int], weights: list[float]) -> Chunk:
        pad = self.size - len(tokens)
        t = self.tokenizer
        return Chunk([t.bos_token_id, *tokens, t.eos_token_id] + [t.pad_token_id] * pad,
                     [1.0, *weights, 1.0] + [1.0] * pad)

    def empty(self) -> Chunk:
        return self.wrap([], [])

    def chunks(self, prompt: str) -> list[Chunk]:
        pieces = parse(prompt)
        texts = [p[0] for p in pieces if p is not BREAK]
        piece_ids = iter(self.tokenizer.token_ids(texts))
        comma = self.tokenizer.comma_token_id
        done: list[Chunk] = []
        tokens: list[int] = []
        weights: list[float] = []
        last_comma = -1

        def close() -> None:
            nonlocal tokens, weights, last_comma
            done.append(self.wrap(tokens, weights))
            tokens, weights, last_comma = [], [], -1

        for piece in pieces:
            if piece is BREAK:
                close()
                continue
            weight = piece[1]
            ids = next(piece_ids)
            i = 0
            while i < len(ids):
                if ids[i] == comma:
                    last_comma = len(tokens)
                elif (self.comma_backtrack and len(tokens) == self.size and last_comma != -1
                      and len(tokens) - last_comma <= self.comma_backtrack):
                    cut = last_comma + 1  # the text after the last comma moves to the next chunk
                    moved = tokens[cut:], weights[cut:]
                    tokens, weights = tokens[:cut], weights[:cut]
                    close()
                    tokens, weights = list(moved[0]), list(moved[1])
                if len(tokens) == self.size:
                    close()
                found = self.embeddings.find(self.tokenizer, ids, i) if self.embeddings is not None else None
                if found is None:
                    tokens.append(ids[i])
                    weights.append(weight)
                    i += 1
                    continue
                vector_ids, spanned = found
                if len(tokens) + len(vector_ids) > self.size:
                    close()
                tokens += vector_ids
                weights += [weight] * len(vector_ids)
                i += spanned
        if tokens or not done:
            close()
        return done


def max_text_tokens(manifest: Any) -> int | None:
    """The most text tokens the model's denoiser takes: None (any multiple of 77) for an export that
    checked its UNet at more than one chunk (sdrt exports since L became dynamic), else 77."""
    if manifest.pipeline.get("long_prompts"):  # a folder whose UNet graph declares a dynamic token axis
        return None
    entry = manifest.components.get(manifest.family_spec.denoiser, {})
    checked = [shape.get("dims", {}).get("L") for shape in (entry.get("check") or {}).get("shapes", [])]
    token_length = int(manifest.pipeline.get("token_length") or TOKEN_LENGTH)
    return None if any(isinstance(t, int) and t > token_length for t in checked) else token_length


def emphasize(hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One chunk's hidden states [77, D] times each token's weight, rescaled to the unweighted mean."""
    if np.all(weights == 1.0):
        return hidden
    original = hidden.mean(dtype=np.float32)
    weighted = hidden * weights[:, None].astype(hidden.dtype)
    return weighted * (original / weighted.mean(dtype=np.float32))


def _run_ids(encoder: Encoder, ids: np.ndarray) -> dict[str, np.ndarray]:
    encoder.engine.prepare({"B": ids.shape[0]})
    return {k: np.array(v, dtype=np.float32) for k, v in encoder.engine.run({N.INPUT_IDS: ids}).items()}


def encode(text_layer: str, encoders: Sequence[Encoder], prompts: Sequence[list[str]],
           negatives: Sequence[list[str]], *, per_prompt: int, guidance: bool, clip_skip: int | None = None,
           zero_negatives: bool = False, max_tokens: int | None = None,
           embeddings: EmbeddingLookup | None = None) -> TextConditioning:
    """`prompts[i]` / `negatives[i]` feed `encoders[i]`, in A1111's syntax (the module docstring).

    `max_tokens`: the most text tokens the denoiser takes (None: any multiple of 77); a prompt that
    needs more is one line naming the re-export. `clip_skip` applies to the negative prompts too, as
    the web UI's "CLIP skip" does."""
    encode_negatives = guidance and not zero_negatives
    plans = []
    for encoder, texts, negative_texts in zip(encoders, prompts, negatives):
        chunker = Chunker(encoder.tokenizer, embeddings=embeddings)
        rows = (list(negative_texts) if encode_negatives else []) + list(texts)
        plans.append((chunker, [chunker.chunks(text) for text in rows]))
    k = max(len(chunks) for _, plan in plans for chunks in plan)
    length = plans[0][0].length
    if max_tokens is not None and k * length > max_tokens:
        raise SdrtError(f"the prompt needs {k} chunks of {length} tokens ({k * length} tokens), but this model's "
                        f"UNet takes {max_tokens} (exported before long prompts): export the model again with "
                        f"`sdrt export --force` (exports check L = {2 * TOKEN_LENGTH} since), or shorten the "
                        f"prompt to 75 tokens")
    hidden_parts, pooled = [], None
    for encoder, (chunker, plan) in zip(encoders, plans):
        per_chunk = []
        for j in range(k):  # one encoder run per chunk index: the batch stays one row per prompt
            batch = [chunks[j] if j < len(chunks) else chunker.empty() for chunks in plan]
            ids = np.asarray([c.ids for c in batch], dtype=np.int32)
            outputs = _run_ids(encoder, ids)
            layer = select_layer(outputs, text_layer, clip_skip, encoder.name)
            per_chunk.append(np.stack([emphasize(layer[r], np.asarray(c.weights, dtype=np.float32))
                                       for r, c in enumerate(batch)]))
            if j == 0 and N.TEXT_EMBEDS in outputs:
                pooled = outputs[N.TEXT_EMBEDS]
        hidden_parts.append(np.concatenate(per_chunk, axis=1))
    hidden = np.concatenate(hidden_parts, axis=-1)
    if guidance and zero_negatives:
        hidden = np.concatenate([np.zeros_like(hidden), hidden])
        pooled = None if pooled is None else np.concatenate([np.zeros_like(pooled), pooled])
    hidden = np.repeat(hidden, per_prompt, axis=0)
    pooled = None if pooled is None else np.repeat(pooled, per_prompt, axis=0)
    return TextConditioning(hidden, pooled)
