"""The 28x28 convolutions' backward on XLA:CPU, and rewrites of their weight gradient.

    python experiments/weight_grad_study.py [--rounds 5] [--steps 20]

For the net's two 28x28 3x3 convolutions (8->16 and 16->16, pad 1, batch 128), times
the forward, the input gradient and the weight gradient as XLA computes them (the
VJP of `lax.conv_general_dilated`), and two rewrites of the weight gradient, each
checked against XLA's to 1e-5 relative:

  shifted dots   dW[dy, dx] = X_shift^T G as nine dots over the flattened padded grid,
                 where each tap is a contiguous row offset (no strided copies)
  patches        the nine shifted inputs side by side (N*H*W, 9*Cin), one dot with G

Round-robin, median over rounds. Prints a table; writes
experiments/results/weight_grad_study.json.
"""

import argparse
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax
from profile_step import run_info, time_ms  # this folder is on sys.path when run as a script

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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    cases = {}
    for cin in (8, 16):
        kx, kw, kg = jax.random.split(jax.random.key(cin), 3)
        x = jax.random.normal(kx, (128, 28, 28, cin))
        w = 0.1 * jax.random.normal(kw, (3, 3, cin, 16))
        g = jax.random.normal(kg, (128, 28, 28, 16))
        xla_dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
        fns = {
            "forward (XLA)": jax.jit(lambda x, w, g: conv(x, w)),
            "input gradient (XLA)": jax.jit(
                lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
            "weight gradient (XLA)": xla_dw,
            "weight gradient, shifted dots": jax.jit(lambda x, w, g: dw_shifted_dots(x, g)),
            "weight gradient, patches": jax.jit(lambda x, w, g: dw_patches(x, g)),
        }
        ref = xla_dw(x, w, g)
        for name, fn in fns.items():
            if name.startswith("weight gradient,"):
                err = float(jnp.abs(fn(x, w, g) - ref).max() / jnp.abs(ref).max())
                assert err < 1e-5, (name, err)
        for name, fn in fns.items():
            cases[f"{cin}->16", name] = (fn, (x, w, g))
    samples = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, (fn, fargs) in cases.items():
            samples[k].append(time_ms(fn, fargs, args.steps))
    median = {k: statistics.median(s) for k, s in samples.items()}
    print(f"{'28x28 conv, batch 128 (ms)':<34} {'8->16':>8} {'16->16':>8}")
    for name in dict.fromkeys(n for _, n in cases):
        print(f"{name:<34} {median['8->16', name]:>8.2f} {median['16->16', name]:>8.2f}")
    result = {
        "ms_median": {layer: {n: round(median[layer, n], 3) for (lay, n) in cases if lay == layer}
                      for layer in ("8->16", "16->16")},
        "ms_min": {f"{k[0]} {k[1]}": round(min(s), 3) for k, s in samples.items()},
        "rounds": args.rounds, "steps": args.steps, **run_info(),
    }
    (HERE / "results" / "weight_grad_study.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
