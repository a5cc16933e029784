"""MNIST through TensorFlow Datasets, online or from a local copy of the IDX files.

Two ways in, one dataset out:

* Online: TFDS's own `mnist` builder downloads and prepares it in the TFDS data dir.
* Offline: `--data-dir DIR` (or `JAXMNIST_DATA_DIR`) names a folder with the four
  IDX `.gz` files. They are verified (IDX magic, shapes, sha256 of the decompressed
  bytes against the published digests) and written into the same TFDS data dir by
  `LocalMNIST`, a subclass of TFDS's MNIST builder that reads them instead of
  downloading. Both paths leave the same `mnist/3.0.1` dataset behind, which later
  runs load without touching the IDX files again.

After TFDS, each split is materialised once as a device array (uint8 images,
int32 labels); batches are cut and normalised on the device.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

MEAN, STD = 0.1307, 0.3081
NUM_CLASSES = 10

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# sha256 of the decompressed files, as published for MNIST.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_MAGIC = {"images": 2051, "labels": 2049}


class DataError(Exception):
    """A local MNIST file is missing or not what it should be."""


def read_idx(path: Path, kind: str, sha256: dict[str, str] | None = MNIST_SHA256) -> np.ndarray:
    """Reads and verifies one gzipped IDX file: (N, 28, 28) uint8 images or (N,) labels."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    stem = path.name.removesuffix(".gz")
    if sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if stem not in sha256:
            raise DataError(f"{path}: no published digest for {stem!r}")
        if digest != sha256[stem]:
            raise DataError(
                f"{path}: sha256 of the decompressed bytes is {digest}, expected {sha256[stem]}"
            )
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    magic = struct.unpack(">i", raw[:4])[0]
    if magic != _MAGIC[kind]:
        raise DataError(f"{path}: IDX magic is {magic}, expected {_MAGIC[kind]} for {kind}")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    if kind == "images" and dims[1:] != (28, 28):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes, header promises {expected} "
            f"({'truncated' if len(raw) < expected else 'trailing bytes'})"
        )
    data = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
    if kind == "labels" and data.size and data.max() >= NUM_CLASSES:
        raise DataError(f"{path}: label {int(data.max())} out of range 0-9")
    return data


def read_idx_dir(
    data_dir: str | os.PathLike, sha256: dict[str, str] | None = MNIST_SHA256
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads and verifies the four IDX files: {'train': (images, labels), 'test': (...)}."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: MNIST directory not found")
    out = {}
    for split in ("train", "test"):
        images = read_idx(data_dir / IDX_FILES[f"{split}_images"], "images", sha256)
        labels = read_idx(data_dir / IDX_FILES[f"{split}_labels"], "labels", sha256)
        if len(images) != len(labels):
            raise DataError(
                f"{data_dir / IDX_FILES[f'{split}_labels']}: {len(labels)} labels "
                f"for {len(images)} images"
            )
        out[split] = (images, labels)
    return out


def _local_mnist_builder_class():
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification.mnist import MNIST

    class LocalMNIST(MNIST, skip_registration=True):
        """TFDS's MNIST builder, reading verified local arrays instead of downloading."""

        name = "mnist"

        def __init__(self, *, arrays, **kwargs):
            self._arrays = arrays
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return [
                tfds.core.SplitGenerator(name=split, gen_kwargs={"split": split})
                for split in ("train", "test")
            ]

        def _generate_examples(self, split):
            images, labels = self._arrays[split]
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": image[..., None], "label": int(label)}

    return LocalMNIST


