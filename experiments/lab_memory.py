"""The memory a lab job can take: a net at the lab's limits trained a few steps at its
largest batch, the process's peak resident memory measured (`ru_maxrss`).

    python experiments/lab_memory.py [--data-dir DIR]

Writes experiments/results/studies/lab_memory.json: the net, its size against
`lab.LIMITS`, and the peak RSS of the process before and after training (MNIST, the
model and XLA's compiled steps included). docs/serving.md states the bound from it.
"""

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
from pathlib import Path

from jaxmnist import configs, data, lab, steps
from jaxmnist.bench import host_cpu
from jaxmnist.models import layer_table, totals
from jaxmnist.train import train_and_evaluate

OUT = Path(__file__).resolve().parent / "results" / "studies" / "lab_memory.json"
# Nine padded 20-channel blocks: near the lab's limit of activations per image.
ARCH = "c20 c20 c20 c20 c20 c20 c20 c20 c20"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir")
    args = p.parse_args()
    config = dataclasses.replace(configs.default(), arch=ARCH, epochs=1, max_steps=5,
                                 batch_size=lab.LIMITS["batch_size"])
    rows = layer_table(steps.make_model(config))
    assert lab.over_limit(config, rows) is None
    params, madds = totals(rows)
    splits = data.load_mnist(args.data_dir)
    before = peak_mib()
    with tempfile.TemporaryDirectory() as scratch:
        train_and_evaluate(config, Path(scratch) / "run", splits=splits)
    result = {"arch": ARCH, "batch_size": config.batch_size, "params": params, "madds": madds,
              "activations": lab.activations_per_image(rows), "limits": lab.LIMITS,
              "peak_rss_mib_before_training": round(before), "peak_rss_mib": round(peak_mib()),
              "cpu": host_cpu()}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
