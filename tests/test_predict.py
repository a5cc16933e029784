"""`python -m jaxmnist.predict` on digits the test saves itself, with the committed model."""

import io
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from jaxmnist import predict
from tests.conftest import REPO, run_in_process

RUN = REPO / "experiments" / "results" / "default"  # the committed, trained model


@pytest.fixture
def run_predict(capsys):
    """`python -m jaxmnist.predict ARGS` in this process."""
    return lambda *args: run_in_process(predict.main, capsys, *args)


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


def a_seven(size=(60, 80)):
    """A light-on-dark 7, not symmetric under any rotation."""
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    draw.line([(10, 10), (50, 10), (25, 70)], fill=255, width=7)
    return image


def test_exif_orientation_is_applied_before_anything_else():
    upright = a_seven()
    # Pixels stored a quarter turn left, with the EXIF tag (6) that says "turn right to view".
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    plain = io.BytesIO()
    upright.save(plain, "JPEG", quality=95)
    got, want = predict.decode_image(buf.getvalue()), predict.decode_image(plain.getvalue())
    assert np.abs(got - want).mean() < 0.01 and np.abs(got - want).max() < 0.2
    sideways = predict.to_mnist(stored)
    assert np.abs(sideways - want).max() > 0.5  # the tag is what turned it upright


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_depth_images_are_scaled_by_their_range_not_clipped(mode):
    seven = np.asarray(a_seven(), np.float64) / 255.0
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    scale = {"I;16": 65535, "I": 65535, "F": 1.0}[mode]
    deep = Image.fromarray((seven * scale).astype(dtype), mode if mode != "I;16" else None)
    assert deep.mode == mode
    buf = io.BytesIO()
    deep.save(buf, "PNG" if mode == "I;16" else "TIFF")  # PNG holds 16 bits at most
    want = predict.to_mnist(a_seven())
    np.testing.assert_allclose(predict.decode_image(buf.getvalue()), want, atol=0.02)


def test_predicts_mnist_test_digits_saved_as_other_images(mnist_test_digits, tmp_path,
                                                          run_predict):
    images, labels = mnist_test_digits[0][:30], mnist_test_digits[1][:30]
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        pil = Image.fromarray(img)
        save = {}
        if i % 5 == 0:  # dark on light, 4x larger, PNG
            pil = Image.fromarray(255 - img).resize((112, 112), Image.Resampling.BICUBIC)
            path = tmp_path / f"{i}_{label}.png"
        elif i % 5 == 1:  # light on dark, 50x50 JPEG, in a wider canvas
            canvas = Image.new("L", (90, 50), 0)
            canvas.paste(pil.resize((50, 50)), (30, 0))
            pil, path = canvas, tmp_path / f"{i}_{label}.jpg"
        elif i % 5 == 2:  # RGB, original size
            pil, path = pil.convert("RGB"), tmp_path / f"{i}_{label}.bmp"
        elif i % 5 == 3:  # as a phone writes it: pixels sideways, an EXIF orientation tag
            pil = Image.fromarray(255 - img).resize((112, 112)).convert("RGB")
            pil = pil.transpose(Image.Transpose.ROTATE_270)
            exif = Image.Exif()
            exif[0x0112] = 8  # "turn a quarter left to view"
            path, save = tmp_path / f"{i}_{label}.jpg", {"exif": exif.tobytes()}
        else:  # as a scanner writes it: 16-bit grayscale PNG
            pil = Image.fromarray(img.astype(np.uint16) * 257)
            path = tmp_path / f"{i}_{label}.png"
        pil.save(path, **save)
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


def test_bad_files_fail_one_line_each_and_the_rest_still_run(mnist_test_digits, tmp_path,
                                                             run_predict):
    images, labels = mnist_test_digits
    good = tmp_path / "good.png"
    Image.fromarray(images[0]).save(good)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.png"
    Image.new("L", (8000, 6000), 0).save(huge)
    missing = tmp_path / "missing.png"
    r = run_predict("--run", str(RUN), str(text), str(good), str(empty), str(huge), str(missing))
    assert r.returncode == 2
    assert r.stdout.startswith(f"{good}: {int(labels[0])}")
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 4, r.stderr
    assert "notes.png: not an image" in errors[0]
    assert "empty.png: empty file" in errors[1]
    assert "huge.png: " in errors[2] and "over the 40,000,000-pixel limit" in errors[2]
    assert "missing.png: file not found" in errors[3]


def test_run_without_checkpoint_is_one_line_exit_2(tmp_path, run_predict):
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
def test_predict_rejects_bad_arguments(args, message, run_predict):
    r = run_predict(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_command_line_in_a_process_of_its_own(mnist_test_digits, tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(mnist_test_digits[0][0]).save(path)
    r = subprocess.run([sys.executable, "-m", "jaxmnist.predict", "--run", str(RUN), str(path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{path}: {int(mnist_test_digits[1][0])}  (")


def test_layers_draws_what_each_block_sees_of_one_digit(mnist_test_digits, tmp_path,
                                                        run_predict):
    from jaxmnist.inside import Inside, centre_window
    from jaxmnist.rundir import load_trained

    path = tmp_path / "digit.png"
    Image.fromarray(mnist_test_digits[0][0]).save(path)
    out = tmp_path / "layers.png"
    r = run_predict("--run", str(RUN), str(path), "--layers", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{path}: {int(mnist_test_digits[1][0])}  (")
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > picture.height > 300
    # What the picture shows: every block's channels, and each centre unit's field.
    seen = Inside(*load_trained(RUN))(mnist_test_digits[0][0] / 255.0)
    blocks = seen.blocks()
    assert [row.token for row, _ in blocks] == "c8 c16 c16 v16 v16 v16 v16".split()
    assert [out.shape for _, out in blocks] == [row.output for row, _ in blocks]
    assert centre_window(blocks[-1][0]) == (3, 3, 24)  # of 6x6, unit 3: rows 3-26
    assert centre_window(blocks[0][0]) == (13, 13, 3)
    np.testing.assert_allclose(seen.probabilities.sum(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["y.png", "--layers", "out.png"], "--layers draws one image, got 2"),
    (["--layers", "out.jpg"], "--layers writes a PNG: give a name ending in .png, got 'out.jpg'"),
])
def test_layers_refuses_bad_arguments_before_reading_the_run(extra, message, tmp_path,
                                                               run_predict):
    r = run_predict("--run", str(tmp_path / "nowhere"), "x.png", *extra)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_layers_into_a_folder_that_does_not_exist_is_one_line(mnist_test_digits, tmp_path,
                                                              run_predict):
    path = tmp_path / "digit.png"
    Image.fromarray(mnist_test_digits[0][0]).save(path)
    r = run_predict("--run", str(RUN), str(path), "--layers", str(tmp_path / "no" / "l.png"))
    assert r.returncode == 1 and "cannot write" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "no").exists()
