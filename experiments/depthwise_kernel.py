"""The depthwise 3x3 conv of `jaxmnist.kernels` against XLA's grouped convolution.

    python experiments/depthwise_kernel.py [--archs "c4 p dc8 dc10 p dc14" ...]
                                           [--rounds 5] [--steps 50] [--batch-size 128]

For every depthwise conv of the given nets (default: the `nano` recipe's, and the
published 1,936-parameter net's shape that the `micro` selection tried),
at its own input shape: forward + backward (to the kernel and the input) of
`kernels.depthwise_conv_3x3` and of `jax.lax.conv_general_dilated` with
`feature_group_count` equal to the channels (what `nn.Conv` runs), both compiled with
the project's XLA:CPU options, timed round-robin `--rounds` times (the machine is
noisy); the median ms of each. Prints a table and appends one line per net to
experiments/results/studies/depthwise_kernel.jsonl.
"""

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from profile_step import jit, layer_inputs, round_robin_medians, run_info  # noqa: E402

from jaxmnist import configs, kernels  # noqa: E402
from jaxmnist.bench import host_cpu, usable_cores  # noqa: E402

DEFAULT = [configs.nano().arch, "c8 p dv26 dc26x3"]


def grouped_conv(x, kernel, padding: int):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def parts(arch: str, batch_size: int) -> dict:
    """(layer label, implementation) -> (jitted fwd + bwd, args), for each depthwise conv
    of `arch` (a shared block's counted once: its input shape is the same each time)."""
    out = {}
    for name, kind, _, shape in layer_inputs(arch):
        if not kind.startswith("separable"):
            continue
        padding = 0 if kind.endswith("valid") else 1
        x = jax.random.normal(jax.random.key(0), (batch_size, *shape))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, shape[-1]))
        label = f"{name} {shape[0]}x{shape[1]}x{shape[2]} pad {padding}"
        for impl, conv in (("kernels", kernels.depthwise_conv_3x3), ("grouped", grouped_conv)):
            def loss(k, x, conv=conv, padding=padding):
                y = conv(x, k, padding)
                return jnp.sum(y * y)
            out[label, impl] = (jit(jax.value_and_grad(loss, (0, 1))), (kernel, x))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", help=f"default: {' and '.join(map(repr, DEFAULT))}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    for arch in args.archs or DEFAULT:
        median = round_robin_medians(parts(arch, args.batch_size), args.rounds, args.steps)
        layers = list(dict.fromkeys(label for label, _ in median))
        rows = [{"layer": label, "kernels_ms": round(median[label, "kernels"], 3),
                 "grouped_ms": round(median[label, "grouped"], 3),
                 "speedup": round(median[label, "grouped"] / median[label, "kernels"], 2)}
                for label in layers]
        print(f"{arch}\n{'depthwise conv, fwd + bwd':<36} {'kernels':>9} {'grouped':>9}")
        for r in rows:
            print(f"{r['layer']:<36} {r['kernels_ms']:>9.2f} {r['grouped_ms']:>9.2f}  "
                  f"{r['speedup']:.1f}x")
        result = {"arch": arch, "layers": rows, "batch_size": args.batch_size,
                  "rounds": args.rounds, "steps": args.steps, "cpu": host_cpu(),
                  "cores": usable_cores(), **run_info()}
        with (HERE / "results" / "studies" / "depthwise_kernel.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
