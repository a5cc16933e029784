"""What each layer sees: a trained net's layer outputs for one digit, and their picture.

`Inside` compiles the net once for one (28, 28) image and returns the class
probabilities, the layer table (`models.layer_table`) and each layer's channels;
`plot` draws the digit with the receptive field of each block's centre unit outlined,
and each block's channels as a grid of small tiles (`python -m jaxmnist.predict
--layers OUT.png`; the server's `/api/activations`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from jaxmnist import data, files
from jaxmnist.models import Row, layer_outputs, layer_table


class Seen(NamedTuple):
    """One image through a net: its class probabilities (10,), the layer table, and each
    layer's output (H, W, C) for the rows of the table but the head."""

    probabilities: np.ndarray
    rows: list[Row]
    outputs: list[np.ndarray]

    def blocks(self) -> list[tuple[Row, np.ndarray]]:
        """(row, output) of each block (conv layer with a BatchNorm), in order."""
        return [(row, out) for row, out in zip(self.rows, self.outputs)
                if row.name.startswith("block")]


class Inside:
    """A trained net, compiled once to show what its layers make of one image."""

    def __init__(self, model, variables):
        def forward(variables, image):
            logits, outputs = layer_outputs(model, variables,
                                            data.standardize(image[None, :, :, None]))
            return jax.nn.softmax(logits)[0], [o[0] for o in outputs]

        self.rows = layer_table(model, variables)
        self.variables = variables
        self._compiled = jax.jit(forward).lower(
            variables, jax.ShapeDtypeStruct((28, 28), np.float32)).compile()

    def __call__(self, image: np.ndarray) -> Seen:
        """What the net makes of one (28, 28) image in [0, 1]."""
        probabilities, outputs = jax.device_get(
            self._compiled(self.variables, np.asarray(image, np.float32)))
        return Seen(np.asarray(probabilities), self.rows, [np.asarray(o) for o in outputs])


def centre_window(row: Row) -> tuple[int, int, int]:
    """(top, left, side) of the input square that the centre unit of `row`'s layer sees,
    cut to the 28x28 image."""
    first, last = row.window(row.output[0] // 2)
    first, last = max(first, 0), min(last, 27)
    return first, first, last - first + 1


def tile_grid(channels: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid for `channels` tiles."""
    columns = math.ceil(math.sqrt(channels))
    return math.ceil(channels / columns), columns


def plot(image: np.ndarray, seen: Seen, path: str | Path, title: str = "") -> None:
    """The PNG: the digit with each block's centre receptive field outlined, the
    prediction, and a grid of each block's channels (each tile scaled to its own range,
    black at its minimum)."""
    import matplotlib.figure  # matplotlib only where a picture is drawn
    from matplotlib.patches import Rectangle

    blocks = seen.blocks()
    colors = [f"C{k % 10}" for k in range(len(blocks))]
    per_row = math.ceil(len(blocks) / 2) if len(blocks) > 3 else len(blocks)
    grid_rows = math.ceil(len(blocks) / per_row)
    fig = matplotlib.figure.Figure(figsize=(3.4 + 2.1 * per_row, 1.2 + 2.5 * grid_rows))
    left, right = fig.subfigures(1, 2, width_ratios=[3.4, 2.1 * per_row])
    ax = left.subplots()
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    for (row, _), color in zip(blocks, colors):
        top, first, side = centre_window(row)
        ax.add_patch(Rectangle((first - 0.5, top - 0.5), side, side, fill=False, lw=1.4,
                               ec=color, label=f"{row.name}: {row.field}x{row.field}"))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.02), ncol=2, frameon=False)
    ax.set_xticks([]), ax.set_yticks([])
    best = int(np.argmax(seen.probabilities))
    ax.set_title((f"{title}\n" if title else "") + f"predicted {best} "
                 f"({seen.probabilities[best]:.1%})\nthe centre unit's field, per block",
                 fontsize=8)
    panels = right.subfigures(grid_rows, per_row, squeeze=False).flat
    for panel, (row, out), color in zip(panels, blocks, colors):
        h, w, c = out.shape
        tiles_down, tiles_across = tile_grid(c)
        axes = panel.subplots(tiles_down, tiles_across, squeeze=False)
        for k, tile in enumerate(axes.flat):
            tile.set_axis_off()
            if k < c:
                tile.imshow(out[:, :, k], cmap="magma", interpolation="nearest")
        panel.suptitle(f"{row.name} {row.token}: {h}x{w}x{c}, field {row.field}", fontsize=8,
                       color=color)
    files.replace_atomically(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
