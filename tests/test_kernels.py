"""The fast kernels against the Flax/lax ops they replace, and the XLA:CPU option."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import kernels, steps
from jaxmnist.models import Net


def keep_mask(key, shape, rate):
    return np.asarray(kernels.hash_dropout(key, rate, jnp.ones(shape)) != 0)


@pytest.mark.parametrize("rate", [0.069, 0.5])
def test_hash_dropout_keep_rate_and_scale(rate):
    x = jnp.ones((64, 28, 28, 16))
    y = np.asarray(kernels.hash_dropout(jax.random.key(0), rate, x))
    keep = y != 0
    n = keep.size
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(keep.mean() - (1 - rate)) < 5 * sigma
    np.testing.assert_allclose(y[keep], 1 / (1 - rate), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 5 * sigma / (1 - rate)  # unbiased in expectation


def test_hash_dropout_masks_are_independent():
    rate, shape = 0.5, (32, 28, 28, 16)
    base = keep_mask(jax.random.key(0), shape, rate)
    n = base.size
    tol = 5 * np.sqrt(0.25 * 0.75 / n)
    # Across steps / layers (different keys): P(both kept) == P(kept)^2.
    for other in [jax.random.key(1), jax.random.fold_in(jax.random.key(0), 1)]:
        m = keep_mask(other, shape, rate)
        assert abs((base & m).mean() - 0.25) < tol
        assert (base != m).any()
    # Neighbouring elements (channels, columns, rows) of one mask.
    flat = base.reshape(-1)
    for lag in (1, 16, 16 * 28):
        assert abs((flat[:-lag] & flat[lag:]).mean() - 0.25) < 2 * tol
    # Not one fixed pattern re-permuted: masks of two keys do not share a row pattern.
    other = keep_mask(jax.random.key(1), shape, rate).reshape(-1, 16)
    rows = {r.tobytes() for r in base.reshape(-1, 16)[:2000]}
    shared = sum(r.tobytes() in rows for r in other[:2000])
    assert shared < 200


def test_hash_dropout_module_matches_nn_dropout_contract():
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    drop = kernels.HashDropout(rate=0.3)
    chex.assert_trees_all_equal(drop.apply({}, x, deterministic=True), x)
    y1 = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    y2 = drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.array_equal(y1, y2)
    chex.assert_trees_all_equal(
        y1, drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}))
    zero = kernels.HashDropout(rate=0.0).apply({}, x, deterministic=False)
    chex.assert_trees_all_equal(zero, x)


def test_max_pool_2x2_matches_nn_max_pool_values_and_grads():
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 5))
    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    w = jax.random.normal(jax.random.key(1), (3, 14, 14, 5))
    # Each compiled whole: the value and the gradient.
    both = lambda f: jax.jit(lambda x: (f(x), jax.grad(lambda x: jnp.sum(f(x) * w))(x)))(x)  # noqa: E731
    chex.assert_trees_all_close(both(kernels.max_pool_2x2), both(ref))
    with pytest.raises(ValueError, match="even"):
        kernels.max_pool_2x2(jnp.zeros((1, 7, 8, 1)))


class MaxPoolTiesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_tied_windows_give_their_gradient_to_the_first_maximum(self):
        # ReLU and dropout make ties common (windows of zeros): nn.max_pool's gradient
        # goes to the first maximum of each window; jnp.max's is split between them.
        x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
        x = jnp.maximum(jnp.round(x), 0.0)  # many windows with tied maxima
        w = jax.random.normal(jax.random.key(1), (4, 4, 4, 3))

        def grad(pool):
            return self.variant(jax.grad(lambda x: jnp.sum(pool(x) * w)))(x)

        ours = grad(kernels.max_pool_2x2)
        chex.assert_trees_all_equal(ours, grad(lambda x: nn.max_pool(x, (2, 2), (2, 2))))
        # Every window passes its whole gradient to exactly one position.
        nonzero = np.asarray(ours != 0).reshape(4, 4, 2, 4, 2, 3).sum(axis=(2, 4))
        assert nonzero.max() == 1
        windows = np.asarray(x).reshape(4, 4, 2, 4, 2, 3)
        tied = (windows == windows.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1
        assert tied.mean() > 0.2


@pytest.mark.parametrize("shape", [(16, 28, 28, 16), (3, 5, 7, 4), (128, 6, 6, 16)])
def test_channel_sum_matches_sum_over_leading_axes(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    got = kernels.channel_sum(x)
    chex.assert_shape(got, (shape[-1],))
    chex.assert_trees_all_close(got, jnp.sum(x, axis=(0, 1, 2)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape, use_scale", [((16, 28, 28, 16), True), ((5, 3, 7, 4), True),
                                              ((5, 3, 7, 4), False)])
def test_batch_norm_matches_nn_batch_norm(shape, use_scale):
    x = 2.0 * jax.random.normal(jax.random.key(0), shape) + 0.5
    ours = kernels.BatchNorm(momentum=0.9, epsilon=1e-5, use_scale=use_scale)
    ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_scale=use_scale)
    variables = ref.init(jax.random.key(1), x, use_running_average=False)
    chex.assert_trees_all_equal_structs(
        variables, ours.init(jax.random.key(1), x, use_running_average=False))
    # Non-trivial parameters and running statistics.
    k = iter(jax.random.split(jax.random.key(2), 4))
    variables = jax.tree.map(lambda v: v + 0.3 * jax.random.normal(next(k), v.shape), variables)
    variables["batch_stats"]["var"] = jnp.abs(variables["batch_stats"]["var"])

    w = jax.random.normal(jax.random.key(3), shape)
    for train in (True, False):
        def run(module, variables, x, train=train):
            return module.apply(variables, x, use_running_average=not train,
                                mutable=["batch_stats"])

        def outputs_and_grads(module, variables, x, run=run):
            def loss(params, x):
                return jnp.sum(run(module, {**variables, "params": params}, x)[0] * w)
            return run(module, variables, x), jax.grad(loss, argnums=(0, 1))(
                variables["params"], x)

        # Each compiled whole (op by op, every small op would be compiled on its own).
        ((y, new), g), ((y_ref, new_ref), g_ref) = (
            jax.jit(functools.partial(outputs_and_grads, m))(variables, x) for m in (ours, ref))
        chex.assert_trees_all_close(y, y_ref, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(new, new_ref, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(g, g_ref, atol=1e-4, rtol=1e-4)
    assert ("scale" in variables["params"]) == use_scale  # without it: the offset only
    # In training the output is normalised with the batch's own statistics.
    params = {"bias": jnp.zeros(shape[-1])} | (
        {"scale": jnp.ones(shape[-1])} if use_scale else {})
    y, _ = ours.apply({**variables, "params": params},
                      x, use_running_average=False, mutable=["batch_stats"])
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3)


def test_batch_norm_init_leaves_running_statistics_alone():
    x = 5.0 + jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
    stats = kernels.BatchNorm().init(jax.random.key(1), x, use_running_average=False)
    chex.assert_trees_all_equal(stats["batch_stats"],
                                {"mean": jnp.zeros(3), "var": jnp.ones(3)})


YNNPACK = kernels.xla_cpu_knows(tuple(kernels.XLA_CPU_OPTIONS.items()))


def test_an_unknown_compiler_option_is_detected():
    assert not kernels.xla_cpu_knows((("xla_cpu_no_such_option", "1"),))


@pytest.mark.skipif(not YNNPACK, reason=f"jaxlib {jax.__version__} has no YNNPACK option")
def test_compiler_options_turn_ynnpack_off_on_cpu_only():
    cpu = jax.devices("cpu")
    assert kernels.compiler_options(cpu) == {"xla_cpu_experimental_ynn_fusion_type": ""}

    class FakeGpu:
        platform = "gpu"

    assert kernels.compiler_options([FakeGpu()]) is None
    # With the option no convolution of the net's step goes to YNNPACK; by default
    # XLA:CPU sends them there.
    x = jnp.zeros((8, 28, 28, 8))
    w = jnp.zeros((3, 3, 8, 16))

    def weight_grad(x, w):
        conv = lambda w: jax.lax.conv_general_dilated(  # noqa: E731
            x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.grad(lambda w: jnp.sum(conv(w) ** 2))(w)

    def hlo(options):
        return jax.jit(weight_grad, compiler_options=options).lower(x, w).compile().as_text()

    assert "__ynn_fusion" not in hlo(kernels.compiler_options(cpu))
    assert "convolution" in hlo(kernels.compiler_options(cpu))


def test_fast_and_plain_nets_agree():
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 1))
    fast, plain = Net(fast=True), Net(fast=False)
    variables = steps.init_variables(fast, jax.random.key(1), x)
    chex.assert_trees_all_equal_structs(variables, jax.eval_shape(plain.init, jax.random.key(1), x))

    def outputs(model, train=False):  # compiled whole, not op by op
        return jax.jit(lambda v: model.apply(v, x, train=train, mutable=["batch_stats"])[0])(
            variables)

    chex.assert_trees_all_close(outputs(fast), outputs(plain), atol=1e-4)
    # In training mode they differ only by the dropout masks: equal with dropout off.
    fast0, plain0 = Net(dropout_rate=0.0, fast=True), Net(dropout_rate=0.0, fast=False)
    chex.assert_trees_all_close(outputs(fast0, True), outputs(plain0, True), atol=1e-4)


@pytest.mark.parametrize("padding", [1, "VALID"])
@pytest.mark.parametrize("shape", [(4, 13, 13, 26), (2, 7, 9, 3)])
def test_depthwise_conv_matches_the_grouped_conv_values_and_grads(padding, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    ours = kernels.DepthwiseConv3x3(padding, use_bias=True,
                                    bias_init=nn.initializers.normal(1.0))
    ref = nn.Conv(shape[-1], (3, 3), padding=padding, feature_group_count=shape[-1])
    variables = ours.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes(variables, ref.init(jax.random.key(1), x))
    out_shape = jax.eval_shape(ref.apply, variables, x).shape
    w = jax.random.normal(jax.random.key(2), out_shape)

    @functools.partial(jax.jit, static_argnums=0)  # compiled whole, not op by op
    def outputs_and_grads(which, variables, x):
        module = (ours, ref)[which]
        return module.apply(variables, x), jax.grad(
            lambda v, x: jnp.sum(module.apply(v, x) * w), argnums=(0, 1))(variables, x)

    (y, g), (y_ref, g_ref) = outputs_and_grads(0, variables, x), outputs_and_grads(1, variables, x)
    chex.assert_trees_all_close(y, y_ref, atol=1e-5)
    chex.assert_trees_all_close(g, g_ref, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="padding must be 'VALID' or 1"):
        kernels.DepthwiseConv3x3("SAME").init(jax.random.key(1), x)


@pytest.mark.slow  # 9 s on 2 cores; the kernels' own values and gradients are quick tests
def test_fast_and_plain_separable_nets_agree():
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 1))
    fast = Net(arch="c4 p dc8 dv10 dc10x2", bias=True, dropout_rate=0.0)
    plain = Net(arch="c4 p dc8 dv10 dc10x2", bias=True, dropout_rate=0.0, fast=False)
    # Compiled whole (op by op, each of the many small ops would be compiled alone).
    variables = jax.jit(fast.init)(jax.random.key(1), x)
    plain_variables = jax.jit(plain.init)(jax.random.key(1), x)
    chex.assert_trees_all_equal_structs(variables, plain_variables)
    # The same initial values too: a run's first weights do not depend on the kernels.
    chex.assert_trees_all_close(variables, plain_variables)

    def loss(model, v):
        out, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
        return jnp.sum(out ** 2)

    chex.assert_trees_all_close(jax.jit(jax.grad(functools.partial(loss, fast)))(variables),
                                jax.jit(jax.grad(functools.partial(loss, plain)))(variables),
                                atol=1e-3, rtol=1e-4)
