"""A family of fully convolutional MNIST nets, as a Flax module; the seed net is one member.

A net is a plain string of layers (`arch`), read left to right from the 28x28 input:

| token | layer                                                    | params              |
| ----- | -------------------------------------------------------- | ------------------- |
| `cN`  | conv 3x3 ->N, padding 1 (no bias), ReLU, BatchNorm, Dropout | 9·in·N + 2N         |
| `vN`  | the same block with a valid conv (the image shrinks by 2) | 9·in·N + 2N         |
| `dcN` | the `cN` block with a depthwise-separable conv: a 3x3     | 9·in + in·N + 2N    |
|       | filter per input channel, then a 1x1 conv ->N             |                     |
| `dvN` | the same, valid (the image shrinks by 2)                  | 9·in + in·N + 2N    |
| `fcN` | the `cN` block with a factorised conv: a 3x1 conv ->N,    | 3·in·N + 3·N·N + 2N |
|       | then a 1x3 conv ->N, with no nonlinearity between         |                     |
| `fvN` | the same, valid (the image shrinks by 2)                  | 3·in·N + 3·N·N + 2N |
| `scN` | the `cN` block with a strided conv: stride 2, so the map  | 9·in·N + 2N         |
|       | halves (28x28 -> 14x14, 7x7 -> 4x4) in a pool's place     |                     |
| `wN`  | the first layer only: a 3x3 conv ->N, padding 1, whose   | 9N + N              |
|       | kernel is frozen at the whitening of the training images' |                     |
|       | 3x3 patches (`whitening_kernel`), a learned bias, the     |                     |
|       | activation; no norm, no dropout (airbench's first layer)  |                     |
| `p`   | max-pool 2x2, stride 2                                    | 0                   |
| `tN`  | transition: conv 1x1 ->N (no bias)                        | in·N                |
| `s`   | space-to-depth 2x2: HxWxC -> H/2xW/2x4C (`PixelUnshuffle(2)`) | 0                   |

A block token but `scN` and `wN` with `xK` (`c16x3`, `dc26x3`, `fv10x4`) is that block applied K
times in a row with one set of conv weights, counted once, each application with its own
norm (BatchNorm: +2N params each) and dropout; its input must have N channels already.

then always the head: global average pool, conv 1x1 ->10 (no bias). Blocks are named
block1, block2, ... in order, transitions transition, transition2, ...

Four switches change every layer of a kind (`Net` attributes, `Config` fields):
`bias=True` gives every conv (blocks, transitions, head) a bias, as PyTorch's `Conv2d`
has by default (+N params per layer); `dropout_at="pools"` takes dropout out of the
blocks and puts it after each pool instead; `bn_before_relu=True` makes every block
conv -> BatchNorm -> ReLU (-> Dropout), the more common order, with the same params;
`norm="layer"` puts a norm without parameters where each block's BatchNorm is: each
image's activations standardised over height, width and channels together (PyTorch's
`GroupNorm(1, C, affine=False)`; -2N params a block, the same in training and eval);
`norm="none"` leaves the blocks without a norm (-2N params a block).
`bn_scale=False` holds every BatchNorm's scale at 1 and learns only its offset (-N
params a block application), as airbench freezes it.
`activation="sigmoid"` puts Part A's sigmoid where every block's ReLU is.
`head="dense"` replaces the global average pool by a flatten and a dense layer to the
10 logits (H·W·C·10 params, + 10 with `bias`; PyTorch's `Flatten` + `Linear`, in that
order of H, W, C). `head="none"`: no head layer; the last layer has 10 channels, and
their global average pool is the logits. `head_hidden=H` (with `head="gap"`) puts a
hidden layer between the average pool and the conv 1x1 ->10: a conv 1x1 ->H with the
blocks' activation, norm and dropout (a `ConvBlock` of 1x1 kernels, `head_hidden`), as
the published 1,936- and 2,180-parameter nets' GAP -> dense 16 -> 10 (C·H params,
+ H with `bias`, + 2H with BatchNorm).
Parameter counts are PyTorch's: weights, biases and BatchNorm's scale and offset; not
its running statistics. A `wN` layer's frozen kernel is counted: it is stored with the
weights, though no step moves it.

The seed net, `SEED_ARCH` (12,088 params):

| block      | layers                                            | output   | params        |
| ---------- | ------------------------------------------------- | -------- | ------------- |
| 1          | conv 3x3 1->8 pad 1 (no bias), ReLU, BN, Dropout   | 28x28x8  | 72 + 16       |
| 2          | conv 3x3 8->16 pad 1, ReLU, BN, Dropout            | 28x28x16 | 1,152 + 32    |
| 3          | conv 3x3 16->16 pad 1, ReLU, BN, Dropout           | 28x28x16 | 2,304 + 32    |
| transition | max-pool 2x2, conv 1x1 16->8                       | 14x14x8  | 128           |
| 4-7        | conv 3x3 valid ->16, ReLU, BN, Dropout (x4)        | 12..6    | 1,152 or 2,304 + 32 |
| head       | global average pool, conv 1x1 16->10               | 10       | 160           |
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmnist import kernels
from jaxmnist.kernels import torch_conv_init

SEED_ARCH = "c8 c16 c16 p t8 v16 v16 v16 v16"
NUM_PARAMS = 12_088  # of the seed net


class ArchError(ValueError):
    """An `arch` string that does not describe a net."""


def no_head_refusal(arch: str) -> str:
    """Why `arch` cannot go without a head layer (`head="none"`), or "" where it can."""
    if (channels := out_channels(arch)) == 10:
        return ""
    return (f"'none' takes the last layer's channels as the 10 logits; "
            f"{arch.split()[-1]!r} gives {channels}")


def out_channels(arch: str) -> int:
    """The channels of the last layer of `arch` (a valid layer string)."""
    channels = 1
    for kind, _, features, _ in parse_arch(arch):
        channels = {"pool": channels, "space_to_depth": 4 * channels}.get(kind, features)
    return channels


_NO_FEATURES = ("pool", "space_to_depth")  # the layers written without a number
# the block kinds (ConvBlock); those ending in "valid" shrink the image by 2, the strided
# conv halves it (rounding up)
BLOCK_KINDS = ("conv", "valid", "separable_conv", "separable_valid", "factorised_conv",
               "factorised_valid", "strided_conv", "whitening")
WHITENING_PATCH = 9  # the values in a 3x3 patch of a one-channel image


class Layer(NamedTuple):
    """One layer of an `arch` string, as `parse_arch` reads it."""

    # conv, valid, separable_conv, separable_valid, factorised_conv, factorised_valid,
    # strided_conv, pool, transition, space_to_depth
    kind: str
    name: str  # the module's name for it: block1, ..., transition, ..., pool
    features: int  # output channels (0 for pool and space_to_depth)
    repeats: int = 1  # a block applied this many times with shared conv weights


def parse_arch(arch: str, size: int = 28) -> list[Layer]:
    """`arch` -> [Layer(kind, name, features, repeats)], with the layer names the module
    gives them; checks, for `size` x `size` images, that no layer is given a map it
    cannot take (a pool or valid conv that would leave less than 1x1, `s` on an odd
    size) and that a shared block (`xK`) gets the channels it gives."""
    layers, blocks, transitions, channels = [], 0, 0, 1
    tokens = arch.split()
    if not tokens:
        raise ArchError("empty architecture")
    for token in tokens:
        prefix = token[:2] if token[:2] in ("dc", "dv", "fc", "fv", "sc") else token[:1]
        kind = {"c": "conv", "v": "valid", "p": "pool", "t": "transition",
                "s": "space_to_depth", "dc": "separable_conv", "dv": "separable_valid",
                "fc": "factorised_conv", "fv": "factorised_valid",
                "sc": "strided_conv", "w": "whitening"}.get(prefix)
        if kind is None or (kind in _NO_FEATURES and len(token) > 1):
            raise ArchError(f"unknown layer {token!r} (expected cN, vN, dcN, dvN, fcN, fvN, "
                            "scN, wN, tN, p or s; a block but scN and wN may end in xK)")
        features, repeats = 0, 1
        if kind not in _NO_FEATURES:
            count, _, times = token[len(prefix):].partition("x")
            if not count.isdigit() or int(count) == 0:
                raise ArchError(f"{token!r}: expected a positive number of channels after "
                                f"{prefix!r}")
            features = int(count)
            if "x" in token[len(prefix):]:
                if kind not in BLOCK_KINDS or kind in ("strided_conv", "whitening"):
                    raise ArchError(f"{token!r}: only a block (cN, vN, dcN, dvN, fcN, fvN) "
                                    "can repeat")
                if not times.isdigit() or int(times) < 2:
                    raise ArchError(f"{token!r}: expected a count of 2 or more after 'x'")
                if channels != features:
                    raise ArchError(f"{token!r}: a shared block needs {features} channels in, "
                                    f"got {channels}")
                repeats = int(times)
        if kind in BLOCK_KINDS:
            blocks += 1
            name = f"block{blocks}"
        elif kind == "transition":
            transitions += 1
            name = "transition" if transitions == 1 else f"transition{transitions}"
        else:
            name = kind
        where = f"{token!r} (layer {len(layers) + 1})"
        if kind == "whitening" and layers:
            raise ArchError(f"{where}: a whitening layer whitens the image's own patches, "
                            "so it can only be the first layer")
        if kind == "whitening" and (features % 2 or features > 2 * WHITENING_PATCH):
            raise ArchError(f"{where}: a whitening layer has an even number of channels up "
                            f"to {2 * WHITENING_PATCH} (each of the patches' "
                            f"{WHITENING_PATCH} directions and its negative)")
        if kind == "space_to_depth" and size % 2:
            raise ArchError(f"{where} needs an even image size, gets {size}x{size}")
        if kind.endswith("valid") and size - 2 * repeats < 1:
            raise ArchError(f"{where} shrinks the {size}x{size} map it gets below 1x1 "
                            "(a valid 3x3 conv takes 2 pixels off)")
        if kind == "pool" and size < 2:
            raise ArchError(f"{where} pools a {size}x{size} map (a 2x2 pool needs 2x2 or more)")
        size = size - 2 * repeats if kind.endswith("valid") else size
        size = size // 2 if kind in _NO_FEATURES else size
        size = strided_size(size) if kind == "strided_conv" else size
        channels = {"pool": channels, "space_to_depth": 4 * channels}.get(kind, features)
        layers.append(Layer(kind, name, features, repeats))
    return layers


def strided_size(size: int) -> int:
    """The side of a 3x3 conv's output at stride 2 with padding 1 (PyTorch's and Flax's):
    ⌊(size + 2 - 3) / 2⌋ + 1, the input's half rounded up."""
    return (size - 1) // 2 + 1


