"""A training run's directory: config.json, metrics.jsonl, curves.png and checkpoints/.

`jaxmnist.train` writes a run through these functions; `predict` and `serve` read one
(`load_trained`).
Everything is written atomically (a temporary file or directory renamed when complete),
so an interrupted run leaves its previous epoch's files intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxmnist import configs, files, steps


class RunDirError(files.PathError):
    """A directory that cannot be used as, or is not, the run asked for."""


class CheckpointError(RunDirError):
    """A run none of whose checkpoints can be read back."""


class CheckpointDamaged(Exception):
    """A checkpoint read back with values other than those it was saved with."""


# Checkpoints kept: the newest, and one to fall back on if the newest is damaged.
KEEP = 2
# {epoch: state_digest} of the kept checkpoints, in the run directory.
DIGESTS = "checkpoint_digests.json"
log = logging.getLogger("jaxmnist")


def read_config(run_dir: Path) -> configs.Config:
    """The run's config.json, or a RunDirError saying why there is none."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise RunDirError(f"{run_dir}: no config.json (not a training run directory)")
    try:
        return configs.Config.from_dict(json.loads(config_path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise RunDirError(f"{config_path}: unreadable ({e})") from None


def write_config(run_dir: Path, config: configs.Config) -> None:
    files.write_atomic(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")


def check(run_dir: Path, config: configs.Config, resume: bool) -> None:
    """Refuses to mix two runs in one directory. Writes nothing."""
    files.check_writable_dir(run_dir)
    if not (run_dir / "config.json").exists():
        return
    old, new = read_config(run_dir).to_dict(), config.to_dict()
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise RunDirError(f"{run_dir} holds a run with a different config ("
                          + ", ".join(f"{k} {old.get(k)!r} there, {new.get(k)!r} here"
                                      for k in diff) + "): use another directory")
    if not resume:
        raise RunDirError(f"{run_dir} already holds this run: resume it, or use another "
                          "directory")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, epochs: int) -> list[dict]:
    """Keeps the first `epochs` lines of metrics.jsonl (creating it if need be); returns them."""
    history = read_metrics(run_dir)[:epochs]
    files.write_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    return history


def metrics_record(epoch: int, step_metrics: list[dict], evaluation: dict, eval_name: str,
                   seconds: float, train_seconds: float, images: int) -> dict:
    """One line of metrics.jsonl: the means of the epoch's `step_metrics`, the
    evaluation's loss and accuracy, the epoch's seconds and training throughput."""
    return {
        "epoch": epoch,
        "train_loss": float(np.mean([s["loss"] for s in step_metrics])),
        "train_accuracy": float(np.mean([s["accuracy"] for s in step_metrics])),
        f"{eval_name}_loss": evaluation["loss"],
        f"{eval_name}_accuracy": evaluation["accuracy"],
        # with test-time augmentation, the accuracy of 0, 4 (and 8) shifts: the one pass
        # and the fewer shifts come with the same evaluation
        **({f"{eval_name}_accuracy_by_shifts": evaluation["accuracy_by_shifts"]}
           if "accuracy_by_shifts" in evaluation else {}),
        "seconds": round(seconds, 3),
        "train_images_per_s": round(images / train_seconds, 1),
    }


def shifts_note(evaluation: dict, tta: int) -> str:
    """What an accuracy with test-time augmentation is, for a log line: " with 8 shifts
    (single pass 99.22%)"; "" for one pass."""
    if not tta:
        return ""
    single = evaluation["accuracy_by_shifts"]["0"]
    return f" with {tta} shifts (single pass {100 * single:.2f}%)"


def append_metrics(run_dir: Path, record: dict) -> None:
    files.append_line(run_dir / "metrics.jsonl", json.dumps(record))


def plot_curves(history: list[dict], path: Path, eval_name: str = "test") -> None:
    """Train/eval loss and accuracy against epochs. Safe to call from a thread: it
    draws on a Figure of its own, without pyplot's global state."""
    # matplotlib (a second of start-up) only where curves are drawn: predict and serve
    # read runs without it.
    import matplotlib.figure
    import matplotlib.ticker

    epochs = [h["epoch"] for h in history]
    fig = matplotlib.figure.Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h[f"{eval_name}_loss"] for h in history], "o-", label=eval_name)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h[f"{eval_name}_accuracy"] for h in history], "o-",
                label=eval_name)
    ax_acc.axhline(99.4, color="grey", ls="--", lw=1, label="99.4 %")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy", ylim=(97.5, 100))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    files.replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))


