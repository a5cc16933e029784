"""The input pipeline: IDX verification, the local TFDS builder, batches on device."""

import functools
import gzip
import hashlib
import json
import socket
import struct
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxmnist import data
from tests.conftest import experiment


def write_idx(path, array, magic):
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw)
    return hashlib.sha256(raw).hexdigest()


@pytest.fixture
def fixture_dir(tmp_path):
    """A tiny MNIST-shaped IDX folder (12 train, 6 test images) and its digests."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "idx"
    folder.mkdir()
    digests, arrays = {}, {}
    for split, n in (("train", 12), ("test", 6)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, array, magic in (("images", images, 2051), ("labels", labels, 2049)):
            name = data.IDX_FILES[f"{split}_{kind}"]
            digests[name.removesuffix(".gz")] = write_idx(folder / name, array, magic)
        arrays[split] = (images, labels)
    return folder, digests, arrays


def test_read_idx_dir_round_trip(fixture_dir):
    folder, digests, arrays = fixture_dir
    read = data.read_idx_dir(folder, digests)
    for split in ("train", "test"):
        np.testing.assert_array_equal(read[split][0], arrays[split][0])
        np.testing.assert_array_equal(read[split][1], arrays[split][1])


def corrupt(folder, name, how):
    path = folder / name
    raw = gzip.decompress(path.read_bytes())
    if how == "missing":
        path.unlink()
        return
    if how == "magic":
        raw = struct.pack(">i", 1234) + raw[4:]
    elif how == "truncated":
        raw = raw[:-100]
    elif how == "not-gzip":
        path.write_bytes(b"plain bytes")
        return
    path.write_bytes(gzip.compress(raw))


@pytest.mark.parametrize("how, message", [
    ("missing", "file not found"),
    ("magic", "IDX magic is 1234, expected 2051"),
    ("truncated", "truncated"),
    ("not-gzip", "not a readable gzip file"),
])
def test_bad_files_raise_one_clear_error(fixture_dir, how, message):
    folder, _, _ = fixture_dir
    corrupt(folder, "train-images-idx3-ubyte.gz", how)
    with pytest.raises(data.DataError, match=message) as e:
        data.read_idx_dir(folder, sha256=None)
    assert "train-images-idx3-ubyte.gz" in str(e.value)


def test_digest_mismatch_names_the_file_and_nothing_is_prepared(fixture_dir, tmp_path):
    folder, _, _ = fixture_dir  # right format, but not the published MNIST bytes
    tfds_dir = tmp_path / "tfds"
    with pytest.raises(data.DataError, match=r"t10k|train.*sha256 of the decompressed bytes"):
        data.mnist_builder(folder, tfds_dir)
    assert not (tfds_dir / "mnist").exists() or not any((tfds_dir / "mnist").iterdir())


def test_local_builder_prepares_tfds_mnist_once_as_array_record(fixture_dir, tmp_path):
    folder, digests, arrays = fixture_dir
    tfds_dir = tmp_path / "tfds"
    builder = data.mnist_builder(folder, tfds_dir, sha256=digests)
    assert builder.name == "mnist" and str(builder.version) == "3.0.1"
    assert builder.is_prepared()
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert builder.info.splits["train"].num_examples == 12
    assert builder.info.features["image"].shape == (28, 28, 1)
    # TFDS's own registered `mnist` builder reads what was prepared.
    assert tfds.builder("mnist", data_dir=tfds_dir).info.splits["test"].num_examples == 6
    # Later runs reuse it: the IDX folder is no longer needed.
    for f in folder.iterdir():
        f.unlink()
    train, test = data.load_mnist(folder, tfds_dir)
    assert len(train) == 12 and len(test) == 6
    chex.assert_shape(train.images, (12, 28, 28, 1))
    # Same images and labels, in TFDS's own (shuffled) order.
    got = sorted((int(label), img.tobytes())
                 for label, img in zip(np.asarray(test.labels), np.asarray(test.images)[..., 0]))
    want = sorted((int(label), img.tobytes()) for img, label in zip(*arrays["test"]))
    assert got == want


def test_a_run_that_loses_the_race_to_prepare_uses_the_winners_copy(fixture_dir, tmp_path,
                                                                     monkeypatch):
    # Two runs started at once both prepare; TFDS refuses to rename the second copy over
    # the first (FileExistsError), and the second run reads the first's.
    folder, digests, _ = fixture_dir
    tfds_dir = tmp_path / "tfds"
    prepare = data.MNIST.download_and_prepare

    def lose_the_race(self, **kwargs):
        winner = data.MNIST(arrays=data.read_idx_dir(folder, digests), sha256=digests,
                            data_dir=tfds_dir)
        prepare(winner, **kwargs)
        raise FileExistsError(f"Cannot rename {tfds_dir}/mnist/incomplete.X_3.0.1. "
                              f"Destination {tfds_dir}/mnist/3.0.1 already exists.")

    monkeypatch.setattr(data.MNIST, "download_and_prepare", lose_the_race)
    builder = data.mnist_builder(folder, tfds_dir, sha256=digests)
    assert builder.is_prepared() and builder.info.splits["train"].num_examples == 12


def test_a_file_exists_error_with_nothing_prepared_is_not_hidden(fixture_dir, tmp_path,
                                                                 monkeypatch):
    folder, digests, _ = fixture_dir

    def fail(self, **kwargs):
        raise FileExistsError("something else")

    monkeypatch.setattr(data.MNIST, "download_and_prepare", fail)
    with pytest.raises(FileExistsError, match="something else"):
        data.mnist_builder(folder, tmp_path / "tfds", sha256=digests)


def tree_snapshot(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
            if f.is_file()}


def test_a_tfrecord_mnist_is_left_as_it_is(fixture_dir, tmp_path, capsys):
    folder, digests, _ = fixture_dir
    tfds_dir = tmp_path / "tfds"
    data.mnist_builder(folder, tfds_dir, sha256=digests)
    capsys.readouterr()
    # What a data dir prepared by TensorFlow-era code says of itself.
    info = tfds_dir / "mnist" / "3.0.1" / "dataset_info.json"
    meta = json.loads(info.read_text())
    info.write_text(json.dumps({**meta, "fileFormat": "tfrecord"}))
    before = tree_snapshot(tfds_dir / "mnist")
    builder = data.mnist_builder(folder, tfds_dir, sha256=digests)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("jaxmnist:")]
    side = tfds_dir / data.ARRAY_RECORD_SUBDIR
    assert len(lines) == 1, err
    assert "tfrecord" in lines[0] and "left as it is" in lines[0] and str(side) in lines[0]
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert Path(builder.data_dir).is_relative_to(side)
    assert tree_snapshot(tfds_dir / "mnist") == before  # not a byte changed
    # Later runs read the copy, saying nothing.
    train, _ = data.load_mnist(folder, tfds_dir)
    assert len(train) == 12
    assert not [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("jaxmnist:")]
    assert tree_snapshot(tfds_dir / "mnist") == before


def test_an_unreachable_download_host_is_one_error_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXMNIST_DATA_DIR", raising=False)

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(data.DownloadError) as raised:
        data.mnist_builder(None, tmp_path / "tfds")
    message = str(raised.value)
    assert "cannot download MNIST: storage.googleapis.com cannot be reached" in message
    assert "connect to the internet" in message and "train-images-idx3-ubyte.gz" in message
    assert "\n" not in message
    written = [f for f in (tmp_path / "tfds").rglob("*") if f.is_file()]
    assert written == []  # nothing prepared, not even half


def test_a_refused_download_is_the_same_error(tmp_path, monkeypatch):
    import requests

    monkeypatch.delenv("JAXMNIST_DATA_DIR", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])

    def refuse(self, *args, **kwargs):
        raise requests.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(data.MNIST, "download_and_prepare", refuse)
    with pytest.raises(data.DownloadError, match="cannot be reached .Connection refused"):
        data.mnist_builder(None, tmp_path / "tfds")


def test_validation_split_is_held_out_of_train(fixture_dir, tmp_path):
    folder, digests, _ = fixture_dir
    data.mnist_builder(folder, tmp_path / "tfds", sha256=digests)
    train, val = data.load_mnist(folder, tmp_path / "tfds", validation=4)
    assert len(train) == 8 and len(val) == 4
    all_train, _ = data.load_mnist(folder, tmp_path / "tfds")
    np.testing.assert_array_equal(np.asarray(all_train.images[8:]), np.asarray(val.images))


class FakeDownloadManager:
    """Serves TFDS's download requests from a local folder, recording the URLs asked for."""

    def __init__(self, folder):
        self.folder, self.urls = folder, []

    def download(self, urls):
        self.urls.extend(urls.values())
        return {key: self.folder / url.rsplit("/", 1)[1] for key, url in urls.items()}


