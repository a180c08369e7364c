"""SD3's text conditioning, as StableDiffusion3Pipeline.encode_prompt makes it.

- `prompt` feeds CLIP-L (text_encoder), `prompt_2` (default: `prompt`) CLIP-G (text_encoder_2),
  `prompt_3` (default: `prompt`) the T5 encoder (text_encoder_3); negatives alike (default "").
- Each CLIP gives its penultimate layer (entry `clip_skip` of the export's stack; negatives never use
  clip_skip) and its projected pooled output. The two layers side by side are zero-padded to the
  transformer's width D, then T5's `max_sequence_length` tokens follow (zeros without a T5 encoder,
  as diffusers does): ``encoder_hidden_states`` [rows, 77 + L, D]. The pooled outputs side by side
  are ``pooled_projections`` [rows, P1 + P2].
- Under classifier-free guidance the unconditional rows come first; every prompt's rows repeat per image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sdrt.runtime.prompts import Encoder, TextConditioning, _layer, _run
from sdrt.spec import N


def _clip(encoder: Encoder, negatives: list[str] | None, texts: list[str],
          clip_skip: int | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """((hidden, pooled) of the prompts, (hidden, pooled) of the negatives or None), one batch."""
    n = len(texts)
    outputs = _run(encoder, (negatives or []) + texts)
    k = len(negatives or [])
    pos = {name: (v[:, k:] if name == N.HIDDEN_STATES else v[k:]) for name, v in outputs.items()}
    positive = (_layer(pos, "penultimate", clip_skip, encoder.name), pos[N.TEXT_EMBEDS])
    if not negatives:
        return positive, None
    neg = {name: (v[:, :k] if name == N.HIDDEN_STATES else v[:k]) for name, v in outputs.items()}
    assert n == k
    return positive, (_layer(neg, "penultimate", None, encoder.name), neg[N.TEXT_EMBEDS])


def _t5(encoder: Encoder | None, texts: list[str], length: int, width: int) -> np.ndarray:
    """T5's last hidden state [n, length, width], or zeros without a T5 encoder."""
    if encoder is None:
        return np.zeros((len(texts), length, width), dtype=np.float32)
    ids = encoder.tokenizer(texts, length)
    encoder.engine.prepare({"B": len(texts), "L": length})
    out = encoder.engine.run({N.INPUT_IDS: ids})[N.LAST_HIDDEN_STATE]
    return np.array(out, dtype=np.float32)


def _joint(clip_l: np.ndarray, clip_g: np.ndarray, t5: np.ndarray) -> np.ndarray:
    clip = np.concatenate([clip_l, clip_g], axis=-1)
    clip = np.pad(clip, ((0, 0), (0, 0), (0, t5.shape[-1] - clip.shape[-1])))
    return np.concatenate([clip, t5], axis=1)


def encode(clip_l: Encoder, clip_g: Encoder, t5: Encoder | None, prompts: Sequence[list[str]],
           negatives: Sequence[list[str]], *, per_prompt: int, guidance: bool, length: int, width: int,
           clip_skip: int | None = None) -> TextConditioning:
    """`prompts` / `negatives`: (for CLIP-L, for CLIP-G, for T5), each one text per prompt."""
    (l_pos, l_neg), (g_pos, g_neg) = (
        _clip(encoder, list(neg) if guidance else None, list(pos), clip_skip)
        for encoder, pos, neg in ((clip_l, prompts[0], negatives[0]), (clip_g, prompts[1], negatives[1])))
    texts_3 = (list(negatives[2]) if guidance else []) + list(prompts[2])
    t5_out = _t5(t5, texts_3, length, width)
    k = len(negatives[2]) if guidance else 0
    hidden = _joint(l_pos[0], g_pos[0], t5_out[k:])
    pooled = np.concatenate([l_pos[1], g_pos[1]], axis=-1)
    if guidance:
        hidden = np.concatenate([_joint(l_neg[0], g_neg[0], t5_out[:k]), hidden])
        pooled = np.concatenate([np.concatenate([l_neg[1], g_neg[1]], axis=-1), pooled])
    return TextConditioning(np.repeat(hidden, per_prompt, axis=0), np.repeat(pooled, per_prompt, axis=0))


def encoders(pipe: Any) -> tuple[Encoder, Encoder, Encoder | None]:
    """The pipeline's three text encoders with their tokenizers (T5: None when the export lacks it)."""
    family = pipe.family_spec

    def make(name: str) -> Encoder:
        return Encoder(name, pipe.tokenizers[family.text_encoders[name][0]], pipe.engine(name))

    t5 = make("text_encoder_3") if pipe.model_spec.has("text_encoder_3") else None
    return make("text_encoder"), make("text_encoder_2"), t5
