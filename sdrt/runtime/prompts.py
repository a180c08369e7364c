"""Text conditioning for every model family: prompts -> the UNet's text inputs, as diffusers makes them.

Which prompt feeds which encoder, and which layer the UNet reads, is the family table's
(`sdrt.spec.families`: ``text_encoders``, ``text_layer``):

- ``text_layer`` "last" (sd): one CLIP encoder; ``encoder_hidden_states`` is its last hidden state,
  or with ``clip_skip`` the final layer norm of an earlier layer (the export's ``hidden_states``
  stack, entry clip_skip).
- "penultimate" (sdxl): ``prompt`` goes to text_encoder, ``prompt_2`` (default: ``prompt``) to
  text_encoder_2; the UNet reads both encoders' penultimate layers side by side (entry clip_skip of
  each stack) and text_encoder_2's projected pooled output as ``text_embeds``. The refiner has
  text_encoder_2 alone, fed ``prompt`` (diffusers pairs the prompts with the encoders it has).

Negative prompts never use clip_skip (diffusers encodes them with the default layer). With
``force_zeros_for_empty_prompt`` (SDXL's model_index) and no negative prompt, the unconditional
embeddings are zeros instead of the encoded empty string.

That is the default, diffusers' behaviour (prompts cut at 77 tokens, brackets are text); with
``syntax="a1111"`` the prompts are read as AUTOMATIC1111 does (`sdrt.runtime.prompt_chunks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sdrt.errors import SdrtError
from sdrt.spec import N


@dataclass
class TextConditioning:
    """Per UNet row (the unconditional half first under guidance), each prompt's rows repeated per image."""

    hidden: np.ndarray  # [rows, S, D]
    pooled: np.ndarray | None  # [rows, P] (SDXL's text_embeds)


@dataclass(frozen=True)
class Encoder:
    """One text encoder of the model, with its tokenizer and the prompts it is fed."""

    name: str
    tokenizer: Any
    engine: Any


def select_layer(outputs: dict[str, np.ndarray], text_layer: str, clip_skip: int | None, name: str) -> np.ndarray:
    """The hidden states the family's UNet reads, for one clip_skip (None: the family's default)."""
    if text_layer == "last" and not clip_skip:
        return outputs[N.LAST_HIDDEN_STATE]
    if N.HIDDEN_STATES not in outputs:
        raise SdrtError(f"clip_skip needs the text encoder's layer stack, which this export lacks: export the "
                        f"model again with `sdrt export --hidden-states`")
    stack = outputs[N.HIDDEN_STATES]
    index = clip_skip or 0
    if index >= stack.shape[0]:
        raise SdrtError(f"clip_skip {clip_skip} is too large: {name} has {stack.shape[0]} layers to choose from "
                        f"(use 0..{stack.shape[0] - 1})")
    return stack[index]


_layer = select_layer  # the name other families' prompt modules import


def _run(encoder: Encoder, texts: list[str], embeddings: Any = None) -> dict[str, np.ndarray]:
    active = embeddings is not None and embeddings.active  # textual inversions: their names -> their ids
    ids = embeddings.ids(encoder.tokenizer, texts) if active else encoder.tokenizer(texts)
    encoder.engine.prepare({"B": len(texts)})
    return {k: np.array(v, dtype=np.float32) for k, v in encoder.engine.run({N.INPUT_IDS: ids}).items()}


def encode(text_layer: str, encoders: Sequence[Encoder], prompts: Sequence[list[str]], negatives: Sequence[list[str]],
           *, per_prompt: int, guidance: bool, clip_skip: int | None = None,
           zero_negatives: bool = False, syntax: str | None = None, max_tokens: int | None = None,
           embeddings: Any = None) -> TextConditioning:
    """`prompts[i]` / `negatives[i]` feed `encoders[i]` (each a list, one text per prompt).

    `syntax` "a1111": AUTOMATIC1111's emphasis, BREAK and 77-token chunks (`max_tokens`: what the
    denoiser takes; `embeddings`: textual inversions named in the prompts)."""
    if syntax == "a1111":
        from sdrt.runtime import prompt_chunks

        return prompt_chunks.encode(text_layer, encoders, prompts, negatives, per_prompt=per_prompt,
                                    guidance=guidance, clip_skip=clip_skip, zero_negatives=zero_negatives,
                                    max_tokens=max_tokens, embeddings=embeddings)
    n = len(prompts[0])
    hidden_pos, hidden_neg, pooled_pos, pooled_neg = [], [], None, None
    for encoder, texts, negative_texts in zip(encoders, prompts, negatives):
        encode_negatives = guidance and not zero_negatives
        outputs = _run(encoder, list(negative_texts) + list(texts) if encode_negatives else list(texts), embeddings)
        pos = {k: (v[n:] if k != N.HIDDEN_STATES else v[:, n:]) for k, v in outputs.items()} if encode_negatives \
            else outputs
        hidden_pos.append(select_layer(pos, text_layer, clip_skip, encoder.name))
        if N.TEXT_EMBEDS in pos:
            pooled_pos = pos[N.TEXT_EMBEDS]
        if encode_negatives:
            neg = {k: (v[:n] if k != N.HIDDEN_STATES else v[:, :n]) for k, v in outputs.items()}
            hidden_neg.append(select_layer(neg, text_layer, None, encoder.name))
            if N.TEXT_EMBEDS in neg:
                pooled_neg = neg[N.TEXT_EMBEDS]
    hidden = np.concatenate(hidden_pos, axis=-1)
    pooled = pooled_pos
    if guidance:
        if zero_negatives:
            negative_hidden = np.zeros_like(hidden)
            pooled_neg = None if pooled is None else np.zeros_like(pooled)
        else:
            negative_hidden = np.concatenate(hidden_neg, axis=-1)
        hidden = np.concatenate([negative_hidden, hidden])
        if pooled is not None:
            pooled = np.concatenate([pooled_neg, pooled])
    hidden = np.repeat(hidden, per_prompt, axis=0)
    pooled = None if pooled is None else np.repeat(pooled, per_prompt, axis=0)
    return TextConditioning(hidden, pooled)
