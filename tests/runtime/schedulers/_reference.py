"""diffusers' own scheduler classes, the reference our ports are compared with.

diffusers replaces LMSDiscreteScheduler by a dummy when scipy is missing (scipy is not a project
dependency), and its module then lacks the one scipy call it makes: `integrate.quad` over a
polynomial of degree < 4. Without scipy the real module is used with that one name supplied by
8-point Gauss-Legendre quadrature, exact for polynomials up to degree 15 as scipy's adaptive quad is
(to rounding). With scipy installed, scipy is used.
"""

from __future__ import annotations

import importlib
import types

import numpy as np

_MODULES = {
    "DDIMScheduler": "scheduling_ddim",
    "PNDMScheduler": "scheduling_pndm",
    "EulerDiscreteScheduler": "scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": "scheduling_euler_ancestral_discrete",
    "LMSDiscreteScheduler": "scheduling_lms_discrete",
    "LCMScheduler": "scheduling_lcm",
    "DPMSolverMultistepScheduler": "scheduling_dpmsolver_multistep",
    "UniPCMultistepScheduler": "scheduling_unipc_multistep",
}


def _gauss_legendre_quad(func, a, b, epsrel=None, **_):
    nodes, weights = np.polynomial.legendre.leggauss(8)
    half, mid = (float(b) - float(a)) / 2, (float(b) + float(a)) / 2
    return sum(w * float(func(mid + half * x)) for x, w in zip(nodes, weights)) * half, 0.0


def reference_class(name: str) -> type:
    module = importlib.import_module(f"diffusers.schedulers.{_MODULES[name]}")
    if name == "LMSDiscreteScheduler" and not hasattr(module, "integrate"):
        module.integrate = types.SimpleNamespace(quad=_gauss_legendre_quad)
    return getattr(module, name)
