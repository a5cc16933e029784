"""The layer table: each layer's receptive field and jump, measured by `jax.grad`, and
its output, params and multiply-adds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import configs, steps
from jaxmnist.models import SEED_ARCH, Net, layer_outputs, layer_table, totals

# The seed net and strings that use each token kind (c v dc dv sc p t s, xK) in the quick
# suite; every other recipe's net among the slow tests (one to seven seconds each).
ARCHS = [SEED_ARCH, "c4 v4 dc4 dv4 p t4 s t4 c4x2 v4x2", "v4 dc4x2 dv4x2 p c4 sc4 sc4"] + [
    pytest.param(arch, marks=pytest.mark.slow) for arch in
    sorted({recipe().arch for recipe in configs.RECIPES.values()} - {SEED_ARCH})]


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


def measured_fields(arch: str, size: int = 48, images: int = 4
                    ) -> list[tuple[int, int, int, int, int]]:
    """For each layer of `arch`, on `images` random size x size inputs to an untrained
    net: (height, width) of the bounding box of the input pixels with a non-zero
    gradient of one centre output unit (summed over its channels), how far that box
    moves for the unit one to the right, and the box's top row and left column. The
    input is larger than 28x28, so that no field is cut by the border; sigmoids stand
    in for the ReLUs (a ReLU passes no gradient where it is off), and several inputs
    cover the max-pools' choices.

    One backward pass gives them all: in eval mode the images of a batch do not touch,
    so each (layer, unit) pair gets `images` rows of the batch of its own, and its
    cotangent is set only there. The net is built of Flax's own layers (`fast=False`:
    the same fields, and compiled several times faster than `jaxmnist.kernels`' custom
    gradients, which tests/test_kernels.py checks against these layers)."""
    model = Net(arch=arch, activation="sigmoid", dropout_rate=0.0, fast=False)
    layers = len(model.arch.split())
    x = jnp.tile(jax.random.normal(jax.random.key(1), (images, size, size, 1)),
                 (2 * layers, 1, 1, 1))
    variables = steps.init_variables(model, jax.random.key(0), x[:1])

    @jax.jit
    def gradients(x):
        outputs, pullback = jax.vjp(lambda x: layer_outputs(model, variables, x)[1], x)
        cotangents = []
        for k, out in enumerate(outputs):
            centre, cotangent = out.shape[1] // 2, jnp.zeros_like(out)
            for right in (0, 1):
                rows = slice((2 * k + right) * images, (2 * k + right + 1) * images)
                cotangent = cotangent.at[rows, centre, centre + right, :].set(1.0)
            cotangents.append(cotangent)
        grads = jnp.abs(pullback(cotangents)[0]).sum(axis=3)
        return grads.reshape(2 * layers, images, size, size).sum(axis=1)

    grads = np.asarray(gradients(x)) > 0
    fields = []
    for unit, neighbour in zip(grads[::2], grads[1::2]):
        top, bottom, left, right = bounding_box(unit)
        fields.append((bottom - top + 1, right - left + 1, bounding_box(neighbour)[2] - left,
                       top, left))
    return fields


@pytest.mark.parametrize("arch", ARCHS)
def test_the_receptive_field_and_jump_are_what_the_gradient_reaches(arch):
    rows = layer_table(Net(arch=arch), size=48)
    windows = [r.window(r.output[0] // 2)[0] for r in rows[:-1]]  # the centre unit's
    assert [(r.field, r.field, r.jump, w, w) for r, w in zip(rows[:-1], windows)] == (
        measured_fields(arch))


@pytest.mark.parametrize("arch", [a if isinstance(a, str) else a.values[0] for a in ARCHS])
def test_each_row_has_the_layer_s_output_and_the_params_add_up(arch):
    model = Net(arch=arch)
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    outputs = jax.eval_shape(lambda v, x: layer_outputs(model, v, x)[1], variables, x)
    rows = layer_table(model, variables)
    assert [r.output for r in rows] == [o.shape[1:] for o in outputs] + [(10,)]
    params, _ = totals(rows)
    assert params == sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


def test_a_row_holds_each_application_s_activations():
    rows = layer_table(Net(arch="c4 p v4x3 t2"))
    assert [r.activations for r in rows] == [
        28 * 28 * 4, 14 * 14 * 4, 4 * (12 * 12 + 10 * 10 + 8 * 8), 8 * 8 * 2, 10]


def test_the_seed_net_s_table_by_hand():
    rows = layer_table(Net())
    assert [r.token for r in rows] == SEED_ARCH.split() + ["gap"]
    assert [r.field for r in rows[:-1]] == [3, 5, 7, 8, 8, 12, 16, 20, 24]
    assert [r.jump for r in rows[:-1]] == [1, 1, 1, 2, 2, 2, 2, 2, 2]
    # multiply-adds: H·W·9·in·out for a 3x3 conv, H·W·in·out for a 1x1, in·10 the head
    by_hand = [28 * 28 * 9 * 8, 28 * 28 * 9 * 8 * 16, 28 * 28 * 9 * 16 * 16, 0,
               14 * 14 * 16 * 8, 12 * 12 * 9 * 8 * 16, 10 * 10 * 9 * 16 * 16,
               8 * 8 * 9 * 16 * 16, 6 * 6 * 9 * 16 * 16, 16 * 10]
    assert [r.madds for r in rows] == by_hand
    assert totals(rows) == (12_088, sum(by_hand))
    # The last conv sees 24x24; the average pool, all of its 6x6 units: the whole image.
    assert rows[-1].sees == (0, 27) and rows[-1].field == 24 + 5 * 2


def test_a_strided_conv_halves_the_map_and_doubles_the_jump():
    rows = layer_table(Net(arch="c4 sc6 p sc8"))
    # 28 -> 14 (stride 2) -> 7 (pool) -> 4 (stride 2, the half rounded up)
    assert [r.output for r in rows[:-1]] == [(28, 28, 4), (14, 14, 6), (7, 7, 6), (4, 4, 8)]
    assert [(r.field, r.jump) for r in rows[:-1]] == [(3, 1), (5, 2), (7, 4), (15, 8)]
    assert [r.madds for r in rows[:-1]] == [28 * 28 * 9 * 4, 14 * 14 * 9 * 4 * 6, 0,
                                            4 * 4 * 9 * 6 * 8]
    assert [r.params for r in rows[:-1]] == [9 * 4 + 8, 9 * 4 * 6 + 12, 0, 9 * 6 * 8 + 16]


def test_a_shared_block_counts_its_params_once_and_its_work_each_time():
    row = layer_table(Net(arch="c8 p v10 v10x4"))[-2]
    assert (row.output, row.field) == ((4, 4, 10), 24)
    assert row.madds == sum(s * s * 9 * 10 * 10 for s in (10, 8, 6, 4))
    assert row.params == 9 * 10 * 10 + 4 * 2 * 10


def test_a_dense_head_and_a_head_that_misses_part_of_the_image():
    dense = layer_table(Net(head="dense"))[-1]
    assert (dense.token, dense.params, dense.madds) == ("dense", 6 * 6 * 16 * 10,
                                                       6 * 6 * 16 * 10)
    # 28 -> 14 -> 7 -> 3: the last pool drops row 6 of 7, and with it input rows 25-27.
    assert layer_table(Net(arch="c4 p p p"))[-1].sees == (0, 24)


def test_summary_prints_the_table_for_every_recipe(capsys):
    from jaxmnist.train.__main__ import main

    for recipe in configs.RECIPES:
        if configs.RECIPES[recipe]().teacher:
            continue
        assert main(["--summary", "--recipe", recipe]) == 0
        out = capsys.readouterr().out
        rows = layer_table(steps.make_model(configs.RECIPES[recipe]()))
        lines = out.splitlines()
        assert lines[0].split() == ["layer", "output", "params", "field", "jump", "mult-adds"]
        assert len(lines) == len(rows) + 4
        assert f"{totals(rows)[0]:,}" in lines[len(rows) + 1]
        assert "the head's average pool sees the whole image" in out
    assert main(["--summary", "--arch", "c4 p p p"]) == 0
    assert "sees rows and columns 0-24 of the 28x28 image, not all of it" in (
        capsys.readouterr().out)
