"""MNIST through TensorFlow Datasets, without TensorFlow, online or from local IDX files.

One TFDS builder, `MNIST`: TFDS's own `mnist` (same name, version 3.0.1, features and
splits) prepared in the `array_record` file format, which TFDS reads without
TensorFlow. It gets the four IDX `.gz` files in one of two ways:

* Online: TFDS's download manager fetches them from TFDS's registered URLs and checks
  them against TFDS's registered checksums.
* Offline: `--data-dir DIR` (or `JAXMNIST_DATA_DIR`) names a folder that holds them.

Either way each file is verified (IDX magic, shapes, sha256 of the decompressed bytes
against the published digests) before anything is written. Images are encoded as PNG
with Pillow (TFDS itself would need TensorFlow for that). Later runs read the prepared
dataset through TFDS's data source API, all at once, into device-resident uint8 splits;
batches are then cut and normalised on the device.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import socket
import struct
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxmnist.configs import Config

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


class DataError(ValueError):
    """MNIST cannot be had as asked: a local file missing or not what it should be."""


def read_idx(path: Path, kind: str, sha256: str | None = None) -> np.ndarray:
    """Reads and verifies one gzipped IDX file: (N, 28, 28) uint8 images or (N,) labels.

    `sha256`, if given, is the expected digest of the decompressed bytes."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from None
    if sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256:
            raise DataError(
                f"{path}: sha256 of the decompressed bytes is {digest}, expected {sha256}")
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


