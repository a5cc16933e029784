"""Every table of results in the docs, generated from the committed runs and studies.

    python experiments/summarize.py            # rewrite the tables, and studies/summary.md
    python experiments/summarize.py --check    # exit 1, naming each table that differs

A table lives in README.md or docs/*.md between two marker comments:

    <!-- generated: KIND ARGS -->
    ...
    <!-- end generated -->

and everything between them is this script's output for KIND (the `TABLES` below), read
from experiments/results/. So a figure in a table cannot drift from the file it comes
from: `tests/test_docs.py` runs `--check`. experiments/results/studies/summary.md lists
every run (final-epoch, last-5 and best-epoch accuracies; the best epoch is chosen on
the set it is read on, so only descriptive).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CURRENT = ["default", "fast", "tiny", "micro", "nano", "seed"]  # the recipes, in the table's order
BLOCK = re.compile(r"(<!-- generated: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)",
                   re.S)

sys.path.insert(0, str(REPO / "experiments"))
from frontier import (  # noqa: E402  (experiments/ is not a package)
    PUBLISHED,
    load_groups,
    net_switches,
    recipe_key,
    runs_made_alone,
    timing_runs,
    tta_points,
)


def natural(text: str) -> list:
    """Sort key: numbers as numbers (fast-3 before fast-10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


# --- runs -------------------------------------------------------------------------------

@functools.cache
def load(run: Path) -> tuple[dict, list[dict]]:
    """(config with the fields it predates at their defaults, metrics records)."""
    from jaxmnist.configs import Config
    from jaxmnist.rundir import read_metrics

    config = Config.from_dict(json.loads((run / "config.json").read_text())).to_dict()
    return config, read_metrics(run)


def params_of(config: dict) -> int:
    """The parameters of the net a config.json (or a part of one) describes; the fields
    it leaves out keep their defaults."""
    from jaxmnist.configs import Config
    from jaxmnist.steps import param_count

    return param_count(Config.from_dict(config))


def accuracy(run: Path, epoch: int = -1) -> float:
    config, rows = load(run)
    split = "val" if config["validation"] else "test"
    return 100 * rows[epoch][f"{split}_accuracy"]


def seeds_of(base: Path) -> list[Path]:
    """`base` and its other seeds (`base`-seedN), in seed order."""
    runs = [base, *base.parent.glob(f"{base.name}-seed*")]
    return sorted((r for r in runs if (r / "config.json").exists()),
                  key=lambda r: load(r)[0]["seed"])


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def alone() -> dict[str, str]:
    return runs_made_alone(RESULTS)


@functools.cache
def timed_again() -> dict[str, dict]:
    """The recipes run again alone for their time (studies/timing/), by recipe."""
    return timing_runs(RESULTS)


# --- how a config reads: the fields that matter, in words ------------------------------

def _augmentation(c: dict) -> str:
    parts = []
    if c.get("rotate_degrees"):
        parts.append(f"rotate ±{c['rotate_degrees']:g}°")
    if c.get("shift_pixels"):
        parts.append(f"shift ±{c['shift_pixels']:g} px")
    if c.get("scale"):
        parts.append(f"zoom ±{100 * c['scale']:g} %")
    if c.get("elastic_alpha"):
        parts.append(f"elastic α {c['elastic_alpha']:g}, σ {c.get('elastic_sigma', 4.0):g} px")
    if c.get("brightness") or c.get("contrast"):
        parts.append(f"brightness ±{c.get('brightness', 0):g}, contrast ±{c.get('contrast', 0):g}")
    if not parts:
        return "no augmentation"
    if c.get("augment_probability", 1.0) != 1.0:
        parts.append(f"each with probability {c['augment_probability']:g}")
    return ", ".join(parts)


def _schedule(c: dict) -> str:
    if c["schedule"] == "constant":
        return f"constant lr {c['lr']:g}"
    text = f"one-cycle to lr {c['lr']:g}"
    if c.get("warmup_fraction", 0.3) != 0.3:
        text += f", warm-up {c['warmup_fraction']:g}"
    return text


def _dropout(c: dict) -> str:
    if not c["dropout"]:
        return "no dropout"
    where = " after the pools" if c.get("dropout_at", "blocks") == "pools" else ""
    return f"dropout {c['dropout']:g}{where}"


def _optimizer(c: dict) -> str:
    if c.get("optimizer") == "adam":
        text = f"Adam, betas ({c['momentum']:g}, {c['beta2']:g})"
    else:
        text = (f"momentum {c.get('momentum', 0.9):g}"
                + (" (Nesterov)" if c.get("nesterov") else ""))
    if c.get("weight_decay"):
        text += f", weight decay {c['weight_decay']:g}"
    return text


# (name, words) in the order a reader wants them; each takes a config dict.
ASPECTS = [
    ("net", lambda c: f"`{c['arch']}`" + net_switches(c)),
    ("epochs", lambda c: f"{c['epochs']} epochs" + (
        f" (the first {c['small_epochs']} at {c['small_size']}×{c['small_size']})"
        if c.get("small_epochs") else "")),
    ("schedule", _schedule),
    ("optimizer", _optimizer),
    ("batch", lambda c: f"batch {c['batch_size']}"),
    ("dropout", _dropout),
    ("augmentation", _augmentation),
    ("label smoothing", lambda c: f"label smoothing {c['label_smoothing']:g}"
     if c.get("label_smoothing") else "no label smoothing"),
    ("weight average", lambda c: f"weight average (EMA) {c['ema_decay']:g}"
     if c.get("ema_decay") else "no weight average"),
    ("test-time augmentation", lambda c: f"test-time augmentation ({c['tta']} shifts)"
     if c.get("tta") else "one pass"),
    ("teacher", lambda c: f"distilled from `{c['teacher']}` (weight {c['distill_weight']:g}, "
     f"T {c['distill_temperature']:g})" if c.get("teacher") else "no teacher"),
]
# Said only where a round's runs differ in it (the runs before distillation existed
# have no teacher, and their descriptions do not mention one).
UNSAID = {"no teacher", "one pass"}


def describe(config: dict, aspects=None, unsaid=UNSAID) -> str:
    """The config's `aspects` (default: all) in words, but for the `unsaid` phrases."""
    return ", ".join(text for name, words in ASPECTS
                     if (aspects is None or name in aspects)
                     and (text := words(config)) not in unsaid)


# --- the tables -------------------------------------------------------------------------

def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _time_alone(runs: list[Path]) -> str:
    """The seconds of the recipe's epochs where a seed was run alone, else where the
    recipe was run again alone for its time (studies/timing/), with the machine."""
    from jaxmnist.configs import Config

    made_alone = alone()
    timed = [(sum(r["seconds"] for r in load(run)[1]), made_alone[name])
             for run in runs if (name := run.relative_to(RESULTS).as_posix()) in made_alone]
    config = Config.from_dict(load(runs[0])[0])
    if not timed and (again := timed_again().get(recipe_key(config))):
        timed = [(again["seconds"], again["machine"])]
    if not timed:
        return "not timed alone"
    seconds = statistics.median(s for s, _ in timed)
    machine = next((m for _, m in timed if m), "CPU not recorded")
    amount = f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
    return f"{amount} ({machine})"


def runs_table(bases: list[str]) -> str:
    """One row per recipe (its seeds grouped): net, parameters, epochs, final-epoch test
    accuracy, and the seconds of its epochs where a seed was run alone."""
    rows = []
    for base in bases:
        runs = seeds_of(RESULTS / base)
        config, _ = load(runs[0])
        finals = [accuracy(r) for r in runs]
        rows.append([f"`{base}`", describe(config, {"net"}),
                     f"{params_of(config):,}",
                     config["epochs"], f"**{mean_std(finals)}**", len(runs),
                     ", ".join(f"{a:.2f}" for a in finals), _time_alone(runs)])
    return table(["run", "net", "params", "epochs", "final-epoch test accuracy (%)", "seeds",
                  "per seed", "epochs' time, alone"], rows)


def recipes_table() -> str:
    return runs_table(CURRENT)


def round_table(name: str) -> str:
    """A selection round: what its runs share, then one row per config (its seeds
    grouped) with what differs, and the final-epoch validation accuracy; for a round
    whose every run was made alone (studies/timing/alone.txt), each run's seconds (the
    sum of its epochs') too, and their median."""
    runs = sorted((p.parent for p in (RESULTS / "selection" / name).glob("*/config.json")),
                  key=lambda p: natural(p.name))
    if not runs:
        raise SystemExit(f"no runs in selection/{name}")
    configs = [load(r)[0] for r in runs]
    varying = [a for a, words in ASPECTS if len({words(c) for c in configs}) > 1]
    common = describe(configs[0], {a for a, _ in ASPECTS} - set(varying))
    groups: dict[str, list[Path]] = {}
    for run, config in zip(runs, configs):
        groups.setdefault(describe(config, varying) + f"|{config['arch']}", []).append(run)
    split = "val" if configs[0]["validation"] else "test"
    # Rounds with test-time augmentation: the single pass per seed, then the mean with 4
    # and with 8 shifts, all from the same evaluations (metrics' accuracy_by_shifts).
    shifts = [k for k in ("4", "8") if all(
        k in load(r)[1][-1].get(f"{split}_accuracy_by_shifts", {}) for r in runs)]
    made_alone = alone()
    timed = all(r.relative_to(RESULTS).as_posix() in made_alone for r in runs)
    rows = []
    for group in groups.values():
        config, rows_ = load(group[0])
        finals = [100 * load(r)[1][-1][f"{split}_accuracy_by_shifts"]["0"] if shifts
                  else accuracy(r) for r in group]
        train = statistics.mean(100 * load(r)[1][-1]["train_accuracy"] for r in group)
        seeds = ", ".join(str(load(r)[0]["seed"]) for r in group)
        unfinished = [r.name for r in group if len(load(r)[1]) != load(r)[0]["epochs"]]
        if unfinished:
            raise SystemExit(f"selection/{name}: unfinished runs {unfinished}")
        names = ", ".join(f"`{r.name}`" for r in group)
        rows.append([names, describe(config, varying, unsaid=()) if varying else "–",
                     f"{params_of(config):,}", seeds,
                     ", ".join(f"{a:.2f}" for a in finals), f"**{mean_std(finals)}**"]
                    + [mean_std([100 * load(r)[1][-1][f"{split}_accuracy_by_shifts"][k]
                                 for r in group]) for k in shifts] + [f"{train:.2f}"])
        if timed:
            seconds = [sum(m["seconds"] for m in load(r)[1]) for r in group]
            rows[-1] += [", ".join(f"{x:.1f}" for x in seconds),
                         f"{statistics.median(seconds):.1f}"]
    single = " (single pass)" if shifts else ""
    machine = made_alone.get(runs[0].relative_to(RESULTS).as_posix()) or "CPU not recorded"
    return (f"Common to `selection/{name}/`: {common}; evaluated on the validation split "
            f"(the last {configs[0]['validation']:,} training images).\n\n"
            + table(["runs", "what differs" if varying else "recipe", "params", "seeds",
                     f"final-epoch val accuracy{single} (%)", "mean"]
                    + [f"with {k} shifts (mean)" for k in shifts]
                    + ["final train accuracy (%)"]
                    + ([f"seconds, alone ({machine})", "median (s)"] if timed else []), rows))


def tta_probe_table() -> str:
    """The committed recipes' final checkpoints scored again on the test set with 0, 4
    and 8 shifts (experiments/tta_probe.py), the seeds of each recipe grouped."""
    groups: dict[str, list[dict]] = {}
    for line in _jsonl(RESULTS / "studies" / "tta_probe.jsonl"):
        groups.setdefault(re.sub(r"-seed\d+$", "", Path(line["run"]).name), []).append(line)
    rows = []
    for name, lines in groups.items():
        config = load(REPO / lines[0]["run"])[0]
        by = {k: [100 * line["test_accuracy_by_shifts"][k] for line in lines]
              for k in ("0", "4", "8")}
        rows.append([f"`{name}`", f"{params_of(config):,}", len(lines),
                     mean_std([100 * line["recorded_test_accuracy"] for line in lines]),
                     mean_std(by["0"]), f"**{mean_std(by['4'])}**",
                     f"**{mean_std(by['8'])}** ({', '.join(f'{a:.2f}' for a in by['8'])})"])
    cpus = sorted({line["cpu"] for lines in groups.values() for line in lines})
    return (table(["recipe", "params", "seeds", "final test accuracy, as recorded (%)",
                   "single pass, again (%)", "4 shifts (%)", "8 shifts (%), per seed"], rows)
            + f"\nScored on {', '.join(cpus)}.")


def tta_frontier_table() -> str:
    """Test-time augmentation as its own category (`frontier.tta_points`): the number of
    shifts chosen on validation, and the committed seeds' test accuracy with it."""
    rows = [[f"`{t['recipe']}` + {t['shifts']} shifts", f"{t['params']:,}",
             ", ".join(f"`{r}`" for r in t["selection"]),
             " / ".join(f"{t['validation'][k]:.2f}" for k in ("0", "4", "8")),
             f"{t['single']:.2f}", f"**{mean_std(t['accuracies'])}**",
             ", ".join(f"{a:.2f}" for a in t["accuracies"])] for t in tta_points(RESULTS)]
    return table(["recipe and shifts", "params", "chosen on (validation runs)",
                  "val accuracy: one pass / 4 / 8 shifts (mean, %)",
                  "test accuracy, one pass (%)", "test accuracy with the shifts (%)",
                  "per seed"], rows)


def frontier_table() -> str:
    rows = [[f"`{g['name']}`", describe(load(RESULTS / g["name"])[0], {"net"}),
             f"{g['params']:,}", g["epochs"], len(g["runs"]),
             f"**{mean_std([r['accuracy'] for r in g['runs']])}**", "final epoch, this project"]
            for g in load_groups(RESULTS)]
    rows += [[source, "", f"{p:,}", "", 1 if "one run" in how else "",
              f"{a:.2f}", how] for p, a, how, source, _ in PUBLISHED]
    rows.sort(key=lambda r: int(r[2].replace(",", "")))
    return table(["run or source", "net", "params", "epochs", "seeds", "test accuracy (%)",
                  "how reported"], rows)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def time_to_accuracy_table() -> str:
    """Each sitting of experiments/time_to_accuracy.py, by its name."""
    rows = []
    for record in _jsonl(RESULTS / "studies" / "time_to_accuracy.jsonl"):
        for pair in record["pairs"]:  # the record's runs are the committed ones
            run = REPO / pair["run"]
            if abs(sum(r["seconds"] for r in load(run)[1]) - pair["recipe_s"]) > 0.01:
                raise SystemExit(f"{pair['run']}: its metrics do not give {pair['recipe_s']} s")
        pairs = record["pairs"]
        checked = all("bench_epoch_s" in p for p in pairs)  # sittings since the check
        rows.append([f"`{record['name']}`", record["recipe"], record.get("cpu", "not recorded"),
                     ", ".join(f"{p['seed_net_epoch_s']:.1f}" + (" (busy)" if p.get("busy")
                                                                 else "") for p in pairs),
                     ", ".join(f"{p['bench_epoch_s']:.1f}" for p in pairs) if checked
                     else "not checked",
                     ", ".join(f"{p['recipe_s']:.1f}" for p in pairs),
                     ", ".join(f"{p['ratio']:.2f}" for p in pairs),
                     f"**{record['median_ratio']:.2f}×**",
                     f"{record['median_ratio_to_bench_epoch']:.2f}×" if checked else "–",
                     ", ".join(f"{100 * p['final_test_accuracy']:.2f}" for p in pairs)])
    return table(["sitting (`name`)", "recipe", "CPU", "one seed-net epoch (s), per seed",
                  "the epoch bench predicts (s)", "the recipe's run (s)", "ratio", "median",
                  "median against bench's epoch", "final test accuracy (%)"], rows)


def compare_table() -> str:
    """Each run of experiments/compare.py: medians of its alternating rounds."""
    rows = []
    for r in _jsonl(RESULTS / "studies" / "compare.jsonl"):
        tuned = f"{r['median_pytorch_tuned']:,.0f}" if "median_pytorch_tuned" in r else "–"
        eager = f"{r['median_pytorch']:,.0f}" if "median_pytorch" in r else "–"
        ratio = r.get("median_ratio_faster_peer", r.get("median_ratio"))
        rows.append([r.get("recipe", "seed"), r.get("cpu", "not recorded"), r["date"][:10],
                     len(r["rounds"]), f"{r['median_jaxmnist']:,.0f}", eager, tuned,
                     f"**{ratio:.2f}×**"])
    return table(["recipe", "CPU", "date", "rounds", "jaxmnist", "PyTorch eager",
                  "PyTorch channels_last + bf16", "jaxmnist ÷ the faster peer"], rows)


def bench_table() -> str:
    """experiments/results/studies/bench.jsonl by CPU and net: the median of its records
    (default options, one step per call), and how many there are."""
    from jaxmnist.models import SEED_ARCH

    groups: dict[tuple, list[float]] = {}
    for r in _jsonl(RESULTS / "studies" / "bench.jsonl"):
        if r.get("steps_per_call", 1) != 1 or r.get("xla_defaults") or \
                r.get("compiler_options", "jaxmnist") != "jaxmnist" or not r.get("fast_kernels"):
            continue
        arch = r.get("arch", SEED_ARCH)
        key = (r.get("cpu", "not recorded"), r.get("cores", "–"), arch,
               r.get("params") or params_of({"arch": arch}), r["batch_size"])
        groups.setdefault(key, []).append(r["train_images_per_s"])
    rows = [[cpu, cores, f"`{arch}`", f"{n:,}", batch, len(v),
             f"**{statistics.median(v):,.0f}**", f"{min(v):,.0f}–{max(v):,.0f}"]
            for (cpu, cores, arch, n, batch), v in sorted(groups.items(), key=str)]
    return table(["CPU", "cores", "net", "params", "batch", "records", "train images/s (median)",
                  "range"], rows)


def step_variants_table(name: str = "step_variants") -> str:
    data = json.loads((RESULTS / "studies" / f"{name}.json").read_text())
    rows = [[variant, f"{v['step_ms_median']:.1f}", f"{v['speed_vs_jaxmnist']:.2f}"]
            for variant, v in data["variants"].items()]
    return table(["train step (batch 128)", "median ms", "speed against jaxmnist's"], rows)


def depthwise_kernel_table() -> str:
    """The newest measurement of each net in studies/depthwise_kernel.jsonl."""
    newest = {r["arch"]: r for r in _jsonl(RESULTS / "studies" / "depthwise_kernel.jsonl")}
    rows = [[f"`{arch}` {layer['layer']}", f"{layer['kernels_ms']:.2f}",
             f"{layer['grouped_ms']:.2f}", f"{layer['speedup']:.1f}×"]
            for arch, r in newest.items() for layer in r["layers"]]
    cpus = sorted({r["cpu"] for r in newest.values()})
    return (table(["depthwise conv (batch 128), fwd + bwd", "kernels (ms)",
                   "grouped conv (ms)", "speed-up"], rows)
            + f"\nMeasured on {', '.join(cpus)}, {newest[next(iter(newest))]['cores']} cores.\n")


def profile_table() -> str:
    data = json.loads((RESULTS / "studies" / "profile.json").read_text())["ms_median"]
    parts = list(data["fast"])
    return table(["part of a seed-net step (batch 128)", "jaxmnist (ms)", "plain Flax (ms)"],
                 [[p, f"{data['fast'][p]:.1f}", f"{data['flax'][p]:.1f}"] for p in parts])


def epoch_overhead_table() -> str:
    data = json.loads((RESULTS / "studies" / "epoch_overhead.json").read_text())
    return table(["per epoch", "median (s)"],
                 [[k.replace("_", " "), f"{v['median_s']:.3g}"]
                  for k, v in data["per_epoch"].items()])


def load_time_table() -> str:
    data = json.loads((RESULTS / "studies" / "load_time.json").read_text())
    return table(["reader", "load both splits (s, median)", "each round (s)"],
                 [[k, f"{v['median_load_s']:.1f}", ", ".join(f"{x:.1f}" for x in v["load_s"])]
                  for k, v in data.items() if isinstance(v, dict)])


def serve_latency_table() -> str:
    d = json.loads((RESULTS / "serve" / "latency.json").read_text())
    return table(["requests", "median (ms)", "90th percentile", "99th percentile",
                  "in the server (median)", "start-up (s)"],
                 [[d["requests"], d["median_ms"], d["p90_ms"], d["p99_ms"],
                   d["server_median_ms"], d["startup_s"]]])


def backprop_final_error_table() -> str:
    lines = (RESULTS / "backprop" / "final_error.txt").read_text().splitlines()
    steps = lines[0].split()[-1]
    rows = [line.split() for line in lines[1:]]
    return table(["lr", "E_total at 0", f"E_total at {steps}"], rows)


def excerpt(spec: str) -> str:
    """`FILE LINES`: lines FIRST-LAST (1-based) of a file under experiments/results/."""
    path, lines = spec.split()
    first, last = (int(x) for x in lines.split("-"))
    text = (RESULTS / path).read_text().splitlines()[first - 1:last]
    return "```\n" + "\n".join(text) + "\n```\n"


def layer_table(recipe: str) -> str:
    """The recipe's net, layer by layer: `models.layer_table` (as `--summary` prints it)."""
    from jaxmnist import configs, steps
    from jaxmnist.models import layer_table as rows_of
    from jaxmnist.models import totals

    rows = rows_of(steps.make_model(configs.RECIPES[recipe]()))
    out = []
    for r in rows:
        n = r.sees[1] - r.sees[0] + 1 if r.name == "head" else r.field
        out.append([f"{r.name} `{r.token}`", "×".join(map(str, r.output)), f"{r.params:,}",
                    f"{n}×{n}" + (" (all)" if r.name == "head" and n == 28 else ""),
                    r.jump or "", f"{r.madds:,}"])
    params, madds = totals(rows)
    out.append(["total", "", f"**{params:,}**", "", "", f"{madds:,}"])
    return table(["layer", "output", "params", "receptive field", "jump", "multiply-adds"],
                 out)


def basics_table(*names: str) -> str:
    """The seed net taken apart (`lab.basics`): one row per variant of `configs.BASICS`,
    or of the variants `names`, in that order."""
    by_name = {r["name"]: r for r in basics_rows()}
    rows = []
    for r in [by_name[n] for n in names] if names else by_name.values():
        n = len(r["accuracies"])
        accuracy = ("not run" if not n else f"**{r['mean']:.2f}**" if n == 1
                    else f"**{r['mean']:.2f} ± {r['std']:.2f}**")
        rows.append([r["what"], f"`{r['request']['arch']}`" if "arch" in
                     configs_basics()[r["name"]][1] else "", f"{r['params']:,}",
                     f"{r['field']}×{r['field']}", f"{r['madds']:,}", accuracy,
                     ", ".join([f"{a:.2f}" for a in r["accuracies"]]
                               + [f"{len(r['failed'])} failed (diverged)"] * bool(r["failed"]))
                     or "–",
                     r["seconds_per_epoch"] if r["seconds_per_epoch"] is not None else "–"])
    return table(["what changed", "net (where it changed)", "params", "last block's field",
                  "multiply-adds", "test accuracy (%)", "per seed", "s / epoch"], rows)


@functools.cache
def basics_rows() -> tuple[dict, ...]:
    """`lab.basics` of the committed runs, once per process: its 16 nets' layer tables
    take a second or so, and a page has several tables of it."""
    from jaxmnist.lab import basics

    return tuple(basics(RESULTS))


def configs_basics() -> dict:
    from jaxmnist.configs import BASICS

    return BASICS


TABLES = {
    "recipes": lambda: recipes_table(),
    "runs": lambda *bases: runs_table(list(bases)),
    "round": round_table,
    "frontier": frontier_table,
    "tta-probe": tta_probe_table,
    "tta-frontier": tta_frontier_table,
    "time-to-accuracy": time_to_accuracy_table,
    "compare": compare_table,
    "bench": bench_table,
    "step-variants": step_variants_table,
    "depthwise-kernel": depthwise_kernel_table,
    "profile": profile_table,
    "epoch-overhead": epoch_overhead_table,
    "load-time": load_time_table,
    "serve-latency": serve_latency_table,
    "backprop-final-error": backprop_final_error_table,
    "excerpt": lambda *args: excerpt(" ".join(args)),
    "layers": layer_table,
    "basics": basics_table,
    "basics-rows": basics_table,
}


def generate(spec: str) -> str:
    kind, *args = spec.split()
    if kind not in TABLES:
        raise SystemExit(f"unknown generated table {kind!r} (known: {', '.join(TABLES)})")
    return TABLES[kind](*args)


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m[1] + generate(m["spec"]) + m[4], text)


