"""Peak memory while a benchmark phase runs: host RSS by a background sampler, GPU by the driver.

A sampler thread reads the process's resident set size every few milliseconds, so a peak that
lasts only one VAE decode is still seen. GPU memory comes from ``nvidia-smi`` (what the process
really holds, whatever library allocated it) and, for torch, from its allocator's own peak.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

MB = 1024.0 * 1024.0


def rss_mb() -> float:
    """This process's resident set size in MB, now."""
    import psutil

    return psutil.Process().memory_info().rss / MB


def _status_mb(field: str) -> float | None:
    """A kB field of /proc/self/status in MB; None where the kernel does not say (not Linux)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def anon_mb() -> float | None:
    """This process's anonymous resident memory in MB (Linux RssAnon: heap and private mappings, not
    file pages the kernel can drop); None where unknown."""
    return _status_mb("RssAnon")


def release_memory() -> float:
    """Hand freed memory back to the OS (``gc.collect()``, then glibc's ``malloc_trim(0)``, which
    returns free heap pages, not only the top of the heap); this process's RSS afterwards, in MB.

    Called between benchmark contenders, so that one contender's freed weights are not still
    resident when the next one loads (they would add up in RSS, and on a small machine, OOM).
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
            pass
    return rss_mb()


def start_poller(sample: Callable[[], None], stop: threading.Event, interval_s: float,
                 name: str) -> threading.Thread:
    """Call ``sample`` every ``interval_s`` in a daemon thread until ``stop`` is set."""
    stop.clear()

    def loop() -> None:
        while not stop.is_set():
            sample()
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def stop_poller(thread: threading.Thread | None, stop: threading.Event) -> None:
    stop.set()
    if thread is not None:
        thread.join()


@dataclass
class RssSampler:
    """Samples this process's RSS in a background thread; use as a context manager.

    With ``keep_samples`` it also keeps (seconds since start, MB) pairs; off by default, since a
    growing list would itself show up in a long run's RSS.
    """

    interval_s: float = 0.01
    keep_samples: bool = False
    start_mb: float = 0.0
    peak_mb: float = 0.0
    #: the same for anonymous memory (RssAnon; None where unknown): what cannot be paged out to a file
    anon_start_mb: float | None = None
    anon_peak_mb: float | None = None
    t0: float = 0.0  # time.perf_counter() when sampling began: the origin of ``samples``' times
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> "RssSampler":
        import psutil

        proc = psutil.Process()
        self.start_mb = self.peak_mb = proc.memory_info().rss / MB
        self.anon_start_mb = self.anon_peak_mb = anon_mb()
        t0 = self.t0 = time.perf_counter()

        def sample() -> None:
            value = proc.memory_info().rss / MB
            self.peak_mb = max(self.peak_mb, value)
            anon = anon_mb()
            if anon is not None and self.anon_peak_mb is not None:
                self.anon_peak_mb = max(self.anon_peak_mb, anon)
            if self.keep_samples:
                self.samples.append((time.perf_counter() - t0, value))

        self._thread = start_poller(sample, self._stop, self.interval_s, "sdrt-rss-sampler")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_poller(self._thread, self._stop)
        self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def growth_mb(self) -> float:
        """Peak minus the RSS when sampling began: what this phase added."""
        return self.peak_mb - self.start_mb


def peak_since(samples: list[tuple[float, float]], start_s: float, end_s: float = float("inf")) -> float | None:
    """The highest sampled RSS (MB) with start_s <= time < end_s; None when no sample falls there."""
    inside = [mb for t, mb in samples if start_s <= t < end_s]
    return max(inside) if inside else None


def kernel_peak_mb() -> float | None:
    """The kernel's own high-water mark of this process's RSS (VmHWM, MB); None where unknown."""
    return _status_mb("VmHWM")


def reset_kernel_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``5`` into /proc/self/clear_refs); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def nvidia_smi_used_mb(pid: int) -> float | None:
    """GPU memory the process ``pid`` holds, from nvidia-smi; None without a GPU or the tool."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(mem) for line in out.splitlines() if "," in line
            for p, mem in [line.split(",", 1)] if p.strip() == str(pid) and mem.strip().isdigit()]
    return sum(used) if used else 0.0


@dataclass
class GpuPeakSampler:
    """Polls nvidia-smi for this process's GPU memory; ``peak_mb`` stays None where there is no GPU."""

    interval_s: float = 0.2
    peak_mb: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __enter__(self) -> "GpuPeakSampler":
        import os

        pid = os.getpid()
        if nvidia_smi_used_mb(pid) is None:
            return self

        def sample() -> None:
            value = nvidia_smi_used_mb(pid)
            if value is not None:
                self.peak_mb = max(self.peak_mb or 0.0, value)

        self._thread = start_poller(sample, self._stop, self.interval_s, "sdrt-gpu-sampler")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_poller(self._thread, self._stop)


def slope_per_item(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (e.g. MB per generation); 0 for fewer than 2 points."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
