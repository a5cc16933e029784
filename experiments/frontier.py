"""The frontier: final-epoch test accuracy against parameters and against training time.

    python experiments/frontier.py [--results experiments/results]

Reads the committed test-set runs (config.json and metrics.jsonl) of the current
recipes (experiments/results/*), the superseded ones (superseded/*) and the published
net rebuilt (studies/published-3762*); the validation runs of selection/ are not test
results. Groups the seeds of one config and writes
experiments/results/studies/frontier/frontier.md (a table) and frontier.png (two panels:
accuracy against parameters, log scale, with the published points drawn and labelled;
accuracy against seconds of training on this CPU). Accuracy is always the final
epoch's, as mean ± sample std over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Published points: (params, test accuracy %, how it was reported, source, its label on the
# picture: short, since the points crowd near 99.4 %).
PUBLISHED = [
    # Conv biases and BatchNorm's affine parameters counted, as PyTorch's summary counts.
    (3_762, 99.52, "final epoch of 15, one run", "adilsammar/woolly-of-cv", "adilsammar"),
    (4_838, 99.41, "final epoch of 12", "adilsammar/woolly-of-cv", "adilsammar"),
    (5_854, 99.40, "best epoch", "an EVA-style course repo", "course"),
    (6_260, 99.44, "final epoch of 15", "Shwethaamrutha/TSAI-S6", "Shwethaamrutha"),
    (7_918, 99.50, "final epoch of 15", "snehanshu-raj/ERA", "snehanshu-raj"),
    # Keras, Adam, a 10 % validation split, the test set scored once; no augmentation.
    (4_862, 99.07, "50 epochs, one run", "ruslangrimov/mnist-minimal-model (4862/)",
     "ruslangrimov"),
    # Separable convs of 26 channels, one of them shared by 3 blocks (2180/model.txt) ...
    (2_180, 99.15, "weights of epoch 71, one run", "ruslangrimov/mnist-minimal-model (2180/)",
     "ruslangrimov"),
    # ... and the same with InstanceNormalization over the whole tensor, 2 params each
    # (1936/model.txt).
    (1_936, 99.10, "weights of epoch 75, one run", "ruslangrimov/mnist-minimal-model (1936/)",
     "ruslangrimov"),
    # 997_saved_acc.txt: the final epoch of 223 runs, each stopped early on the test set
    # (patience 25, at most 200 epochs): mean 98.76, median 98.76, max 99.06 %.
    (997, 98.76, "mean of 223 runs, each early-stopped on the test set",
     "JoshWarn/Parameter-Efficient-MNIST (997_saved_acc.txt)", "JoshWarn, mean of 223"),
    (697, 99.03, "best run, early-stopped on the test set", "JoshWarn/Parameter-Efficient-MNIST",
     "JoshWarn"),
]


# The accuracy axes start here, so that the points near 99.4 % stay apart; a group whose
# mean lies below is drawn on this floor as a triangle, with its accuracy in its label.
Y_FLOOR = 98.7


def net_switches(config: dict) -> str:
    """The switches a config.json's net differs from the seed's in, as words after its
    layer string (", conv biases, leaky ReLU"); the fields it leaves out are the seed's."""
    return ((", conv biases" if config.get("bias") else "")
            + (", BatchNorm before ReLU" if config.get("bn_before_relu") else "")
            + {"layer": ", layer norm", "none": ", no norm"}.get(config.get("norm"), "")
            + (", BatchNorm without scale" if config.get("bn_scale") is False else "")
            + {"sigmoid": ", sigmoid", "leaky_relu": ", leaky ReLU", "prelu": ", PReLU"}.get(
                config.get("activation"), "")
            + {"dense": ", dense head", "none": ", no head layer"}.get(config.get("head"), "")
            + (f", a hidden head layer of {config['head_hidden']}"
               if config.get("head_hidden") else ""))


def test_set_runs(results: Path) -> list[Path]:
    """The run directories the frontier draws (see the module's docstring)."""
    paths = [*results.glob("*/config.json"), *results.glob("superseded/*/config.json"),
             *results.glob("studies/published-3762*/config.json")]
    return sorted(p.parent for p in paths)


def runs_made_alone(results: Path) -> dict[str, str]:
    """The runs studies/timing/alone.txt lists as made with the machine to themselves
    (by their path under `results`), each with the machine it names after the run's
    name ("" where it names none)."""
    path = results / "studies" / "timing" / "alone.txt"
    if not path.exists():
        return {}
    runs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, machine = line.strip().partition(" ")
            runs[name] = machine.strip()
    return runs


