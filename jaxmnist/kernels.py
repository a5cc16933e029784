"""Small, fast replacements for three Flax/lax ops, each checked against the op it replaces.

On XLA:CPU these three account for most of the gap between a plain Flax train step
and PyTorch eager (see the README's performance section):

* `HashDropout` — Flax's `nn.Dropout` draws one threefry number per element; here one
  threefry draw per call seeds a counter-based hash of the element index, which fuses
  into the neighbouring ops and costs almost nothing.
* `max_pool_2x2` — `nn.max_pool` lowers to reduce-window whose backward pass builds
  argmax indices and a scatter; a reshape and `max` gives the same values with a
  cheap, fused backward.
* `Conv3x3SingleChannel` — a 3x3 convolution of a 1-channel image is nine
  multiply-adds, which XLA:CPU fuses better than it runs a 1-input-channel conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's default Conv2d init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_conv_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection on uint32 with full avalanche."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _flat_index(shape: Sequence[int]) -> jax.Array:
    """The row-major element index of every position of `shape`, as uint32."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    return index


def hash_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Pseudo-random uint32 bits for every element of `shape`, from one threefry draw.

    Two 32-bit words drawn from `key` are mixed into the element index in two rounds
    (add, hash, xor, hash). A single xor of one word would only permute one fixed
    pattern between steps; two keyed rounds give unrelated patterns per key.
    """
    k = jax.random.bits(key, (2,), jnp.uint32)
    x = _flat_index(shape) * np.uint32(0x9E3779B9) + k[0]
    x = _fmix32(x) ^ k[1]
    return _fmix32(x)


def hash_dropout(key: jax.Array, rate: float, x: jax.Array) -> jax.Array:
    """Inverted dropout of `x` at `rate`, masks from `hash_bits`."""
    if rate == 0.0:
        return x
    threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    keep = hash_bits(key, x.shape) >= threshold
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class HashDropout(nn.Module):
    """Drop-in for `nn.Dropout` (same `rate`, `deterministic`, 'dropout' rng stream)."""

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return x
        return hash_dropout(self.make_rng(self.rng_collection), self.rate, x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, of an NHWC array with even H and W (== nn.max_pool)."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"max_pool_2x2 needs even height and width, got {h}x{w}")
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv3x3SingleChannel(nn.Module):
    """A 3x3, stride-1, padding-1, bias-free conv of a 1-channel NHWC image.

    Same parameter (`kernel`, shape (3, 3, 1, features)) and result as
    `nn.Conv(features, (3, 3), padding=1, use_bias=False)`.
    """

    features: int
    kernel_init: nn.initializers.Initializer = torch_conv_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != 1:
            raise ValueError(f"expected 1 input channel, got {x.shape[-1]}")
        kernel = self.param("kernel", self.kernel_init, (3, 3, 1, self.features), jnp.float32)
        kernel = kernel.astype(x.dtype)
        _, h, w, _ = x.shape
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = 0
        for dy in range(3):
            for dx in range(3):
                out = out + padded[:, dy : dy + h, dx : dx + w, :] * kernel[dy, dx, 0]
        return out
