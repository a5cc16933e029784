"""The committed recipes' final checkpoints scored again on the test set, with test-time
augmentation: a probe of the size of its effect, not a way to choose.

    python experiments/tta_probe.py [--data-dir DIR] [RUN ...]

Each run (default: every committed run of `default`, `fast`, `tiny`, `micro`, `nano`,
experiments/results/<recipe>[-seedN], and of their earlier versions,
superseded/<recipe>-...) is loaded from its newest checkpoint and evaluated
once on the 10,000 test images with 8 shifts (`--tta 8`, jaxmnist.steps.eval_step),
which also gives the single pass and 4 shifts from the same evaluation. The single pass
is the run's own final test accuracy again (within an image or two where this CPU is
not the one that trained it). Writes experiments/results/studies/tta_probe.jsonl, one
line per run; `summarize.py`'s `tta-probe` table groups the seeds. How many shifts a
recipe uses is chosen on the validation split (docs/frontier.md), not here.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import jax

from jaxmnist import data, files, parallel, rundir, steps
from jaxmnist.bench import host_cpu

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
OUT = RESULTS / "studies" / "tta_probe.jsonl"
RECIPES = ("default", "fast", "tiny", "micro", "nano")


def committed_runs() -> list[Path]:
    """The recipes' runs, then their earlier versions (superseded/<recipe>-...)."""
    return [run for recipe in RECIPES
            for run in [RESULTS / recipe, *sorted(RESULTS.glob(f"{recipe}-seed*")),
                        *sorted(RESULTS.glob(f"superseded/{recipe}-*"))]
            if (run / "checkpoints").is_dir()]


def probe(run: Path, test: data.Split) -> dict:
    config = rundir.read_config(run)
    _, variables = rundir.load_trained(run)
    trainer = parallel.Trainer(dataclasses.replace(config, tta=8))
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    # The evaluated variables (an average of the weights where the run kept one).
    state = state.replace(params=variables["params"],
                          batch_stats=variables.get("batch_stats", {}), ema=None)
    result = trainer.evaluate(trainer.put(state), test)
    recorded = rundir.read_metrics(run)[-1]["test_accuracy"]
    return {"run": str(run.relative_to(ROOT)), "arch": config.arch, "epochs": config.epochs,
            "seed": config.seed, "recorded_test_accuracy": recorded,
            "test_accuracy_by_shifts": result["accuracy_by_shifts"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="run directories (default: the recipes')")
    p.add_argument("--data-dir", help="MNIST's IDX files (default: $JAXMNIST_DATA_DIR or TFDS)")
    args = p.parse_args(argv)
    runs = [r.resolve() for r in args.runs] or committed_runs()
    for run in runs:
        if not (run / "checkpoints").is_dir():
            p.error(f"{run}: no checkpoints to evaluate")
    _, test = data.load_mnist(args.data_dir)
    lines, cpu, date = [], host_cpu(), datetime.date.today().isoformat()
    for run in runs:
        line = probe(run, test) | {"cpu": cpu, "date": date}
        print(json.dumps(line), flush=True)
        lines.append(json.dumps(line))
    files.write_atomic(OUT, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
