"""Fast replacements for three Flax ops, each checked against the op it replaces, and
the XLA:CPU compiler option this project compiles with.

On XLA:CPU these account for most of the difference between a plain Flax train step
and a fast one (measured in docs/performance.md):

* `compiler_options` — XLA:CPU hands convolutions to YNNPACK by default; for this net's
  28x28 weight gradients that is several times slower than XLA's own Eigen
  convolution, and the step as a whole runs about 2x faster with YNNPACK off.
* `HashDropout` — Flax's `nn.Dropout` draws one threefry number per element; here one
  threefry draw per call seeds a counter-based hash of the element index, which fuses
  into the neighbouring ops and costs almost nothing.
* `max_pool_2x2` — `nn.max_pool` lowers to reduce-window whose backward pass builds
  argmax indices and a scatter; a reshape and `max`, with a backward pass that routes
  each gradient to the window's first maximum, gives the same values and gradients.
* `BatchNorm` — `nn.BatchNorm` with its batch statistics summed by `channel_sum`, a
  reduction shape that XLA:CPU vectorises (a plain sum over (N, H, W) becomes a slow
  reduce-window there).
* `DepthwiseConv3x3` — a 3x3 conv with one filter per channel (`nn.Conv` with
  `feature_group_count` equal to the channels), written as nine shifted
  multiply-adds that fuse into one loop, its gradients too; XLA:CPU runs the grouped
  convolution several times slower at these sizes.
"""

from __future__ import annotations

