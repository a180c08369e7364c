"""T5 tokenizer files: the small SentencePiece vocabulary sdrt ships for its presets, and the folder's
``tokenizer.json`` the torch-free runtime reads.

The real T5 vocabulary (32,000 SentencePiece Unigram pieces + 100 sentinels) cannot be downloaded
here. sdrt ships a tokenizer *of the same kind* instead: a SentencePiece Unigram model trained by
`train_preset_tokenizer` on text it generates from the words of the shipped CLIP vocabulary, with T5's
special tokens (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2), T5's normalisation (SentencePiece's
nmt_nfkc, as a precompiled charsmap) and 100 ``<extra_id_N>`` sentinels at the end of the vocabulary
(``<extra_id_0>`` last, as in T5). It is stored as the ``tokenizer.json`` transformers writes for it
(``sdrt/data/t5-unigram-4k.tokenizer.json.gz``); a preset's ids are not a released model's ids.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import random
import tempfile
from pathlib import Path
from typing import Any

RESOURCE = "t5-unigram-4k.tokenizer.json.gz"
VOCAB_SIZE = 4000  # SentencePiece pieces, before the sentinels
EXTRA_IDS = 100
#: transformers' default for T5 tokenizers (SD3's pipelines refuse a max_sequence_length above it)
T5_MAX_LENGTH = 512
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def _training_text(sentences: int = 60_000, seed: int = 0) -> list[str]:
    """Prompt-like text: words of CLIP's vocabulary drawn Zipf-like, with accents, numbers and punctuation."""
    from sdrt.export.tokenizer_files import NUM_MERGES, VOCAB_RESOURCE

    data = (importlib.resources.files("sdrt") / "data" / VOCAB_RESOURCE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    words = [a + b[:-4] for a, b in (line.split() for line in lines)
             if b.endswith("</w>") and (a + b[:-4]).isalpha()][:20_000]
    weights = [1.0 / (i + 10) for i in range(len(words))]
    extra = ["café", "naïve", "Zürich", "façade", "São", "Ærø", "déjà", "vu", "1024", "3.5", "4k", "8k", "50mm",
             "f/1.8"]
    rng = random.Random(seed)

    def sentence() -> str:
        chosen = rng.choices(words, weights, k=rng.randint(2, 18))
        if rng.random() < 0.3:
            chosen.insert(rng.randrange(len(chosen) + 1), rng.choice(extra))
        if rng.random() < 0.3:
            chosen[0] = chosen[0].capitalize()
        return " ".join(chosen) + rng.choice(["", ".", ",", "!", "?", ", high quality"])

    return [sentence() for _ in range(sentences)]


def train_preset_tokenizer(out: str | Path) -> Path:
    """Train the shipped vocabulary again (sentencepiece, ~6 s) and write it as ``out`` (.json.gz).

    How `sdrt/data/t5-unigram-4k.tokenizer.json.gz` was made: `python -c "from sdrt.export.tokenizer_t5
    import train_preset_tokenizer as t; t('sdrt/data/t5-unigram-4k.tokenizer.json.gz')"`."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_text()), model_writer=model, model_type="unigram",
        vocab_size=VOCAB_SIZE, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece=PAD, eos_piece=EOS,
        unk_piece=UNK, character_coverage=1.0, num_threads=1, minloglevel=2)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(model.getvalue())
        tokenizer = T5TokenizerFast.from_pretrained(tmp, extra_ids=EXTRA_IDS, model_max_length=T5_MAX_LENGTH)
        text = tokenizer.backend_tokenizer.to_str()
    out = Path(out)
    out.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    return out


def build_t5_tokenizer(model_max_length: int = T5_MAX_LENGTH) -> Any:
    """transformers' T5TokenizerFast on the shipped vocabulary (what the sd3 and flux presets use)."""
    from transformers import T5TokenizerFast

    text = gzip.decompress((importlib.resources.files("sdrt") / "data" / RESOURCE).read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_bytes(text)
        return T5TokenizerFast.from_pretrained(tmp, extra_ids=EXTRA_IDS, model_max_length=model_max_length)


def write_t5_tokenizer(tokenizer: Any, out_dir: str | Path) -> Path:
    """Write a T5 tokenizer into a model folder's ``tokenizer_3/`` (SD3) or ``tokenizer_2/`` (Flux).

    transformers' own files: ``tokenizer.json`` (the runtime reads only this one: the Unigram pieces,
    the precompiled normaliser, the EOS template) and its config files, so diffusers loads the folder too.
    A folder with only ``spiece.model`` is converted by transformers here (that needs sentencepiece)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():  # a slow tokenizer: write its fast form too
        from transformers import T5TokenizerFast

        T5TokenizerFast.from_pretrained(str(out)).save_pretrained(str(out))
    return out