def checkpoint_manager(run_dir: Path, asynchronous: bool = False):
    """orbax's manager of `run_dir`/checkpoints, keeping the newest `KEEP`. `asynchronous`:
    a save returns once the state is copied to the host, and is written in a thread."""
    # orbax (seconds of start-up) only where checkpoints are read or written: the
    # command lines check their input and answer --summary without it.
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (Path(run_dir) / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=KEEP,
                                             enable_async_checkpointing=asynchronous),
    )


def _state_dict(state) -> dict:
    saved = {**state.variables(), "opt_state": state.opt_state, "step": state.step}
    if state.ema is not None:
        saved["ema"] = state.ema
    return saved


def state_digest(state) -> str:
    """sha256 of the values a checkpoint holds (each leaf's path, dtype, shape and bytes;
    of this process's replica), to tell a checkpoint read back intact from a damaged one
    that orbax reads without complaint (a flipped byte in an array's data)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(_state_dict(state))[0]:
        value = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
        value = np.ascontiguousarray(np.asarray(value))
        if value.dtype.kind in "iu":  # the step counts, int32 or int64 as restored into
            value = value.astype(np.int64)
        digest.update(f"{jax.tree_util.keystr(path)} {value.dtype} {value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _digests_path(manager) -> Path:
    return Path(str(manager.directory)).parent / DIGESTS


def read_digests(manager) -> dict[int, str]:
    """{epoch: state_digest} of the checkpoints saved with one (`DIGESTS`); runs saved
    before digests existed have none, and are checked only by reading them back."""
    try:
        return {int(k): v for k, v in json.loads(_digests_path(manager).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _checkpoint_path(manager, epoch: int) -> str:
    return str(Path(str(manager.directory)) / str(epoch))


def save_checkpoint(manager, epoch: int, state, wait: bool = True) -> None:
    """Saves the train state after `epoch` (and waits until it is written, unless not
    `wait`), and its digest beside it (`DIGESTS`); orbax writes to a temporary directory
    and renames it when complete, so a crash mid-save leaves the previous checkpoint
    intact. A write that fails raises files.WriteError naming the path."""
    import orbax.checkpoint as ocp  # (see checkpoint_manager)

    _quiet_late_write_failures()
    if jax.process_index() == 0:  # the digests are a file of the run, written by process 0
        kept = set(manager.all_steps()) | {epoch}
        digests = {k: v for k, v in read_digests(manager).items() if k in kept}
        digests[epoch] = state_digest(state)
        files.write_atomic(_digests_path(manager), json.dumps(
            {str(k): v for k, v in sorted(digests.items())}, indent=1) + "\n")
    try:
        manager.save(epoch, args=ocp.args.StandardSave(_state_dict(state)))
        if wait:
            manager.wait_until_finished()
    except Exception as e:  # orbax and TensorStore wrap the OSError's text in their own
        raise files.WriteError(_failed_path(e, _checkpoint_path(manager, epoch)), e) from None


def wait_for_saves(manager) -> None:
    """Waits until the checkpoints being written in the background are complete; a
    write that failed raises files.WriteError naming the path."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        raise files.WriteError(_failed_path(e, str(manager.directory)), e) from None


def _failed_path(error: BaseException, default: str) -> str:
    """The file an orbax or TensorStore write error names (`local file "..."`), else
    `default`."""
    match = re.search(r'local file "([^"]+)"', str(error))
    return match[1].rstrip("/") if match else default


def close(manager) -> None:
    """Ends `manager`'s background threads. Its writes were waited for already, or failed
    and are being reported, so an error here adds nothing."""
    try:
        manager.close()
    except Exception:
        pass