def read_idx_files(
    paths: dict[str, str | os.PathLike], sha256: dict[str, str] | None = MNIST_SHA256
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads and verifies the four IDX files, given as {key of `IDX_FILES`: path}:
    {'train': (images, labels), 'test': (...)}. Digests are looked up by the files'
    MNIST names (`IDX_FILES`), whatever the paths are called."""
    out = {}
    for split in ("train", "test"):
        arrays = []
        for kind in ("images", "labels"):
            key = f"{split}_{kind}"
            stem = IDX_FILES[key].removesuffix(".gz")
            if sha256 is not None and stem not in sha256:
                raise DataError(f"{paths[key]}: no published digest for {stem!r}")
            arrays.append(read_idx(Path(paths[key]), kind, sha256 and sha256[stem]))
        images, labels = arrays
        if len(images) != len(labels):
            raise DataError(f"{paths[f'{split}_labels']}: {len(labels)} labels "
                            f"for {len(images)} images")
        out[split] = (images, labels)
    return out


def read_idx_dir(
    data_dir: str | os.PathLike, sha256: dict[str, str] | None = MNIST_SHA256
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads and verifies the four IDX files in a folder: {'train': (images, labels), ...}."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: MNIST directory not found")
    return read_idx_files({key: data_dir / name for key, name in IDX_FILES.items()}, sha256)


def encode_png(image: np.ndarray) -> bytes:
    """A (28, 28) or (28, 28, 1) uint8 image as PNG bytes (Pillow, not TensorFlow)."""
    buffer = io.BytesIO()
    Image.fromarray(image.reshape(image.shape[:2])).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(png: bytes) -> np.ndarray:
    """PNG bytes -> (H, W) uint8."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image)


@functools.cache
def _builder_class():
    # TFDS is imported where a dataset is prepared or read, not with this module: the
    # command lines answer --summary and bad input without its second of start-up.
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    class MNIST(tfds_mnist.MNIST, skip_registration=True):
        """TFDS's `mnist` builder (same name, version, features and splits), prepared
        without TensorFlow: PNG-encoded by Pillow, stored as array_record.

        `arrays` ({'train': (images, labels), 'test': ...}, already verified) are used
        instead of downloading; otherwise TFDS's download manager fetches the IDX files
        from TFDS's registered URLs, checking TFDS's registered checksums."""

        name = "mnist"

        def __init__(self, *, arrays=None, sha256=MNIST_SHA256, **kwargs):
            self._arrays = arrays
            self._sha256 = sha256
            super().__init__(**kwargs)

        # TFDS looks checksums up beside a builder's code: use those registered for
        # TFDS's own MNIST.
        @tfds.core.utils.classproperty
        @classmethod
        def url_infos(cls):
            return tfds_mnist.MNIST.url_infos

        def _split_generators(self, dl_manager):
            arrays = self._arrays
            if arrays is None:
                check_reachable(self.URL)
                paths = dl_manager.download(
                    {key: self.URL + name for key, name in IDX_FILES.items()})
                arrays = read_idx_files(paths, self._sha256)
            return [
                tfds.core.SplitGenerator(
                    name=split, gen_kwargs={"images": arrays[split][0],
                                            "labels": arrays[split][1]})
                for split in ("train", "test")
            ]

        def _generate_examples(self, images, labels):
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": encode_png(image), "label": int(label)}

    return MNIST


def __getattr__(name: str):
    # `data.MNIST`, the builder class, is defined on first use: importing TFDS is slow.
    if name == "MNIST":
        return _builder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Where the array_record copy goes when a TFDS data dir already holds TensorFlow's
# TFRecord `mnist` (left exactly as it is: other TensorFlow projects read it).
ARRAY_RECORD_SUBDIR = "jaxmnist-array_record"


def mnist_builder(
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    sha256: dict[str, str] | None = MNIST_SHA256,
):
    """TFDS's `mnist`, prepared in `tfds_dir` (default: TFDS's data dir) as array_record.

    Prepares it once: from the IDX files in `data_dir` (default `$JAXMNIST_DATA_DIR`),
    verified before anything is written, or, with neither, downloaded by TFDS. A
    `mnist` prepared there as TFRecord (which needs TensorFlow to read) is left as it
    is; the array_record copy then goes to `ARRAY_RECORD_SUBDIR` inside that data dir,
    saying so on stderr when it is first prepared. Returns the prepared builder."""
    import tensorflow_datasets as tfds  # (where it is used: see _builder_class)

    MNIST = _builder_class()
    data_dir = data_dir or os.environ.get("JAXMNIST_DATA_DIR") or None
    builder = MNIST(data_dir=tfds_dir)
    if builder.is_prepared():
        if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
            return builder
        other, file_format = Path(builder.data_dir), builder.info.file_format.value
        tfds_dir = other.parents[1] / ARRAY_RECORD_SUBDIR  # other: <data dir>/mnist/<version>
        builder = MNIST(data_dir=tfds_dir)
        if builder.is_prepared():
            return builder
        print(f"jaxmnist: {other} holds mnist as {file_format} (TensorFlow's format), left "
              f"as it is; preparing an array_record copy in {tfds_dir}", file=sys.stderr)
    arrays = read_idx_dir(data_dir, sha256) if data_dir else None
    builder = MNIST(arrays=arrays, sha256=sha256, data_dir=tfds_dir)
    # TFDS writes into a temporary directory and renames it when complete, so a
    # failure here leaves no half-prepared dataset behind.
    try:
        builder.download_and_prepare(file_format="array_record")
    except DownloadError:
        raise
    except _connection_errors() as e:
        raise DownloadError(MNIST.URL, e) from None
    except FileExistsError:
        # Another process (a second run started at the same time) finished preparing it
        # first, and TFDS does not rename over a complete dataset: that one is as good.
        builder = MNIST(data_dir=tfds_dir)
        if not builder.is_prepared():
            raise
    return builder


class DownloadError(DataError):
    """MNIST could not be downloaded (no local copy was given)."""

    def __init__(self, url: str, reason):
        self.url = url
        host = urllib.parse.urlsplit(url).hostname
        super().__init__(
            f"cannot download MNIST: {host} cannot be reached ({reason}); connect to the "
            f"internet, or use a local copy: a folder with the four IDX files "
            f"({', '.join(IDX_FILES.values())})")


def check_reachable(url: str) -> None:
    """Raises DownloadError at once when `url`'s host name does not resolve (TFDS
    would retry every download for minutes first)."""
    host = urllib.parse.urlsplit(url).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise DownloadError(url, f"name lookup failed: {e}") from None


def _connection_errors() -> tuple[type[BaseException], ...]:
    import requests  # TFDS downloads through requests (imported with TFDS, where it is used)

    return (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


@dataclass(frozen=True)
class Split:
    """One split in device memory: uint8 images (N, 28, 28, 1) and int32 labels (N,);
    for distillation from logits computed once (`Config.distill_once`), a teacher's
    float32 logits (N, 10) of the images as they are."""

    images: jax.Array
    labels: jax.Array
    teacher_logits: jax.Array | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_split(builder, split: str, device_put=jax.device_put) -> Split:
    """Materialises a TFDS split (any TFDS split string, e.g. 'train[:55000]') on device,
    read through TFDS's data source API in one bulk read."""
    import tensorflow_datasets as tfds  # (where it is used: see _builder_class)

    # TFDS would decode each image through its feature machinery (OpenCV, else Pillow,
    # one example at a time); reading the PNG bytes and decoding them here is faster.
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    examples = source.__getitems__(range(len(source)))
    images = np.stack([decode_png(e["image"]) for e in examples]).reshape(-1, 28, 28, 1)
    labels = np.array([e["label"] for e in examples], np.int32)
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


def augment(key: jax.Array, images: jax.Array, max_degrees: float = 0.0,
            max_shift: float = 0.0, max_scale: float = 0.0, elastic_alpha: float = 0.0,
            elastic_sigma: float = 4.0) -> jax.Array:
    """Random rotation (uniform in ±max_degrees), zoom (by a factor uniform in
    1 ± max_scale) and shift (uniform in ±max_shift pixels) per image, about the centre,
    and with `elastic_alpha` > 0 an elastic distortion (`elastic_field`), bilinear, zero
    (background) fill. `images` are float NHWC, 1 channel."""
    n, h, w, _ = images.shape
    k_rot, k_shift = jax.random.split(key)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (n,), minval=-max_degrees, maxval=max_degrees))
    shift = jax.random.uniform(k_shift, (n, 2), minval=-max_shift, maxval=max_shift)
    zoom = jnp.ones((n,))
    if max_scale:  # its own key: runs without zoom draw what they always drew
        zoom = jax.random.uniform(jax.random.fold_in(key, 2), (n,), minval=1.0 - max_scale,
                                  maxval=1.0 + max_scale)
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

    fields = ()  # without the distortion, no field at all in the batch's work
    if elastic_alpha:  # its own key, as the zoom's
        fields = (elastic_field(jax.random.fold_in(key, 6), n, h, w, elastic_alpha,
                                elastic_sigma),)

    def warp(image, a, s, z, *field):
        # Output pixel (y, x) samples the input at the inverse zoom and rotation about
        # the centre, moved by the elastic field there (if any).
        cos, sin = jnp.cos(a), jnp.sin(a)
        dy, dx = (yy - cy - s[0]) / z, (xx - cx - s[1]) / z
        src_y = cos * dy - sin * dx + cy
        src_x = sin * dy + cos * dx + cx
        if field:
            src_y, src_x = src_y + field[0][0], src_x + field[0][1]
        return jax.scipy.ndimage.map_coordinates(image, [src_y, src_x], order=1, cval=0.0)

    return jax.vmap(warp)(images[..., 0], angle, shift, zoom, *fields)[..., None]


