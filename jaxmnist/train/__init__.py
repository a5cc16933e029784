"""Train a net of the family on MNIST (the command line, `python -m jaxmnist.train`, is
this package's `__main__.py`; this module imports no command line).

The loop of Flax's examples/mnist: `train_epoch` and `train_and_evaluate(config,
workdir)`, over the state and steps of `jaxmnist.steps` (`create_train_state`,
`train_step`, `eval_step`) compiled by `jaxmnist.parallel.Trainer`. The loop is a
Python loop over a jitted step; batches are cut on the device from a
device-resident copy of each split, and with several devices each batch is sharded over
a 1-D mesh ("data") while the state stays replicated. The mesh may span several
processes (hosts): see `jaxmnist.multihost`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxmnist import configs, data, files, multihost, rundir
from jaxmnist.parallel import Trainer
from jaxmnist.steps import TrainState, create_train_state, whitening_of

log = logging.getLogger("jaxmnist")


class TrainingDiverged(RuntimeError):
    """The training loss stopped being finite."""


class Stopped(Exception):
    """Raised by an `on_step` callback to stop training at the next step (the lab's
    cancel); the epochs already complete keep their checkpoints."""


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
                on_steps=None, on_step=None) -> tuple[TrainState, list[dict]]:
    """Epoch `epoch`: the first `steps` batches of `perm`, `config.steps_per_call` per
    jitted call. Returns the state and each step's metrics (host floats). The losses are
    checked every 50 steps (a non-finite one raises TrainingDiverged); `on_steps(n,
    metrics)` is called then with the steps done and the newest steps' metrics.
    `on_step(epoch, n, steps)`, if given, is called after each jitted call is dispatched
    (it may raise Stopped). The first `config.small_epochs` epochs train on images
    resized to `config.small_size` (progressive resizing)."""
    config = trainer.config
    size = config.small_size if epoch <= config.small_epochs else None
    pending: list[dict] = []  # step metrics on the device, not yet checked
    host: list[dict] = []  # those checked, one per step
    done = 0
    while done < steps:
        n = min(config.steps_per_call, steps - done)
        if n == 1:
            batch = trainer.get_batch(split, perm, done, augment_key, size=size)
            state, m = trainer.train_step(state, batch, dropout_key)
        else:
            state, m = trainer.train_steps(state, split, perm, done, augment_key,
                                           dropout_key, n, size=size)
        pending.append(m)
        done += n
        if on_step is not None:
            on_step(epoch, done, steps)
        if done // 50 > (done - n) // 50 or done == steps:
            chunk, pending = per_step(pending), []
            for j, cm in enumerate(chunk):
                if not math.isfinite(cm["loss"]):
                    raise TrainingDiverged(
                        f"non-finite training loss ({cm['loss']}) at epoch {epoch}, "
                        f"step {len(host) + j + 1} of {steps}")
            host.extend(chunk)
            if on_steps is not None:
                on_steps(done, chunk)
    return state, host


def _show_steps(bar, done: int, chunk: list[dict]) -> None:
    accuracy = 100 * np.mean([c["accuracy"] for c in chunk])
    bar.update(done - bar.n)
    bar.set_postfix(loss=f"{chunk[-1]['loss']:.4f}", acc=f"{accuracy:.2f}%")


def load_splits(trainer: Trainer, config: configs.Config, data_dir, tfds_dir):
    """(train, eval) on the trainer's devices: eval is the validation split if
    `config.validation`, else the test set. Across processes process 0 prepares the
    TFDS dataset first, once, while the others wait."""
    if jax.process_count() > 1 and multihost.is_main():
        data.mnist_builder(data_dir, tfds_dir)
    multihost.sync("jaxmnist: MNIST prepared")
    return data.load_mnist(data_dir, tfds_dir, config.validation, device_put=trainer.put)


def train_and_evaluate(config: configs.Config, workdir: str | os.PathLike, *,
                       splits: tuple[data.Split, data.Split] | None = None,
                       data_dir=None, tfds_dir=None, resume: bool = False, devices=None,
                       progress: bool = False, teacher=None, on_step=None) -> TrainState:
    """Trains `config`, evaluating after each epoch; writes config.json, metrics.jsonl,
    curves.png and a checkpoint per epoch to `workdir`. Returns the final state.

    A teacher (`config.teacher`) is loaded first, unless given as `teacher` (model,
    variables: `rundir.load_teacher`'s); its forward passes are part of each step (or,
    with `config.distill_once`, of the first epoch), and so of the epochs' seconds.
    `splits` (train, eval) are used instead of MNIST from `data_dir` / `tfds_dir`
    (`data.load_mnist`); `resume` continues from the newest checkpoint; `devices`
    (default: all) form the mesh; `progress` shows a bar per epoch; `on_step(epoch, n,
    steps)` is called after every step (`train_epoch`) and may raise Stopped, which ends
    the run once the complete epochs' checkpoints are written. Each epoch's line
    goes to the "jaxmnist" logger. Everything that can be checked without data is
    checked before anything is loaded or written. Over several processes only process 0
    writes files (orbax coordinates the checkpoints) and logs."""
    workdir = Path(workdir)
    is_main = multihost.is_main()
    rundir.check(workdir, config, resume)
    if teacher is None:
        teacher = rundir.load_teacher(config)
    trainer = Trainer(config, devices)
    if splits is None:
        splits = load_splits(trainer, config, data_dir, tfds_dir)
    else:
        splits = tuple(trainer.put(s) for s in splits)
    train_split, eval_split = splits
    # Distilling from logits computed once: those of every training image, here, in the
    # first epoch's seconds; the state then needs no teacher.
    setup_seconds = 0.0
    if teacher is not None and config.distill_once:
        t0 = time.perf_counter()
        logits = jax.block_until_ready(trainer.logits(*teacher, train_split))
        train_split, teacher = dataclasses.replace(train_split, teacher_logits=logits), None
        setup_seconds = time.perf_counter() - t0
    eval_name = "val" if config.validation else "test"
    steps_per_epoch = len(train_split) // config.batch_size
    if steps_per_epoch == 0:
        raise configs.ConfigError("batch_size", f"{config.batch_size} is larger than the "
                                  f"{len(train_split)} training images")
    if config.max_steps:
        steps_per_epoch = min(steps_per_epoch, config.max_steps)
    # Every process has checked the run directory before process 0 writes to it.
    multihost.sync("jaxmnist: run directory checked")
    with _naming_the_last_checkpoint_on_write_failure(workdir):
        if is_main:
            workdir.mkdir(parents=True, exist_ok=True)
            rundir.write_config(workdir, config)
        init_key, data_key, dropout_key, augment_key = jax.random.split(
            jax.random.key(config.seed), 4)
        # A whitening layer's kernel is computed from the training images: part of the
        # first epoch's seconds too.
        t0 = time.perf_counter()
        whitening = whitening_of(config, train_split)
        if whitening is not None:
            jax.block_until_ready(whitening)
            setup_seconds += time.perf_counter() - t0
        state = trainer.put(create_train_state(config, init_key, steps_per_epoch, teacher,
                                               whitening))
        start_epoch = 0
        if resume:
            start_epoch, state = _resume(workdir, state)
            state = trainer.put(state)
        # The metrics of the epochs the checkpoint holds; later lines (an epoch that was
        # interrupted after its line was written) are dropped.
        history = rundir.truncate_metrics(workdir, start_epoch) if is_main else []
        # Checkpoints are written in a thread, off the training loop (as the curves).
        manager = rundir.checkpoint_manager(workdir, asynchronous=True)
        plotter = ThreadPoolExecutor(max_workers=1)
        plotted = None
        try:
            for epoch in range(start_epoch + 1, config.epochs + 1):
                t0 = time.perf_counter() - setup_seconds
                setup_seconds = 0.0
                perm = trainer.permutation(jax.random.fold_in(data_key, epoch),
                                           len(train_split), config.batch_size)
                with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                          disable=not (progress and is_main), leave=False, unit="step",
                          dynamic_ncols=True) as bar:
                    state, host = train_epoch(trainer, state, train_split, perm,
                                              jax.random.fold_in(augment_key, epoch),
                                              dropout_key, epoch=epoch, steps=steps_per_epoch,
                                              on_steps=functools.partial(_show_steps, bar),
                                              on_step=on_step)
                t_train = time.perf_counter() - t0
                ev = trainer.evaluate(state, eval_split)
                record = rundir.metrics_record(epoch, host, ev, eval_name,
                                               time.perf_counter() - t0, t_train,
                                               steps_per_epoch * config.batch_size)
                history.append(record)
                # The metrics line first: a checkpoint that fails to be written leaves a
                # line too many, which resuming drops; never a checkpoint without its line.
                if is_main:
                    rundir.append_metrics(workdir, record)
                rundir.save_checkpoint(manager, epoch, state, wait=False)
                if is_main:
                    if plotted is not None:
                        plotted.result()  # the previous epoch's, long done; raises if it failed
                    plotted = plotter.submit(rundir.plot_curves, list(history),
                                             workdir / "curves.png", eval_name)
                    log.info(f"epoch {epoch:2d}  train loss {record['train_loss']:.4f} acc "
                             f"{100 * record['train_accuracy']:.2f}%  {eval_name} loss "
                             f"{ev['loss']:.4f} acc {100 * ev['accuracy']:.2f}%"
                             f"{rundir.shifts_note(ev, config.tta)}  "
                             f"{record['seconds']:.1f}s")
            rundir.wait_for_saves(manager)
            if plotted is not None:
                plotted.result()
        except TrainingDiverged as e:
            rundir.wait_for_saves(manager)
            last = manager.latest_step()
            kept = (f"the last good checkpoint (epoch {last}) is kept" if last
                    else "no checkpoint had been saved yet")
            raise TrainingDiverged(f"{e}; {kept}") from None
        except (KeyboardInterrupt, Stopped):
            rundir.wait_for_saves(manager)  # the last finished epoch's checkpoint, complete
            raise
        finally:
            plotter.shutdown()
            rundir.close(manager)
    return state


def _resume(workdir: Path, state: TrainState) -> tuple[int, TrainState]:
    """(epoch, state) of the newest readable checkpoint; unreadable newer ones are moved
    to damaged-checkpoints/ (by process 0), so that their epochs can be saved again."""
    reader = rundir.checkpoint_manager(workdir)
    try:
        epoch, state, unreadable = rundir.restore_newest_readable(reader, state)
    finally:
        rundir.close(reader)
    if unreadable and multihost.is_main():
        aside = rundir.set_aside(workdir, unreadable)
        log.warning(f"moved the unreadable checkpoints to {aside}; resuming after epoch {epoch}")
    multihost.sync("jaxmnist: checkpoint chosen")
    return epoch, state


@contextlib.contextmanager
def _naming_the_last_checkpoint_on_write_failure(workdir: Path):
    """A files.WriteError raised inside says which epoch's checkpoint is complete, and how
    to go on from it."""
    try:
        yield
    except files.WriteError as e:
        epochs = rundir.complete_epochs(workdir) if (workdir / "checkpoints").is_dir() else []
        done = (f"the checkpoint of epoch {epochs[0]} is complete" if epochs
                else "no epoch's checkpoint is complete yet")
        raise files.WriteError(e.path, e.cause, f"{done}: free space (or make it writable), "
                               "then continue with --resume") from None

