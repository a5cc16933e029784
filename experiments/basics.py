"""The seed net taken apart: `configs.BASICS`, each variant of `configs.basics_base()`
(the `default` recipe cut to `configs.BASICS_EPOCHS` epochs) with one choice changed,
trained on the test set for seeds 0, 1, 2.

    python experiments/basics.py [--seeds 0,1,2] [--only NAME,...] [--data-dir DIR]
    python experiments/basics.py --time [--rounds 2]

Runs go to experiments/results/studies/basics/<variant>-seed<N>, seed 0 of every variant
first, then seed 1, then seed 2 (a study cut short still covers every variant). A run
whose metrics are complete is skipped; one cut short is resumed; one that failed (its
loss stopped being finite) keeps its error line in failed.txt and is not run again.
Each run's checkpoints are deleted once it is complete (the study keeps config, metrics
and curves). Run it in
the background (`nohup python experiments/basics.py > basics.log 2>&1 &`); the table
is `python experiments/summarize.py` (docs/architecture.md).

`--time` measures what each variant costs instead, with the machine to itself: each
variant's train step and evaluation by `jaxmnist.bench` (steady state, compilation
apart), the variants in turn, `--rounds` times over; it rewrites
experiments/results/studies/basics_timing.jsonl, one line per variant and round. The
study's runs shared the machine with other work, so their own seconds are not speeds.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from jaxmnist import configs, files, rundir
from jaxmnist.train.__main__ import config_flags

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "experiments" / "results" / "studies" / "basics"
TIMING = ROOT / "experiments" / "results" / "studies" / "basics_timing.jsonl"
FAILED = "failed.txt"  # in a run that ended in an error (a loss that stopped being finite)


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def complete(run_dir: Path, epochs: int) -> bool:
    return (run_dir / "metrics.jsonl").exists() and len(rundir.read_metrics(run_dir)) >= epochs


def time_variants(variants: list[str], rounds: int) -> None:
    """Each variant's steady-state train and eval images/s (`bench.bench`), in turn."""
    from jaxmnist.bench import bench

    lines = []
    for round_ in range(1, rounds + 1):
        for variant in variants:
            result = bench(configs.basics_config(variant), steps=60, eval_steps=10)
            result.update(variant=variant, round=round_)
            print(json.dumps(result), flush=True)
            lines.append(json.dumps(result))
    files.write_atomic(TIMING, "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", help="comma-separated variants (default: all)")
    p.add_argument("--data-dir")
    p.add_argument("--time", action="store_true", help="time each variant's steps instead")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    variants = args.only.split(",") if args.only else list(configs.BASICS)
    if args.time:
        time_variants(variants, args.rounds)
        return 0
    for seed in map(int, args.seeds.split(",")):
        for variant in variants:
            config = configs.basics_config(variant)
            run_dir = RUNS / run_name(variant, seed)
            if complete(run_dir, config.epochs) or (run_dir / FAILED).exists():
                continue
            command = [sys.executable, "-m", "jaxmnist.train", "--recipe", "default",
                       "--no-progress", "--out", str(RUNS), "--name", run_name(variant, seed),
                       *config_flags(config), "--seed", str(seed)]
            if args.data_dir:
                command += ["--data-dir", args.data_dir]
            if (run_dir / "checkpoints").is_dir():
                command.append("--resume")
            elif run_dir.exists():
                shutil.rmtree(run_dir)  # a run that wrote no checkpoint: start it again
            print(" ".join(command[1:]), flush=True)
            done = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
            sys.stderr.write(done.stderr)
            if done.returncode:  # a run that diverged is a result too: said in the table
                files.write_atomic(run_dir / FAILED, done.stderr.strip().splitlines()[-1] + "\n")
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