def read_run(run: Path):
    """(config, metrics records) of a finished test-set run; None for a validation run
    or an unfinished one."""
    from jaxmnist.configs import Config
    from jaxmnist.rundir import read_metrics

    config = Config.from_dict(json.loads((run / "config.json").read_text()))
    metrics = read_metrics(run)
    if config.validation or not metrics or metrics[-1]["epoch"] != config.epochs:
        return None
    return config, metrics


def recipe_key(config) -> str:
    """What the seeds of one recipe share: every field but the seed."""
    return json.dumps({k: v for k, v in config.to_dict().items() if k != "seed"},
                      sort_keys=True)


def timing_runs(results: Path) -> dict[str, dict]:
    """The runs under studies/timing/ made alone (`runs_made_alone`), by `recipe_key`:
    a recipe's run repeated with the machine to itself for its seconds only, where its
    committed seeds shared the cores. {key: {"name", "seconds", "machine"}}."""
    alone = runs_made_alone(results)
    out = {}
    for path in sorted(results.glob("studies/timing/*/config.json")):
        name = path.parent.relative_to(results).as_posix()
        read = read_run(path.parent)
        if read is None or name not in alone:
            continue
        config, metrics = read
        out[recipe_key(config)] = {"name": name, "machine": alone[name],
                                    "seconds": sum(m["seconds"] for m in metrics)}
    return out


def load_groups(results: Path) -> list[dict]:
    """One entry per config (seeds grouped), from the test-set runs under `results`."""
    from jaxmnist.steps import param_count

    alone = runs_made_alone(results)
    timed = timing_runs(results)
    groups: dict[str, dict] = {}
    for run in test_set_runs(results):
        read = read_run(run)
        if read is None:
            continue  # validation runs and unfinished runs are not frontier points
        config, metrics = read
        key = recipe_key(config)
        group = groups.setdefault(key, {"config": config, "runs": [], "timing": timed.get(key)})
        name = run.relative_to(results).as_posix()
        group["runs"].append({
            "name": name, "seed": config.seed,
            "accuracy": 100 * metrics[-1]["test_accuracy"],
            "seconds": sum(m["seconds"] for m in metrics),
            "images_per_s": statistics.median(m["train_images_per_s"] for m in metrics),
            "alone": name in alone,
            "machine": alone.get(name, ""),
        })
    out = []
    for group in groups.values():
        runs = sorted(group["runs"], key=lambda r: r["seed"])
        accuracies = [r["accuracy"] for r in runs]
        timing = group["timing"] if not any(r["alone"] for r in runs) else None
        out.append({
            "name": min((r["name"] for r in runs), key=len),
            "arch": group["config"].arch + net_switches(group["config"].to_dict())
            + (", distilled" if group["config"].teacher else ""),
            "params": param_count(group["config"]),
            "epochs": group["config"].epochs,
            "runs": runs,
            "mean": statistics.mean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            # The time of a run made alone if there is one (a seed, else its timing run);
            # otherwise the fastest seed's.
            "seconds": timing["seconds"] if timing else min(
                r["seconds"] for r in runs if r["alone"] or not any(x["alone"] for x in runs)),
            "timed_alone": any(r["alone"] for r in runs) or timing is not None,
            "machine": timing["machine"] if timing else next(
                (r["machine"] for r in runs if r["machine"]), ""),
        })
    return sorted(out, key=lambda g: g["params"])


# Test-time augmentation, a category of its own: for each recipe, its own runs on the
# validation split with --tta 8 (each also recording the single pass and 4 shifts), from
# which the number of shifts is chosen, and the test-set scores of its committed
# checkpoints with each number of shifts (studies/tta_probe.jsonl, experiments/tta_probe.py).
TTA_SELECTION = {"fast": "selection/fast-14/tta8", "tiny": "selection/tiny-15/e60",
                 "micro": "selection/micro-4/leaky",
                 "nano": "selection/nano-10/e60"}


# Mean validation accuracies (in points) closer than this are equal: the same count of
# images, but for float rounding (one image in a mean of three seeds of 5,000 is 0.0067).
TTA_TIE = 1e-6


