"""Classify your own digit images: `python -m jaxmnist.predict --run runs/default a.png ...`.

Each image is turned into an MNIST-style input the way MNIST itself was made: grayscale,
white digit on black (dark-on-light images are inverted), the digit's bounding box
scaled to fit 20x20 and placed in a 28x28 field so that its centre of mass is central.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxmnist import data, files
from jaxmnist.cli import ArgumentParser, log_to_stderr, print_error, quiet_libraries, report
from jaxmnist.inside import Inside, plot
from jaxmnist.rundir import load_trained

MAX_PIXELS = 40_000_000  # larger images are refused rather than decoded


class ImageError(ValueError):
    """A file that cannot be turned into a digit."""


def to_mnist(image) -> np.ndarray:
    """A PIL image -> (28, 28) float32 in [0, 1], white digit on black, MNIST-centred."""
    # Upright as a viewer shows it: phone cameras store pixels sideways plus an EXIF tag.
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # 16-bit and other high-depth grayscale: scaled by the image's own value range
        # (converting to 8 bits would clip every value above 255).
        gray = np.asarray(image, np.float64)
        lo, hi = gray.min(), gray.max()
        gray = ((gray - lo) / (hi - lo) if hi > lo else gray * 0).astype(np.float32)
    else:
        if image.mode in ("RGBA", "LA", "PA", "P"):
            # Transparent pixels count as background: composite onto white.
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        gray = np.asarray(ImageOps.grayscale(image), np.float32) / 255.0

    def background(a):
        return np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]))

    if background(gray) > 0.5:  # dark digit on a light background
        gray = 1.0 - gray
    gray = np.clip(gray - background(gray), 0.0, 1.0)
    if gray.max() <= 0.05:
        raise ImageError("no digit found (the image is blank)")
    gray = gray / gray.max()
    ys, xs = np.nonzero(gray > 0.1)
    crop = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (new_w, new_h), Image.Resampling.LANCZOS)
    small = np.asarray(small, np.float32) / 255.0
    # Centre of mass of the 20x20 digit goes to the centre of the 28x28 field.
    total = small.sum()
    cy = (small.sum(axis=1) * np.arange(new_h)).sum() / total
    cx = (small.sum(axis=0) * np.arange(new_w)).sum() / total
    top = int(np.clip(round(13.5 - cy), 0, 28 - new_h))
    left = int(np.clip(round(13.5 - cx), 0, 28 - new_w))
    field = np.zeros((28, 28), np.float32)
    field[top : top + new_h, left : left + new_w] = small
    return field


def decode_image(data: bytes) -> np.ndarray:
    """Image file bytes (any format Pillow reads) -> MNIST-style (28, 28) float32, with
    one clear ImageError for anything that is not a usable image."""
    if not data:
        raise ImageError("empty file")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(
                        f"{image.width}x{image.height} is over the {MAX_PIXELS:,}-pixel limit")
                image.load()
                return to_mnist(image)
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        if isinstance(e, UnidentifiedImageError):
            raise ImageError("not an image (unrecognised format)") from None
        raise ImageError(f"over the {MAX_PIXELS:,}-pixel limit") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or malformed files
        raise ImageError(f"unreadable image ({e})") from None


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image file into an MNIST-style (28, 28) float32 (`decode_image`); a path
    that is not a readable file is an ImageError saying what it is."""
    path = Path(path)
    if path.is_dir():
        raise ImageError("a directory, not an image file")
    if not path.exists():
        raise ImageError("file not found")
    if not path.is_file():  # reading a FIFO would wait for a writer
        raise ImageError("not a regular file (a FIFO, socket or device)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot be read ({files.reason(e)})") from None
    return decode_image(data)


class Classifier:
    """A trained run's model, compiled once for one image at a time."""

    def __init__(self, model, variables):
        def probabilities(variables, image):
            x = data.standardize(image[None, :, :, None])
            return jax.nn.softmax(model.apply(variables, x, train=False))[0]

        self.variables = variables
        self._compiled = jax.jit(probabilities).lower(
            variables, jax.ShapeDtypeStruct((28, 28), np.float32)).compile()

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Classifier:
        return cls(*load_trained(run_dir))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(10,) class probabilities of one (28, 28) image in [0, 1]."""
        return np.asarray(self._compiled(self.variables, np.asarray(image, np.float32)))


def main(argv=None) -> int:
    prog = "python -m jaxmnist.predict"
    quiet_libraries()
    log_to_stderr(prog)  # a checkpoint that cannot be read, and the one used instead
    p = ArgumentParser(prog=prog, description="Classify digit images with a trained run.")
    p.add_argument("--run", required=True, help="a training run directory (e.g. runs/default)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--layers", metavar="OUT.png",
                   help="also draw what each block sees of the (one) image: its channels "
                        "and each block's receptive field")
    args = p.parse_args(argv)
    if args.layers and len(args.images) != 1:
        p.error(f"--layers draws one image, got {len(args.images)}")
    if args.layers and Path(args.layers).suffix.lower() != ".png":
        p.error(f"--layers writes a PNG: give a name ending in .png, got {args.layers!r}")

    try:
        model, variables = load_trained(args.run)
    except ValueError as e:  # not a trained run directory
        return report(prog, e)
    if args.layers:
        return draw_layers(prog, Inside(model, variables), args.images[0], args.layers)
    classify = Classifier(model, variables)

    failed = False
    for path in args.images:
        try:
            probs = classify(load_image(path))
        except ImageError as e:
            print_error(prog, f"{path}: {e}")
            failed = True
            continue
        top = np.argsort(probs)[::-1][:3]
        ranked = ", ".join(f"{d}: {probs[d]:.3f}" for d in top)
        print(f"{path}: {top[0]}  ({ranked})")
    return 2 if failed else 0


def draw_layers(prog: str, inside: Inside, path: str, out: str) -> int:
    """`--layers`: the picture of what each block sees of the image at `path`."""
    try:
        image = load_image(path)
    except ImageError as e:
        print_error(prog, f"{path}: {e}")
        return 2
    seen = inside(image)
    try:
        plot(image, seen, out, title=Path(path).name)
    except files.WriteError as e:
        return report(prog, e)
    top = int(np.argmax(seen.probabilities))
    print(f"{path}: {top}  ({seen.probabilities[top]:.3f}); what each block sees: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
