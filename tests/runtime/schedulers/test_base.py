"""The shared tables against diffusers' own: betas, zero-SNR rescale, karras, sigma->t."""

import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_euler_discrete as ref_euler

from sdrt.runtime.schedulers import _base

SCHEDULES = [
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2", "beta_start": 0.0001, "beta_end": 0.02},
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s["beta_schedule"])
@pytest.mark.parametrize("zero_snr", [False, True], ids=["", "zero_snr"])
def test_alphas_cumprod_match_diffusers(sched, zero_snr):
    config = {**sched, "num_train_timesteps": 1000, "rescale_betas_zero_snr": zero_snr}
    ref = ref_euler.EulerDiscreteScheduler(**config)
    betas, acp = _base.make_alphas_cumprod(config)
    ref_acp = torch.cumprod(1 - ref.betas, 0).numpy()  # before Euler's 2**-24 terminal patch
    # torch's float32 sqrt is not correctly rounded (1 ulp off on ~20% of inputs; numpy's is), and the
    # zero-SNR rescale divides neighbouring alpha-bars that differ by ~1e-4, which turns that ulp into
    # ~1.5e-6 absolute on betas and up to ~4e-5 relative on alpha-bar: diffusers' own float32 noise.
    atol, rtol = (2e-6, 5e-5) if zero_snr else (1e-9, 1e-6)
    np.testing.assert_allclose(betas, ref.betas.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(acp, ref_acp, rtol=rtol, atol=1e-9)


def test_trained_betas_used_verbatim():
    betas = np.linspace(0.001, 0.01, 50)
    got = _base.make_betas({"trained_betas": list(betas), "beta_schedule": "linear"})
    np.testing.assert_allclose(got, betas.astype(np.float32))


def test_karras_and_sigma_to_t_match_diffusers():
    ref = ref_euler.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    acp = ref.alphas_cumprod.numpy()
    sigmas = ((1 - acp) / acp) ** 0.5
    log_sigmas = np.log(sigmas)
    ours = _base.karras_sigmas(float(sigmas[0]), float(sigmas[-1]), 13)
    theirs = ref._convert_to_karras(in_sigmas=torch.from_numpy(sigmas[::-1].copy()), num_inference_steps=13)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(_base.sigma_to_t(ours, log_sigmas), ref._sigma_to_t(ours, log_sigmas), rtol=1e-9)