import functools
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


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"max_pool_2x2 needs even height and width, got {h}x{w}")
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, of an NHWC array with even H and W (== nn.max_pool).

    The gradient goes to the first maximum of each window in row-major order, as
    `nn.max_pool`'s does (`jnp.max` would split it between tied maxima, e.g. two
    dropped-out zeros)."""
    return _max_pool_2x2(x)


def _max_pool_2x2_fwd(x):
    y = _max_pool_2x2(x)
    return y, (x, y)


def _max_pool_2x2_bwd(residuals, g):
    x, y = residuals
    n, h, w, c = x.shape
    hit = x.reshape(n, h // 2, 2, w // 2, 2, c) == y[:, :, None, :, None, :]
    top_left, top_right = hit[:, :, 0, :, 0], hit[:, :, 0, :, 1]
    bottom_left, bottom_right = hit[:, :, 1, :, 0], hit[:, :, 1, :, 1]
    # Each position wins only if no earlier position of its window holds the maximum.
    top_right &= ~top_left
    bottom_left &= ~(top_left | top_right)
    bottom_right &= ~(top_left | top_right | bottom_left)
    first = jnp.stack([jnp.stack([top_left, top_right], axis=3),
                       jnp.stack([bottom_left, bottom_right], axis=3)], axis=2)
    dx = jnp.where(first, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
    return (dx.reshape(x.shape),)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def channel_groups(m: int) -> int:
    """The k of `channel_sum` for m rows of C values: the largest power of two up to 64
    that divides m."""
    k = 1
    while k < 64 and m % (2 * k) == 0:
        k *= 2
    return k


def channel_sum(x: jax.Array) -> jax.Array:
    """The sum of an (..., C) array over every axis but the last, shape (C,).

    Summed as rows of k*C values (k = `channel_groups` of the row count), then over the
    k groups: XLA:CPU vectorises that reduction, where a plain `x.sum(axis=(0, 1, 2))`
    becomes a reduce-window several times slower."""
    c = x.shape[-1]
    m = x.size // c
    k = channel_groups(m)
    return x.reshape(m // k, k * c).sum(axis=0).reshape(k, c).sum(axis=0)


class BatchNorm(nn.Module):
    """Drop-in for `nn.BatchNorm` over every axis but the last, same maths and variables.

    Params `scale` (none with `use_scale=False`: the scale is 1, as airbench freezes it)
    and `bias`, batch_stats `mean` and `var`; in training the batch's
    mean and biased variance E[x²] − E[x]² (clipped at 0, as Flax's), and running
    statistics updated as `momentum * old + (1 - momentum) * batch`, except while
    initialising. The sums go through `channel_sum`.
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(c, jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(c, jnp.float32))
        scale = (self.param("scale", nn.initializers.ones, (c,), jnp.float32)
                 if self.use_scale else 1.0)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            m = x.size // c
            mean = channel_sum(x) / m
            var = jnp.maximum(0.0, channel_sum(x * x) / m - mean * mean)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        return self.scale_and_shift(x, mul, bias - mean * mul)

    def scale_and_shift(self, x: jax.Array, mul: jax.Array, add: jax.Array) -> jax.Array:
        """(x - mean) * scale / std + bias, as one multiply-add per element."""
        return x * mul + add


def _pad_hw(x: jax.Array, p: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x


def _taps(x: jax.Array, kernel: jax.Array, h: int, w: int) -> jax.Array:
    """Σ over the 3x3 taps (i, j) of x[:, i:i+h, j:j+w, :] · kernel[i, j, 0]."""
    return sum(x[:, i:i + h, j:j + w, :] * kernel[i, j, 0] for i in range(3) for j in range(3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_3x3(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """A 3x3 conv of each channel of the NHWC `x` with its own filter, stride 1, zero
    `padding` (0 or 1) on each side; `kernel` (3, 3, 1, C) as `nn.Conv` with
    `feature_group_count=C` holds it. Equal to `jax.lax.conv_general_dilated` with
    `feature_group_count=C`, to float32 round-off."""
    xp = _pad_hw(x, padding)
    return _taps(xp, kernel, xp.shape[1] - 2, xp.shape[2] - 2)


def _depthwise_fwd(x, kernel, padding):
    return depthwise_conv_3x3(x, kernel, padding), (x, kernel)


def _depthwise_bwd(padding, residuals, g):
    x, kernel = residuals
    xp = _pad_hw(x, padding)
    h, w = g.shape[1], g.shape[2]
    # ∂/∂kernel[i, j]: the tap's input window times g, summed per channel.
    dk = jnp.stack([jnp.stack([channel_sum(xp[:, i:i + h, j:j + w, :] * g) for j in range(3)])
                    for i in range(3)])[:, :, None, :]
    # ∂/∂x: g, padded by 2, convolved with the kernel turned 180°, less the padding.
    dxp = _taps(_pad_hw(g, 2), kernel[::-1, ::-1], xp.shape[1], xp.shape[2])
    dx = dxp[:, padding:dxp.shape[1] - padding, padding:dxp.shape[2] - padding, :]
    return dx, dk


depthwise_conv_3x3.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv3x3(nn.Module):
    """Drop-in for `nn.Conv(C, (3, 3), padding=..., feature_group_count=C)` on C
    channels: the same params (`kernel` (3, 3, 1, C), `bias` (C,)), computed by
    `depthwise_conv_3x3`. `padding`: "VALID" or 1."""

    padding: str | int
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        padding = {"VALID": 0, 1: 1}.get(self.padding)
        if padding is None:
            raise ValueError(f"padding must be 'VALID' or 1, got {self.padding!r}")
        kernel = self.param("kernel", self.kernel_init, (3, 3, 1, c), jnp.float32)
        y = depthwise_conv_3x3(x, kernel, padding)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (c,), jnp.float32)
        return y


# XLA:CPU's default sends convolutions to YNNPACK, whose weight gradients for this
# net's 28x28 layers run on one core and several times slower than XLA's own Eigen
# convolution; with YNNPACK off a train step is about 2x faster (docs/performance.md).
XLA_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def xla_cpu_knows(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's XLA:CPU accepts these compiler options (older jaxlibs,
    from before YNNPACK, reject the YNNPACK option as unknown)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
            jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception:  # XLA reports an unknown option as a generic runtime error
        return False
    return True


def compiler_options(devices: Sequence[jax.Device] | None = None) -> dict | None:
    """The `jax.jit(compiler_options=...)` for this project's functions on `devices`
    (default: jax.devices()): `XLA_CPU_OPTIONS` on CPU where this jaxlib knows them,
    XLA's defaults elsewhere."""
    device = devices[0] if devices else jax.devices()[0]
    if device.platform != "cpu" or not xla_cpu_knows(tuple(XLA_CPU_OPTIONS.items())):
        return None
    return dict(XLA_CPU_OPTIONS)
