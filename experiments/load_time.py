"""Time `data.load_mnist` (both splits, prepared dataset) in the current checkout and,
optionally, in another checkout with its own Python, alternating.

    python experiments/load_time.py [--other-python OLD/.venv/bin/python --other-repo OLD]
        [--rounds 3] [--out experiments/results/studies/load_time.json]

Each measurement is a fresh process (imports included, timed apart) loading MNIST from
a TFDS data dir that the same checkout prepared beforehand (its own, since the two
formats differ). Also records a digest of the loaded arrays, so that two checkouts can
be checked to read the same examples in the same order.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, sys, time
t0 = time.perf_counter()
from jaxmnist import data
import numpy as np
t1 = time.perf_counter()
train, test = data.load_mnist(sys.argv[1], sys.argv[2])
t2 = time.perf_counter()
digest = hashlib.sha256()
for split in (train, test):
    digest.update(np.asarray(split.images).tobytes())
    digest.update(np.asarray(split.labels).tobytes())
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "sha256": digest.hexdigest(),
                  "n": [len(train), len(test)]}))
"""


def measure(python: str, repo: Path, mnist_dir: str, tfds_dir: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([python, "-c", CHILD, mnist_dir, tfds_dir], capture_output=True,
                         text=True, env=env, cwd=repo, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_mnist = REPO.parent / "shared/datasets/mnist"
    p.add_argument("--mnist-dir", default=os.environ.get("JAXMNIST_DATA_DIR", str(default_mnist)))
    p.add_argument("--other-python", help="Python of another checkout (e.g. an older one)")
    p.add_argument("--other-repo", type=Path, help="that checkout's root")
    p.add_argument("--other-label", default="other")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "experiments/results/studies/load_time.json")
    args = p.parse_args()
    sides = {"current": (sys.executable, REPO)}
    if args.other_python:
        sides[args.other_label] = (args.other_python, args.other_repo)
    results: dict[str, list] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {name: str(Path(tmp) / name) for name in sides}
        for name, (python, repo) in sides.items():  # prepare, untimed
            measure(python, repo, args.mnist_dir, dirs[name])
        for _ in range(args.rounds):
            for name, (python, repo) in sides.items():
                results[name].append(measure(python, repo, args.mnist_dir, dirs[name]))
    summary = {
        name: {"median_load_s": round(statistics.median(r["load_s"] for r in runs), 2),
               "load_s": [round(r["load_s"], 2) for r in runs],
               "median_import_s": round(statistics.median(r["import_s"] for r in runs), 2),
               "sha256": runs[0]["sha256"], "n": runs[0]["n"]}
        for name, runs in results.items()
    }
    if len(sides) == 2:
        a, b = summary.values()
        summary["same_examples_same_order"] = a["sha256"] == b["sha256"]
    text = json.dumps(summary, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
