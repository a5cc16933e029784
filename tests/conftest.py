import functools
import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# One compilation cache for the session, this process and the training processes the
# tests start: the same steps are compiled once, not once per test (XLA:CPU compiles
# the seed net's train step in seconds). Results are the same executables either way.
_CACHE = {"jax_compilation_cache_dir": tempfile.mkdtemp(prefix="jaxmnist-test-cache-"),
          "jax_persistent_cache_min_compile_time_secs": 0.0,
          "jax_persistent_cache_min_entry_size_bytes": 0}
for _name, _value in _CACHE.items():
    os.environ.setdefault(_name.upper(), str(_value))
    jax.config.update(_name, type(_value)(os.environ[_name.upper()]))


@pytest.fixture(autouse=True)
def _x64_restored():
    # `python -m jaxmnist.backprop` turns on float64 for its process; a test that calls
    # its main() in this one must not leave the later tests in float64.
    previous = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(autouse=True)
def _command_line_log_handlers_removed():
    # A command line run in this process (run_in_process) shows the "jaxmnist" logger's
    # lines as its own (cli.log_to_stderr); a later test's library calls must not print
    # through that command's handler.
    yield
    from jaxmnist.cli import LogLines

    log = logging.getLogger("jaxmnist")
    for handler in [h for h in log.handlers if isinstance(h, LogLines)]:
        log.removeHandler(handler)


@functools.cache
def experiment(name: str):
    """The script experiments/`name`.py as a module, loaded once per test process (the
    experiments are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_in_process(main, capsys, *args) -> CliResult:
    """A command line's `main(args)` called in this process, as its exit code, stdout
    and stderr (for tests where the process itself is not what is tested)."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def local_mnist_dir() -> Path | None:
    """The offline MNIST copy: $JAXMNIST_DATA_DIR, else ../shared/datasets/mnist."""
    candidates = [os.environ.get("JAXMNIST_DATA_DIR"), REPO.parent / "shared/datasets/mnist"]
    for c in candidates:
        if c and (Path(c) / "train-images-idx3-ubyte.gz").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def mnist_dir():
    path = local_mnist_dir()
    if path is None:
        pytest.skip("no local MNIST copy (set JAXMNIST_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data dir shared by the session's tests (never the user's own)."""
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def mnist_splits(mnist_dir, tfds_dir):
    """Real MNIST (train, test), prepared once per session from the local copy."""
    from jaxmnist import data

    return data.load_mnist(mnist_dir, tfds_dir)


@pytest.fixture(scope="session")
def mnist_test_digits(mnist_dir):
    """The first 100 real MNIST test images (28, 28) uint8 and their labels, read
    straight from the local IDX copy (no TFDS dataset to prepare)."""
    from jaxmnist import data

    images = data.read_idx(mnist_dir / data.IDX_FILES["test_images"], "images")
    labels = data.read_idx(mnist_dir / data.IDX_FILES["test_labels"], "labels")
    return images[:100], labels[:100]


def synthetic_split(n: int, seed: int = 0):
    """A learnable stand-in for MNIST: noisy gratings whose orientation (5) and period (2)
    are the label (10 classes), at a random phase."""
    import jax.numpy as jnp

    from jaxmnist import data

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:28, 0:28]
    angle = np.deg2rad(36 * (labels % 5))[:, None, None]
    period = np.where(labels < 5, 3.0, 7.0)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    wave = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period + phase)
    images = np.clip(127 + 100 * wave + rng.normal(0, 30, wave.shape), 0, 255).astype(np.uint8)
    return data.Split(jnp.asarray(images[..., None]), jnp.asarray(labels, jnp.int32))


@pytest.fixture(scope="session")
def synthetic_splits():
    """(train, eval): 1,024 and 500 synthetic images (`synthetic_split`)."""
    return synthetic_split(1024, seed=0), synthetic_split(500, seed=1)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the cache is shared
        return
    if jax.config.jax_compilation_cache_dir == _CACHE["jax_compilation_cache_dir"]:
        shutil.rmtree(_CACHE["jax_compilation_cache_dir"], ignore_errors=True)