def test_online_path_downloads_tfds_registered_urls(fixture_dir, monkeypatch):
    folder, digests, arrays = fixture_dir
    monkeypatch.setattr(data, "check_reachable", lambda url: None)  # no network here
    builder = data.MNIST(sha256=digests, data_dir=folder / "unused")
    manager = FakeDownloadManager(folder)
    generators = builder._split_generators(manager)
    registered = data.MNIST.url_infos
    assert sorted(manager.urls) == sorted(registered)  # TFDS's own URLs and checksums
    train = next(g for g in generators if g.name == "train")
    np.testing.assert_array_equal(train.gen_kwargs["images"], arrays["train"][0])


def test_tfds_path_with_mock_data(monkeypatch):
    monkeypatch.delenv("JAXMNIST_DATA_DIR", raising=False)
    rng = np.random.default_rng(0)
    examples = [{"image": data.encode_png(rng.integers(0, 256, (28, 28, 1), np.uint8)),
                 "label": i % 10} for i in range(40)]

    class Source(list):  # TFDS's mock data source cannot serve __getitems__
        def __getitems__(self, keys):
            return [self[k] for k in keys]

    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: Source(examples)):
        train, test = data.load_mnist(data_dir=None)
    chex.assert_shape(train.images, (40, 28, 28, 1))
    assert train.images.dtype == jnp.uint8 and train.labels.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(train.labels), np.arange(40) % 10)
    np.testing.assert_array_equal(np.asarray(train.images[3]),
                                  data.decode_png(examples[3]["image"])[..., None])


