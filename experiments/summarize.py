"""Tables for the README from the runs' own metrics.jsonl files.

    python experiments/summarize.py > experiments/results/summary.md

Reads experiments/results/{selection/*,*}/metrics.jsonl (every committed run) and
prints the final-epoch accuracies (the figure that counts), the best epoch (chosen on
the evaluation set itself, so only descriptive), and the mean ± std over seeds.
"""

import json
import statistics
from pathlib import Path

from jaxmnist.configs import Config

RESULTS = Path(__file__).resolve().parent / "results"
# A run is described by how its config differs from these (Config's own defaults).
DEFAULTS = Config()


def load(run: Path) -> tuple[dict, list[dict]]:
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return config, rows


def describe(config: dict) -> str:
    parts = [f"{config['schedule']} lr {config['lr']:g}"]
    if config.get("arch", DEFAULTS.arch) != DEFAULTS.arch:
        parts.insert(0, f"`{config['arch']}`")
    if config["epochs"] != DEFAULTS.epochs:
        parts.append(f"{config['epochs']} epochs")
    if config.get("momentum", DEFAULTS.momentum) != DEFAULTS.momentum:
        parts.append(f"momentum {config['momentum']:g}")
    if config.get("nesterov"):
        parts.append("Nesterov momentum")
    if (config["schedule"] == "onecycle"
            and config.get("warmup_fraction", DEFAULTS.warmup_fraction)
            != DEFAULTS.warmup_fraction):
        parts.append(f"warm-up {config['warmup_fraction']:g} of the steps")
    if config.get("bias"):
        parts.insert(1, "conv biases")
    if config.get("bn_before_relu"):
        parts.insert(1, "BatchNorm before ReLU")
    if config["dropout"] and config.get("dropout_at", DEFAULTS.dropout_at) == "pools":
        parts.append(f"dropout {config['dropout']:g} after pools only")
    elif config["dropout"] != DEFAULTS.dropout:
        parts.append(f"dropout {config['dropout']:g}")
    if config.get("label_smoothing"):
        parts.append(f"label smoothing {config['label_smoothing']:g}")
    if config.get("weight_decay"):
        parts.append(f"weight decay {config['weight_decay']:g}")
    if config.get("ema_decay"):
        parts.append(f"weight average (EMA) {config['ema_decay']:g}")
    if config["batch_size"] != DEFAULTS.batch_size:
        parts.append(f"batch {config['batch_size']}")
    if config["rotate_degrees"]:
        parts.append(f"rotate ±{config['rotate_degrees']:g}°")
    if config["shift_pixels"]:
        parts.append(f"shift ±{config['shift_pixels']:g} px")
    if config.get("scale"):
        parts.append(f"zoom ±{100 * config['scale']:g} %")
    if config.get("brightness") or config.get("contrast"):
        parts.append(f"brightness ±{config.get('brightness', 0):g}, "
                     f"contrast ±{config.get('contrast', 0):g}")
    if not any(config.get(k) for k in ("rotate_degrees", "shift_pixels", "scale",
                                       "brightness", "contrast")):
        parts.append("no augmentation")
    elif config.get("augment_probability", 1.0) != 1.0:
        parts.append(f"each with probability {config['augment_probability']:g}")
    return ", ".join(parts)


def row(name: str, run: Path) -> str | None:
    if not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        return None
    config, rows = load(run)
    split = "val" if config["validation"] else "test"
    acc = [100 * r[f"{split}_accuracy"] for r in rows]
    best = max(range(len(acc)), key=acc.__getitem__)
    last5 = acc[-5:]
    done = f"{len(rows)}/{config['epochs']}"
    final = (f"**{acc[-1]:.2f}**" if len(rows) == config["epochs"]
             else f"unfinished ({acc[-1]:.2f} at epoch {len(rows)})")
    minutes = sum(r["seconds"] for r in rows) / 60
    return (f"| {name} | {describe(config)} | {config['seed']} | {done} | {split} | "
            f"{final} | {min(last5):.2f}–{max(last5):.2f} | "
            f"{acc[best]:.2f} (epoch {rows[best]['epoch']}) | {minutes:.0f} |")


def main():
    header = ("| run | recipe | seed | epochs | evaluated on | final-epoch accuracy (%) | "
              "last 5 epochs | best epoch (chosen on that same set) | minutes |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("## Recipe selection (validation: TFDS `train[-5000:]`, trained on the rest)\n")
    print(header)
    for run in sorted((RESULTS / "selection").iterdir()):
        if line := row(f"selection/{run.name}", run):
            print(line)
    print("\n## Final runs (trained on all 60,000, evaluated on the 10,000 test images)\n")
    print(header)
    for run in sorted(p.parent for p in RESULTS.glob("*/config.json")):
        if line := row(run.name, run):
            print(line)
    finals = []
    for name in ["default", "default-seed1", "default-seed2"]:
        path = RESULTS / name / "metrics.jsonl"
        if path.exists():
            config, rows = load(RESULTS / name)
            if len(rows) == config["epochs"]:
                finals.append(100 * rows[-1]["test_accuracy"])
    if len(finals) >= 2:
        print(f"\n`default` over {len(finals)} seeds, final epoch: "
              f"**{statistics.mean(finals):.2f} ± {statistics.stdev(finals):.2f} %** "
              f"(mean ± sample std; {', '.join(f'{a:.2f}' for a in finals)})")
    else:
        print(f"\n`default` seeds with all epochs done: {len(finals)} (mean ± std needs 2+)")
    timing()


def timing():
    """Time to the 99.4 % floor in the timed runs (experiments/timed_make_train.sh): `make
    train` (run `default`) and `make train-fast` (run `fast`)."""
    for recipe, target in [("default", "train"), ("fast", "train-fast")]:
        log = RESULTS / "timing" / f"make_{target}.log"
        if not log.exists() or not (RESULTS / recipe / "metrics.jsonl").exists():
            continue
        config, rows = load(RESULTS / recipe)
        elapsed, first = 0.0, None
        for r in rows:
            elapsed += r["seconds"]
            if first is None and r["test_accuracy"] >= 0.994:
                first = (r["epoch"], elapsed)
        wall = [line for line in log.read_text().splitlines() if "wall time" in line]
        print(f"\n## Timed `make {target}` (run `{recipe}`, alone on the machine; "
              f"timing/make_{target}.log)\n")
        print(f"- epochs done: {len(rows)}/{config['epochs']}; final-epoch test accuracy "
              f"{100 * rows[-1]['test_accuracy']:.2f} %; sum of epoch times (training + "
              f"evaluation) {elapsed / 60:.1f} min ({elapsed:.1f} s); median "
              f"{statistics.median(r['train_images_per_s'] for r in rows):.0f} train images/s")
        if wall:
            print(f"- {wall[-1]} (the whole command: start-up, data, compilation included)")
        if first:
            print(f"- first epoch at >= 99.40 % test accuracy: epoch {first[0]}, after "
                  f"{first[1] / 60:.1f} min ({first[1]:.1f} s) of epochs (the threshold is "
                  "read on the test set)")
        else:
            print("- no epoch reached 99.40 % test accuracy")


if __name__ == "__main__":
    main()
