"""The fast kernels against the Flax/lax ops they replace."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import kernels
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
    chex.assert_trees_all_close(kernels.max_pool_2x2(x), ref(x))
    w = jax.random.normal(jax.random.key(1), (3, 14, 14, 5))
    grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * w))(x)  # noqa: E731
    chex.assert_trees_all_close(grad(kernels.max_pool_2x2), grad(ref))
    with pytest.raises(ValueError, match="even"):
        kernels.max_pool_2x2(jnp.zeros((1, 7, 8, 1)))


def test_single_channel_conv_matches_nn_conv():
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    fast = kernels.Conv3x3SingleChannel(8)
    ref = nn.Conv(8, (3, 3), padding=1, use_bias=False)
    params = fast.init(jax.random.key(1), x)
    chex.assert_shape(params["params"]["kernel"], (3, 3, 1, 8))
    chex.assert_trees_all_close(fast.apply(params, x), ref.apply(params, x), atol=1e-5)
    w = jax.random.normal(jax.random.key(2), (4, 28, 28, 8))

    def grads(m):
        return jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * w), argnums=(0, 1))(params, x)

    chex.assert_trees_all_close(grads(fast), grads(ref), rtol=1e-4, atol=1e-4)


def test_fast_and_plain_nets_agree():
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 1))
    fast, plain = Net(fast=True), Net(fast=False)
    variables = fast.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_structs(variables, plain.init(jax.random.key(1), x))
    chex.assert_trees_all_close(fast.apply(variables, x), plain.apply(variables, x), atol=1e-4)
    # In training mode they differ only by the dropout masks: equal with dropout off.
    fast0, plain0 = Net(dropout_rate=0.0, fast=True), Net(dropout_rate=0.0, fast=False)
    out_f, _ = fast0.apply(variables, x, train=True, mutable=["batch_stats"])
    out_p, _ = plain0.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_close(out_f, out_p, atol=1e-4)