def tta_points(results: Path) -> list[dict]:
    """One point per recipe of `TTA_SELECTION` that the probe scored: the number of
    shifts with the higher mean validation accuracy over the selection runs' seeds (4
    where equal, within `TTA_TIE`), and the committed seeds' final test accuracy with it."""
    from jaxmnist.rundir import read_metrics
    from jaxmnist.steps import param_count

    probe = results / "studies" / "tta_probe.jsonl"
    if not probe.exists():
        return []
    lines = [json.loads(line) for line in probe.read_text().splitlines() if line.strip()]
    out = []
    for recipe, base in TTA_SELECTION.items():
        selection = [p.parent for p in sorted((results / base).parent.glob(
            f"{Path(base).name}*/metrics.jsonl")) if re.fullmatch(
                rf"{re.escape(Path(base).name)}(-seed\d+)?", p.parent.name)]
        tests = [line for line in lines
                 if re.fullmatch(rf"{recipe}(-seed\d+)?", Path(line["run"]).name)]
        if not selection or not tests:
            continue
        if (finished := read_run(results / recipe)) is None:
            raise SystemExit(f"{results / recipe}: not a finished test-set run (the probe "
                             "scores its checkpoints)")
        finals = [read_metrics(run)[-1]["val_accuracy_by_shifts"] for run in selection]
        val = {k: statistics.mean(100 * final[k] for final in finals) for k in ("0", "4", "8")}
        shifts = "8" if val["8"] - val["4"] > TTA_TIE else "4"
        accuracies = [100 * line["test_accuracy_by_shifts"][shifts] for line in tests]
        single = [100 * line["test_accuracy_by_shifts"]["0"] for line in tests]
        out.append({"recipe": recipe, "shifts": int(shifts), "validation": val,
                    "selection": [r.relative_to(results).as_posix() for r in selection],
                    "params": param_count(finished[0]),
                    "accuracies": accuracies, "mean": statistics.mean(accuracies),
                    "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                    "single": statistics.mean(single)})
    return out


def write_table(groups: list[dict], path: Path, tta: list[dict] = ()) -> None:
    lines = [
        "# Frontier (written by `python experiments/frontier.py`)",
        "",
        "Final-epoch test accuracy, mean ± sample std over the seeds listed. Seconds: the "
        "epochs (training and evaluation, the first epoch's compilation included) as "
        "metrics.jsonl recorded them, of the fastest seed made alone on the machine "
        "(experiments/results/studies/timing/alone.txt), or where none was, of the same "
        "recipe run again alone under studies/timing/ for its time; where neither, of the "
        "fastest seed, marked 'shared': those ran beside other work and are not speed "
        "figures. The "
        "machines differ between runs (named beside the seconds where alone.txt names "
        "one), so seconds compare only runs made on the same one.",
        "",
        "| run | arch | params | epochs | seeds | final-epoch test accuracy (%) | per seed |"
        " seconds of epochs | train images/s (median epoch) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in groups:
        per_seed = ", ".join(f"{r['accuracy']:.2f}" for r in g["runs"])
        ips = ", ".join(f"{r['images_per_s']:,.0f}" for r in g["runs"])
        spread = f" ± {g['std']:.2f}" if len(g["runs"]) > 1 else ""
        machine = f" ({g['machine']})" if g["machine"] else ""
        lines.append(
            f"| `{g['name']}` | `{g['arch']}` | {g['params']:,} | {g['epochs']} | "
            f"{len(g['runs'])} | **{g['mean']:.2f}**{spread} | {per_seed} | "
            f"{g['seconds']:.0f}{'' if g['timed_alone'] else ' (shared)'}{machine} | {ips} |")
    if tta:
        lines += ["", "Test-time augmentation, drawn apart (hollow diamonds): the recipe's "
                  "committed seeds scored with the image and its one-pixel shifts, the number "
                  "of shifts chosen on the validation split (studies/tta_probe.jsonl):", "",
                  "| recipe | shifts | params | seeds | test accuracy (%) | per seed |"
                  " single pass (%) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| `{t['recipe']}` | {t['shifts']} | {t['params']:,} | "
                  f"{len(t['accuracies'])} | **{t['mean']:.2f}** ± {t['std']:.2f} | "
                  f"{', '.join(f'{a:.2f}' for a in t['accuracies'])} | {t['single']:.2f} |"
                  for t in tta]
    lines += ["", "Published points drawn for comparison (test accuracy as reported):", "",
              "| params | accuracy (%) | how reported | source |", "| --- | --- | --- | --- |"]
    lines += [f"| {p:,} | {a:.2f} | {how} | {src} |" for p, a, how, src, _ in PUBLISHED]
    path.write_text("\n".join(lines) + "\n")


def plot(groups: list[dict], path: Path, tta: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_p, ax_t) = plt.subplots(1, 2, figsize=(14, 5.5))
    for p, a, how, _, label in PUBLISHED:
        marker = "s" if "final" in how else "x"
        ax_p.plot(p, a, marker, color="grey", ms=7)
        # Above and to the right near the floor, clear of a group drawn on it.
        near_floor = a < Y_FLOOR + 0.15
        ax_p.annotate(label, (p, a), fontsize=7, color="grey",
                      xytext=(6, 10) if near_floor else (-6, 5 if a >= 99.43 else -11),
                      textcoords="offset points", ha="left" if near_floor else "right")
    # One colour per recipe, its earlier versions included; never the published points'
    # grey (tab10's eighth colour).
    palette = [c for c in plt.get_cmap("tab10").colors if len(set(c)) > 1]
    recipes = list(dict.fromkeys(Path(g["name"]).name.split("-")[0] for g in groups))
    colour = {r: palette[i % len(palette)] for i, r in enumerate(recipes)}
    current = {g["name"]: g for g in groups if "/" not in g["name"]}
    full = [g for g in groups if not g["name"].startswith("superseded/")]
    for g in groups:
        # A recipe's earlier versions (superseded/<recipe>-...) are drawn faint and small,
        # on the size panel with an arrow to the recipe as it is now.
        before = current.get(Path(g["name"]).name.split("-")[0]) \
            if g["name"].startswith("superseded/") else None
        for ax, x in ((ax_p, g["params"]), (ax_t, g["seconds"])):
            shared = ax is ax_t and not g["timed_alone"]
            below = g["mean"] < Y_FLOOR
            y = Y_FLOOR + 0.02 if below else g["mean"]
            bar = ax.errorbar(x, y, yerr=None if below else g["std"] or None,
                              fmt="v" if below else "o", capsize=3, ms=7 if below else 6,
                              color=colour[Path(g["name"]).name.split("-")[0]],
                              mfc="none" if shared else None, alpha=0.35 if before else 1)
            if before:
                if ax is ax_p:
                    now = max(before["mean"], Y_FLOOR + 0.02)
                    ax.annotate("", (before["params"], now), (x, y), arrowprops=dict(
                        arrowstyle="->", color=bar[0].get_color(), alpha=0.5, lw=1,
                        shrinkA=4, shrinkB=4))
                ax.annotate(Path(g["name"]).name, (x, y), fontsize=6.5, alpha=0.6,
                            color=bar[0].get_color(), xytext=(-5, -3),
                            textcoords="offset points", ha="right", va="top")
                continue
            where = "\nshared cores" if shared else (
                f"\n{g['machine']}" if ax is ax_t and g["machine"] else "")
            value = f": {g['mean']:.2f} ± {g['std']:.2f} %, below the axis" if below else ""
            label = f"{Path(g['name']).name} (n={len(g['runs'])}){value}{where}"
            # A label to the right would run over a point close to the right of this one:
            # it hangs below and to the left instead. On the floor a label goes above the
            # triangle, to the right (the floor holds nothing else).
            key = "params" if ax is ax_p else "seconds"
            crowded = any(x < h[key] <= 1.6 * x for h in full) and not below
            offset = (5, 6) if below else (-5, -6) if crowded else (5, 4)
            ax.annotate(label, (x, y), fontsize=8, color=bar[0].get_color(),
                        xytext=offset, textcoords="offset points",
                        ha="right" if crowded else "left", va="top" if crowded else "bottom")
    for t in tta:  # its own category: hollow diamonds, on the size panel only
        below = t["mean"] < Y_FLOOR
        y = Y_FLOOR + 0.02 if below else t["mean"]
        ax_p.errorbar(t["params"], y, yerr=None if below else t["std"] or None, fmt="D",
                      mfc="none", color="black", capsize=3, ms=6)
        # Above its recipe's own point, at the same size: "+ TTA" names it.
        ax_p.annotate(f"+ TTA {t['shifts']}"
                      + (f" ({t['recipe']}): {t['mean']:.2f} %, below the axis" if below else ""),
                      (t["params"], y), fontsize=7, xytext=(5, 36) if below else (6, 7),
                      textcoords="offset points", va="bottom")
    for ax, label in ((ax_p, "parameters"), (ax_t, "seconds of training epochs, 2 CPU cores")):
        ax.axhline(99.4, color="grey", ls="--", lw=1)
        ax.set(xscale="log", xlabel=label, ylabel="final-epoch test accuracy (%)")
        ax.set_ylim(bottom=Y_FLOOR)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
    ax_p.set_xlim(left=250)
    ax_p.set_title("Accuracy against size (grey: published, squares at their final epoch,\n"
                   "crosses at a best, early-stopped or 50th epoch; hollow diamonds:\n"
                   "test-time augmentation, a category apart; see frontier.md)")
    ax_t.set_title("Accuracy against seconds of epochs (hollow: shared cores;\n"
                   "machines differ, so compare points of the same machine only)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=REPO / "experiments/results")
    args = p.parse_args()
    groups, tta = load_groups(args.results), tta_points(args.results)
    out = args.results / "studies" / "frontier"
    out.mkdir(parents=True, exist_ok=True)
    write_table(groups, out / "frontier.md", tta)
    plot(groups, out / "frontier.png", tta)
    print((out / "frontier.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
