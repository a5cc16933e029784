"""Packaging: true floors, no TensorFlow, installing into a runtime that has its own jax."""

import importlib.metadata
import re
import subprocess
import sys

import pytest

from jaxmnist import runtime_install
from tests.conftest import REPO

PYPROJECT = (REPO / "pyproject.toml").read_text()


def declared_floors() -> dict[str, str]:
    """{name: floor} of every `name>=X` requirement in pyproject.toml."""
    return {name.lower().replace("_", "-"): floor
            for name, floor in re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9][^",;\s]*)"', PYPROJECT)}


def pinned_floors() -> dict[str, str]:
    pins = {}
    for line in (REPO / ".ci/floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_floors_file_pins_every_floor_of_pyproject():
    declared, pinned = declared_floors(), pinned_floors()
    declared.pop("ruff")  # the linter: not run where the floors are tested
    declared.pop("setuptools")  # the build backend
    assert declared == {k: v for k, v in pinned.items() if k != "jaxlib"}
    assert pinned["jaxlib"] == pinned["jax"]
    assert runtime_install.jax_floor() == pinned["jax"]


def test_no_tensorflow_in_the_dependencies():
    assert not re.search(r'"tensorflow(-cpu)?[<>=;"\s]', PYPROJECT)
    for extra in ("cuda12", "cuda13", "tpu"):
        assert f'"jax[{extra}]>=' in PYPROJECT


def test_release_parses_versions():
    assert runtime_install.release("0.7.0") == (0, 7, 0)
    assert runtime_install.release("0.10.2.dev20260101") == (0, 10, 2)
    assert runtime_install.release("0.6.2") < runtime_install.release("0.7.0")
    assert runtime_install.release("0.10.0") > runtime_install.release("0.9.2")


def test_runtime_install_refuses_a_jax_below_the_floor(monkeypatch, capsys):
    monkeypatch.setattr(runtime_install, "installed",
                        lambda names=None: {"jax": "0.6.2", "jaxlib": "0.6.2"})

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert runtime_install.main([]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "jax 0.6.2, older than jaxmnist's floor 0.7.0; nothing was changed" in err


def test_runtime_install_pins_what_the_runtime_has():
    r = subprocess.run([sys.executable, "-m", "jaxmnist.runtime_install", "--dry-run"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    pins = r.stdout.splitlines()
    assert f"jax=={importlib.metadata.version('jax')}" in pins
    assert f"jaxlib=={importlib.metadata.version('jaxlib')}" in pins
    assert " pip install -c " in pins[-1] and pins[-1].endswith(str(REPO))


@pytest.mark.parametrize("kept, text", [
    ({"jax": "0.7.0", "libtpu": "0.0.17"}, "jax==0.7.0\nlibtpu==0.0.17\n"),
    ({}, ""),
])
def test_constraints_text(kept, text):
    assert runtime_install.constraints(kept) == text


@pytest.mark.parametrize("target", ["install", "test", "test-slow", "lint", "train",
                                    "train-fast", "train-tiny", "train-micro", "train-nano",
                                    "train-teacher", "train-seed", "backprop",
                                    "bench", "serve"])
def test_every_make_target_runs_in_a_python_of_its_own(target):
    """`make TARGET NO_VENV=1 PYTHON=...` uses that Python, not .venv nor ./python."""
    python = "python3"  # as the README has it: a name on PATH, not a path
    r = subprocess.run(["make", "-n", "-C", str(REPO), target, "NO_VENV=1", f"PYTHON={python}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    commands = [line.strip() for line in r.stdout.splitlines() if "python" in line]
    assert commands and all(python in line for line in commands), r.stdout
    assert ".venv" not in r.stdout and "./python" not in r.stdout
