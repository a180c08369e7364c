"""What the kernel says this machine can still allocate (one reader for the runtime and the exporter)."""

from __future__ import annotations

from pathlib import Path


def available_bytes() -> int | None:
    """MemAvailable now (what the kernel says can be allocated), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
