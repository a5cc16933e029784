"""`python -m jaxmnist.predict` on digits the test saves itself, with the committed model."""

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from jaxmnist import predict
from tests.conftest import REPO

RUN = REPO / "experiments" / "results" / "default"  # the committed, trained model


def run_predict(*args):
    return subprocess.run([sys.executable, "-m", "jaxmnist.predict", *args],
                          capture_output=True, text=True, timeout=300)


def test_to_mnist_centres_and_scales_like_mnist():
    image = Image.new("L", (300, 200), 255)  # a dark stroke on white, off-centre
    ImageDraw.Draw(image).line([(40, 20), (60, 180)], fill=0, width=12)
    x = predict.to_mnist(image)
    assert x.shape == (28, 28) and x.dtype == np.float32
    ys, xs = np.nonzero(x > 0.1)
    assert ys.max() - ys.min() + 1 <= 20 and xs.max() - xs.min() + 1 <= 20
    assert ys.max() - ys.min() + 1 >= 18  # the longer side fills the 20-pixel box
    mass = x.sum()
    cy = (x.sum(axis=1) * np.arange(28)).sum() / mass
    cx = (x.sum(axis=0) * np.arange(28)).sum() / mass
    assert abs(cy - 13.5) < 1 and abs(cx - 13.5) < 1
    assert x[0].max() == 0 and x[:, 0].max() == 0  # background is black


def test_blank_image_is_an_error():
    with pytest.raises(predict.ImageError, match="blank"):
        predict.to_mnist(Image.new("L", (50, 50), 255))


def test_predicts_mnist_test_digits_saved_as_other_images(mnist_splits, tmp_path):
    _, test = mnist_splits
    images, labels = np.asarray(test.images[:30, ..., 0]), np.asarray(test.labels[:30])
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        pil = Image.fromarray(img)
        if i % 3 == 0:  # dark on light, 4x larger, PNG
            pil = Image.fromarray(255 - img).resize((112, 112), Image.Resampling.BICUBIC)
            path = tmp_path / f"{i}_{label}.png"
        elif i % 3 == 1:  # light on dark, 50x50 JPEG, in a wider canvas
            canvas = Image.new("L", (90, 50), 0)
            canvas.paste(pil.resize((50, 50)), (30, 0))
            pil, path = canvas, tmp_path / f"{i}_{label}.jpg"
        else:  # RGB, original size
            pil, path = pil.convert("RGB"), tmp_path / f"{i}_{label}.bmp"
        pil.save(path)
        paths.append(path)
    r = run_predict("--run", str(RUN), *map(str, paths))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 30
    correct = 0
    for line, label in zip(lines, labels):
        m = re.match(r"(.+): (\d)  \((\d): ([\d.]+), (\d): ([\d.]+), (\d): ([\d.]+)\)$", line)
        assert m, line
        assert m.group(2) == m.group(3)
        probs = [float(m.group(k)) for k in (4, 6, 8)]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
        correct += int(m.group(2)) == label
    assert correct >= 28, r.stdout


def test_bad_files_fail_one_line_each_and_the_rest_still_run(mnist_splits, tmp_path):
    _, test = mnist_splits
    good = tmp_path / "good.png"
    Image.fromarray(np.asarray(test.images[0, ..., 0])).save(good)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 6000), 0).save(huge)
    missing = tmp_path / "missing.png"
    r = run_predict("--run", str(RUN), str(text), str(good), str(empty), str(huge), str(missing))
    assert r.returncode == 2
    assert r.stdout.startswith(f"{good}: {int(test.labels[0])}")
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 4, r.stderr
    assert "notes.png: not an image" in errors[0]
    assert "empty.png: empty file" in errors[1]
    assert "huge.png: " in errors[2] and "over the 40,000,000-pixel limit" in errors[2]
    assert "missing.png: file not found" in errors[3]


def test_run_without_checkpoint_is_one_line_exit_2(tmp_path):
    r = run_predict("--run", str(tmp_path), "x.png")
    assert r.returncode == 2 and "no config.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "config.json").write_text("{}")
    r = run_predict("--run", str(tmp_path), "x.png")
    assert r.returncode == 2 and "no checkpoint" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["x.png"], "the following arguments are required: --run"),
    (["--run", "r"], "the following arguments are required: images"),
    (["--run", "r", "--top", "3", "x.png"], "unrecognized arguments: --top"),
])
def test_predict_rejects_bad_arguments(args, message):
    r = run_predict(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
