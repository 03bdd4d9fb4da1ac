"""The notebooks' first cell: install the checkout only where ``sar`` is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure_sar.py"


def load_script():
    spec = importlib.util.spec_from_file_location("ensure_sar_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_importable_sar_means_no_pip_and_no_output(capsys):
    script = load_script()
    calls = []
    assert script.ensure_sar(run=lambda *a, **k: calls.append(a)) is False
    assert calls == [] and capsys.readouterr().out == ""
    assert script.REPOSITORY == SCRIPT.parents[1]  # the checkout the script sits in


def test_a_missing_sar_is_installed_editable_with_the_kernels_pip(monkeypatch, tmp_path, capsys):
    script = load_script()
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(script, "has_build_backend", lambda: False)
    assert script.ensure_sar(tmp_path, find_spec=lambda name: None, run=pip) is True
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "--editable",
                      str(tmp_path)]]
    # with setuptools here, no isolated build env: it would need PyPI even with every
    # dependency installed
    monkeypatch.setattr(script, "has_build_backend", lambda: True)
    script.ensure_sar(tmp_path, find_spec=lambda name: None, run=pip)
    assert calls[-1][4:] == ["--quiet", "--no-build-isolation", "--editable", str(tmp_path)]
    assert sys.path[0] == str(tmp_path)  # absolute: a later %cd cannot break it
    assert "installing" in capsys.readouterr().out


def test_a_failing_pip_stops_with_its_last_lines_and_the_fix(monkeypatch, tmp_path):
    script = load_script()
    monkeypatch.setattr(sys, "path", list(sys.path))

    trace = "\n".join(f"trace line {i}" for i in range(20))
    output = f"ERROR: Could not find a version that satisfies setuptools>=64\n{trace}"

    def pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", output)

    with pytest.raises(RuntimeError, match="(?s)failed \\(exit 1\\).*Quick start") as err:
        script.ensure_sar(tmp_path, find_spec=lambda name: None, run=pip)
    message = str(err.value)
    # the cause, printed before a long trace, is kept beside the trace's last lines
    assert "satisfies setuptools>=64" in message and "trace line 19" in message
    assert "trace line 5" not in message
    assert str(tmp_path) not in sys.path


def test_the_build_backend_check_reads_the_installed_setuptools(monkeypatch):
    script = load_script()
    versions = {"setuptools": "63.9.1"}

    def version(name):
        if name not in versions:
            raise script.importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(script.importlib.metadata, "version", version)
    assert script.has_build_backend() is False
    versions["setuptools"] = "80.9.0"
    assert script.has_build_backend() is True
    del versions["setuptools"]
    assert script.has_build_backend() is False
