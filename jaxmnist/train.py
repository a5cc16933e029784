"""Train a net of the family on MNIST: `python -m jaxmnist.train [--recipe default]`.

Small pure functions in the style of Flax's examples/mnist: `create_train_state`,
`train_step`, `eval_step`, `train_and_evaluate`. The loop is a Python loop over a
jitted step, batches are cut on
the device from a device-resident copy of each split, and with several devices each
batch is sharded over a 1-D mesh ("data") while the state stays replicated. The mesh
may span several processes (hosts): see `jaxmnist.multihost`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmnist import configs, data, kernels, multihost, rundir
from jaxmnist.cli import ArgumentParser, UsageError, check_writable_dir, fail, quiet_libraries
from jaxmnist.models import Net, count_params, summary


class TrainState(train_state.TrainState):
    batch_stats: Any


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite."""


def make_model(config: configs.Config) -> Net:
    return Net(dropout_rate=config.dropout, fast=config.fast_kernels, arch=config.arch)


def make_schedule(config: configs.Config, steps_per_epoch: int) -> optax.Schedule:
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.schedule == "onecycle":
        # PyTorch OneCycleLR's shape: cosine up from lr/25, cosine down to lr/(25*1e4).
        total = config.epochs * steps_per_epoch
        return optax.cosine_onecycle_schedule(
            transition_steps=total,
            peak_value=config.lr,
            # At least one warm-up step: older optax (0.2.4) divides by a warm-up of zero
            # steps, giving NaN, when a very short run rounds it down to nothing.
            pct_start=max(config.warmup_fraction, 1.0 / total),
        )
    raise ValueError(f"unknown schedule {config.schedule!r}")


def create_train_state(config: configs.Config, rng: jax.Array, steps_per_epoch: int) -> TrainState:
    model = make_model(config)
    variables = model.init(rng, jnp.zeros((1, 28, 28, 1), jnp.float32), train=False)
    tx = optax.sgd(make_schedule(config, steps_per_epoch), momentum=config.momentum or None)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables["batch_stats"],
    )


def train_step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    """One SGD step on `batch`; dropout masks come from `rng` folded with the step."""
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            rngs={"dropout": dropout_rng}, mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state, {"loss": loss, "accuracy": accuracy}


def eval_step(state: TrainState, batch: dict) -> dict:
    """Summed loss and correct count over the rows of `batch` where `mask` is set."""
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    mask = batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = jnp.argmax(logits, -1) == batch["label"]
    return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask)}


class Trainer:
    """Compiled functions bound to one mesh of devices (all of them by default).

    They are compiled with `compiler_options` (default: `kernels.compiler_options`,
    which turns XLA:CPU's YNNPACK convolutions off on CPU; `{}` keeps XLA's defaults)."""

    def __init__(self, config: configs.Config, devices=None, compiler_options=None):
        devices = devices if devices is not None else jax.devices()
        if compiler_options is None:
            compiler_options = kernels.compiler_options(devices)
        jit = functools.partial(jax.jit, compiler_options=compiler_options or None)
        # Auto axes: XLA's partitioner propagates the batch sharding through the step
        # (BatchNorm's batch means become all-reduces over the global batch).
        self.mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                                  axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P("data"))
        n = len(devices)
        for name in ("batch_size", "eval_batch_size"):
            if getattr(config, name) % n:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(config, name)} "
                                 f"is not divisible by the {n} devices")
        self.config = config
        self.jit = jit
        self.train_step = jit(train_step, donate_argnums=0,
                              out_shardings=(self.replicated, self.replicated))
        self.eval_step = jit(eval_step, out_shardings=self.replicated)
        self.permutation = jit(data.epoch_permutation, static_argnums=(1, 2),
                               out_shardings=self.replicated)
        self.get_batch = jit(self._get_batch, out_shardings=self.sharded)
        self.train_steps = jit(self._train_steps, static_argnums=(6,), donate_argnums=0,
                               out_shardings=(self.replicated, self.replicated))
        self.get_eval_batch = jit(self._get_eval_batch, static_argnums=(2,),
                                  out_shardings=self.sharded)

    def _get_batch(self, split, perm, i, key):
        c = self.config
        key = jax.random.fold_in(key, i)
        return data.get_batch(split, perm[i], key, c.rotate_degrees, c.shift_pixels)

    def _train_steps(self, state, split, perm, start, key, dropout_rng, n):
        """Batches `start` … `start + n - 1` of `perm`, cut and trained on in one call
        (a `lax.scan`): one dispatch for `n` steps, the same steps as `n` calls."""
        def body(state, i):
            batch = self._get_batch(split, perm, i, key)
            batch = jax.lax.with_sharding_constraint(batch, self.sharded)
            return train_step(state, batch, dropout_rng)

        return jax.lax.scan(body, state, start + jnp.arange(n))

    @staticmethod
    def _get_eval_batch(split, start, size):
        index = start + jnp.arange(size)
        mask = index < len(split)
        batch = data.get_batch(split, jnp.where(mask, index, 0))
        return {**batch, "mask": mask.astype(jnp.float32)}

    def put(self, tree):
        """`tree` replicated on every device of the mesh."""
        if jax.process_count() > 1:
            # Across processes, device_put takes host values (a jax array on one of this
            # process's devices is not a value every process agrees on).
            tree = jax.device_get(tree)
        return jax.device_put(tree, self.replicated)

    def evaluate(self, state: TrainState, split: data.Split) -> dict:
        size = self.config.eval_batch_size
        sums = [self.eval_step(state, self.get_eval_batch(split, start, size))
                for start in range(0, len(split), size)]
        total = jax.device_get(jax.tree.map(lambda *x: sum(x), *sums))
        return {"loss": float(total["loss"]) / len(split),
                "accuracy": float(total["correct"]) / len(split)}


