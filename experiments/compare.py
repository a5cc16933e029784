"""jaxmnist vs PyTorch, same net, recipe, batch and thread count, on this machine.

    python experiments/compare.py [--recipe seed] [--rounds 5] [--steps 100]
                                  [--peer eager|tuned|both]

Alternates the benchmarks round by round (the machine is noisy): jaxmnist, PyTorch eager
fp32, and (`--peer tuned` or `both`) PyTorch with channels_last and bfloat16 autocast,
as a PyTorch user would tune it for a CPU. Prints each round and the median ratio
jaxmnist / each peer of train images/s, and the ratio to the faster peer of this
machine (`--peer both`), and appends a summary to experiments/results/studies/compare.jsonl. The
net and batch are the recipe's (`--recipe`, default the seed net).
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
    p.add_argument("--recipe", default="seed")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--peer", choices=["eager", "tuned", "both"], default="eager")
    args = p.parse_args()
    threads = os.cpu_count()
    peers = {"eager": ["pytorch"], "tuned": ["pytorch_tuned"],
             "both": ["pytorch", "pytorch_tuned"]}[args.peer]
    rounds = []
    for r in range(args.rounds):
        jx = run([sys.executable, "-m", "jaxmnist.bench", "--no-record", "--steps",
                  str(args.steps), "--eval-steps", "2", "--recipe", args.recipe])
        row = {"jaxmnist": jx["train_images_per_s"]}
        for peer in peers:
            pt = run([sys.executable, str(HERE / "torch_peer.py"), "--steps", str(args.steps),
                      "--recipe", args.recipe,
                      "--threads", str(threads)] + (["--tuned"] if peer == "pytorch_tuned" else []))
            row[peer] = pt["train_images_per_s"]
            row[f"ratio_{peer}"] = round(jx["train_images_per_s"] / pt["train_images_per_s"], 3)
        if "ratio_pytorch" in row:
            row["ratio"] = row["ratio_pytorch"]  # the field earlier lines of compare.jsonl have
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {v:.0f} images/s" for k, v in row.items() if not k.startswith("ratio")) + "; "
            + ", ".join(f"jaxmnist / {p} {row[f'ratio_{p}']:.2f}" for p in peers), flush=True)
    summary = {f"median_ratio_{p}": round(statistics.median(x[f"ratio_{p}"] for x in rounds), 3)
               for p in peers}
    if "median_ratio_pytorch" in summary:
        summary["median_ratio"] = summary["median_ratio_pytorch"]
    if len(peers) > 1:  # against the faster peer on this machine, round by round
        summary["median_ratio_faster_peer"] = round(statistics.median(
            x["jaxmnist"] / max(x[p] for p in peers) for x in rounds), 3)
    summary.update({
        f"median_{k}": statistics.median(x[k] for x in rounds) for k in ["jaxmnist", *peers]})
    summary.update({
        "recipe": args.recipe, "rounds": rounds, "threads": threads, "steps": args.steps,
        "peer": args.peer,
        "jax": jx.get("jax"), "torch": pt["torch"], "device": jx["device"], "cpu": jx.get("cpu"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    for p in peers:
        print(f"median ratio jaxmnist / {p}: {summary[f'median_ratio_{p}']:.2f}")
    if "median_ratio_faster_peer" in summary:
        print(f"median ratio jaxmnist / the faster peer: "
              f"{summary['median_ratio_faster_peer']:.2f}")
    with (HERE / "results" / "studies" / "compare.jsonl").open("a") as f:
        f.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
