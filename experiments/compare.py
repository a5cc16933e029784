"""jaxmnist vs PyTorch eager, same net, recipe, batch and thread count, on this machine.

    python experiments/compare.py [--rounds 5] [--steps 100]

Alternates the two benchmarks round by round (the machine is noisy), prints each
round and the median ratio jaxmnist / pytorch of train images/s, and appends a summary
to experiments/results/compare.jsonl.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    threads = os.cpu_count()
    rounds = []
    for r in range(args.rounds):
        jx = run([sys.executable, "-m", "jaxmnist.bench", "--no-record", "--steps",
                  str(args.steps), "--eval-steps", "2"])
        pt = run([sys.executable, str(HERE / "torch_peer.py"), "--steps", str(args.steps),
                  "--threads", str(threads)])
        ratio = jx["train_images_per_s"] / pt["train_images_per_s"]
        rounds.append({"jaxmnist": jx["train_images_per_s"], "pytorch": pt["train_images_per_s"],
                       "ratio": round(ratio, 3)})
        print(f"round {r + 1}: jaxmnist {jx['train_images_per_s']:.0f} images/s, "
              f"pytorch {pt['train_images_per_s']:.0f} images/s, ratio {ratio:.2f}", flush=True)
    summary = {
        "median_ratio": round(statistics.median(x["ratio"] for x in rounds), 3),
        "median_jaxmnist": statistics.median(x["jaxmnist"] for x in rounds),
        "median_pytorch": statistics.median(x["pytorch"] for x in rounds),
        "rounds": rounds, "threads": threads, "steps": args.steps,
        "jax": jx.get("jax"), "torch": pt["torch"], "device": jx["device"],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(f"median ratio jaxmnist / pytorch: {summary['median_ratio']:.2f}")
    with (HERE / "results" / "compare.jsonl").open("a") as f:
        f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