def per_step(metrics: list[dict]) -> list[dict]:
    """Host copies of step metrics, one dict of floats per step (a call of
    `Trainer.train_steps` gives `n` steps' worth)."""
    steps = []
    for m in jax.device_get(metrics):
        losses, accuracies = np.atleast_1d(m["loss"]), np.atleast_1d(m["accuracy"])
        steps.extend({"loss": float(loss), "accuracy": float(accuracy)}
                     for loss, accuracy in zip(losses, accuracies))
    return steps


def train_epoch(trainer: Trainer, state: TrainState, split: data.Split, perm: jax.Array,
                augment_key: jax.Array, dropout_key: jax.Array, *, epoch: int, steps: int,
                steps_per_call: int, bar, manager) -> tuple[TrainState, list[dict]]:
    """Epoch `epoch`: the first `steps` batches of `perm`, `steps_per_call` per jitted
    call, counted on the tqdm `bar`. Returns the state and each step's metrics (host
    floats). The losses are checked every 50 steps: a non-finite one raises
    TrainingDiverged, naming `manager`'s newest checkpoint."""
    pending: list[dict] = []  # step metrics on the device, not yet checked
    host: list[dict] = []  # those checked, one per step
    done = 0
    while done < steps:
        n = min(steps_per_call, steps - done)
        if n == 1:
            batch = trainer.get_batch(split, perm, done, augment_key)
            state, m = trainer.train_step(state, batch, dropout_key)
        else:
            state, m = trainer.train_steps(state, split, perm, done, augment_key,
                                           dropout_key, n)
        pending.append(m)
        done += n
        bar.update(n)
        if done // 50 > (done - n) // 50 or done == steps:
            chunk = per_step(pending)
            pending = []
            for j, cm in enumerate(chunk):
                if not math.isfinite(cm["loss"]):
                    last = manager.latest_step()
                    kept = (f"the last good checkpoint (epoch {last}) is kept" if last
                            else "no checkpoint had been saved yet")
                    raise TrainingDiverged(
                        f"non-finite training loss ({cm['loss']}) at epoch {epoch}, "
                        f"step {len(host) + j + 1} of {steps}; {kept}")
            host.extend(chunk)
            bar.set_postfix(loss=f"{chunk[-1]['loss']:.4f}",
                            acc=f"{100 * np.mean([c['accuracy'] for c in chunk]):.2f}%")
    return state, host


def load_trained(run_dir: str | os.PathLike):
    """(model, variables) of the newest checkpoint in `run_dir` (uses its config.json)."""
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    manager = rundir.checkpoint_manager(run_dir)
    if manager.latest_step() is None:
        raise UsageError(f"{run_dir}: no checkpoint")
    state = create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    _, state = rundir.restore_checkpoint(manager, state)
    return make_model(config), {"params": state.params, "batch_stats": state.batch_stats}


