"""How long a net's init takes to compile on this CPU, with XLA's options and with
`steps.INIT_CPU_OPTIONS` (no LLVM optimisations), and whether the values agree.

    python experiments/init_compile.py [--rounds 3]

For each recipe's net, alternating the two options, each compile in a fresh process (so
that no cache in memory serves it; the persistent compilation cache is off). Writes
experiments/results/studies/init_compile.json: the seconds of each compile, their
medians, and the largest difference between the two inits' values. Run it alone on
the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results" / "studies" / "init_compile.json"
RECIPES = ("seed", "fast", "tiny", "micro", "nano")

CHILD = """
import functools, json, sys, time
import jax, jax.numpy as jnp, numpy as np
from jaxmnist import configs, steps
model = steps.make_model(configs.RECIPES[sys.argv[1]]())
options = steps.INIT_CPU_OPTIONS if sys.argv[2] == "jaxmnist" else None
init = jax.jit(functools.partial(model.init, train=False), compiler_options=options)
args = (jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))
t0 = time.perf_counter()
compiled = init.lower(*args).compile()
seconds = time.perf_counter() - t0
leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(compiled(*args))]
print(json.dumps({"seconds": seconds, "values": np.concatenate(leaves).tolist()}))
"""


def compile_once(recipe: str, options: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, recipe, options], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from jaxmnist.bench import host_cpu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    result = {"cpu": host_cpu(), "date": datetime.date.today().isoformat(), "recipes": {}}
    for recipe in RECIPES:
        seconds = {"xla": [], "jaxmnist": []}
        values = {}
        for _ in range(args.rounds):
            for options in seconds:
                run = compile_once(recipe, options)
                seconds[options].append(round(run["seconds"], 3))
                values[options] = run["values"]
        worst = max(abs(a - b) for a, b in zip(values["xla"], values["jaxmnist"]))
        result["recipes"][recipe] = {
            "seconds": seconds,
            "median_s": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
            "ratio": round(statistics.median(seconds["xla"])
                           / statistics.median(seconds["jaxmnist"]), 1),
            "values": len(values["xla"]),
            "values_differing": sum(a != b for a, b in zip(values["xla"], values["jaxmnist"])),
            "largest_difference": worst}
        print(recipe, json.dumps(result["recipes"][recipe]["median_s"]),
              result["recipes"][recipe]["values_differing"], flush=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
