"""Where a training step's time goes: the step taken apart, each part jitted and timed alone.

    python experiments/profile_step.py [--rounds 5] [--steps 50] [--batch-size 128]

Parts (batch 128, seed recipe, float32), each for the fast kernels and the plain Flax net:
  eval forward        model.apply(train=False)
  train forward       loss with BatchNorm batch statistics and dropout
  train fwd, no drop  the same with dropout rate 0 (the cost of the dropout masks)
  forward + backward  jax.value_and_grad of the train loss
  train step          forward + backward + optax SGD-momentum update (jaxmnist.train_step)
  optimizer           the optax update and apply alone
  input               get_batch: gather 128 uint8 images, normalise (seed recipe)
  input + augment     the same with the default recipe's rotation and shift

Then the fast net's layers one at a time, at their own input shapes (train mode;
forward + backward to the parameters, and to the input except for block1, as in the
net): each ConvBlock whole, and its convolution alone.

`--layers-only --arch ARCH` times only the layers, of any net of the family: its conv
blocks (and their convolutions alone) and its space-to-depth layers, appending one
line per run to experiments/results/studies/layer_costs.jsonl.

`--rusage LABEL` instead runs 50 jitted train steps and reports what the process
spent on them (user and system CPU seconds, minor page faults per step), appending
one line with LABEL to experiments/results/studies/rusage.jsonl; run it under different
environments (e.g. `MALLOC_ARENA_MAX=1`) to compare allocators.

The machine is noisy: the parts are timed round-robin, `--rounds` times, and the
median per part is reported. Prints a table and writes experiments/results/studies/profile.json.
"""

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from jaxmnist import configs, data, kernels, parallel
from jaxmnist.bench import synthetic_batch
from jaxmnist.models import SEED_ARCH, Net, layer_table, parse_arch
from jaxmnist.steps import create_train_state, train_step

HERE = Path(__file__).resolve().parent


def jit(fn):
    """jax.jit with the compiler options jaxmnist.train uses."""
    return jax.jit(fn, compiler_options=kernels.compiler_options())