def train_and_evaluate(
    config: configs.Config,
    run_dir: str | os.PathLike,
    data_dir: str | None = None,
    tfds_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    verbose: bool = True,
    splits: tuple[data.Split, data.Split] | None = None,
    devices=None,
    max_steps: int | None = None,
    steps_per_call: int = 1,
) -> TrainState:
    """Trains `config`, evaluating after each epoch; writes config.json, metrics.jsonl,
    curves.png and a checkpoint per epoch to `run_dir`. Returns the final state.

    `progress` shows a bar per epoch, `verbose` a line per epoch and a summary;
    `max_steps` cuts every epoch short (for smoke tests). `steps_per_call` > 1 trains
    that many steps per jitted call, looped by `lax.scan` on the device (the same
    steps; fewer dispatches, though on XLA:CPU one step per call is fastest; the last
    call of an epoch may be shorter, compiled once more). In a run over several
    processes only process 0 writes files (orbax coordinates the checkpoints) and prints."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    is_main = multihost.is_main()
    progress, verbose = progress and is_main, verbose and is_main
    rundir.check(run_dir, config, resume)
    trainer = Trainer(config, devices)
    if splits is None:
        if jax.process_count() > 1 and is_main:
            data.mnist_builder(data_dir, tfds_dir)  # prepared once, before the others read
        multihost.sync("jaxmnist: MNIST prepared")
        splits = data.load_mnist(data_dir, tfds_dir, config.validation, device_put=trainer.put)
    else:
        splits = tuple(trainer.put(s) for s in splits)
    train_split, eval_split = splits
    eval_name = "val" if config.validation else "test"
    steps_per_epoch = len(train_split) // config.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size {config.batch_size} is larger than the "
                         f"{len(train_split)} training images")
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    # Every process has checked the run directory before process 0 writes to it.
    multihost.sync("jaxmnist: run directory checked")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(run_dir, config)

    root = jax.random.key(config.seed)
    init_key, data_key, dropout_key, augment_key = jax.random.split(root, 4)
    state = trainer.put(create_train_state(config, init_key, steps_per_epoch))
    # Checkpoints are written in a thread, off the training loop (as the curves).
    manager = rundir.checkpoint_manager(run_dir, asynchronous=True)
    start_epoch = 0
    if resume:
        start_epoch, state = rundir.restore_checkpoint(manager, state)
        state = trainer.put(state)
    # The metrics of the epochs the checkpoint holds; later lines (an epoch that was
    # interrupted after its line was written) are dropped.
    history = rundir.truncate_metrics(run_dir, start_epoch) if is_main else []

    # The curves are drawn in a thread: on an accelerator an epoch takes about as long.
    plotter = ThreadPoolExecutor(max_workers=1)
    plotted = None
    t_run = time.perf_counter()
    train_seconds = 0.0
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            t0 = time.perf_counter()
            perm = trainer.permutation(jax.random.fold_in(data_key, epoch), len(train_split),
                                       config.batch_size)
            epoch_aug_key = jax.random.fold_in(augment_key, epoch)
            with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                      disable=not progress, leave=False, unit="step", dynamic_ncols=True) as bar:
                state, host = train_epoch(trainer, state, train_split, perm, epoch_aug_key,
                                          dropout_key, epoch=epoch, steps=steps_per_epoch,
                                          steps_per_call=steps_per_call, bar=bar,
                                          manager=manager)
            t_train = time.perf_counter() - t0
            train_seconds += t_train
            ev = trainer.evaluate(state, eval_split)
            seconds = time.perf_counter() - t0
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean([h["loss"] for h in host])),
                "train_accuracy": float(np.mean([h["accuracy"] for h in host])),
                f"{eval_name}_loss": ev["loss"],
                f"{eval_name}_accuracy": ev["accuracy"],
                "seconds": round(seconds, 3),
                "train_images_per_s": round(steps_per_epoch * config.batch_size / t_train, 1),
            }
            history.append(record)
            rundir.save_checkpoint(manager, epoch, state, wait=False)
            if is_main:
                rundir.append_metrics(run_dir, record)
                if plotted is not None:
                    plotted.result()  # the previous epoch's, long done; raises if it failed
                plotted = plotter.submit(rundir.plot_curves, list(history), run_dir / "curves.png",
                                         eval_name)
            if verbose:
                tqdm.write(
                    f"epoch {epoch:2d}  train loss {record['train_loss']:.4f} "
                    f"acc {100 * record['train_accuracy']:.2f}%  {eval_name} loss "
                    f"{ev['loss']:.4f} acc {100 * ev['accuracy']:.2f}%  {seconds:.1f}s",
                    file=sys.stderr,
                )
    except KeyboardInterrupt:
        manager.wait_until_finished()  # the last finished epoch's checkpoint, complete
        raise
    manager.wait_until_finished()
    plotter.shutdown()
    if plotted is not None:
        plotted.result()
    if history and verbose:
        final = history[-1]
        best = max(history, key=lambda h: h[f"{eval_name}_accuracy"])
        wall = time.perf_counter() - t_run
        images = (len(history) - start_epoch) * steps_per_epoch * config.batch_size
        print(
            f"final {eval_name} accuracy {100 * final[f'{eval_name}_accuracy']:.2f}% "
            f"(epoch {final['epoch']}); best {100 * best[f'{eval_name}_accuracy']:.2f}% at epoch "
            f"{best['epoch']} (chosen on the {eval_name} set); wall {wall:.0f}s; "
            f"{images / max(train_seconds, 1e-9):.0f} train images/s on "
            f"{jax.device_count()}x {jax.devices()[0].platform}"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
        )
    return state


def _parse_args(argv):
    from jaxmnist.cli import architecture, positive_float, positive_int, unit_interval

    p = ArgumentParser(prog="python -m jaxmnist.train", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(configs.RECIPES), default="default")
    p.add_argument("--name", help="run name (default: the recipe's)")
    p.add_argument("--out", default="runs", help="parent of the run directory (default runs/)")
    p.add_argument("--data-dir", help="folder with the four MNIST IDX .gz files "
                   "(default $JAXMNIST_DATA_DIR; unset: TFDS downloads MNIST)")
    p.add_argument("--tfds-dir", help="TFDS data dir (default TFDS's own, e.g. $TFDS_DATA_DIR)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--summary", action="store_true", help="print the layer table and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--max-steps", type=positive_int,
                   help="cut every epoch to N steps (smoke tests)")
    p.add_argument("--steps-per-call", type=positive_int, default=1, metavar="K",
                   help="train K steps per jitted call, in a lax.scan (default 1: a "
                        "Python loop over steps, fastest on CPU)")
    multihost.add_arguments(p)
    g = p.add_argument_group("config (defaults come from the recipe)")
    types = {"arch": architecture, "epochs": positive_int, "batch_size": positive_int,
             "lr": positive_float,
             "momentum": unit_interval, "dropout": unit_interval, "warmup_fraction": unit_interval,
             "validation": int, "seed": int, "eval_batch_size": positive_int,
             "rotate_degrees": float, "shift_pixels": float}
    for field in dataclasses.fields(configs.Config):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif field.name == "schedule":
            g.add_argument(flag, choices=["constant", "onecycle"], default=None)
        else:
            g.add_argument(flag, type=types[field.name], default=None)
    args = p.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(configs.Config)
                 if getattr(args, f.name) is not None}
    config = dataclasses.replace(configs.RECIPES[args.recipe](), **overrides)
    if config.validation < 0 or config.validation >= 60_000:
        p.error(f"--validation must be in [0, 60000), got {config.validation}")
    if config.rotate_degrees < 0 or config.shift_pixels < 0:
        p.error("--rotate-degrees and --shift-pixels must be >= 0")
    if multihost.requested(args):
        multihost.check_arguments(p, args)
    return p, args, config


def main(argv=None) -> int:
    prog = "python -m jaxmnist.train"
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_libraries()
    _, args, config = _parse_args(argv)
    if args.summary:
        model = make_model(config)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
        print(f"{'layer':<12} {'output':<14} {'params':>8}")
        for name, shape, n in summary(model, variables):
            print(f"{name:<12} {'x'.join(map(str, shape)):<14} {n:>8,}")
        print(f"{'total':<12} {'':<14} {count_params(variables['params']):>8,}")
        return 0
    if multihost.requested(args):
        return multihost.run(prog, argv, args, lambda: _train(prog, args, config))
    return _train(prog, args, config)


def _train(prog: str, args, config: configs.Config) -> int:
    run_dir = Path(args.out) / (args.name or args.recipe)
    try:
        check_writable_dir(run_dir)
        train_and_evaluate(config, run_dir, args.data_dir, args.tfds_dir, args.resume,
                           progress=not args.no_progress, max_steps=args.max_steps,
                           steps_per_call=args.steps_per_call)
    except (UsageError, data.DataError) as e:
        fail(prog, str(e))
    except TrainingDiverged as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; the newest checkpoint in {run_dir} is the last finished "
              "epoch: continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
