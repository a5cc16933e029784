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

and alternatives that were tried and not kept:
  BN affine, custom VJP      BatchNorm's x * a + b with a hand-written backward whose
                             two per-channel sums go through `channel_sum` too
  BN affine, VJP + barrier   the same with an optimization barrier on the incoming
                             gradient, so that XLA computes it once, not in each sum
  BN in a 2-D view           BatchNorm's x * a + b on the (M/k, k*C) view that
                             `channel_sum` uses, so that autodiff's sums are row sums
  dropout mask stored        the dropout keep-mask materialised once (an
                             optimization barrier) instead of recomputed in the
                             backward pass
  strided-slice pool         the pool as the maximum of four strided slices
  first conv 9 MACs + XLA    nine multiply-adds forward, XLA's convolution weight
                             gradient backward (a custom VJP)

and three XLA:CPU options on top of jaxmnist's (how the compiled step's ops share the
cores):
  no concurrency scheduler   xla_cpu_enable_concurrency_optimized_scheduler off
  Eigen single-threaded      xla_cpu_multi_thread_eigen off (each op on one thread)
  oneDNN                     xla_cpu_use_onednn on

`--recipe` and `--arch` time another net's step instead of the seed recipe's;
`--variant NAME` (repeatable) times only those variants beside jaxmnist; `--out`
writes the result elsewhere.

Prints a table and writes experiments/results/studies/step_variants.json (or `--out`).
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import random
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from profile_step import run_info  # this folder is on sys.path when run as a script
from weight_grad_study import conv, nine_macs

from jaxmnist import configs, kernels, parallel, steps
from jaxmnist.bench import synthetic_batch

HERE = Path(__file__).resolve().parent