def parts(fast: bool, batch_size: int) -> dict:
    """name -> (jitted function, args) for one variant of the net."""
    config = dataclasses.replace(configs.seed(), fast_kernels=fast, batch_size=batch_size)
    state = create_train_state(config, jax.random.key(0), steps_per_epoch=469)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    batch = synthetic_batch(batch_size)
    variables = state.variables()

    def train_loss(params, rate):
        model = Net(dropout_rate=rate, fast=fast)
        logits, _ = model.apply({**variables, "params": params}, batch["image"], train=True,
                                rngs={"dropout": k3}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    grads = jax.grad(train_loss)(state.params, config.dropout)
    def optimizer(state, grads):
        return state.apply_gradients(grads=grads)

    split = data.Split(
        images=jax.random.randint(k1, (60_000, 28, 28, 1), 0, 256).astype(jnp.uint8),
        labels=jax.random.randint(k2, (60_000,), 0, 10))
    index = jax.random.permutation(k3, 60_000)[:batch_size]
    aug = configs.default()
    return {
        "eval forward": (jit(lambda v, x: state.apply_fn(v, x, train=False)),
                         (variables, batch["image"])),
        "train forward": (jit(lambda p: train_loss(p, config.dropout)), (state.params,)),
        "train fwd, no drop": (jit(lambda p: train_loss(p, 0.0)), (state.params,)),
        "forward + backward": (jit(jax.value_and_grad(
            lambda p: train_loss(p, config.dropout))), (state.params,)),
        "train step": (jit(train_step), (state, batch, k3)),
        "optimizer": (jit(optimizer), (state, grads)),
        "input": (jit(lambda s, i, k: data.get_batch(s, i)), (split, index, k3)),
        "input + augment": (jit(lambda s, i, k: data.get_batch(
            s, i, k, **data.augmentation_options(aug))), (split, index, k3)),
    }


def layer_inputs(arch: str) -> list[tuple[str, str, int, tuple[int, int, int]]]:
    """(name, kind, features, input shape without the batch) of each layer of `arch`:
    the input of each is the output of the one before, as `layer_table` gives it."""
    rows = layer_table(Net(arch=arch))[:-1]  # the head apart
    shapes = [(28, 28, 1)] + [r.output for r in rows[:-1]]
    return [(name, kind, features, shape)
            for (kind, name, features, _), shape in zip(parse_arch(arch), shapes)]


def layer_parts(batch_size: int, arch: str = SEED_ARCH) -> dict:
    """name -> (jitted forward + backward of one layer, args), fast kernels: the conv
    blocks of `arch` (whole, and their convolution alone) and its space-to-depth layers."""
    import flax.linen as nn

    from jaxmnist.models import ConvBlock, space_to_depth

    def sum_of_squares(module, variables, argnums):
        def loss(params, x):
            y, _ = module.apply({**variables, "params": params}, x, train=True,
                                rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
            return jnp.sum(y * y)
        return jit(jax.value_and_grad(loss, argnums))

    def conv_sum_of_squares(conv, argnums):
        def loss(params, x):
            y = conv.apply({"params": params}, x)
            return jnp.sum(y * y)
        return jit(jax.value_and_grad(loss, argnums))

    out, first = {}, True
    for name, kind, features, shape in layer_inputs(arch):
        x = jax.random.normal(jax.random.key(0), (batch_size, *shape))
        label = f"{name} {shape[0]}x{shape[1]} {shape[2]}->{features}"
        if kind == "space_to_depth" and not first:
            out[f"space_to_depth {shape[0]}x{shape[1]}x{shape[2]}"] = (
                jit(jax.value_and_grad(lambda x: jnp.sum(space_to_depth(x) ** 2))), (x,))
        if kind not in ("conv", "valid"):
            continue
        padding = 1 if kind == "conv" else "VALID"
        block = ConvBlock(features, padding, 0.069, fast=True)
        variables = block.init(jax.random.key(1), x, train=False)
        conv = nn.Conv(features, (3, 3), padding=padding, use_bias=False)
        # The net needs no gradient with respect to the images themselves.
        argnums = 0 if first else (0, 1)
        first = False
        out[label] = (sum_of_squares(block, variables, argnums), (variables["params"], x))
        out[f"{label} conv only"] = (conv_sum_of_squares(conv, argnums),
                                     (variables["params"]["conv"], x))
    return out


def run_info() -> dict:
    """Where and when a measurement ran, for the result files."""
    device = jax.devices()[0]
    return {"device": f"{jax.device_count()}x {device.platform}:{device.device_kind}",
            "jax": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def time_ms(fn, args, steps: int) -> float:
    """Milliseconds per call of `fn(*args)`, compiled and warmed up first."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(*args)
    jax.block_until_ready(out)
    return 1000 * (time.perf_counter() - t0) / steps


def round_robin_medians(parts: dict, rounds: int, steps: int) -> dict:
    """key -> median ms of `parts[key] = (fn, args)`, each part timed once per round, in
    order, `rounds` times (the machine is noisy)."""
    samples = {key: [] for key in parts}
    for _ in range(rounds):
        for key, (fn, fargs) in parts.items():
            samples[key].append(time_ms(fn, fargs, steps))
    return {key: statistics.median(ms) for key, ms in samples.items()}


def rusage_probe(steps: int = 50, rounds: int = 3) -> dict:
    """CPU seconds and minor page faults of `steps` jitted train steps, per round."""
    import resource

    config = configs.seed()
    trainer = parallel.Trainer(config)
    state = trainer.put(create_train_state(config, jax.random.key(0), 469))
    rng = jax.random.key(1)
    batch = jax.device_put(synthetic_batch(128), trainer.sharded)
    for _ in range(3):
        state, _ = trainer.train_step(state, batch, rng)
    jax.block_until_ready(state)
    out = []
    for _ in range(rounds):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(steps):
            state, _ = trainer.train_step(state, batch, rng)
        jax.block_until_ready(state)
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        out.append({"images_per_s": round(steps * 128 / wall, 1),
                    "user_s_per_step": round((r1.ru_utime - r0.ru_utime) / steps, 4),
                    "sys_s_per_step": round((r1.ru_stime - r0.ru_stime) / steps, 4),
                    "minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) // steps})
    return {k: statistics.median(o[k] for o in out) for k in out[0]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rusage", metavar="LABEL", help="only the CPU-time and page-fault probe")
    p.add_argument("--layers-only", action="store_true",
                   help="only the layers of --arch, appended to results/studies/layer_costs.jsonl")
    p.add_argument("--arch", default=SEED_ARCH, help="the net for --layers-only")
    args = p.parse_args()
    if args.arch != SEED_ARCH and not args.layers_only:
        p.error("--arch needs --layers-only (the whole-step parts are the seed net's)")
    if args.layers_only:
        layer_median = round_robin_medians(layer_parts(args.batch_size, args.arch),
                                           args.rounds, args.steps)
        result = {"arch": args.arch, "layer_ms_median": {
            n: round(ms, 3) for n, ms in layer_median.items()},
            "batch_size": args.batch_size, "rounds": args.rounds, "steps": args.steps,
            **run_info()}
        for name, ms in result["layer_ms_median"].items():
            print(f"{name:<36} {ms:>8.2f}")
        print(f"{'sum (blocks and space-to-depth)':<36} "
              f"{sum(ms for n, ms in result['layer_ms_median'].items() if 'only' not in n):>8.2f}")
        with (HERE / "results" / "studies" / "layer_costs.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
        return
    if args.rusage:
        import os

        result = {"label": args.rusage, **rusage_probe(),
                  "env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds")}
        print(json.dumps(result))
        with (HERE / "results" / "studies" / "rusage.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
        return
    variants = {"fast": parts(True, args.batch_size), "flax": parts(False, args.batch_size)}
    layers = layer_parts(args.batch_size)
    # Variants first, then layers, in every round, as one round-robin.
    all_parts = {**{(v, name): part for v, ps in variants.items() for name, part in ps.items()},
                 **{("layer", name): part for name, part in layers.items()}}
    all_median = round_robin_medians(all_parts, args.rounds, args.steps)
    median = {k: ms for k, ms in all_median.items() if k[0] != "layer"}
    layer_median = {k[1]: ms for k, ms in all_median.items() if k[0] == "layer"}
    names = list(variants["fast"])
    head = f"part (ms per batch of {args.batch_size})"
    print(f"{head:<28} {'fast kernels':>12} "
          f"{'plain Flax':>12}")
    for name in names:
        print(f"{name:<28} {median['fast', name]:>12.2f} {median['flax', name]:>12.2f}")
    print(f"\n{'layer, forward + backward (ms)':<36} {'fast kernels':>12}")
    for name, ms in layer_median.items():
        print(f"{name:<36} {ms:>12.2f}")
    result = {
        "ms_median": {v: {n: round(median[v, n], 3) for n in names} for v in variants},
        "layer_ms_median": {n: round(ms, 3) for n, ms in layer_median.items()},
        "batch_size": args.batch_size, "rounds": args.rounds, "steps": args.steps,
        **run_info(),
    }
    (HERE / "results" / "studies" / "profile.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
