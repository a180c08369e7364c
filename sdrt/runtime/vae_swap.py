"""Decoding with another VAE at run time: an export's vae_decoder (and vae_encoder) in place of the model's.

Users switch VAEs (SD 1.x's EMA and MSE fine-tunes, a model's baked-in one): `Pipeline.load(folder,
vae=DIR)`, `pipe.use_vae(DIR)`, `sdrt generate --vae DIR`, `sdrt serve --vae NAME=DIR`. DIR is an sdrt
export holding vae_decoder (vae_encoder for img2img), e.g. written by `sdrt export --model BASE --vae
FILE_OR_DIR --components vae_decoder vae_encoder`. Its latent space must be the model's (latent
channels and scale factor f); its own scaling and shift factors are used, as diffusers uses the
config of the VAE it was given.
"""

from __future__ import annotations

import os
from typing import Any

from sdrt.errors import SdrtError
from sdrt.manifest import Manifest

#: what must be equal for a VAE to read the model's latents
LATENT_SPACE = ("latent_channels", "vae_scale_factor")


def vae_manifest(model: Manifest, folder: str | os.PathLike) -> Manifest:
    """The VAE export's manifest, checked against the model's latent space (one line when it does not fit)."""
    vae = Manifest.load(folder)
    if not vae.has("vae_decoder"):
        raise SdrtError(f"--vae {folder} has no vae_decoder (it has {', '.join(vae.components) or 'nothing'}): "
                        f"export the VAE with --components vae_decoder vae_encoder")
    for key in LATENT_SPACE:
        a, b = model.pipeline.get(key), vae.pipeline.get(key)
        if a != b:
            raise SdrtError(f"--vae {folder} works in another latent space than {model.folder} ({key} {b} vs {a}): "
                            f"use a VAE made for this model family")
    return vae


def vae_name(manifest: Any) -> str:
    """What the infotext's "VAE" field says: the VAE export's source name, or its folder's."""
    return str(manifest.data.get("source", {}).get("vae") or manifest.folder.name)