def complete_epochs(run_dir: Path) -> list[int]:
    """The epochs whose checkpoints are complete on disk (renamed into place), newest
    first; read afresh, so that it holds after a failed save."""
    manager = checkpoint_manager(run_dir)
    try:
        return sorted(manager.all_steps(), reverse=True)
    finally:
        close(manager)


_IN_FLIGHT_GRACE_S = 0.5


def _unretrieved_orbax_errors(record: logging.LogRecord) -> bool:
    """False for asyncio's report of a failed checkpoint read or write nobody awaited."""
    return "exception was never retrieved" not in record.getMessage()


def _late_callback_on_a_closed_loop(unraisable) -> bool:
    """TensorStore's report of a write or read that finished after orbax had closed the
    event loop that awaited it (orbax stops at the first failed write and closes its
    loop; the writes still in flight end on TensorStore's threads moments later)."""
    frames = []
    tb = unraisable.exc_traceback
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
            and any(f.endswith(os.path.join("asyncio", "base_events.py")) for f in frames))


_quiet = False


def _quiet_late_write_failures() -> None:
    """From the first checkpoint written on: the writes that end after a failed one had
    ended the save say nothing (TensorStore's "Event loop is closed" tracebacks, asyncio's
    "Task exception was never retrieved"), at any time until the process exits. The
    failure itself is reported, in one line, by `save_checkpoint` or `wait_for_saves`."""
    global _quiet
    if _quiet:
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _late_callback_on_a_closed_loop(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_unretrieved_orbax_errors)
    _quiet = True


class _QuietOrbax:
    """Keeps orbax's and TensorStore's own reports of an unreadable checkpoint off stderr
    while it is tried (absl log lines, asyncio's "Task exception was never retrieved", and
    the tracebacks of reads still in flight when the restore gives up): the one line
    that reports it is this module's."""

    def __enter__(self):
        self.levels = {name: logging.getLogger(name).level for name in ("absl", "asyncio")}
        for name in self.levels:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.stderr, sys.stderr = sys.stderr, io.StringIO()

    def __exit__(self, kind, *exc):
        if kind is not None:
            # Reads still in flight when the restore gave up finish on TensorStore's
            # threads and print their tracebacks ("Event loop is closed") a few
            # milliseconds later, and their futures log "exception was never retrieved"
            # whenever they are collected: they too belong to the one line.
            time.sleep(_IN_FLIGHT_GRACE_S)
            logging.getLogger("asyncio").addFilter(_unretrieved_orbax_errors)
        sys.stderr = self.stderr
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def restore_checkpoint(manager, state, epoch: int | None = None):
    """(epoch, state) from the newest (or the given) checkpoint, or (0, state) if none;
    `state` gives the structure, shapes and shardings to restore into. A checkpoint whose
    values differ from the digest saved with it raises CheckpointDamaged."""
    import orbax.checkpoint as ocp  # (see checkpoint_manager)

    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
        return 0, state
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_dict(state))
    with _QuietOrbax():
        restored = manager.restore(epoch, args=ocp.args.StandardRestore(target))
    state = state.replace(**restored)
    expected = read_digests(manager).get(epoch)
    if expected is not None and state_digest(state) != expected:
        raise CheckpointDamaged("its values differ from those it was saved with")
    return epoch, state