DROPOUT_AT = ("blocks", "pools")
NORMS = ("batch", "layer", "none")
ACTIVATIONS = ("relu", "sigmoid", "leaky_relu", "prelu")
HEADS = ("gap", "dense", "none")


def space_to_depth(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H/2, W/2, 4C): out[n, h, w, 4c + 2i + j] = x[n, 2h + i, 2w + j, c],
    the channel order of PyTorch's `PixelUnshuffle(2)`."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(n, h // 2, w // 2, 4 * c)


class ConvBlock(nn.Module):
    """conv 3x3 (bias if `bias`) -> ReLU -> BatchNorm -> Dropout (rate 0: none); with
    `bn_before_relu`, conv -> BatchNorm -> ReLU -> Dropout. `separable`: the conv is a
    3x3 depthwise conv (one filter per input channel) then a 1x1 conv, with no
    nonlinearity between (as Xception's separable convs). `factorised`: the conv is a 3x1
    conv then a 1x3 conv, each to `features`, with no nonlinearity between: a 3x3 conv
    each of whose kernels is a sum of `features` products of a column and a row, for
    3·in·N + 3·N·N weights instead of 9·in·N. `norm="layer"`: a norm
    without parameters (each image standardised over H, W and C) in BatchNorm's place.
    `norm="none"`: no norm. `activation`: in the ReLU's place, "sigmoid", "leaky_relu"
    (slope 0.01 below 0, PyTorch's LeakyReLU) or "prelu" (a learned slope below 0, one
    per block, from 0.25: PyTorch's PReLU()). `repeats` > 1: the block applied that
    many times with the same conv, each time with its own norm (bn1, bn2, ... or ln1,
    ln2, ...), PReLU slope and dropout. `kernel_size=1`: a 1x1 conv in the 3x3's place
    (a plain block only: the head's hidden layer). `bn_scale=False`: BatchNorm learns
    its offset only, its scale held at 1. `strides=2`: the conv moves 2 pixels a step (a
    plain block only)."""

    features: int
    padding: str | int
    dropout_rate: float
    fast: bool = True
    bias: bool = False
    bn_before_relu: bool = False
    separable: bool = False
    repeats: int = 1
    norm: str = "batch"
    activation: str = "relu"
    factorised: bool = False
    kernel_size: int = 3
    bn_scale: bool = True
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        channels = x.shape[-1]
        if self.separable:
            if self.fast:
                depthwise = kernels.DepthwiseConv3x3(
                    self.padding, use_bias=self.bias, kernel_init=torch_conv_init,
                    bias_init=torch_conv_bias_init(9), name="depthwise")
            else:
                depthwise = nn.Conv(
                    channels, (3, 3), padding=self.padding, feature_group_count=channels,
                    use_bias=self.bias, kernel_init=torch_conv_init,
                    bias_init=torch_conv_bias_init(9), name="depthwise")
            pointwise = nn.Conv(
                self.features, (1, 1), use_bias=self.bias, kernel_init=torch_conv_init,
                bias_init=torch_conv_bias_init(channels), name="pointwise")
            conv = lambda x: pointwise(depthwise(x))  # noqa: E731
        elif self.factorised:
            # padding 1 pads only the dimension each conv's kernel spans
            p = 0 if self.padding == "VALID" else self.padding
            vertical = nn.Conv(
                self.features, (3, 1), padding=((p, p), (0, 0)),
                use_bias=self.bias, kernel_init=torch_conv_init,
                bias_init=torch_conv_bias_init(3 * channels), name="conv3x1")
            horizontal = nn.Conv(
                self.features, (1, 3), padding=((0, 0), (p, p)),
                use_bias=self.bias, kernel_init=torch_conv_init,
                bias_init=torch_conv_bias_init(3 * self.features), name="conv1x3")
            conv = lambda x: horizontal(vertical(x))  # noqa: E731
        else:
            size = self.kernel_size
            conv = nn.Conv(
                self.features, (size, size), self.strides, padding=self.padding,
                use_bias=self.bias, kernel_init=torch_conv_init,
                bias_init=torch_conv_bias_init(size * size * channels), name="conv")
        for k in range(1, self.repeats + 1):
            suffix = "" if self.repeats == 1 else str(k)
            act = _activation(self.activation, f"prelu{suffix}")
            x = conv(x)
            if self.norm == "none":
                norm = lambda x: x  # noqa: E731
            elif self.norm == "layer":
                # One group of all the channels, no scale or offset: PyTorch's
                # GroupNorm(1, C, affine=False), eps 1e-5.
                norm = nn.GroupNorm(num_groups=1, epsilon=1e-5, use_bias=False,
                                    use_scale=False, name=f"ln{suffix}")
            else:
                # PyTorch's BatchNorm2d defaults: running stats move 10 % per step, eps 1e-5.
                norm = (kernels.BatchNorm if self.fast else nn.BatchNorm)(
                    use_running_average=not train, momentum=0.9, epsilon=1e-5,
                    use_scale=self.bn_scale, name=f"bn{suffix}")
            x = act(norm(x)) if self.bn_before_relu else norm(act(x))
            x = _dropout(x, self.dropout_rate, self.fast, train, f"dropout{suffix}")
        return x


