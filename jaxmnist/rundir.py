"""A training run's directory: config.json, metrics.jsonl, curves.png and checkpoints/.

`jaxmnist.train` writes a run through these functions; `predict` and `serve` read one
(`load_trained`).
Everything is written atomically (a temporary file or directory renamed when complete),
so an interrupted run leaves its previous epoch's files intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from jaxmnist import configs, files, steps


class RunDirError(files.PathError):
    """A directory that cannot be used as, or is not, the run asked for."""


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
        "seconds": round(seconds, 3),
        "train_images_per_s": round(images / train_seconds, 1),
    }


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
    """orbax's manager of `run_dir`/checkpoints, keeping the newest. `asynchronous`:
    a save returns once the state is copied to the host, and is written in a thread."""
    # orbax (seconds of start-up) only where checkpoints are read or written: the
    # command lines check their input and answer --summary without it.
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (Path(run_dir) / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                             enable_async_checkpointing=asynchronous),
    )


def _state_dict(state) -> dict:
    saved = {**state.variables(), "opt_state": state.opt_state, "step": state.step}
    if state.ema is not None:
        saved["ema"] = state.ema
    return saved


def save_checkpoint(manager, epoch: int, state, wait: bool = True) -> None:
    """Saves the train state after `epoch` (and waits until it is written, unless not
    `wait`); orbax writes to a temporary directory and renames it when complete, so a
    crash mid-save leaves the previous checkpoint intact."""
    import orbax.checkpoint as ocp  # (see checkpoint_manager)

    manager.save(epoch, args=ocp.args.StandardSave(_state_dict(state)))
    if wait:
        manager.wait_until_finished()


def restore_checkpoint(manager, state, epoch: int | None = None):
    """(epoch, state) from the newest (or the given) checkpoint, or (0, state) if none;
    `state` gives the structure, shapes and shardings to restore into."""
    import orbax.checkpoint as ocp  # (see checkpoint_manager)

    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
        return 0, state
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_dict(state))
    restored = manager.restore(epoch, args=ocp.args.StandardRestore(target))
    return epoch, state.replace(**restored)


def load_trained(run_dir: str | os.PathLike):
    """(model, variables) of the newest checkpoint in `run_dir` (uses its config.json);
    the variables are those it was evaluated with (`steps.eval_variables`)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    manager = checkpoint_manager(run_dir)
    if manager.latest_step() is None:
        raise RunDirError(f"{run_dir}: no checkpoint")
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    _, state = restore_checkpoint(manager, state)
    return steps.make_model(config), steps.eval_variables(state)
