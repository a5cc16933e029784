"""Where a compiled train step's time goes, op by op: a profiler trace of the whole step.

    python experiments/op_times.py [--recipe fast] [--arch "..."] [--steps 20] [--top 15]

Compiles `jaxmnist.train`'s train step for the net (batch of the recipe, synthetic
images), runs it under `jax.profiler.trace` and reads the trace back. For each op of
the compiled program (XLA's names, with the JAX operation it came from) it reports the
median over the steps of the wall time from its start to its end: XLA:CPU runs
convolutions asynchronously, so their end is a separate event, and ops that overlap
(on more than one core) each count their whole interval. On one core
(`taskset -c 0 python ...`) nothing overlaps and the op times add up to the step.

Appends one line to experiments/results/studies/op_times.jsonl: the median of as many steps
timed without the profiler, the number of cores the process may use, and the `--top`
ops by time.
"""

import argparse
import collections
import dataclasses
import gzip
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import jax
from profile_step import run_info  # this folder is on sys.path when run as a script

from jaxmnist import configs, parallel, steps
from jaxmnist.bench import synthetic_batch, usable_cores

HERE = Path(__file__).resolve().parent


def op_shapes(hlo_text: str) -> dict[str, str]:
    """XLA op name -> the type of its result (e.g. f32[128,14,14,64]), from a compiled
    module's text."""
    return dict(re.findall(r"^\s*(?:ROOT )?%(\S+) = (\w+\[[\d,]*\])", hlo_text, re.MULTILINE))


def op_sources(hlo_text: str) -> dict[str, str]:
    """XLA op name -> the JAX op_name of its metadata, from a compiled module's text; a
    fusion without metadata of its own gets its fused computation's root's (or, if the
    root has none, its first op's)."""
    named, calls, roots, firsts, computation = {}, {}, {}, {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^%(\S+) .*\{$", line)
        if header:
            computation = header.group(1)
        op = re.match(r"^\s*(ROOT )?%(\S+) = ", line)
        if not op:
            continue
        source = re.search(r'op_name="([^"]*)"', line)
        if source:
            named.setdefault(op.group(2), source.group(1))
            if computation:
                firsts.setdefault(computation, source.group(1))
                if op.group(1):
                    roots[computation] = source.group(1)
        called = re.search(r"calls=%([\w.-]+)", line)
        if called:
            calls[op.group(2)] = called.group(1)
    return {**{op: roots.get(c, firsts.get(c, "")) for op, c in calls.items()}, **named}


def op_intervals(trace_events: list[dict]) -> dict[str, list[float]]:
    """op -> its start-to-end wall times in ms, one per execution, from a perfetto
    trace's complete ('X') events."""
    events = sorted((e for e in trace_events if e.get("ph") == "X"), key=lambda e: e["ts"])
    started, times = {}, collections.defaultdict(list)
    for e in events:
        name = e["name"]
        if name.startswith("end: "):  # an asynchronous op's completion
            if name[5:] in started:
                times[name[5:]][-1] = (e["ts"] - started.pop(name[5:])) / 1000
        elif "hlo_op" in e.get("args", {}):
            started[name] = e["ts"]
            times[name].append(e.get("dur", 0) / 1000)
    return dict(times)


def step_ms(compiled, state, batch, rng, steps: int):
    """(median wall ms of `steps` untraced steps, the state after them)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, _ = compiled(state, batch, rng)
        jax.block_until_ready(state)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), state


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(configs.RECIPES), default="fast")
    p.add_argument("--arch", help="another net, in the arch language (default: the recipe's)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    config = configs.RECIPES[args.recipe]()
    if args.arch:
        config = dataclasses.replace(config, arch=args.arch)
    trainer = parallel.Trainer(config)
    state = trainer.put(steps.create_train_state(config, jax.random.key(0), 469))
    batch = jax.device_put(synthetic_batch(config.batch_size), trainer.sharded)
    rng = jax.random.key(1)
    compiled = trainer.train_step.lower(state, batch, rng).compile()
    hlo_text = compiled.as_text()
    sources, shapes = op_sources(hlo_text), op_shapes(hlo_text)
    _, state = step_ms(compiled, state, batch, rng, 3)  # warm-up
    untraced_ms, state = step_ms(compiled, state, batch, rng, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, _ = compiled(state, batch, rng)
            jax.block_until_ready(state)
        trace = json.load(gzip.open(next(Path(tmp).rglob("perfetto_trace.json.gz"))))
    times = op_intervals(trace["traceEvents"] if isinstance(trace, dict) else trace)
    median = {op: statistics.median(ms) for op, ms in times.items()}
    top = sorted(median, key=median.get, reverse=True)[:args.top]
    result = {"arch": config.arch, "recipe": args.recipe, "batch_size": config.batch_size,
              "cores": usable_cores(), "steps": args.steps,
              "step_ms_median": round(untraced_ms, 2),
              "ops_ms_sum": round(sum(median.values()), 2),
              "top_ops": [{"op": op, "ms": round(median[op], 3), "shape": shapes.get(op, ""),
                           "source": sources.get(op, "")} for op in top],
              **run_info()}
    print(f"{config.arch}, {result['cores']} core(s): step {result['step_ms_median']} ms, "
          f"op intervals summed {result['ops_ms_sum']} ms")
    for row in result["top_ops"]:
        print(f"{row['ms']:8.2f} ms  {row['op']:<26} {row['shape']:<20} "
              f"{row['source'].removeprefix('jit(train_step)/')[-60:]}")
    with (HERE / "results" / "studies" / "op_times.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
