"""The runtime's schedulers import and run with torch unimportable (a Jetson or product install has none)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        del sys.modules[name]

    import numpy as np
    import sdrt.runtime.schedulers as S

    base = {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "beta_end": 0.012, "steps_offset": 1, "skip_prk_steps": True, "set_alpha_to_one": False}
    x = np.ones((1, 4, 8, 8), dtype=np.float32)
    for name in S.SCHEDULERS:
        sched = S.get_scheduler(name, base)
        sched.set_timesteps(3)
        for t in sched.timesteps:
            x = sched.step(0.1 * sched.scale_model_input(x, t), t, x, generator=np.random.default_rng(0)).prev_sample
    assert np.isfinite(x).all()
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
    print("ok without torch")
    """
)


def test_schedulers_run_with_torch_blocked():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok without torch" in proc.stdout


def test_blocker_really_blocks():
    """The same blocker makes `import torch` fail, so the test above can fail."""
    probe = SCRIPT.split("import numpy")[0] + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
