"""What a new user hit in the CLI: a build default that fails on a CPU machine, bench options without help."""

from __future__ import annotations

import argparse
import sys

from sdrt import cli
from tests.engines.trt_fakes import model_folder


def test_build_default_on_a_machine_without_tensorrt_says_what_to_do(tmp_path, monkeypatch, capsys):
    model_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli.main(["build", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend tensorrt_rtx" in err and "ort-cpu needs none" in err


def test_every_bench_option_has_help_text():
    from sdrt.bench.commands_bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert missing == []


def test_sdrt_out_is_git_ignored():
    from pathlib import Path

    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "sdrt-out/" in ignored
