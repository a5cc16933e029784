"""The 28x28 convolutions on XLA:CPU: YNNPACK against Eigen, and weight-gradient rewrites.

    python experiments/weight_grad_study.py [--rounds 5] [--steps 20]

For the net's three 28x28 3x3 convolutions (1->8, 8->16 and 16->16, pad 1, batch 128),
times the forward, the input gradient and the weight gradient as XLA computes them (the
VJP of `lax.conv_general_dilated`), compiled with XLA:CPU's defaults (convolutions go
to YNNPACK) and with jaxmnist's `kernels.compiler_options` (YNNPACK off: XLA's Eigen
convolution); then, with jaxmnist's options, rewrites each checked against XLA's
result to 1e-5 relative:

  shifted dots   dW[dy, dx] = X_shift^T G as nine dots over the flattened padded grid,
                 where each tap is a contiguous row offset (no strided copies)
  patches        the nine shifted inputs side by side (N*H*W, 9*Cin), one dot with G
  nine MACs      (1->8 only) the forward as nine broadcast multiply-adds over the
                 padded image, and its weight gradient by autodiff

Round-robin, median over rounds. Prints a table; writes
experiments/results/studies/weight_grad_study.json.
"""

import argparse
import functools
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax
from profile_step import run_info, time_ms  # this folder is on sys.path when run as a script

from jaxmnist import kernels

HERE = Path(__file__).resolve().parent
DIMS = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DIMS)


def padded_rows(x, g):
    """x padded by 1 and g placed at the top left of the same (H+2, W+2) grid, both
    flattened to rows; tap (dy, dx) is then the row offset dy*(W+2) + dx."""
    n, h, w, c = x.shape
    rows = n * (h + 2) * (w + 2)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(rows, c)
    xp = jnp.pad(xp, ((0, 2 * (w + 2) + 2), (0, 0)))
    gp = jnp.pad(g, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(rows, g.shape[-1])
    offsets = [dy * (w + 2) + dx for dy in range(3) for dx in range(3)]
    return xp, gp, rows, offsets


def dw_shifted_dots(x, g):
    xp, gp, rows, offsets = padded_rows(x, g)
    taps = [lax.dot_general(xp[o:o + rows], gp, (((0,), (0,)), ((), ()))) for o in offsets]
    return jnp.stack(taps).reshape(3, 3, x.shape[-1], g.shape[-1])


def dw_patches(x, g):
    xp, gp, rows, offsets = padded_rows(x, g)
    patches = jnp.concatenate([xp[o:o + rows] for o in offsets], axis=1)
    return (patches.T @ gp).reshape(3, 3, x.shape[-1], g.shape[-1])


def nine_macs(x, w):
    """A 1-channel 3x3 conv (pad 1) as nine broadcast multiply-adds."""
    _, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(xp[:, dy:dy + h, dx:dx + wd, :] * w[dy, dx, 0]
               for dy in range(3) for dx in range(3))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    options = {"YNNPACK": None, "Eigen": kernels.compiler_options(jax.devices("cpu"))}
    layers = {"1->8": (1, 8), "8->16": (8, 16), "16->16": (16, 16)}
    cases = {}
    for layer, (cin, cout) in layers.items():
        kx, kw, kg = jax.random.split(jax.random.key(cin), 3)
        x = jax.random.normal(kx, (128, 28, 28, cin))
        w = 0.1 * jax.random.normal(kw, (3, 3, cin, cout))
        g = jax.random.normal(kg, (128, 28, 28, cout))
        ops = {
            "forward": lambda x, w, g: conv(x, w),
            "input gradient": lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
            "weight gradient": lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
        }
        fns = {f"{op} (XLA, {o})": jax.jit(fn, compiler_options=opt)
               for o, opt in options.items() for op, fn in ops.items()}
        jit = functools.partial(jax.jit, compiler_options=options["Eigen"])
        fns["weight gradient, shifted dots"] = jit(lambda x, w, g: dw_shifted_dots(x, g))
        fns["weight gradient, patches"] = jit(lambda x, w, g: dw_patches(x, g))
        if cin == 1:
            fns["forward, nine MACs"] = jit(lambda x, w, g: nine_macs(x, w))
            fns["weight gradient, nine MACs"] = jit(
                lambda x, w, g: jax.vjp(lambda w: nine_macs(x, w), w)[1](g)[0])
        refs = {op: fns[f"{op} (XLA, Eigen)"](x, w, g) for op in ops}
        for name, fn in fns.items():
            ref = refs[name.split(" (")[0].split(",")[0]]
            err = float(jnp.abs(fn(x, w, g) - ref).max() / jnp.abs(ref).max())
            assert err < 1e-5, (layer, name, err)
            cases[layer, name] = (fn, (x, w, g))
    samples = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, (fn, fargs) in cases.items():
            samples[k].append(time_ms(fn, fargs, args.steps))
    median = {k: statistics.median(s) for k, s in samples.items()}
    print(f"{'28x28 conv, batch 128 (ms, median)':<38}" + "".join(f"{lay:>9}" for lay in layers))
    for name in dict.fromkeys(n for _, n in cases):
        cells = [f"{median[lay, name]:>9.2f}" if (lay, name) in median else f"{'':>9}"
                 for lay in layers]
        print(f"{name:<38}" + "".join(cells))
    result = {
        "ms_median": {lay: {n: round(median[lay, n], 3) for (lay2, n) in cases if lay2 == lay}
                      for lay in layers},
        "ms_min": {f"{k[0]} {k[1]}": round(min(s), 3) for k, s in samples.items()},
        "rounds": args.rounds, "steps": args.steps, **run_info(),
    }
    out = HERE / "results" / "studies" / "weight_grad_study.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
