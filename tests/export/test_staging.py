"""The export check fails wrong graphs, and a failed, interrupted or disk-full export leaves
nothing behind: no folder, no temporary sibling, and with --force the old folder intact.

The slow torch.export step is replaced by copying the already exported tiny graphs (see
_fakes.py); loading, the check against PyTorch, the size probe and the staging are real.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest

from sdrt import spec
from sdrt.cli import main
from sdrt.errors import SdrtError
from sdrt.export import check, exporter, trace
from sdrt.export.source import load_folder
from tests.export._fakes import copying_export, corrupt, leftovers


def test_check_fails_a_wrong_graph(tiny_onnx: Path, tiny_src: Path, tmp_path: Path) -> None:
    src = load_folder(tiny_src)
    values = {"C": 4, "Cin": 4, "S": 77, "D": 32, "f": 2}
    rule = {"latent_multiple": 1, "min_latent": 3}
    model = spec.model_spec("sd")
    decoder = model.component("vae_decoder")
    dims = check.check_dims(decoder, {"B": 2, "h": 8, "w": 6}, rule)
    good = check.check_component(decoder, src.module("vae"), tiny_onnx / "vae_decoder" / "model.onnx", values, dims,
                                 precision="fp32", vocab_size=49408, model=model)
    assert good["passed"] and good["max_rel_error"] < 1e-4
    wrong = tmp_path / "model.onnx"
    shutil.copyfile(tiny_onnx / "vae_decoder" / "model.onnx", wrong)
    corrupt(wrong)
    with pytest.raises(SdrtError, match=r"vae_decoder export check failed: max relative error .* > 0.001"):
        check.check_component(decoder, src.module("vae"), wrong, values, dims, precision="fp32", vocab_size=49408,
                              model=model)


def test_wrong_graph_mid_export_leaves_nothing(tiny_onnx: Path, tiny_src: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(trace, "export_graph", copying_export(tiny_onnx, corrupt_component="vae_decoder"))
    out = tmp_path / "out"
    code = main(["export", "--model", str(tiny_src), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert "unet: exported" in captured.out  # failed after two components were written
    assert captured.err.startswith("sdrt: error: vae_decoder export check failed")
    assert len(captured.err.strip().splitlines()) == 1
    assert leftovers(tmp_path, "out") == []


def test_fake_export_succeeds(tiny_onnx: Path, tiny_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control for the tests below: with good graphs the same run writes the folder."""
    monkeypatch.setattr(trace, "export_graph", copying_export(tiny_onnx))
    out = exporter.export_model(str(tiny_src), tmp_path / "out", components=["text_encoder", "vae_decoder"],
                                log=lambda line: None)
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "sdrt.json", "text_encoder",
                                                     "tokenizer", "vae_decoder"]
    assert leftovers(tmp_path, "out") == ["out"]


@pytest.mark.parametrize("failure", ["disk_full", "ctrl_c", "sigterm"])
def test_interrupted_or_disk_full_leaves_nothing(failure: str, tiny_onnx: Path, tiny_src: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    def fail(component: str) -> None:
        if component != "vae_decoder":
            return
        if failure == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device", "model.onnx")
        if failure == "ctrl_c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trace, "export_graph", copying_export(tiny_onnx, before=fail))
    out = tmp_path / "out"
    code = main(["export", "--model", str(tiny_src), "--out", str(out), "--components", "text_encoder", "vae_decoder"])
    err = capsys.readouterr().err
    assert code == {"disk_full": 2, "ctrl_c": 130, "sigterm": 130}[failure], err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {"disk_full": "disk full", "ctrl_c": "interrupted", "sigterm": "interrupted"}[failure] in err
    assert leftovers(tmp_path, "out") == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone again


def test_force_replaces_only_at_the_end(tiny_onnx: Path, tiny_src: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    monkeypatch.setattr(trace, "export_graph", copying_export(tiny_onnx, corrupt_component="vae_decoder"))
    with pytest.raises(SdrtError, match="vae_decoder export check failed"):
        exporter.export_model(str(tiny_src), out, components=["text_encoder", "vae_decoder"], force=True,
                              log=lambda line: None)
    assert (out / "old.txt").read_text() == "old"  # a failed --force keeps the old folder
    assert leftovers(tmp_path, "out") == ["out"]

    monkeypatch.setattr(trace, "export_graph", copying_export(tiny_onnx))
    exporter.export_model(str(tiny_src), out, components=["text_encoder"], force=True, log=lambda line: None)
    assert not (out / "old.txt").exists() and (out / "sdrt.json").is_file()
    assert leftovers(tmp_path, "out") == ["out"]


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_exported_folder_follows_the_umask(umask: int, file_mode: int, folder_mode: int, tiny_onnx: Path,
                                           tiny_src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder renamed into place once kept mkdtemp's 0700 (and sdrt.json mkstemp's 0600) whatever the umask."""
    import stat

    monkeypatch.setattr(trace, "export_graph", copying_export(tiny_onnx))
    previous = os.umask(umask)
    try:
        out = exporter.export_model(str(tiny_src), tmp_path / "out", components=["text_encoder"],
                                    log=lambda line: None)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == folder_mode
    assert stat.S_IMODE((out / "text_encoder").stat().st_mode) == folder_mode
    assert stat.S_IMODE((out / "sdrt.json").stat().st_mode) == file_mode


def test_fp16_policy_keeps_force_upcast_vaes_fp32(tiny_src: Path) -> None:
    vae = load_folder(tiny_src).module("vae")
    decoder, encoder = (spec.model_spec("sd").component(name) for name in ("vae_decoder", "vae_encoder"))
    assert vae.config.force_upcast is True
    assert exporter.precision_policy(decoder, "fp16", vae)[0] == "fp32"
    assert "force_upcast" in exporter.precision_policy(encoder, "fp16", vae)[1]
    vae.register_to_config(force_upcast=False)
    assert exporter.precision_policy(decoder, "fp16", vae)[0] == "fp16"
    assert decoder.source == encoder.source == "vae" and decoder.fp32_if_config == "force_upcast"