class NineMacConv(nn.Module):
    """nn.Conv (3x3, no bias) whose 1-channel case is nine broadcast multiply-adds."""

    features: int
    kernel_size: tuple
    padding: str | int = "SAME"
    use_bias: bool = False
    kernel_init: object = kernels.torch_conv_init
    conv_weight_grad: bool = False  # the 1-channel case's backward is XLA's convolution's

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, cin, self.features))
        if cin != 1 or self.padding != 1:
            pad = [(self.padding, self.padding)] * 2 if isinstance(self.padding, int) else \
                self.padding
            return jax.lax.conv_general_dilated(
                x, kernel, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (nine_macs_conv_grad if self.conv_weight_grad else nine_macs)(x, kernel)


@jax.custom_vjp
def nine_macs_conv_grad(x, kernel):
    return nine_macs(x, kernel)


nine_macs_conv_grad.defvjp(lambda x, k: (nine_macs(x, k), (x, k)),
                           lambda res, g: jax.vjp(conv, *res)[1](g))


@jax.custom_vjp
def affine_channel_sum_vjp(x, a, b):
    return x * a + b


affine_channel_sum_vjp.defvjp(
    lambda x, a, b: (x * a + b, (x, a)),
    lambda res, g: (g * res[1], kernels.channel_sum(g * res[0]), kernels.channel_sum(g)))


@jax.custom_vjp
def affine_channel_sum_vjp_barrier(x, a, b):
    return x * a + b


def _affine_barrier_bwd(res, g):
    # The barrier makes XLA compute g once, where it would otherwise recompute g's
    # producers (dropout hash, pool routing) inside each of the two sums.
    x, a = res
    g, x = jax.lax.optimization_barrier((g, x))
    return g * a, kernels.channel_sum(g * x), kernels.channel_sum(g)


affine_channel_sum_vjp_barrier.defvjp(lambda x, a, b: (x * a + b, (x, a)), _affine_barrier_bwd)


def affine_2d(x, a, b):
    c = x.shape[-1]
    k = kernels.channel_groups(x.size // c)
    x2 = x.reshape(-1, k * c)
    return (x2 * jnp.tile(a, k) + jnp.tile(b, k)).reshape(x.shape)


def batch_norm_with(affine):
    """kernels.BatchNorm with its final x * a + b computed by `affine`."""

    class AffineBatchNorm(kernels.BatchNorm):
        def scale_and_shift(self, x, mul, add):
            return affine(x, mul, add)

    return AffineBatchNorm


def stored_mask_dropout(key, rate, x):
    threshold = round(rate * 2.0**32)
    keep = jax.lax.optimization_barrier(kernels.hash_bits(key, x.shape) >= threshold)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def strided_slice_pool(x):
    return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                       jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


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


# name -> (fast kernels, compiler options, context that changes one layer while tracing);
# options False: jaxmnist's, True: XLA's defaults, a dict: jaxmnist's with these on top.
VARIANTS = {
    "jaxmnist": (True, False, contextlib.nullcontext),
    "YNNPACK convolutions": (True, True, contextlib.nullcontext),
    "nn.BatchNorm": (True, False, lambda: patched(kernels, "BatchNorm", nn.BatchNorm)),
    "nn.Dropout": (True, False, lambda: patched(kernels, "HashDropout", nn.Dropout)),
    "nn.max_pool": (True, False, lambda: patched(
        kernels, "max_pool_2x2", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))),
    "jnp.max pool": (True, False, lambda: patched(
        kernels, "max_pool_2x2", kernels._max_pool_2x2)),
    "first conv as 9 MACs": (True, False, lambda: swap_conv(NineMacConv)),
    "plain Flax": (False, False, contextlib.nullcontext),
    "plain Flax, YNNPACK": (False, True, contextlib.nullcontext),
    "BN affine, custom VJP": (True, False, lambda: patched(
        kernels, "BatchNorm", batch_norm_with(affine_channel_sum_vjp))),
    "BN affine, VJP + barrier": (True, False, lambda: patched(
        kernels, "BatchNorm", batch_norm_with(affine_channel_sum_vjp_barrier))),
    "BN in a 2-D view": (True, False, lambda: patched(
        kernels, "BatchNorm", batch_norm_with(affine_2d))),
    "dropout mask stored": (True, False, lambda: patched(
        kernels, "hash_dropout", stored_mask_dropout)),
    "strided-slice pool": (True, False, lambda: patched(
        kernels, "max_pool_2x2", strided_slice_pool)),
    "first conv 9 MACs + XLA": (True, False, lambda: swap_conv(
        functools.partial(NineMacConv, conv_weight_grad=True))),
    "no concurrency scheduler": (True, {"xla_cpu_enable_concurrency_optimized_scheduler": False},
                                 contextlib.nullcontext),
    "Eigen single-threaded": (True, {"xla_cpu_multi_thread_eigen": False},
                              contextlib.nullcontext),
    "oneDNN": (True, {"xla_cpu_use_onednn": True}, contextlib.nullcontext),
}


def compiled_step(fast: bool, options: bool | dict, context, batch_size: int,
                  recipe: str = "seed", arch: str | None = None):
    config = dataclasses.replace(configs.RECIPES[recipe](), fast_kernels=fast,
                                 batch_size=batch_size)
    if arch is not None:
        config = dataclasses.replace(config, arch=arch)
    if isinstance(options, dict):
        options = {**(kernels.compiler_options() or {}), **options}
    else:
        options = {} if options else None
    trainer = parallel.Trainer(config, compiler_options=options)
    state = trainer.put(steps.create_train_state(config, jax.random.key(0), 469))
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
    p.add_argument("--recipe", choices=sorted(configs.RECIPES), default="seed")
    p.add_argument("--arch", help="another net, in the arch language (default: the recipe's)")
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="a variant to time besides jaxmnist, repeatable (default: all)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "studies" / "step_variants.json")
    args = p.parse_args()
    chosen = list(VARIANTS)
    if args.variant:
        chosen = ["jaxmnist", *args.variant]
        unknown = [v for v in chosen if v not in VARIANTS]
        if unknown:
            p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    runs = {}
    for name in chosen:
        fast, options, context = VARIANTS[name]
        runs[name] = list(compiled_step(fast, options, context, args.batch_size,
                                        args.recipe, args.arch))
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
              "batch_size": args.batch_size, "recipe": args.recipe, "arch": args.arch,
              **run_info()}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