def test_png_round_trip():
    image = np.random.default_rng(1).integers(0, 256, (28, 28, 1), np.uint8)
    png = data.encode_png(image)
    assert png[:4] == b"\x89PNG"
    np.testing.assert_array_equal(data.decode_png(png), image[..., 0])


@pytest.mark.slow
def test_real_mnist_from_the_local_copy(mnist_splits):
    train, test = mnist_splits
    assert (len(train), len(test)) == (60_000, 10_000)
    np.testing.assert_array_equal(
        np.bincount(np.asarray(test.labels)),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    batch = data.get_batch(test, jnp.arange(1000))
    x = np.asarray(batch["image"])
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.1  # normalised with 0.1307/0.3081


def test_epoch_permutation_covers_each_index_once():
    perm = np.asarray(data.epoch_permutation(jax.random.key(0), 1000, 128))
    assert perm.shape == (7, 128)
    assert len(np.unique(perm)) == perm.size
    other = np.asarray(data.epoch_permutation(jax.random.key(1), 1000, 128))
    assert not np.array_equal(perm, other)


def test_augment_keeps_shape_and_identity_at_zero():
    images = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    same = data.augment(jax.random.key(1), images, 0.0, 0.0)
    chex.assert_trees_all_close(same, images, atol=1e-5)
    moved = data.augment(jax.random.key(1), images, 7.0, 1.0)
    chex.assert_shape(moved, (4, 28, 28, 1))
    assert not np.allclose(moved, images)
    # No zoom asked: exactly what rotation and shift alone give.
    chex.assert_trees_all_equal(data.augment(jax.random.key(1), images, 7.0, 1.0, 0.0), moved)


def test_zoom_scales_a_centred_square_about_the_centre():
    # A 10x10 square at the centre: zoomed by z its area grows by about z^2, and it stays
    # centred (the centre of mass does not move).
    square = jnp.zeros((64, 28, 28, 1)).at[:, 9:19, 9:19].set(1.0)
    zoomed = np.asarray(data.augment(jax.random.key(0), square, max_scale=0.2))
    areas = zoomed.sum(axis=(1, 2, 3))
    assert areas.min() >= 0.8**2 * 100 - 8 and areas.max() <= 1.2**2 * 100 + 8
    assert areas.max() - areas.min() > 40  # different zooms for different images
    yy = np.arange(28)[None, :, None, None]
    centre_y = (zoomed * yy).sum(axis=(1, 2, 3)) / areas
    np.testing.assert_allclose(centre_y, 13.5, atol=1e-3)


def test_the_elastic_field_is_alpha_times_a_smooth_field_of_mean_zero():
    key = jax.random.key(0)
    elastic_field = jax.jit(data.elastic_field, static_argnums=(1, 2, 3))  # one compile a shape
    field = np.asarray(elastic_field(key, 64, 28, 28, 1.0, 4.0))
    chex.assert_shape(field, (64, 2, 28, 28))
    np.testing.assert_allclose(np.asarray(elastic_field(key, 64, 28, 28, 16.0, 4.0)),
                               16.0 * field, rtol=1e-5, atol=1e-6)
    assert abs(field.mean()) < 0.1 * field.std()
    # Smooth: neighbouring pixels move almost together; a wider Gaussian, smaller moves.
    neighbours = np.corrcoef(field[..., :-1].ravel(), field[..., 1:].ravel())[0, 1]
    assert neighbours > 0.9
    assert np.asarray(elastic_field(key, 64, 28, 28, 1.0, 8.0)).std() < field.std()
    # The Gaussian's rows sum to 1, so a field of equal draws would come back unchanged:
    # a sigma far wider than the image gives nearly one displacement per image and axis,
    # on an image that is not square too.
    wide = np.asarray(elastic_field(key, 8, 20, 28, 1.0, 1e4))
    chex.assert_shape(wide, (8, 2, 20, 28))
    np.testing.assert_allclose(wide, wide[..., :1, :1] * np.ones_like(wide), atol=1e-4)


def test_an_elastic_distortion_moves_strokes_a_little_and_keeps_their_ink(monkeypatch):
    square = jnp.zeros((32, 28, 28, 1)).at[:, 9:19, 9:19].set(1.0)
    bend = jax.jit(functools.partial(data.augment, elastic_alpha=16.0))  # as training runs it
    moved = np.asarray(bend(jax.random.key(0), square))
    chex.assert_shape(moved, (32, 28, 28, 1))
    assert not np.allclose(moved, square)
    # The ink stretches or shrinks with the field's divergence, which averages to zero:
    # per image within 30 %, over the batch within 5 %.
    ink = moved.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(ink, 100.0, rtol=0.3)
    np.testing.assert_allclose(ink.mean(), 100.0, rtol=0.05)
    assert (np.abs(moved - np.asarray(square)).sum(axis=(1, 2, 3)) > 1.0).all()
    # The batch hands the distortion to `augment`, and asks for it alone too.
    asked = []
    monkeypatch.setattr(data, "augment", lambda key, images, *args: asked.append(args) or images)
    split = data.Split(images=np.zeros((2, 28, 28, 1), np.uint8), labels=np.zeros(2, np.int32))
    data.get_batch(split, jnp.arange(2), jax.random.key(2), elastic_alpha=16.0,
                   elastic_sigma=3.0)
    assert asked == [(0.0, 0.0, 0.0, 16.0, 3.0)]


def test_a_batch_at_a_smaller_size_is_the_images_resized_then_normalised():
    images = np.asarray(jax.random.randint(jax.random.key(0), (4, 28, 28, 1), 0, 256),
                        np.uint8)
    split = data.Split(images=images, labels=np.arange(4, dtype=np.int32))
    small = jax.jit(functools.partial(data.get_batch, size=14))(split, jnp.arange(4))
    chex.assert_shape(small["image"], (4, 14, 14, 1))
    # Antialiased bilinear resizing by 1/2: along each axis, output i is input pixels
    # 2i - 1 .. 2i + 2 weighted 1, 3, 3, 1 (a triangle twice as wide), the weights
    # renormalised where they fall outside the image.
    w = np.zeros((14, 28))
    for i in range(14):
        for d, v in zip((-1, 0, 1, 2), (1, 3, 3, 1)):
            if 0 <= 2 * i + d < 28:
                w[i, 2 * i + d] = v
    w /= w.sum(axis=1, keepdims=True)
    by_hand = np.einsum("ij,njkc,lk->nilc", w, images / 255.0, w)
    np.testing.assert_allclose(small["image"], (by_hand - data.MEAN) / data.STD, atol=1e-4)
    chex.assert_trees_all_equal(data.get_batch(split, jnp.arange(4), size=28)["image"],
                                data.get_batch(split, jnp.arange(4))["image"])


def test_brightness_and_contrast_are_one_affine_map_per_image_clipped_to_0_1():
    images = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
    chex.assert_trees_all_equal(
        data.adjust_brightness_contrast(jax.random.key(1), images, 0.0, 0.0), images)
    out = np.asarray(data.adjust_brightness_contrast(jax.random.key(1), images, 0.2, 0.3))
    assert out.min() >= 0.0 and out.max() <= 1.0
    x = np.asarray(images)
    for i in range(8):
        inside = (out[i] > 0) & (out[i] < 1)  # the pixels not clipped
        slope, offset = np.polyfit(x[i][inside], out[i][inside], 1)
        np.testing.assert_allclose(x[i][inside] * slope + offset, out[i][inside], atol=1e-5)
        assert 0.7 - 1e-5 <= slope <= 1.3 + 1e-5 and abs(offset) <= 0.2 + 1e-5
    # The batch's augmentation applies it only when asked.
    split = data.Split(images=(np.asarray(images) * 255).astype(np.uint8),
                       labels=np.zeros(8, np.int32))
    plain = data.get_batch(split, jnp.arange(8), jax.random.key(2))
    lit = data.get_batch(split, jnp.arange(8), jax.random.key(2), brightness=0.2)
    chex.assert_trees_all_equal(plain["image"], data.get_batch(split, jnp.arange(8))["image"])
    assert not np.allclose(lit["image"], plain["image"])


def test_augment_probability_transforms_that_share_of_the_images_and_leaves_the_rest():
    images = jax.random.uniform(jax.random.key(0), (400, 28, 28, 1))
    split = data.Split(images=(np.asarray(images) * 255).astype(np.uint8),
                       labels=np.zeros(400, np.int32))
    index, key = jnp.arange(400), jax.random.key(2)
    plain = np.asarray(data.get_batch(split, index)["image"])
    for kwargs in (dict(max_degrees=10.0, max_shift=2.0), dict(brightness=0.2, contrast=0.2)):
        every = np.asarray(data.get_batch(split, index, key, **kwargs)["image"])
        half = np.asarray(data.get_batch(split, index, key, **kwargs, probability=0.5)["image"])
        # (to round-off: XLA fuses the normalisation differently in the two programs)
        untouched = np.all(np.isclose(half, plain, atol=1e-5), axis=(1, 2, 3))
        assert 150 < untouched.sum() < 250  # about half, drawn per image
        # The others are transformed exactly as with probability 1.
        np.testing.assert_allclose(half[~untouched], every[~untouched], atol=1e-5)
        assert not np.any(np.all(np.isclose(every, plain, atol=1e-5), axis=(1, 2, 3)))


def test_augmentation_options_hand_every_augmentation_field_to_get_batch():
    import inspect

    from jaxmnist.configs import Config

    fields = dict(rotate_degrees=7.0, shift_pixels=2.0, scale=0.09, brightness=0.2,
                  contrast=0.3, augment_probability=0.5, elastic_alpha=16.0, elastic_sigma=3.0)
    options = data.augmentation_options(Config(**fields))
    assert options == dict(max_degrees=7.0, max_shift=2.0, max_scale=0.09, brightness=0.2,
                           contrast=0.3, probability=0.5, elastic_alpha=16.0,
                           elastic_sigma=3.0)
    # every augmentation argument of get_batch is one of the config's (the size is not
    # an augmentation: Config.small_size, by epoch)
    assert set(options) == set(inspect.signature(data.get_batch).parameters) - {
        "split", "index", "key", "size"}
    for name in fields:  # and each field reaches its own argument
        changed = data.augmentation_options(Config(**{**fields, name: 0.25}))
        assert [k for k in options if options[k] != changed[k]] != []


def test_the_augmentation_picture_draws_a_row_per_recipe_and_refuses_a_missing_folder(
        tmp_path, capsys):
    from PIL import Image

    augmentations = experiment("augmentations")
    digits = np.zeros((1, 28, 28, 1), np.uint8)  # one column: a single digit draws too
    digits[:, 8:20, 12:16] = 255
    out = tmp_path / "aug.png"
    augmentations.draw(digits, out)
    width, height = Image.open(out).size
    assert len(augmentations.rows()) == 5 and height > width  # five rows of one
    assert augmentations.main(["--data-dir", str(tmp_path / "absent"),
                               "--out", str(tmp_path / "no.png")]) == 2
    assert "MNIST directory not found" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()