def elastic_field(key: jax.Array, n: int, h: int, w: int, alpha: float,
                  sigma: float) -> jax.Array:
    """Simard, Steinkraus and Platt's (2003) elastic distortion: for each of `n` images a
    displacement in pixels, (n, 2, h, w) for (dy, dx), that is `alpha` times a field of
    uniform(±1) draws smoothed by a Gaussian of `sigma` pixels. The smoothing is
    G @ U @ Gᵀ with G[i, j] ∝ exp(-(i - j)² / 2σ²), each row summed to 1: near the
    border the Gaussian is cut and renormalised instead of padded."""
    def gauss(size):
        i = jnp.arange(size, dtype=jnp.float32)
        g = jnp.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))
        return g / g.sum(axis=1, keepdims=True)

    uniform = jax.random.uniform(key, (n, 2, h, w), minval=-1.0, maxval=1.0)
    return alpha * jnp.einsum("ij,nbjk,lk->nbil", gauss(h), uniform, gauss(w))


def adjust_brightness_contrast(key: jax.Array, images: jax.Array, brightness: float,
                               contrast: float) -> jax.Array:
    """x -> clip(x·(1 + c) + b, 0, 1) per image, c uniform in ±contrast and b in
    ±brightness (Albumentations' RandomBrightnessContrast); `images` in [0, 1]."""
    n = images.shape[0]
    k_c, k_b = jax.random.split(key)
    c = jax.random.uniform(k_c, (n, 1, 1, 1), minval=-contrast, maxval=contrast)
    b = jax.random.uniform(k_b, (n, 1, 1, 1), minval=-brightness, maxval=brightness)
    return jnp.clip(images * (1.0 + c) + b, 0.0, 1.0)