def damage(error: BaseException) -> str:
    """What is wrong with a checkpoint that could not be read, in a few words."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, CheckpointDamaged):
        return text
    if isinstance(error, FileNotFoundError) or "NOT_FOUND" in text or "does not exist" in text:
        kind = "a file is missing"
    elif isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)) or any(
            code in text for code in ("OUT_OF_RANGE", "DATA_LOSS", "Unterminated")):
        kind = "a file is cut short or garbled"
    else:
        kind = "it cannot be read back"
    return f"{kind}: {text[:160]}{'…' if len(text) > 160 else ''}"


def restore_newest_readable(manager, state) -> tuple[int, object, list[int]]:
    """(epoch, state, unreadable epochs) from the newest checkpoint that can be read back,
    trying the older ones in turn; each one that cannot is reported on the "jaxmnist"
    logger in one line naming it and what is wrong, and the one used in another. (0,
    state, []) if there is none; CheckpointError (naming each) if none can be read."""
    epochs = sorted(manager.all_steps(), reverse=True)
    unreadable = []
    for epoch in epochs:
        try:
            _, restored = restore_checkpoint(manager, state, epoch)
        except Exception as e:  # damage shows as any error type orbax or TensorStore has
            unreadable.append((epoch, damage(e)))
            log.warning(f"{_checkpoint_path(manager, epoch)} cannot be read ({damage(e)})")
            continue
        if unreadable:
            log.warning(f"using the checkpoint of epoch {epoch}, the newest that can be read")
        return epoch, restored, [e for e, _ in unreadable]
    if unreadable:
        raise CheckpointError(f"{manager.directory}: no checkpoint can be read ("
                              + "; ".join(f"epoch {e}: {why}" for e, why in unreadable)
                              + "); nothing was changed")
    return 0, state, []


def set_aside(run_dir: Path, epochs: list[int]) -> Path:
    """Moves the checkpoints of `epochs` (unreadable ones) out of orbax's directory into
    `run_dir`/damaged-checkpoints/, so that a resumed run can save those epochs again;
    nothing is deleted. Returns where they went."""
    aside = Path(run_dir) / "damaged-checkpoints"
    aside.mkdir(exist_ok=True)
    for epoch in epochs:
        target, n = aside / str(epoch), 1
        while target.exists():
            target, n = aside / f"{epoch}-{n}", n + 1
        os.replace(Path(run_dir) / "checkpoints" / str(epoch), target)
    return aside


def load_trained(run_dir: str | os.PathLike):
    """(model, variables) of the newest checkpoint in `run_dir` that can be read back
    (uses its config.json; `restore_newest_readable`); the variables are those it was
    evaluated with (`steps.eval_variables`)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    manager = checkpoint_manager(run_dir)
    try:
        newest = manager.latest_step()
        if newest is None:
            raise RunDirError(f"{run_dir}: no checkpoint")
        if newest < config.epochs:  # stopped mid-way: said, so that it is not taken as done
            log.warning(f"{run_dir} is unfinished: its newest checkpoint is epoch {newest} of "
                        f"{config.epochs} ({resume_command(run_dir)} continues it)")
        state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
        _, state, _ = restore_newest_readable(manager, state)
    finally:
        close(manager)
    return steps.make_model(config), steps.eval_variables(state)


def progress(run_dir: str | os.PathLike) -> tuple[int, int]:
    """(epochs whose checkpoint is complete, the run's epochs): a run is finished when
    the two are equal; one stopped mid-way (a killed process, the lab's cancel) is not."""
    config = read_config(run_dir)
    done = complete_epochs(Path(run_dir)) if (Path(run_dir) / "checkpoints").is_dir() else []
    return (done[0] if done else 0), config.epochs


def resume_command(run_dir: str | os.PathLike) -> str:
    """The command that continues the run in `run_dir` from its config.json."""
    run_dir = Path(run_dir)
    return (f"python -m jaxmnist.train --out {shlex.quote(str(run_dir.parent))} "
            f"--name {shlex.quote(run_dir.name)} --resume")


def load_teacher(config: configs.Config):
    """(model, variables) of the trained run `config.teacher` names (`load_trained`), for
    distillation; None where it names none. A ConfigError naming the field where the run
    cannot be loaded or its net does not take MNIST's 28x28x1 images to 10 logits."""
    if not config.teacher:
        return None
    try:
        model, variables = load_trained(config.teacher)
    except RunDirError as e:
        raise configs.ConfigError("teacher", f"{config.teacher}: cannot be loaded ({e})") from None
    image = jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32)
    try:
        logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, image)
        shape = logits.shape
    except Exception as e:  # a net built for other images fails in its own way
        shape = f"no logits ({type(e).__name__})"
    if shape != (1, 10):
        raise configs.ConfigError("teacher", f"{config.teacher}: its net does not take 28x28x1 "
                                  f"images to 10 logits (got {shape})")
    return model, variables
