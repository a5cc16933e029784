"""Which of jaxmnist's speed changes pay off: the whole train step, one change undone at a time.

    python experiments/step_variants.py [--rounds 20] [--steps 5]

Compiles the seed recipe's train step (batch 128, dropout on, SGD momentum) once per
variant, all in this one process, then times them round by round in a shuffled order:
`--steps` steps per variant per round. Each round's time of a variant is divided by the
same round's time of `jaxmnist` (the project as it is), and the median of those paired
ratios is reported, as the machine's speed drifts from minute to minute.

Variants, each jaxmnist with one thing changed:
  YNNPACK convolutions       XLA:CPU's default compiler options
  nn.BatchNorm               Flax's BatchNorm (its sums over (N, H, W) as they are)
  nn.Dropout                 Flax's dropout (one threefry draw per element)
  nn.max_pool                Flax's max-pool (reduce-window and its scatter backward)
  jnp.max pool               the reshape-and-max pool with JAX's own backward
                             (gradient split between tied maxima)
  first conv as 9 MACs       block1's 1-channel conv as nine broadcast multiply-adds
  plain Flax                 all of jaxmnist.kernels undone (Net(fast=False))
  plain Flax, YNNPACK        the same with XLA's defaults: a plain Flax step

Prints a table and writes experiments/results/step_variants.json.
"""

import argparse
import contextlib
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from profile_step import run_info  # this folder is on sys.path when run as a script

from jaxmnist import configs, kernels, train
from jaxmnist.bench import synthetic_batch

HERE = Path(__file__).resolve().parent


class NineMacConv(nn.Module):
    """nn.Conv (3x3, no bias) whose 1-channel case is nine broadcast multiply-adds."""

    features: int
    kernel_size: tuple
    padding: str | int = "SAME"
    use_bias: bool = False
    kernel_init: object = kernels.torch_conv_init

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, cin, self.features))
        if cin != 1 or self.padding != 1:
            pad = [(self.padding, self.padding)] * 2 if isinstance(self.padding, int) else \
                self.padding
            return jax.lax.conv_general_dilated(
                x, kernel, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        _, h, w, _ = x.shape
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = 0
        for dy in range(3):
            for dx in range(3):
                out = out + padded[:, dy:dy + h, dx:dx + w, :] * kernel[dy, dx, 0]
        return out


def jnp_max_pool(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def swap_conv(conv_class):
    """models.py calls `nn.Conv`; let it see `conv_class` instead while tracing."""
    from jaxmnist import models

    namespace = type("nn", (), {**{k: getattr(nn, k) for k in dir(nn) if not k.startswith("__")},
                                "Conv": conv_class})
    with patched(models, "nn", namespace):
        yield


# name -> (fast kernels, XLA defaults, context that changes one layer while tracing)
VARIANTS = {
    "jaxmnist": (True, False, contextlib.nullcontext),
    "YNNPACK convolutions": (True, True, contextlib.nullcontext),
    "nn.BatchNorm": (True, False, lambda: patched(kernels, "BatchNorm", nn.BatchNorm)),
    "nn.Dropout": (True, False, lambda: patched(kernels, "HashDropout", nn.Dropout)),
    "nn.max_pool": (True, False, lambda: patched(
        kernels, "max_pool_2x2", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))),
    "jnp.max pool": (True, False, lambda: patched(kernels, "max_pool_2x2", jnp_max_pool)),
    "first conv as 9 MACs": (True, False, lambda: swap_conv(NineMacConv)),
    "plain Flax": (False, False, contextlib.nullcontext),
    "plain Flax, YNNPACK": (False, True, contextlib.nullcontext),
}


def compiled_step(fast: bool, xla_defaults: bool, context, batch_size: int):
    config = dataclasses.replace(configs.seed(), fast_kernels=fast, batch_size=batch_size)
    trainer = train.Trainer(config, compiler_options={} if xla_defaults else None)
    state = trainer.put(train.create_train_state(config, jax.random.key(0), 469))
    batch = jax.device_put(synthetic_batch(batch_size), trainer.sharded)
    rng = jax.random.key(1)
    with context():
        step = trainer.train_step.lower(state, batch, rng).compile()
    for _ in range(2):
        state, _ = step(state, batch, rng)
    jax.block_until_ready(state)
    return step, state, batch, rng


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    runs = {}
    for name, (fast, xla_defaults, context) in VARIANTS.items():
        runs[name] = list(compiled_step(fast, xla_defaults, context, args.batch_size))
    ms = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            step, state, batch, key = runs[name]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state, _ = step(state, batch, key)
            jax.block_until_ready(state)
            ms[name].append(1000 * (time.perf_counter() - t0) / args.steps)
            runs[name][1] = state
    base = ms["jaxmnist"]
    rows = {}
    for name, times in ms.items():
        rows[name] = {
            "speed_vs_jaxmnist": round(statistics.median(b / t for b, t in zip(base, times)), 3),
            "step_ms_median": round(statistics.median(times), 2),
            "step_ms_min": round(min(times), 2),
        }
    print(f"{'variant':<24} {'speed vs jaxmnist':>18} {'ms/step median':>15} {'min':>7}")
    for name, r in rows.items():
        print(f"{name:<24} {r['speed_vs_jaxmnist']:>17.2f}x {r['step_ms_median']:>15.1f} "
              f"{r['step_ms_min']:>7.1f}")
    result = {"variants": rows, "rounds": args.rounds, "steps": args.steps,
              "batch_size": args.batch_size, **run_info()}
    (HERE / "results" / "step_variants.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
