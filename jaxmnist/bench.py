"""Benchmark the train and eval steps: `python -m jaxmnist.bench [--steps N]`.

Times a recipe's jitted train step (default: the seed recipe; dropout on, SGD with momentum)
and the eval step on synthetic MNIST-shaped batches already on the device, so that
only the step is timed. Compilation is timed apart. Prints one JSON object and
appends it (with the date, jax version and commit) to `--out` (default runs/bench.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxmnist import configs, parallel, rundir
from jaxmnist.cli import ArgumentParser, architecture, positive_int, report
from jaxmnist.files import WriteError, append_line, check_writable_dir
from jaxmnist.models import count_params
from jaxmnist.steps import create_train_state, loss_options, train_step, uses_fast_kernels

DEFAULT_OUT = "runs/bench.jsonl"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def usable_cores() -> int:
    """How many CPUs this process may run on (`taskset` narrows them on Linux)."""
    if hasattr(os, "sched_getaffinity"):  # not on macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# cpuinfo flag -> the unit it names, narrowest first: XLA:CPU's speed follows the widest.
_VECTOR_UNITS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"),
                 ("amx_tile", "AMX"))


def describe_cpu(cpuinfo: str) -> str:
    """'model name (family F, model M; its vector units)' from /proc/cpuinfo's text, read
    off its first processor: speed ratios between nets and libraries move with all three."""
    fields = {}
    for line in cpuinfo.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields.setdefault(key.strip(), value.strip())
        elif fields:  # the blank line that ends the first processor
            break
    flags = set(fields.get("flags", "").split())
    units = ", ".join(name for flag, name in _VECTOR_UNITS if flag in flags) or "no AVX2"
    name = fields.get("model name") or platform.machine() or "unknown"
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{name} (family {family}, model {model}; {units})"


def host_cpu() -> str:
    """This machine's CPU as `describe_cpu` names it; `platform.processor()` where there
    is no /proc/cpuinfo (macOS, Windows)."""
    try:
        return describe_cpu(Path("/proc/cpuinfo").read_text())
    except OSError:
        return platform.processor() or platform.machine() or "unknown"


def synthetic_batch(n: int, seed: int = 0) -> dict:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"image": jax.random.normal(k1, (n, 28, 28, 1)),
            "label": jax.random.randint(k2, (n,), 0, 10)}


def scanned_steps(state, batch, rng, n: int, **loss_options):
    """`n` train steps in one call, looped by `lax.scan` instead of Python."""
    def body(state, _):
        return train_step(state, batch, rng, **loss_options)

    return jax.lax.scan(body, state, length=n)


def bench(config: configs.Config, steps: int = 100, eval_steps: int = 20, scan: int = 1,
          xla_defaults: bool = False) -> dict:
    """Steady-state train and eval images/s for `config` on the default device(s).

    `scan` > 1 times `scan` steps per jitted call (a `lax.scan`) instead of one;
    `xla_defaults` compiles with XLA's default options instead of
    `kernels.compiler_options` (on CPU: with YNNPACK convolutions)."""
    trainer = parallel.Trainer(config, compiler_options={} if xla_defaults else None)
    # A recipe with a teacher times its steps with the teacher's forward pass in them.
    state = trainer.put(create_train_state(config, jax.random.key(0), steps_per_epoch=469,
                                           teacher=rundir.load_teacher(config)))
    batch = jax.device_put(synthetic_batch(config.batch_size), trainer.sharded)
    rng = jax.random.key(1)
    if scan > 1:
        step_fn = trainer.jit(functools.partial(scanned_steps, n=scan,
                                                **loss_options(config)), donate_argnums=0,
                              out_shardings=(trainer.replicated, trainer.replicated))
        calls = max(1, steps // scan)
        steps = calls * scan
    else:
        step_fn, calls = trainer.train_step, steps

    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(3 if scan == 1 else 1):  # warm-up
        state, _ = compiled(state, batch, rng)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(calls):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    train_s = time.perf_counter() - t0

    n_eval = config.eval_batch_size
    eval_batch = {**jax.device_put(synthetic_batch(n_eval, 2), trainer.sharded),
                  "mask": jnp.ones(n_eval)}
    jax.block_until_ready(trainer.eval_step(state, eval_batch))
    t0 = time.perf_counter()
    for _ in range(eval_steps):
        out = trainer.eval_step(state, eval_batch)
    jax.block_until_ready(out)
    eval_s = time.perf_counter() - t0

    device = jax.devices()[0]
    return {
        "train_images_per_s": round(steps * config.batch_size / train_s, 1),
        "eval_images_per_s": round(eval_steps * n_eval / eval_s, 1),
        "compile_s": round(compile_s, 3),
        "step_ms": round(1000 * train_s / steps, 2),
        "device": f"{jax.device_count()}x {device.platform}:{device.device_kind}",
        "cores": usable_cores(),
        "cpu": host_cpu() if device.platform == "cpu" else None,
        "batch_size": config.batch_size,
        "arch": config.arch,
        "params": count_params(state.params),
        "fast_kernels": uses_fast_kernels(config),
        "steps": steps,
        "steps_per_call": scan,
        "compiler_options": "xla-defaults" if xla_defaults else "jaxmnist",
    }


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m jaxmnist.bench", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(configs.RECIPES), default="seed",
                   help="whose net and batch size to time (default seed)")
    p.add_argument("--arch", type=architecture, help="time this net instead of the recipe's")
    p.add_argument("--steps", type=positive_int, default=100, help="timed train steps")
    p.add_argument("--eval-steps", type=positive_int, default=20, help="timed eval batches")
    p.add_argument("--batch-size", type=positive_int, help="default: the recipe's")
    p.add_argument("--fast-kernels", action=argparse.BooleanOptionalAction, default=None,
                   help="jaxmnist.kernels or plain Flax layers (default: the kernels on CPU "
                        "only)")
    p.add_argument("--scan", type=positive_int, default=1, metavar="K",
                   help="time K steps per jitted call, looped by lax.scan (default 1: "
                   "a Python loop, as jaxmnist.train does)")
    p.add_argument("--xla-defaults", action="store_true",
                   help="compile with XLA's default options (on CPU: YNNPACK convolutions) "
                   "instead of jaxmnist's")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE",
                   help=f"append the result to this JSON-lines file (default {DEFAULT_OUT})")
    p.add_argument("--no-record", action="store_true", help="only print the result")
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        if not args.no_record:
            check_writable_dir(out.parent)
            if out.is_dir():
                raise ValueError(f"{str(out)!r} is a directory, not a file")
        config = configs.RECIPES[args.recipe]()
        config = dataclasses.replace(config, batch_size=args.batch_size or config.batch_size,
                                     arch=args.arch or config.arch,
                                     fast_kernels=args.fast_kernels)
    except ValueError as e:
        return report("python -m jaxmnist.bench", e)
    result = bench(config, args.steps, args.eval_steps, args.scan, args.xla_defaults)
    result.update(recipe=args.recipe,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  jax=jax.__version__, commit=_git_commit())
    print(json.dumps(result))
    if not args.no_record:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            append_line(out, json.dumps(result))
        except OSError as e:  # a full disk: the result is printed above, the file unchanged
            return report("python -m jaxmnist.bench", e if isinstance(e, WriteError)
                          else WriteError(out.parent, e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
