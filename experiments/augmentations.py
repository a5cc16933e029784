"""What each recipe's augmentation does to the same digits: one row per recipe, each
image as its training batch would draw it (jaxmnist.data.get_batch, the path training
takes), the first row the images as they are.

    python experiments/augmentations.py [--data-dir DIR] [--out PNG]

Writes experiments/results/studies/augmentations.png (default). The rows are `default`
(and `micro`: rotate ±7°, shift ±1 px), `tiny` (rotate, shift ±2 px, zoom, brightness,
contrast), `tiny` with the elastic distortion of round 9 of experiments/frontier4.sh
(`--elastic-alpha 16`), and the elastic distortion alone at Simard et al.'s MNIST
setting (alpha 34, sigma 4 px).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import configs, data

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results" / "studies" / "augmentations.png"


def rows() -> list[tuple[str, configs.Config | None]]:
    """(label, config) of each row; None: the images as they are."""
    tiny = configs.tiny()
    return [
        ("as they are", None),
        ("default, micro", configs.default()),
        ("tiny", tiny),
        ("tiny + elastic α 16", dataclasses.replace(tiny, elastic_alpha=16.0)),
        ("elastic α 34 alone", configs.Config(elastic_alpha=34.0)),
    ]


def draw(images: np.ndarray, path: Path, seed: int = 0) -> None:
    """Each row of `rows()` applied to `images` (N, 28, 28, 1) uint8, as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = data.Split(images=jnp.asarray(images), labels=jnp.zeros(len(images), jnp.int32))
    index = jnp.arange(len(images))
    table = rows()
    fig, axes = plt.subplots(len(table), len(images), squeeze=False,
                             figsize=(len(images) * 0.9 + 1.6, len(table) * 0.95))
    for axs, (label, c) in zip(axes, table):
        if c is None:
            batch = data.get_batch(split, index)
        else:  # compiled whole, as training runs it
            batch = jax.jit(functools.partial(
                data.get_batch, **data.augmentation_options(c)))(
                    split, index, jax.random.key(seed))
        batch = np.asarray(batch["image"])
        shown = batch * data.STD + data.MEAN  # back to [0, 1] pixels
        for ax, image in zip(axs, shown):
            ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axs[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("Each recipe's training augmentation on the same digits", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("JAXMNIST_DATA_DIR",
                                                             ROOT.parent / "shared/datasets/mnist"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--count", type=int, default=10, help="digits drawn (default 10)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    try:
        images, _ = data.read_idx_dir(args.data_dir)["train"]
    except data.DataError as e:
        print(f"augmentations.py: {e}", file=sys.stderr)
        return 2
    draw(images[: args.count].reshape(-1, 28, 28, 1), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
