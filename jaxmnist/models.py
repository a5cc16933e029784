"""The 12,088-parameter fully convolutional MNIST net, as a Flax module.

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

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmnist import kernels
from jaxmnist.kernels import torch_conv_init

NUM_PARAMS = 12_088


class ConvBlock(nn.Module):
    """conv 3x3 (no bias) -> ReLU -> BatchNorm -> Dropout."""

    features: int
    padding: str | int
    dropout_rate: float
    fast: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(
            self.features, (3, 3), padding=self.padding, use_bias=False,
            kernel_init=torch_conv_init, name="conv",
        )(x)
        x = nn.relu(x)
        # PyTorch's BatchNorm2d defaults: running stats move 10 % per step, eps 1e-5.
        batch_norm = kernels.BatchNorm if self.fast else nn.BatchNorm
        x = batch_norm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
        dropout = kernels.HashDropout if self.fast else nn.Dropout
        return dropout(self.dropout_rate, name="dropout")(x, deterministic=not train)


class Net(nn.Module):
    """Fully convolutional MNIST classifier: (N, 28, 28, 1) images -> (N, 10) logits.

    `fast=True` uses the layers of `jaxmnist.kernels` (same maths, faster on CPU);
    `fast=False` uses plain `nn.BatchNorm`, `nn.max_pool` and `nn.Dropout`. Both have
    the same variables; they give the same outputs in eval mode, and in training mode
    with dropout off.
    """

    dropout_rate: float = 0.069
    fast: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def block(x, features, padding, name):
            return ConvBlock(features, padding, self.dropout_rate, self.fast, name=name)(x, train)

        x = block(x, 8, 1, "block1")
        x = block(x, 16, 1, "block2")
        x = block(x, 16, 1, "block3")
        x = kernels.max_pool_2x2(x) if self.fast else nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(8, (1, 1), use_bias=False, kernel_init=torch_conv_init, name="transition")(x)
        for i in range(4, 8):
            x = block(x, 16, "VALID", f"block{i}")
        x = jnp.mean(x, axis=(1, 2), keepdims=True)  # global average pool over 6x6
        x = nn.Conv(10, (1, 1), use_bias=False, kernel_init=torch_conv_init, name="head")(x)
        return x.reshape(x.shape[0], 10)


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def summary(model: Net, variables) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer name, output shape, trainable params) for each top-level layer."""
    x = jnp.zeros((1, 28, 28, 1), jnp.float32)
    _, state = model.apply(
        variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
    )
    inter = state["intermediates"]
    rows = []
    for name in [f"block{i}" for i in (1, 2, 3)] + ["transition"] + [
        f"block{i}" for i in range(4, 8)
    ] + ["head"]:
        out = inter[name]["__call__"][0]
        shape = tuple(out.shape[1:])
        if name == "head":
            shape = (10,)
        rows.append((name, shape, count_params(variables["params"][name])))
    return rows
