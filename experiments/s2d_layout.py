"""Does the space-to-depth's channel order decide what the conv after it costs?

    python experiments/s2d_layout.py [--arch "c16 s c16 v16 v16 v16 v16" ...] [--rounds 2]

`jaxmnist.models.space_to_depth` orders the 4C channels as PyTorch's `PixelUnshuffle(2)`
does, channel c's four pixels side by side (4c + 2i + j). The other order keeps each
pixel's C channels side by side ((2i + j)·C + c), so the reshape moves whole runs of C
floats. Either is the same net up to a fixed permutation of the next conv's input
channels. This times the whole train step (`jaxmnist.bench.bench`) of each net with each
order, round-robin `--rounds` times, and writes the medians to
experiments/results/studies/s2d_layout.json.
"""

import argparse
import json
import statistics
from pathlib import Path

import jax
from profile_step import run_info  # this folder is on sys.path when run as a script
from step_variants import patched

from jaxmnist import bench, configs, models

RESULTS = Path(__file__).resolve().parent / "results" / "studies"


def channels_last_space_to_depth(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, H/2, W/2, 4C): out[n, h, w, (2i + j)·C + c] = x[n, 2h + i, 2w + j, c]."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2, w // 2, 4 * c)


ORDERS = {"pixelunshuffle": models.space_to_depth, "channels-last": channels_last_space_to_depth}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="a net with an `s` (repeatable)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    archs = args.arch or ["c16 s c16 v16 v16 v16 v16", "c16 s c16"]
    step_ms = {arch: {order: [] for order in ORDERS} for arch in archs}
    for _ in range(args.rounds):
        for arch in archs:
            for order, fn in ORDERS.items():
                # What Net calls for an `s`, read when traced; put back afterwards.
                with patched(models, "space_to_depth", fn):
                    result = bench.bench(configs.Config(arch=arch), steps=args.steps)
                step_ms[arch][order].append(result["step_ms"])
                print(f"{arch:32} {order:16} {result['step_ms']:7.2f} ms per step", flush=True)
    out = {
        "step_ms": step_ms,
        "step_ms_median": {a: {o: statistics.median(v) for o, v in d.items()}
                           for a, d in step_ms.items()},
        "batch_size": configs.Config().batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        **run_info(),
    }
    (RESULTS / "s2d_layout.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