def _activation(kind: str, prelu_name: str):
    """The activation `kind` as a function; a PReLU's slope is a module named `prelu_name`
    (created when called, inside the calling module)."""
    return {"relu": nn.relu, "sigmoid": nn.sigmoid,
            "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=0.01),
            "prelu": lambda x: nn.PReLU(negative_slope_init=0.25, name=prelu_name)(x)}[kind]


class Whitening(nn.Module):
    """A `wN` layer, airbench's first layer (Jordan 2024): conv 3x3 ->N with padding 1,
    whose kernel the optimizer never moves (its gradient is stopped here; it is set
    from the training images by `whitening_kernel`), a learned bias from 0, then the
    activation; no norm and no dropout."""

    features: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", torch_conv_init, (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = jax.lax.conv_general_dilated(
            x, jax.lax.stop_gradient(kernel), (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return _activation(self.activation, "prelu")(x + bias)


def whitening_kernel(images: jax.Array, features: int, eps: float = 5e-4) -> jax.Array:
    """A `wN` layer's frozen kernel (HWIO, (3, 3, 1, N)) from `images` (M, H, W, 1),
    standardised as the net sees them, as airbench computes its own:

        X       the M·(H-2)·(W-2) 3x3 patches, each a row of 9 values
        C       = XᵀX / rows, their (uncentred) covariance
        λ, v    C's eigenvalues, largest first, and its eigenvectors
        kernel  v_i / sqrt(λ_i + eps) for i < N/2, then the same negated

    so a patch's projection on the first N/2 kernels has variance λ_i / (λ_i + eps),
    about 1, and none correlated with another; after a ReLU, the negated half keeps
    what falls below 0."""
    patches = jax.lax.conv_general_dilated_patches(
        jnp.asarray(images, jnp.float32), (3, 3), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC")).reshape(-1, WHITENING_PATCH)
    eigenvalues, eigenvectors = jnp.linalg.eigh(patches.T @ patches / patches.shape[0])
    top = features // 2  # eigh's are smallest first
    scaled = eigenvectors[:, ::-1][:, :top] / jnp.sqrt(eigenvalues[::-1][:top] + eps)
    return jnp.concatenate([scaled, -scaled], axis=1).reshape(3, 3, 1, features)


def whitening_layer(arch: str) -> tuple[str, int] | None:
    """(name, channels) of `arch`'s whitening layer (`wN`), or None where it has none."""
    first = parse_arch(arch)[0]
    return (first.name, first.features) if first.kind == "whitening" else None


def _dropout(x: jax.Array, rate: float, fast: bool, train: bool, name="dropout") -> jax.Array:
    if rate == 0.0:
        return x
    dropout = kernels.HashDropout if fast else nn.Dropout
    return dropout(rate, name=name)(x, deterministic=not train)


def torch_conv_bias_init(fan_in: int):
    """PyTorch's default Conv2d bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Net(nn.Module):
    """Fully convolutional MNIST classifier: (N, 28, 28, 1) images -> (N, 10) logits.

    `arch` is the layer string (module docstring; default: the seed net); `bias`,
    `dropout_at`, `bn_before_relu`, `norm`, `bn_scale`, `activation`, `head` and
    `head_hidden` are the switches described there.
    `fast=True` uses the layers of `jaxmnist.kernels` (same maths, faster on CPU);
    `fast=False` uses plain `nn.BatchNorm`, `nn.max_pool`, `nn.Dropout` and a grouped
    `nn.Conv` for the depthwise convs. Both have the same variables; they give the same
    outputs in eval mode, and in training mode with dropout off.
    """

    dropout_rate: float = 0.069
    fast: bool = True
    arch: str = SEED_ARCH
    bias: bool = False
    dropout_at: str = "blocks"
    bn_before_relu: bool = False
    norm: str = "batch"
    activation: str = "relu"
    head: str = "gap"
    head_hidden: int = 0
    bn_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for name, choices in (("dropout_at", DROPOUT_AT), ("norm", NORMS),
                              ("activation", ACTIVATIONS), ("head", HEADS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got "
                                 f"{getattr(self, name)!r}")
        if self.head_hidden and self.head != "gap":
            raise ValueError(f"head_hidden needs head 'gap', got {self.head!r}")
        if not self.bn_scale and self.norm != "batch":
            raise ValueError(f"bn_scale=False needs norm 'batch', got {self.norm!r}")
        block_rate = self.dropout_rate if self.dropout_at == "blocks" else 0.0
        pools = 0
        for index, (kind, name, features, repeats) in enumerate(parse_arch(self.arch), 1):
            if kind == "whitening":
                x = Whitening(features, self.activation, name=name)(x)
            elif kind in BLOCK_KINDS:
                padding = "VALID" if kind.endswith("valid") else 1
                x = ConvBlock(features, padding, block_rate, self.fast, self.bias,
                              self.bn_before_relu, kind.startswith("separable"), repeats,
                              self.norm, self.activation, kind.startswith("factorised"),
                              bn_scale=self.bn_scale, strides=2 if kind == "strided_conv" else 1,
                              name=name)(x, train)
            elif kind == "pool":
                if self.fast and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
                    x = kernels.max_pool_2x2(x)
                else:  # odd sizes: nn.max_pool drops the last row/column, as PyTorch does
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
                if self.dropout_at == "pools":
                    pools += 1
                    x = _dropout(x, self.dropout_rate, self.fast, train, f"pool{pools}_dropout")
            elif kind == "space_to_depth":
                x = space_to_depth(x)
            else:
                x = self._conv1x1(x, features, name)
            if not self.is_initializing():  # kept only where asked for (`layer_outputs`)
                self.sow("layers", f"layer{index}", x)
        if self.head == "dense":  # flatten (H, W, C order) and a dense layer
            x = x.reshape(x.shape[0], -1)
            return nn.Dense(10, use_bias=self.bias, kernel_init=torch_conv_init,
                            bias_init=torch_conv_bias_init(x.shape[-1]), name="head")(x)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)  # global average pool
        if self.head == "none":  # the last layer's 10 channels are the logits
            if reason := no_head_refusal(self.arch):
                raise ArchError(f"head {reason}")
        else:
            if self.head_hidden:  # conv 1x1 ->H, the blocks' activation, norm, dropout
                x = ConvBlock(self.head_hidden, "VALID", block_rate, self.fast, self.bias,
                              self.bn_before_relu, norm=self.norm,
                              activation=self.activation, kernel_size=1,
                              bn_scale=self.bn_scale, name="head_hidden")(x, train)
            x = self._conv1x1(x, 10, "head")
        return x.reshape(x.shape[0], 10)

    def _conv1x1(self, x: jax.Array, features: int, name: str) -> jax.Array:
        return nn.Conv(features, (1, 1), use_bias=self.bias, kernel_init=torch_conv_init,
                       bias_init=torch_conv_bias_init(x.shape[-1]), name=name)(x)


def count_params(params) -> int:
    """The number of values in `params` (arrays, or their shapes from `jax.eval_shape`)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def layer_outputs(model: Net, variables, images: jax.Array
                  ) -> tuple[jax.Array, list[jax.Array]]:
    """(logits, each layer's output) for `images` (N, H, W, 1), eval mode: one array per
    layer of `model.arch` (the rows of `layer_table` but the head), each (N, H', W', C')."""
    logits, state = model.apply(variables, images, train=False, mutable=["layers"])
    layers = state["layers"]
    return logits, [layers[f"layer{k}"][-1] for k in range(1, len(layers) + 1)]


class Row(NamedTuple):
    """One row of `layer_table`: a layer, what it outputs and what one of its units sees."""

    name: str  # block1, ..., pool, transition, space_to_depth, head
    token: str  # the arch token it comes from ("gap" or "dense" for the head)
    output: tuple[int, ...]  # (H, W, C) for one image; (10,) for the head
    params: int  # PyTorch's count (weights, biases, BatchNorm scale and offset; frozen too)
    field: int  # receptive field: one output unit sees field x field input pixels
    jump: int  # input pixels between neighbouring output units (the head: 0, one unit)
    madds: int  # multiply-adds per image (convs and the head; pools, norms, ReLUs: none)
    sees: tuple[int, int]  # the first and last input row (= column) its units see together
    start: float  # the input row (= column) at the centre of the first unit's window
    # the values it holds for one image: each application of a shared block counted
    activations: int = 0

    def window(self, unit: int) -> tuple[int, int]:
        """The first and last input row (= column) that unit `unit` (a row or column
        index of the output) sees; they may lie outside the image (its padding)."""
        first = int(self.start + unit * self.jump - (self.field - 1) / 2)
        return first, first + self.field - 1


def layer_table(model: Net, variables=None, size: int = 28) -> list[Row]:
    """A row for every layer of `model.arch`, pools and space-to-depth included, then
    the head, for `size` x `size` images. `variables` (default: the model's shapes, by
    `jax.eval_shape`: nothing is computed) give the params.

    The receptive field is the arithmetic of strides, read from `parse_arch`'s layers.
    A unit of a layer sees `field` input pixels a side, and units one apart see windows
    `jump` pixels apart. A k x k conv adds (k - 1) of the jumps of its input, once per
    application; a 2x2 pool or space-to-depth adds one jump and doubles it; a strided
    3x3 conv adds 2 jumps, then doubles the jump; a 1x1 conv changes neither. `start`
    is the input row at the centre of the first unit's window (a valid conv moves it
    one jump in, a pool half a jump). The head's average pool
    sees every unit of the last layer, so its field runs from the first unit's window
    to the last's; `sees` says which input rows a layer's units cover together, the
    whole image when (0, size - 1)."""
    if variables is None:
        variables = jax.eval_shape(functools.partial(model.init, train=False),
                                   jax.random.key(0),
                                   jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32))
    params = variables["params"]
    tokens = model.arch.split()
    image = size
    field, jump, start, channels = 1, 1, 0.0, 1
    rows = []

    def seen(width):  # the input rows from the first unit's window to the last one's
        first = start - (field - 1) / 2
        return (max(0, int(first)), min(image - 1, int(first + (width - 1) * jump + field - 1)))

    for token, (kind, name, features, repeats) in zip(tokens, parse_arch(model.arch, size)):
        if kind in BLOCK_KINDS:
            valid = kind.endswith("valid")
            per_pixel = (9 * channels + channels * features if kind.startswith("separable")
                         else 9 * channels * features)
            madds = activations = 0
            for _ in range(repeats):
                start += jump if valid else 0  # a valid conv's first unit is one in
                field += 2 * jump  # a 3x3 conv (or 3x1 then 1x3): (3 - 1) jumps more
                if kind == "strided_conv":  # then its units are two input units apart
                    jump *= 2
                    size = strided_size(size)
                    madds += size * size * per_pixel
                elif kind.startswith("factorised"):  # the 3x1 conv's rows, then the 1x3's
                    madds += (size - (2 if valid else 0)) * size * 3 * channels * features
                    size -= 2 if valid else 0
                    madds += size * size * 3 * features * features
                else:
                    size -= 2 if valid else 0
                    madds += size * size * per_pixel
                activations += size * size * features
        elif kind in ("pool", "space_to_depth"):
            start += jump / 2  # the centre of a 2x2 window, half a jump in
            field += jump
            jump *= 2
            size //= 2
            features = channels * (4 if kind == "space_to_depth" else 1)
            madds, activations = 0, size * size * features
        else:  # a transition: a 1x1 conv
            madds, activations = size * size * channels * features, size * size * features
        rows.append(Row(name, token, (size, size, features), count_params(params.get(name, {})),
                        field, jump, madds, seen(size), start, activations))
        channels = features
    # The head: the average pool (or the dense layer) sees every unit of the last layer.
    # With a hidden layer (`head_hidden`) the head row holds it too.
    head_in = {"gap": channels, "dense": size * size * channels, "none": 0}[model.head]
    hidden = model.head_hidden
    madds = head_in * hidden + hidden * 10 if hidden else head_in * 10
    head_params = count_params(params.get("head", {})) + count_params(params.get("head_hidden", {}))
    rows.append(Row("head", model.head, (10,), head_params,
                    field + (size - 1) * jump, 0, madds, seen(size),
                    start + (size - 1) * jump / 2, 10))
    return rows


def totals(rows: list[Row]) -> tuple[int, int]:
    """(params, multiply-adds per image) of a `layer_table`."""
    return sum(r.params for r in rows), sum(r.madds for r in rows)
