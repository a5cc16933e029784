import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
