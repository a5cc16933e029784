"""A recipe's training time over one epoch of the seed net, in one sitting on this machine.

    python experiments/time_to_accuracy.py [--recipe fast] [--name NAME] [--seeds 0,1,2]
                                           [--data-dir DIR]

For each seed, alternating (the machine is noisy): one epoch of the seed recipe (into a
scratch folder, deleted after), then the recipe's whole run on the test set into
experiments/results/studies/time_to_accuracy/<name>[-seedN] (`--name`: the recipe's by default,
another to keep earlier sittings, e.g. on another CPU; the committed runs of
experiments/results/<recipe>* are left alone; an existing run there stops the script
before anything is trained). The time of a run is
the sum of its epochs' `seconds` in metrics.jsonl (training, evaluation, and in the
first epoch compilation, for both). Prints and appends to
experiments/results/studies/time_to_accuracy.jsonl: each pair's seconds and ratio, the median
ratio and each run's final test accuracy. Run it alone on the machine.

Each reference epoch is checked against `jaxmnist.bench` run just before it (the seed
net's steady-state train and eval images/s and its compile time give the epoch it
should take): a reference epoch more than `BUSY` times that is reported as taken on a
busy machine (its pair's ratio is then flattering), and each pair also records its
ratio to the bench's epoch.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxmnist import rundir
from jaxmnist.bench import host_cpu, usable_cores

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "studies"
RUNS = RESULTS / "time_to_accuracy"


# A reference epoch this many times the one bench predicts was slowed by other work.
BUSY = 1.2
MNIST_TRAIN, MNIST_TEST = 60_000, 10_000


def bench_epoch_seconds() -> float:
    """The seconds one epoch of the seed recipe should take on this machine now, from
    `python -m jaxmnist.bench --recipe seed` (not recorded): the training and test
    images at its train and eval images/s, plus its compile time."""
    out = subprocess.run([sys.executable, "-m", "jaxmnist.bench", "--recipe", "seed",
                          "--no-record"], check=True, cwd=ROOT, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return (MNIST_TRAIN / result["train_images_per_s"]
            + MNIST_TEST / result["eval_images_per_s"] + result["compile_s"])


def train(args: list[str], out: Path, name: str) -> list[dict]:
    """Runs `python -m jaxmnist.train` and returns the run's metrics records."""
    subprocess.run([sys.executable, "-m", "jaxmnist.train", "--no-progress", "--out", str(out),
                    "--name", name, *args], check=True, cwd=ROOT)
    return rundir.read_metrics(out / name)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fast")
    p.add_argument("--name", help="run name for seed 0, NAME-seedN for the others "
                   "(default: the recipe's)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data-dir", default=os.environ.get("JAXMNIST_DATA_DIR"))
    args = p.parse_args()
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    seeds = [int(s) for s in args.seeds.split(",")]
    base = args.name or args.recipe
    names = {seed: base if seed == 0 else f"{base}-seed{seed}" for seed in seeds}
    existing = [str(RUNS / n) for n in names.values() if (RUNS / n).exists()]
    if existing:
        p.error(f"{', '.join(existing)} already exist; move them away or pick another --name")
    pairs = []
    for seed in seeds:
        bench_epoch = bench_epoch_seconds()
        with tempfile.TemporaryDirectory() as scratch:
            seed_epoch = train(["--recipe", "seed", "--epochs", "1", *data], Path(scratch),
                               "seed-1-epoch")[0]["seconds"]
        name = names[seed]
        history = train(["--recipe", args.recipe, "--seed", str(seed), *data], RUNS, name)
        seconds = sum(r["seconds"] for r in history)
        pairs.append({"seed": seed, "run": f"experiments/results/studies/time_to_accuracy/{name}",
                      "seed_net_epoch_s": round(seed_epoch, 2),
                      "bench_epoch_s": round(bench_epoch, 2),
                      "busy": seed_epoch > BUSY * bench_epoch,
                      "recipe_s": round(seconds, 2), "ratio": round(seconds / seed_epoch, 3),
                      "ratio_to_bench_epoch": round(seconds / bench_epoch, 3),
                      "epochs": len(history),
                      "final_test_accuracy": history[-1]["test_accuracy"]})
        print(json.dumps(pairs[-1]), flush=True)
    summary = {
        "name": base, "recipe": args.recipe, "pairs": pairs,
        "median_ratio": round(statistics.median(x["ratio"] for x in pairs), 3),
        "median_ratio_to_bench_epoch": round(
            statistics.median(x["ratio_to_bench_epoch"] for x in pairs), 3),
        "cpu": host_cpu(), "cores": usable_cores(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    accuracies = ", ".join(f"{100 * x['final_test_accuracy']:.2f} %" for x in pairs)
    print(f"{args.recipe}: median {summary['median_ratio']:.2f}x one seed-net epoch; final test "
          f"accuracy {accuracies}")
    for x in pairs:
        if x["busy"]:
            print(f"seed {x['seed']}: the machine was busy during the reference epoch "
                  f"({x['seed_net_epoch_s']:.1f} s, where bench predicts "
                  f"{x['bench_epoch_s']:.1f} s): its ratio {x['ratio']:.2f}x is flattering; "
                  f"against bench's epoch it is {x['ratio_to_bench_epoch']:.2f}x")
    with (RESULTS / "time_to_accuracy.jsonl").open("a") as f:
        f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