def augmentation_options(config: Config) -> dict[str, float]:
    """`config`'s augmentation as `get_batch`'s keyword arguments (none drawn where all
    are 0), for every caller that augments as training does."""
    return dict(max_degrees=config.rotate_degrees, max_shift=config.shift_pixels,
                max_scale=config.scale, brightness=config.brightness,
                contrast=config.contrast, probability=config.augment_probability,
                elastic_alpha=config.elastic_alpha, elastic_sigma=config.elastic_sigma)


def get_batch(
    split: Split, index: jax.Array, key: jax.Array | None = None,
    max_degrees: float = 0.0, max_shift: float = 0.0, max_scale: float = 0.0,
    brightness: float = 0.0, contrast: float = 0.0, probability: float = 1.0,
    elastic_alpha: float = 0.0, elastic_sigma: float = 4.0, size: int | None = None,
) -> dict[str, jax.Array]:
    """Gathers the images at `index`, augments them (if asked: `augment`, then
    `adjust_brightness_contrast`, each applied to an image with `probability`, drawn
    per image and per transform, as Albumentations' `p`), resizes them to `size` x
    `size` if given (bilinear, antialiased: `jax.image.resize`) and normalises them. A
    split with teacher logits gives theirs at `index` too ("teacher_logits")."""
    images = split.images[index].astype(jnp.float32) / 255.0
    if key is not None and (max_degrees or max_shift or max_scale or elastic_alpha):
        images = _sometimes(jax.random.fold_in(key, 4), probability, images,
                            augment(key, images, max_degrees, max_shift, max_scale,
                                    elastic_alpha, elastic_sigma))
    if key is not None and (brightness or contrast):
        images = _sometimes(jax.random.fold_in(key, 5), probability, images,
                            adjust_brightness_contrast(jax.random.fold_in(key, 3), images,
                                                       brightness, contrast))
    if size is not None and size != images.shape[1]:
        images = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                                  "linear")
    batch = {"image": standardize(images), "label": split.labels[index]}
    if split.teacher_logits is not None:
        batch["teacher_logits"] = split.teacher_logits[index]
    return batch


def _sometimes(key: jax.Array, probability: float, images: jax.Array,
               transformed: jax.Array) -> jax.Array:
    """Each image of `transformed` with `probability`, else the one of `images`."""
    if probability == 1.0:  # no draw: runs that augment every image draw what they always drew
        return transformed
    chosen = jax.random.bernoulli(key, probability, (images.shape[0], 1, 1, 1))
    return jnp.where(chosen, transformed, images)


jax.tree_util.register_dataclass(Split, data_fields=["images", "labels", "teacher_logits"],
                                 meta_fields=[])
