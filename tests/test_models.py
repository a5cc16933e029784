"""The net family and its 12,088-parameter seed member: size, shapes, train/eval behaviour."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import steps
from jaxmnist.models import (
    NUM_PARAMS,
    SEED_ARCH,
    ArchError,
    Net,
    count_params,
    layer_outputs,
    layer_table,
    parse_arch,
)
from tests.conftest import experiment


def summary(model, variables):
    """(name, output, params) of the layers with parameters: blocks, transitions, head."""
    return [(r.name, r.output, r.params) for r in layer_table(model, variables)
            if r.token not in ("p", "s")]


def init(model=None, batch=2):
    model = model or Net()
    x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
    return model, steps.init_variables(model, jax.random.key(1), x), x


def shapes(model, batch=2):
    """(model, variables, input) as shapes only: for counting and shape tests, nothing
    is computed or compiled."""
    x = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)
    return model, jax.eval_shape(model.init, jax.random.key(1), x), x


def test_the_init_compiled_for_speed_gives_the_values_of_the_plain_init():
    # steps.init_variables compiles without LLVM's optimisations on a CPU: the weights are
    # the same bits, a uniform draw (the biases, all under 1 in size) within one rounding
    # of a float32 near 1.
    model = Net(arch="c4 dc8 p t4", bias=True)  # plain and separable convs, a transition
    x = jnp.zeros((1, 28, 28, 1))
    ours = steps.init_variables(model, jax.random.key(3), x)
    plain = jax.jit(model.init)(jax.random.key(3), x)
    chex.assert_trees_all_close(ours, plain, rtol=0, atol=2.0**-23)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(plain)):
        if path[-1].key == "kernel":
            chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("activation, slope, extra", [("leaky_relu", 0.01, 0), ("prelu", 0.25, 1)])
def test_leaky_and_parametric_relus_pass_their_slope_below_zero(activation, slope, extra):
    from jaxmnist.models import ConvBlock

    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    block = ConvBlock(4, 1, 0.0, norm="none", activation=activation, repeats=2)
    variables = block.init(jax.random.key(1), x, train=False)
    # One slope per application of a block (PReLU), as each has its own norm.
    assert count_params(variables["params"]) == 9 * 4 * 4 + 2 * extra
    kernel = variables["params"]["conv"]["kernel"]
    y = x
    for _ in range(2):
        y = jax.lax.conv_general_dilated(y, kernel, (1, 1), [(1, 1), (1, 1)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jnp.where(y > 0, y, slope * y)
    chex.assert_trees_all_close(block.apply(variables, x, train=False), y, atol=1e-5)
    _, variables, _ = shapes(Net(arch="c4 p v8", activation=activation))
    assert count_params(variables["params"]) == (9 * 4 + 9 * 4 * 8 + 2 * (4 + 8) + 8 * 10
                                                 + 2 * extra)


def test_without_a_head_layer_the_last_layer_s_10_channels_averaged_are_the_logits():
    from jaxmnist.configs import Config, ConfigError
    from jaxmnist.models import layer_outputs

    model = Net(arch="c4 p dc8 v10", head="none", dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    variables = steps.init_variables(model, jax.random.key(1), x)
    assert "head" not in variables["params"]
    logits, outputs = jax.jit(lambda v, x: layer_outputs(model, v, x))(variables, x)
    chex.assert_trees_all_close(logits, outputs[-1].mean(axis=(1, 2)), atol=1e-6)
    head = layer_table(model, variables)[-1]
    assert (head.token, head.params, head.madds) == ("none", 0, 0)
    with pytest.raises(ConfigError, match="head 'none' takes the last layer's channels as "
                       "the 10 logits; 'v8' gives 8"):
        Config(arch="c4 p v8", head="none")
    with pytest.raises(ArchError, match="'v8' gives 8"):
        Net(arch="c4 p v8", head="none").init(jax.random.key(0), x)


def test_parameter_count_is_12088():
    _, variables, _ = shapes(Net())
    assert count_params(variables["params"]) == NUM_PARAMS == 12_088
    # BatchNorm running statistics are state, not parameters: 2 x (8 + 6 x 16).
    assert count_params(variables["batch_stats"]) == 2 * (8 + 6 * 16)


def test_layer_table():
    model, variables, _ = shapes(Net())
    rows = summary(model, variables)
    assert rows == [
        ("block1", (28, 28, 8), 88), ("block2", (28, 28, 16), 1184),
        ("block3", (28, 28, 16), 2336), ("transition", (14, 14, 8), 128),
        ("block4", (12, 12, 16), 1184), ("block5", (10, 10, 16), 2336),
        ("block6", (8, 8, 16), 2336), ("block7", (6, 6, 16), 2336), ("head", (10,), 160),
    ]
    chex.assert_shape(variables["params"]["block1"]["conv"]["kernel"], (3, 3, 1, 8))
    chex.assert_shape(variables["params"]["head"]["kernel"], (1, 1, 16, 10))


def test_logits_shape():
    model, variables, x = init(batch=5)
    chex.assert_shape(model.apply(variables, x), (5, 10))


def test_eval_mode_is_deterministic_and_leaves_stats_alone():
    model, variables, x = init(batch=16)
    a = model.apply(variables, x, train=False)
    b = model.apply(variables, x, train=False, rngs={"dropout": jax.random.key(9)})
    chex.assert_trees_all_equal(a, b)  # dropout is the identity
    _, state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(state["batch_stats"], variables["batch_stats"])


def test_train_mode_uses_batch_stats_and_updates_them_like_pytorch():
    model, variables, x = init(Net(dropout_rate=0.0), batch=16)
    x = 3.0 * x + 1.0
    out, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    # BN in training normalises with the batch's own statistics: per channel, the
    # first block's BN output has mean ~0 and variance ~1 over the batch.
    _, inter = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                           capture_intermediates=lambda m, _: m.name == "bn")
    bn_out = inter["intermediates"]["block1"]["bn"]["__call__"][0]
    np.testing.assert_allclose(bn_out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(bn_out.var(axis=(0, 1, 2)), 1.0, rtol=1e-2)
    # Running stats move 10 % of the way (PyTorch's momentum=0.1) towards the batch's.
    conv = jax.lax.conv_general_dilated(
        x, variables["params"]["block1"]["conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    relu = jnp.maximum(conv, 0)
    new = state["batch_stats"]["block1"]["bn"]
    np.testing.assert_allclose(new["mean"], 0.1 * relu.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * relu.var(axis=(0, 1, 2)), rtol=1e-4)
    # Training-mode output differs from eval mode (which uses the running stats).
    assert not np.allclose(out, model.apply(variables, x, train=False))


def test_dropout_active_only_in_training():
    model, variables, x = init(batch=8)
    run = jax.jit(lambda key: model.apply(  # noqa: E731
        variables, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0])
    key = jax.random.key
    assert not np.allclose(run(key(0)), run(key(1)))
    chex.assert_trees_all_equal(run(key(0)), run(key(0)))


def test_seed_net_is_the_default_member_of_the_family():
    assert [layer[:3] for layer in parse_arch(SEED_ARCH)] == [
        ("conv", "block1", 8), ("conv", "block2", 16), ("conv", "block3", 16),
        ("pool", "pool", 0), ("transition", "transition", 8), ("valid", "block4", 16),
        ("valid", "block5", 16), ("valid", "block6", 16), ("valid", "block7", 16)]
    assert {layer.repeats for layer in parse_arch(SEED_ARCH)} == {1}
    assert Net().arch == SEED_ARCH


def test_a_smaller_member_counts_and_shapes():
    model, variables, x = shapes(Net(arch="c4 p c8 p v12 t6 v10"), batch=3)
    chex.assert_shape(jax.eval_shape(model.apply, variables, x), (3, 10))
    # 9*1*4+8, 9*4*8+16, 9*8*12+24, 12*6, 9*6*10+20, head 10*10
    assert [row[2] for row in summary(model, variables)] == [44, 304, 888, 72, 560, 100]
    assert [row[1] for row in summary(model, variables)] == [
        (28, 28, 4), (14, 14, 8), (5, 5, 12), (5, 5, 6), (3, 3, 10), (10,)]
    assert count_params(variables["params"]) == 44 + 304 + 888 + 72 + 560 + 100


def test_odd_sizes_pool_like_pytorch():
    # 28 -> v: 26 -> p: 13 -> p: 6 (the last row and column dropped, floor mode).
    model, variables, x = init(Net(arch="v4 p p c4"))
    assert summary(model, variables)[1][1] == (6, 6, 4)
    fast = model.apply(variables, x)
    plain = Net(arch="v4 p p c4", fast=False).apply(variables, x)
    chex.assert_trees_all_close(fast, plain, atol=1e-5)


@pytest.mark.parametrize("arch, message", [
    ("", "empty"), ("c8 x3", "unknown layer 'x3'"), ("c0", "positive number"),
    ("cc", "positive number"), ("pp", "unknown layer"),
    ("p p p p p", r"'p' \(layer 5\) pools a 1x1 map"),
    ("s4", "unknown layer 's4'"), ("p p s", r"'s' \(layer 3\) needs an even image size, gets 7x7"),
    ("d8", "unknown layer 'd8'"), ("dc0", "positive number of channels after 'dc'"),
    ("dp", "unknown layer 'dp'"),
    ("v4 " * 14, r"'v4' \(layer 14\) shrinks the 2x2 map it gets below 1x1"),
    ("dv4 " * 14, r"'dv4' \(layer 14\) shrinks the 2x2 map"),
])
def test_bad_architectures_are_refused(arch, message):
    with pytest.raises(ArchError, match=message):
        parse_arch(arch)


def test_tiny_recipe_is_under_the_published_3762_parameters():
    from jaxmnist import configs, steps

    _, variables, _ = shapes(steps.make_model(configs.tiny()))
    assert count_params(variables["params"]) == 3_622 <= 3_762


def test_nano_recipe_is_under_700_parameters():
    from jaxmnist import configs, steps

    _, variables, _ = shapes(steps.make_model(configs.nano()))
    assert count_params(variables["params"]) == 680 <= 700


def test_bias_gives_every_conv_a_bias_and_counts_as_pytorch_does():
    # The published 3,762-parameter layout (adilsammar/woolly-of-cv): 4,4,4 | 8,8,8 | 8,8,8
    # with conv biases; PyTorch counts weights, biases and BatchNorm's scale and offset.
    arch = "c4 c4 c4 p c8 c8 c8 p c8 c8 c8"
    _, plain, _ = shapes(Net(arch=arch))
    _, biased, _ = shapes(Net(arch=arch, bias=True))
    assert count_params(plain["params"]) == 3_692
    assert count_params(biased["params"]) == 3_762 == 3_692 + 3 * 4 + 6 * 8 + 10
    chex.assert_shape(biased["params"]["head"]["bias"], (10,))
    chex.assert_shape(biased["params"]["block1"]["conv"]["bias"], (4,))
    model, variables, x = init(Net(arch="c4 t6", bias=True))
    chex.assert_shape(variables["params"]["transition"]["bias"], (6,))
    bound = 1 / np.sqrt(9 * 1)  # PyTorch's init: U(±1/sqrt(fan_in))
    b = variables["params"]["block1"]["conv"]["bias"]
    assert np.all(np.abs(b) <= bound) and np.any(b != 0)


@pytest.mark.parametrize("arch, dropout_at, differs", [
    ("c4 c4", "blocks", True), ("c4 c4", "pools", False), ("c4 p c4", "pools", True),
])
def test_dropout_at_puts_dropout_after_the_blocks_or_only_after_the_pools(
        arch, dropout_at, differs):
    model = Net(arch=arch, dropout_rate=0.5, dropout_at=dropout_at)
    _, variables, x = init(model)

    def train_logits(seed):
        logits, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)},
                                mutable=["batch_stats"])
        return np.asarray(logits)

    assert (not np.allclose(train_logits(0), train_logits(1))) == differs


@pytest.mark.parametrize("fast", [True, False])
def test_bn_before_relu_swaps_batchnorm_and_relu_with_the_same_parameters(fast):
    from jaxmnist.models import ConvBlock

    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    relu_bn, bn_relu = ConvBlock(4, 1, 0.0, fast), ConvBlock(4, 1, 0.0, fast, bn_before_relu=True)
    variables = relu_bn.init(jax.random.key(1), x, train=False)
    chex.assert_trees_all_equal_shapes(variables, bn_relu.init(jax.random.key(1), x, train=False))
    # Running statistics and an offset that make the order matter.
    variables = {"params": {**variables["params"], "bn": {"scale": jnp.full(4, 2.0),
                                                          "bias": jnp.full(4, -0.3)}},
                 "batch_stats": {"bn": {"mean": jnp.full(4, 0.2), "var": jnp.full(4, 4.0)}}}
    conv = jax.lax.conv_general_dilated(x, variables["params"]["conv"]["kernel"], (1, 1),
                                        [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def bn(y):
        return (y - 0.2) / np.sqrt(4.0 + 1e-5) * 2.0 - 0.3

    chex.assert_trees_all_close(bn_relu.apply(variables, x, train=False),
                                jax.nn.relu(bn(conv)), atol=1e-5)
    chex.assert_trees_all_close(relu_bn.apply(variables, x, train=False),
                                bn(jax.nn.relu(conv)), atol=1e-5)
    arch = "c4 p v8 t6"
    assert (count_params(shapes(Net(arch=arch, bn_before_relu=True))[1]["params"])
            == count_params(shapes(Net(arch=arch))[1]["params"]))


@pytest.mark.parametrize("fast", [True, False])
def test_batchnorm_without_scale_learns_only_its_offset(fast):
    import dataclasses

    from jaxmnist.configs import micro
    from jaxmnist.models import ConvBlock

    # micro's 58 BatchNorm channels (8, 10, and 4 x 10 in the shared block) lose a
    # scale each: 1,946 - 58.
    assert steps.param_count(dataclasses.replace(micro(), bn_scale=False)) == 1946 - 58
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    block = ConvBlock(4, 1, 0.0, fast, bn_scale=False)
    variables = block.init(jax.random.key(1), x, train=False)
    assert set(variables["params"]["bn"]) == {"bias"}
    variables = {"params": {**variables["params"], "bn": {"bias": jnp.full(4, -0.3)}},
                 "batch_stats": {"bn": {"mean": jnp.full(4, 0.2), "var": jnp.full(4, 4.0)}}}
    conv = jax.lax.conv_general_dilated(x, variables["params"]["conv"]["kernel"], (1, 1),
                                        [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    chex.assert_trees_all_close(block.apply(variables, x, train=False),
                                (jax.nn.relu(conv) - 0.2) / np.sqrt(4.0 + 1e-5) - 0.3,
                                atol=1e-5)
    with pytest.raises(ValueError, match="bn_scale=False needs norm 'batch', got 'layer'"):
        Net(arch="c4", norm="layer", bn_scale=False).init(jax.random.key(0), x)


@pytest.mark.parametrize("fast", [True, False])
def test_a_strided_block_is_the_plain_block_at_every_other_pixel(fast):
    from jaxmnist.models import ConvBlock

    # On a 7x7 map, stride 2 and padding 1 give the plain conv's rows and columns 0, 2,
    # 4, 6; in eval mode the ReLU and BatchNorm act pixel by pixel, so the whole block
    # is the plain block's output at those pixels.
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
    strided, plain = ConvBlock(4, 1, 0.0, fast, strides=2), ConvBlock(4, 1, 0.0, fast)
    variables = strided.init(jax.random.key(1), x, train=False)
    variables = {**variables, "batch_stats": {"bn": {"mean": jnp.full(4, 0.2),
                                                     "var": jnp.full(4, 4.0)}}}
    out = jax.jit(lambda v: strided.apply(v, x, train=False))(variables)
    chex.assert_shape(out, (2, 4, 4, 4))
    chex.assert_trees_all_close(out, plain.apply(variables, x, train=False)[:, ::2, ::2],
                                atol=1e-5)


def test_a_whitening_kernel_decorrelates_the_patches_to_unit_variance():
    from jaxmnist.models import whitening_kernel

    # Images with correlated neighbours: a blur of noise, so the patches' covariance
    # is far from the identity.
    noise = jax.random.normal(jax.random.key(0), (20, 14, 14))
    images = (noise + jnp.roll(noise, 1, 1) + jnp.roll(noise, 1, 2))[..., None]
    x = np.asarray(images[..., 0], np.float64)
    patches = np.stack([x[:, i:i + 12, j:j + 12] for i in range(3) for j in range(3)],
                       -1).reshape(-1, 9)  # each patch's 9 values, row by row
    eigenvalues = np.linalg.eigvalsh(patches.T @ patches / len(patches))[::-1]
    for features in (8, 18):
        kernel = whitening_kernel(images, features)
        chex.assert_shape(kernel, (3, 3, 1, features))
        half = features // 2
        np.testing.assert_array_equal(kernel[..., half:], -kernel[..., :half])
        projections = patches @ np.asarray(kernel[..., :half], np.float64).reshape(9, half)
        # uncorrelated, each of variance λ / (λ + eps), the largest λ first
        np.testing.assert_allclose(
            projections.T @ projections / len(patches),
            np.diag(eigenvalues[:half] / (eigenvalues[:half] + 5e-4)), atol=1e-4)
    # The net's layer is that conv (padding 1), a bias, then the activation.
    model = Net(arch="w8")
    params = {"block1": {"kernel": kernel[..., :8], "bias": jnp.full(8, 0.1)},
              "head": {"kernel": jnp.ones((1, 1, 8, 10))}}
    _, (layer,) = jax.jit(functools.partial(layer_outputs, model))({"params": params}, images)
    conv = jax.lax.conv_general_dilated(images, kernel[..., :8], (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    chex.assert_trees_all_close(layer, jax.nn.relu(conv + 0.1), atol=1e-5)


@pytest.mark.parametrize("arch, message", [
    ("c8 w8", "can only be the first layer"), ("w7", "an even number of channels up to 18"),
    ("w20", "an even number of channels up to 18"),
])
def test_a_whitening_layer_is_the_first_with_an_even_number_of_channels_up_to_18(
        arch, message):
    with pytest.raises(ArchError, match=message):
        parse_arch(arch)
    row = layer_table(Net(arch="w8 p v10"))[0]
    assert (row.params, row.field, row.jump, row.output, row.madds) == (
        72 + 8, 3, 1, (28, 28, 8), 28 * 28 * 72)


def test_dropout_at_must_be_blocks_or_pools():
    with pytest.raises(ValueError, match="dropout_at must be one of"):
        init(Net(arch="c4", dropout_at="convs"))


def test_space_to_depth_moves_each_2x2_patch_into_channels_in_pytorchs_order():
    from jaxmnist.models import space_to_depth

    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 3))
    out = space_to_depth(x)
    chex.assert_shape(out, (2, 3, 2, 12))
    expected = np.zeros((2, 3, 2, 12), np.float32)  # PixelUnshuffle(2), written out
    for h, w, c, i, j in np.ndindex(3, 2, 3, 2, 2):
        expected[:, h, w, 4 * c + 2 * i + j] = x[:, 2 * h + i, 2 * w + j, c]
    np.testing.assert_array_equal(out, expected)


def test_space_to_depth_in_a_net_halves_the_image_and_has_no_parameters():
    model, variables, _ = shapes(Net(arch="s c16 p c8"))
    assert parse_arch("s c16 p c8")[0] == ("space_to_depth", "space_to_depth", 0, 1)
    # block1 sees 4 channels at 14x14: 9*4*16 weights + 2*16 BatchNorm.
    assert [row for row in summary(model, variables)] == [
        ("block1", (14, 14, 16), 9 * 4 * 16 + 32), ("block2", (7, 7, 8), 9 * 16 * 8 + 16),
        ("head", (10,), 80)]


def test_separable_blocks_count_and_shape_as_pytorchs_groups_conv_then_1x1():
    arch = "c4 dc8 p dv12"
    assert [layer.kind for layer in parse_arch(arch)] == [
        "conv", "separable_conv", "pool", "separable_valid"]
    model, variables, x = shapes(Net(arch=arch), batch=3)
    # depthwise 9*in, pointwise in*N, BatchNorm 2N; the valid one shrinks 14 -> 12.
    assert summary(model, variables) == [
        ("block1", (28, 28, 4), 44), ("block2", (28, 28, 8), 9 * 4 + 4 * 8 + 16),
        ("block3", (12, 12, 12), 9 * 8 + 8 * 12 + 24), ("head", (10,), 120)]
    _, biased, _ = shapes(Net(arch=arch, bias=True))
    assert (count_params(biased["params"]) - count_params(variables["params"])
            == 4 + (4 + 8) + (8 + 12) + 10)
    chex.assert_shape(biased["params"]["block2"]["depthwise"]["kernel"], (3, 3, 1, 4))


def _conv(x, kernel, padding):
    """NHWC x, HWIO kernel; padding 1 (one pixel a side) or "VALID"."""
    pad = [(1, 1), (1, 1)] if padding == 1 else "VALID"
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pad,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _relu_then_batchnorm(variables, y):
    """A block's ReLU then its BatchNorm in eval mode, written out (eps 1e-5)."""
    stats, bn = variables["batch_stats"]["bn"], variables["params"]["bn"]
    return ((jax.nn.relu(y) - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * bn["scale"]
            + bn["bias"])


@pytest.mark.parametrize("padding", [1, "VALID"])
def test_a_separable_block_is_a_per_channel_3x3_then_a_1x1(padding):
    from jaxmnist.models import ConvBlock

    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    block = ConvBlock(5, padding, 0.0, separable=True, bias=True)
    variables = block.init(jax.random.key(1), x, train=False)
    params = variables["params"]
    depthwise = params["depthwise"]["kernel"]  # (3, 3, 1, 3): one 3x3 filter per channel
    # The same maths as one dense 3x3 conv whose kernel is zero off the channel diagonal.
    dense = jnp.einsum("hwc,cd->hwcd", depthwise[:, :, 0, :], jnp.eye(3))
    y = _conv(x, dense, padding) + params["depthwise"]["bias"]
    y = y @ params["pointwise"]["kernel"][0, 0] + params["pointwise"]["bias"]
    want = _relu_then_batchnorm(variables, y)
    chex.assert_trees_all_close(block.apply(variables, x, train=False), want, atol=1e-5)
    chex.assert_shape(want, (2, 6, 6, 5) if padding == 1 else (2, 4, 4, 5))


def test_factorised_blocks_count_and_shape_as_a_3x1_conv_then_a_1x3():
    arch = "fc4 p fv6 fv6x2"
    assert [layer.kind for layer in parse_arch(arch)] == [
        "factorised_conv", "pool", "factorised_valid", "factorised_valid"]
    model, variables, _ = shapes(Net(arch=arch))
    # 3·in·N + 3·N·N + BatchNorm 2N (once per application); valid: 14 -> 12 -> 10 -> 8
    assert summary(model, variables) == [
        ("block1", (28, 28, 4), 3 * 4 + 3 * 16 + 8), ("block2", (12, 12, 6), 72 + 108 + 12),
        ("block3", (8, 8, 6), 108 + 108 + 24), ("head", (10,), 60)]
    _, biased, _ = shapes(Net(arch=arch, bias=True))
    assert (count_params(biased["params"]) - count_params(variables["params"])
            == 2 * 4 + 2 * 6 + 2 * 6 + 10)
    chex.assert_shape(variables["params"]["block2"]["conv3x1"]["kernel"], (3, 1, 4, 6))
    chex.assert_shape(variables["params"]["block2"]["conv1x3"]["kernel"], (1, 3, 6, 6))
    rows = layer_table(model)
    # the field grows as a 3x3 conv's; multiply-adds: the 3x1 conv's rows, then the 1x3's
    assert [r.field for r in rows] == [3, 4, 8, 16, 16 + (8 - 1) * 2]
    assert rows[2].madds == 12 * 14 * 3 * 4 * 6 + 12 * 12 * 3 * 6 * 6
    assert rows[3].madds == sum(h * (h + 2) * 108 + h * h * 108 for h in (10, 8))


@pytest.mark.parametrize("padding", [1, "VALID"])
def test_a_factorised_block_is_a_3x3_conv_of_the_two_kernels_composed(padding):
    from jaxmnist.models import ConvBlock

    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    block = ConvBlock(5, padding, 0.0, bias=True, factorised=True)
    variables = block.init(jax.random.key(1), x, train=False)
    params = variables["params"]
    vertical, horizontal = params["conv3x1"], params["conv1x3"]
    # kernel[i, j, c, n] = sum_m A[i, c, m] B[j, m, n]; A's bias goes through B's taps
    dense = jnp.einsum("icm,jmn->ijcn", vertical["kernel"][:, 0], horizontal["kernel"][0])
    # the 1x3 conv sees A's bias at every tap but the zero padding's: A's output rows
    # (6, or 4 valid) by 6 columns, padded by one column a side where the block pads
    side = 1 if padding == 1 else 0
    ones = jnp.pad(jnp.ones((1, 6 - 2 * (1 - side), 6, 1)), ((0, 0), (0, 0), (side, side), (0, 0)))
    bias_map = _conv(ones * vertical["bias"], horizontal["kernel"], "VALID")
    want = _relu_then_batchnorm(variables, _conv(x, dense, padding) + bias_map
                                + horizontal["bias"])
    chex.assert_shape(want, (2, 6, 6, 5) if padding == 1 else (2, 4, 4, 5))
    chex.assert_trees_all_close(block.apply(variables, x, train=False), want, atol=1e-5)


def test_a_shared_block_counts_its_conv_once_and_a_batchnorm_per_application():
    assert parse_arch("c8 c8x3 p dc8x2")[1:] == [
        ("conv", "block2", 8, 3), ("pool", "pool", 0, 1), ("separable_conv", "block3", 8, 2)]
    model, variables, _ = shapes(Net(arch="c8 c8x3 v8x2 dc8x2"))
    rows = summary(model, variables)
    # conv 9*8*8 once + 3 x BN 16; valid twice: 28 -> 24; depthwise 72 + pointwise 64 + 2 x 16
    assert rows[1:4] == [("block2", (28, 28, 8), 576 + 48), ("block3", (24, 24, 8), 576 + 32),
                         ("block4", (24, 24, 8), 72 + 64 + 32)]
    assert sorted(variables["params"]["block2"]) == ["bn1", "bn2", "bn3", "conv"]
    assert sorted(variables["batch_stats"]["block2"]) == ["bn1", "bn2", "bn3"]


@pytest.mark.parametrize("fast", [True, False])
def test_a_shared_block_is_the_unshared_blocks_with_equal_convs(fast):
    shared_model, shared, x = init(Net(arch="c4 c4x2", fast=fast))
    # The same net unshared, its two convs both set to the shared one, each BatchNorm
    # to its application's: the same function, in eval and in training mode.
    s = jax.tree.map(lambda v: v + 0.1 * jnp.sin(jnp.arange(v.size).reshape(v.shape)), shared)
    block = s["params"]["block2"]
    unshared = {"params": {"block1": s["params"]["block1"], "head": s["params"]["head"],
                           "block2": {"conv": block["conv"], "bn": block["bn1"]},
                           "block3": {"conv": block["conv"], "bn": block["bn2"]}},
                "batch_stats": {"block1": s["batch_stats"]["block1"],
                                "block2": {"bn": s["batch_stats"]["block2"]["bn1"]},
                                "block3": {"bn": s["batch_stats"]["block2"]["bn2"]}}}
    model = Net(arch="c4 c4 c4", fast=fast)
    chex.assert_trees_all_close(shared_model.apply(s, x), model.apply(unshared, x), atol=1e-5)
    rngs = {"dropout": jax.random.key(3)}
    train = lambda m, v: m.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"])[0]  # noqa: E731
    chex.assert_trees_all_close(train(Net(arch="c4 c4x2", fast=fast, dropout_rate=0.0), s),
                                train(Net(arch="c4 c4 c4", fast=fast, dropout_rate=0.0),
                                      unshared), atol=1e-5)


@pytest.mark.parametrize("arch, message", [
    ("c8 c16x3", "a shared block needs 16 channels in, got 8"),
    ("c8x1", "a count of 2 or more after 'x'"), ("c8 c8x", "a count of 2 or more"),
    ("c8 c8xx2", "a count of 2 or more"), ("c8 t8x2", "only a block"),
    ("c8 sc8x2", "only a block"), ("w8x2", "only a block"),
    ("v8 v8x20", r"'v8x20' \(layer 2\) shrinks the 26x26 map it gets below 1x1"),
    ("cx2", "positive number of channels"),
])
def test_bad_shared_blocks_are_refused(arch, message):
    with pytest.raises(ArchError, match=message):
        parse_arch(arch)


@pytest.mark.parametrize("arch", ["c8 c8x3 v8x2 dc8x2 sc8", SEED_ARCH, "fc6 p fv8 fv8x2"])
@pytest.mark.parametrize("bias, norm", [(False, "batch"), (True, "batch"), (True, "layer"),
                                        (False, "none")])
def test_the_pytorch_peer_builds_the_same_net_shared_blocks_too(arch, bias, norm):
    torch = pytest.importorskip("torch", reason="the PyTorch peer needs the compare extra")
    from jaxmnist.configs import Config

    torch_peer = experiment("torch_peer")
    net = torch_peer.build(Config(arch=arch, bias=bias, norm=norm))
    _, variables, _ = shapes(Net(arch=arch, bias=bias, norm=norm))
    assert sum(p.numel() for p in net.parameters()) == count_params(variables["params"])
    assert tuple(net(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
    if norm == "layer" and arch.startswith("c8 "):  # the peer's norm does what a block's does
        model = Net(arch="c8", norm="layer", dropout_rate=0.0)
        x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
        _, inter = model.apply(model.init(jax.random.key(1), x), x, capture_intermediates=True,
                               mutable=["intermediates"])
        block = inter["intermediates"]["block1"]
        relu = np.maximum(np.asarray(block["conv"]["__call__"][0]), 0.0)
        theirs = net[2]  # the first block: conv, ReLU, norm
        assert isinstance(theirs, torch.nn.GroupNorm)
        np.testing.assert_allclose(
            np.asarray(block["ln"]["__call__"][0]),
            theirs(torch.from_numpy(relu).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy(),
            atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_the_pytorch_peer_without_norm_with_sigmoids_and_a_dense_head_computes_the_same(bias):
    torch = pytest.importorskip("torch", reason="the PyTorch peer needs the compare extra")
    from jaxmnist.configs import Config

    torch_peer = experiment("torch_peer")
    config = Config(arch="c4 p v6", bias=bias, norm="none", activation="sigmoid", head="dense",
                    dropout=0.0)
    net = torch_peer.build(config).eval()
    model = Net(arch=config.arch, bias=bias, norm="none", activation="sigmoid", head="dense",
                dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    params = model.init(jax.random.key(1), x)["params"]
    assert sum(p.numel() for p in net.parameters()) == count_params(params) == (
        (9 * 4 + 9 * 4 * 6 + 12 * 12 * 6 * 10) + bias * (4 + 6 + 10))
    # jaxmnist's weights into the peer: HWIO kernels to OIHW, the dense kernel transposed.
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    linear = [m for m in net if isinstance(m, torch.nn.Linear)][0]
    with torch.no_grad():
        for conv, name in zip(convs, ["block1", "block2"]):
            conv.weight.copy_(torch.from_numpy(
                np.asarray(params[name]["conv"]["kernel"]).transpose(3, 2, 0, 1).copy()))
            if bias:
                conv.bias.copy_(torch.from_numpy(np.array(params[name]["conv"]["bias"])))
        linear.weight.copy_(torch.from_numpy(np.asarray(params["head"]["kernel"]).T.copy()))
        if bias:
            linear.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))
        theirs = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(theirs, model.apply({"params": params}, x), atol=1e-5)


def test_a_hidden_head_layer_is_a_1x1_block_between_the_average_pool_and_the_logits():
    model = Net(arch="c4 p v6", bias=True, head_hidden=5, activation="leaky_relu",
                dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    # c4: 9·4 + 4 + 8; v6: 9·4·6 + 6 + 12; hidden: 6·5 + 5 + 2·5; logits: 5·10 + 10
    assert count_params(variables["params"]) == 48 + 234 + 45 + 60
    head = layer_table(model, variables)[-1]
    assert (head.params, head.madds, head.output) == (45 + 60, 6 * 5 + 5 * 10, (10,))
    # Eval mode, with running statistics that are not the identity's: by hand.
    stats = {"mean": jnp.arange(5.0) / 10, "var": jnp.arange(1.0, 6.0)}
    variables = {**variables, "batch_stats": {**variables["batch_stats"],
                                              "head_hidden": {"bn": stats}}}
    logits, layers = jax.jit(functools.partial(layer_outputs, model))(variables, x)
    p = variables["params"]
    pooled = np.asarray(layers[-1]).mean(axis=(1, 2))
    hidden = pooled @ np.asarray(p["head_hidden"]["conv"]["kernel"][0, 0]) + np.asarray(
        p["head_hidden"]["conv"]["bias"])
    hidden = np.where(hidden > 0, hidden, 0.01 * hidden)
    bn = p["head_hidden"]["bn"]
    hidden = ((hidden - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
              * np.asarray(bn["scale"]) + np.asarray(bn["bias"]))
    expected = hidden @ np.asarray(p["head"]["kernel"][0, 0]) + np.asarray(p["head"]["bias"])
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    with pytest.raises(ValueError, match="head_hidden needs head 'gap', got 'dense'"):
        Net(arch="c4", head="dense", head_hidden=4).init(jax.random.key(0), x)


def test_the_pytorch_peer_holds_batchnorm_s_scale_at_one_without_bn_scale():
    pytest.importorskip("torch", reason="the PyTorch peer needs the compare extra")
    from jaxmnist.configs import Config
    from jaxmnist.steps import param_count

    config = Config(arch="c8 p v10 v10x4", bias=True, bn_scale=False, head_hidden=6)
    net = experiment("torch_peer").build(config)
    frozen = [p for p in net.parameters() if not p.requires_grad]
    assert sum(p.numel() for p in frozen) == 8 + 10 + 4 * 10 + 6  # each BatchNorm's scale
    assert all(bool((p == 1).all()) for p in frozen)
    assert (sum(p.numel() for p in net.parameters() if p.requires_grad)
            == param_count(config) == torch_peer_stored(net))


def torch_peer_stored(net) -> int:
    return experiment("torch_peer").stored_params(net)


def test_the_pytorch_peer_freezes_a_whitening_layer_s_weight_and_counts_it():
    torch = pytest.importorskip("torch", reason="the PyTorch peer needs the compare extra")
    from jaxmnist.configs import Config
    from jaxmnist.steps import param_count

    config = Config(arch="w8 p v10", bn_scale=False, activation="leaky_relu")
    net = experiment("torch_peer").build(config)
    assert isinstance(net[0], torch.nn.Conv2d) and not net[0].weight.requires_grad
    assert net[0].bias.requires_grad and isinstance(net[1], torch.nn.LeakyReLU)
    # stored: the frozen 3x3x8 kernel, not BatchNorm's scale held at 1
    assert torch_peer_stored(net) == param_count(config) == 72 + 8 + 720 + 10 + 10 * 10


def test_the_pytorch_peer_builds_the_hidden_head_layer_too():
    torch = pytest.importorskip("torch", reason="the PyTorch peer needs the compare extra")
    from jaxmnist.configs import Config
    from jaxmnist.steps import param_count

    torch_peer = experiment("torch_peer")
    config = Config(arch="c8 p v9 v9x4", bias=True, head_hidden=16, dropout=0.0)
    net = torch_peer.build(config)
    assert sum(p.numel() for p in net.parameters()) == param_count(config) == 1943
    assert tuple(net(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
