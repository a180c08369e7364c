"""What a benchmark ran on: the machine and the library versions, for the report's method section.

Versions come from the installed distributions' metadata, so describing the environment never
imports torch (the sdrt phase of a benchmark runs before torch is loaded).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any

#: distributions whose version goes into every report
VERSIONED = ("sdrt", "onnxruntime", "onnxruntime-gpu", "torch", "diffusers", "transformers",
             "numpy", "tokenizers", "tensorrt", "openvino", "openvino-genai",
             "openvino-tokenizers")


def versions() -> dict[str, str | None]:
    """Installed version of each library that shapes the numbers (None when absent)."""
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs nvidia-smi sees (empty without one)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cpu_features() -> list[str]:
    """The vector extensions that decide which CPU kernels the libraries pick."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile",
              "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def describe_machine() -> dict[str, Any]:
    """Device, CPU, cores, memory, OS and load: the method section's machine half."""
    import psutil

    gpus = gpu_names()
    return {
        "device": "cuda" if gpus else "cpu",
        "gpu": gpus[0] if gpus else None,
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
    }