# --- studies/summary.md: every run ------------------------------------------------------

def summary_md() -> str:
    header = ["run", "recipe", "seed", "epochs", "final-epoch accuracy (%)", "last 5 epochs",
              "best epoch (chosen on that same set)", "minutes"]

    def rows(paths):
        out = []
        for run in sorted(paths, key=lambda p: natural(p.relative_to(RESULTS))):
            config, metrics = load(run)
            if not metrics:
                continue
            acc = [accuracy(run, i) for i in range(len(metrics))]
            best = max(range(len(acc)), key=acc.__getitem__)
            done = len(metrics) == config["epochs"]
            out.append([run.relative_to(RESULTS).as_posix(), describe(config), config["seed"],
                        f"{len(metrics)}/{config['epochs']}",
                        f"**{acc[-1]:.2f}**" if done else f"unfinished ({acc[-1]:.2f})",
                        f"{min(acc[-5:]):.2f}–{max(acc[-5:]):.2f}",
                        f"{acc[best]:.2f} (epoch {metrics[best]['epoch']})",
                        f"{sum(m['seconds'] for m in metrics) / 60:.0f}"])
        return out

    runs = [p.parent for p in RESULTS.rglob("config.json")]
    validated = [r for r in runs if load(r)[0]["validation"]]
    tested = [r for r in runs if r not in validated]
    return ("# Every committed run (written by `python experiments/summarize.py`)\n\n"
            "Minutes are the sum of the epochs' seconds; most runs shared the cores with "
            "other work, so they are not speed figures (docs/performance.md has those).\n\n"
            "## Validation runs: the selection rounds and the teachers (trained on the "
            "first 55,000 training images, evaluated on the last 5,000)\n\n"
            + table(header, rows(validated))
            + "\n## Test-set runs (trained on all 60,000, evaluated on the 10,000 test "
              "images)\n\n" + table(header, rows(tested)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming each table that differs from the files")
    args = p.parse_args(argv)
    targets = {path: render(path.read_text()) for path in DOCS}
    targets[RESULTS / "studies" / "summary.md"] = summary_md()
    stale = []
    for path, text in targets.items():
        old = path.read_text() if path.exists() else ""
        if old == text:
            continue
        if args.check:
            old_blocks = [m[0] for m in BLOCK.finditer(old)]
            specs = [m["spec"] for m, o in zip(BLOCK.finditer(text), old_blocks) if m[0] != o]
            stale += [f"{path.relative_to(REPO)}: {s}" for s in specs or ["(the file)"]]
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print("out of date (python experiments/summarize.py rewrites them):\n  "
              + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