def prepare_local(
    data_dir: str | os.PathLike,
    tfds_dir: str | os.PathLike | None = None,
    sha256: dict[str, str] | None = MNIST_SHA256,
):
    """Verifies the IDX files in `data_dir` and prepares TFDS's `mnist` from them.

    Does nothing if `tfds_dir` already holds a prepared `mnist`. Returns the builder.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=tfds_dir)
    if builder.is_prepared():
        return builder
    arrays = read_idx_dir(data_dir, sha256)  # verify everything before writing anything
    local = _local_mnist_builder_class()(arrays=arrays, data_dir=tfds_dir)
    # TFDS writes into a temporary directory and renames it when complete, so a
    # failure here leaves no half-prepared dataset behind.
    local.download_and_prepare()
    return tfds.builder("mnist", data_dir=tfds_dir)


def mnist_builder(data_dir: str | os.PathLike | None = None, tfds_dir=None):
    """The TFDS `mnist` builder, prepared: from local IDX files if `data_dir`, else TFDS."""
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("JAXMNIST_DATA_DIR") or None
    if data_dir:
        return prepare_local(data_dir, tfds_dir)
    builder = tfds.builder("mnist", data_dir=tfds_dir)
    builder.download_and_prepare()
    return builder


@dataclass(frozen=True)
class Split:
    """One split in device memory: uint8 images (N, 28, 28, 1) and int32 labels (N,)."""

    images: jax.Array
    labels: jax.Array

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_split(builder, split: str, device_put=jax.device_put) -> Split:
    """Materialises a TFDS split (any TFDS split string, e.g. 'train[:55000]') on device."""
    import tensorflow_datasets as tfds

    # Large batches rather than batch_size=-1, which TFDS's mock data cannot serve.
    batches = list(tfds.as_numpy(builder.as_dataset(split=split).batch(65_536)))
    images = np.concatenate([b["image"] for b in batches]).astype(np.uint8)
    labels = np.concatenate([b["label"] for b in batches]).astype(np.int32)
    return Split(device_put(images), device_put(labels))


def load_mnist(
    data_dir=None, tfds_dir=None, validation: int = 0, device_put=jax.device_put
) -> tuple[Split, Split]:
    """(train, eval) splits. With `validation=K`, eval is the last K train images
    (TFDS's `train[-K:]`) and train the rest; otherwise train is all 60,000 and
    eval the 10,000 test images."""
    builder = mnist_builder(data_dir, tfds_dir)
    if validation:
        return (
            load_split(builder, f"train[:-{validation}]", device_put),
            load_split(builder, f"train[-{validation}:]", device_put),
        )
    return load_split(builder, "train", device_put), load_split(builder, "test", device_put)


def standardize(images: jax.Array) -> jax.Array:
    """Images scaled to [0, 1] -> standardised with MNIST's mean and std."""
    return (images - MEAN) / STD


def epoch_permutation(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    """A fresh shuffle of `n` indices cut into (n // batch_size, batch_size); the
    remainder is dropped (it differs every epoch)."""
    steps = n // batch_size
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)


def augment(key: jax.Array, images: jax.Array, max_degrees: float, max_shift: float) -> jax.Array:
    """Random rotation (uniform in ±max_degrees) and shift (uniform in ±max_shift pixels)
    per image, bilinear, zero (background) fill. `images` are float NHWC, 1 channel."""
    n, h, w, _ = images.shape
    k_rot, k_shift = jax.random.split(key)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-max_degrees, maxval=max_degrees))
    shift = jax.random.uniform(k_shift, (n, 2), minval=-max_shift, maxval=max_shift)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

    def warp(image, a, s):
        # Output pixel (y, x) samples the input at the inverse rotation about the centre.
        cos, sin = jnp.cos(a), jnp.sin(a)
        dy, dx = yy - cy - s[0], xx - cx - s[1]
        src_y = cos * dy - sin * dx + cy
        src_x = sin * dy + cos * dx + cx
        return jax.scipy.ndimage.map_coordinates(image, [src_y, src_x], order=1, cval=0.0)

    return jax.vmap(warp)(images[..., 0], angle, shift)[..., None]


def get_batch(
    split: Split, index: jax.Array, key: jax.Array | None = None,
    max_degrees: float = 0.0, max_shift: float = 0.0,
) -> dict[str, jax.Array]:
    """Gathers the images at `index`, augments them (if asked) and normalises them."""
    images = split.images[index].astype(jnp.float32) / 255.0
    if key is not None and (max_degrees or max_shift):
        images = augment(key, images, max_degrees, max_shift)
    return {"image": standardize(images), "label": split.labels[index]}


jax.tree_util.register_dataclass(Split, data_fields=["images", "labels"], meta_fields=[])
