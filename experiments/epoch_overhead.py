"""What an epoch costs besides training: evaluation, the checkpoint, the metrics line and
the curves, each timed on its own (median of --repeats), for the default recipe; the
checkpoint both as a blocking save and as what a background save blocks.

    python experiments/epoch_overhead.py [--tfds-dir DIR] [--repeats 5] [--out FILE]

On a GPU an epoch of training takes well under a second, so work that costs a sizeable
fraction of that per epoch belongs off the training loop's critical path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax

from jaxmnist import configs, data, parallel, rundir, steps
from jaxmnist.bench import host_cpu

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int, before=None) -> dict:
    """Median, min and max seconds of `fn()` over `repeats` calls after a warm-up call
    (compilation, imports, first-file costs); `before()` runs before each, unclocked."""
    seconds = []
    for _ in range(repeats + 1):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    seconds = seconds[1:]
    return {"median_s": round(statistics.median(seconds), 5),
            "min_s": round(min(seconds), 5), "max_s": round(max(seconds), 5)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tfds-dir")
    p.add_argument("--data-dir")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "experiments/results/studies/epoch_overhead.json"))
    args = p.parse_args(argv)

    config = configs.default()
    trainer = parallel.Trainer(config)
    train_split, test_split = data.load_mnist(args.data_dir, args.tfds_dir,
                                              device_put=trainer.put)
    state = trainer.put(steps.create_train_state(config, jax.random.key(0), 468))
    history = rundir.read_metrics(REPO / "experiments/results/default")  # 20 epochs
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        manager = rundir.checkpoint_manager(run_dir)
        epoch = iter(range(1, 10_000))
        results["evaluate_10k_test_images"] = timed(
            lambda: trainer.evaluate(state, test_split), args.repeats)
        results["save_checkpoint"] = timed(
            lambda: rundir.save_checkpoint(manager, next(epoch), state), args.repeats)
        # What the training loop waits for: orbax copies the state to the host and writes
        # it in a thread (the previous epoch's write is long done by then).
        background = rundir.checkpoint_manager(run_dir / "async", asynchronous=True)
        results["save_checkpoint_in_background"] = timed(
            lambda: rundir.save_checkpoint(background, next(epoch), state, wait=False),
            args.repeats, before=background.wait_until_finished)  # the previous epoch's
        background.wait_until_finished()
        results["append_metrics_line"] = timed(
            lambda: rundir.append_metrics(run_dir, history[-1]), args.repeats)
        results["plot_curves_20_epochs"] = timed(
            lambda: rundir.plot_curves(history, run_dir / "curves.png"), args.repeats)
    out = {
        "command": "python experiments/epoch_overhead.py",
        "host_cpu": host_cpu(),
        "device": f"{jax.device_count()}x {jax.devices()[0].platform}:"
                  f"{jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "repeats": args.repeats,
        "per_epoch": results,
    }
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
