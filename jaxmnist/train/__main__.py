"""`python -m jaxmnist.train`: the flags, the run directory, the lines printed, exit codes
(the loop itself is `jaxmnist.train`, this package's `__init__.py`).

Every field of `configs.Config` is a flag (`--batch-size`, `--fast-kernels` /
`--no-fast-kernels`, ...), derived from the field's type; values are checked by
`Config` itself. Exit codes: 0 done, 2 bad input (one line, nothing written), 1 a run
that failed (diverged, a disk error, another process lost), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from pathlib import Path

import jax
from tqdm.auto import tqdm

from jaxmnist import configs, data, multihost, rundir, steps
from jaxmnist.cli import (
    ArgumentParser,
    log_to_stderr,
    number,
    print_error,
    quiet_libraries,
    report,
    whole_number,
)
from jaxmnist.models import count_params, layer_table, totals
from jaxmnist.train import TrainingDiverged, train_and_evaluate

PROG = "python -m jaxmnist.train"
_PARSERS = {int: whole_number, float: number, str: str}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Train a net of the family on MNIST.")
    p.add_argument("--recipe", choices=sorted(configs.RECIPES),
                   help="the recipe (default: default; with --resume and no config flags, "
                        "the run's own config.json)")
    p.add_argument("--name", help="run name (default: the recipe's)")
    p.add_argument("--out", default="runs", help="parent of the run directory (default runs/)")
    p.add_argument("--data-dir", help="folder with the four MNIST IDX .gz files "
                   "(default $JAXMNIST_DATA_DIR; unset: TFDS downloads MNIST)")
    p.add_argument("--tfds-dir", help="TFDS data dir (default TFDS's own, e.g. $TFDS_DATA_DIR)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--summary", action="store_true", help="print the layer table and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    multihost.add_arguments(p)
    g = p.add_argument_group("config (defaults come from the recipe; see jaxmnist/configs.py)")
    for name, kind in configs.field_types().items():
        flag = "--" + name.replace("_", "-")
        if kind in (bool, bool | None):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            g.add_argument(flag, choices=choices, type=type(choices[0]), default=None)
        else:
            g.add_argument(flag, type=_PARSERS[kind], default=None)
    return p


def run_dir_of(args) -> Path:
    return Path(args.out) / (args.name or args.recipe or "default")


def config_from_args(args) -> configs.Config:
    """The recipe with the flags given; a ConfigError names a field it cannot have. With
    --resume and neither --recipe nor a config flag: the run's own config.json."""
    overrides = {name: getattr(args, name) for name in configs.field_types()
                 if getattr(args, name) is not None}
    if args.resume and args.recipe is None and not overrides:
        if (run_dir_of(args) / "config.json").is_file():
            return rundir.read_config(run_dir_of(args))
    return dataclasses.replace(configs.RECIPES[args.recipe or "default"](), **overrides)


def config_flags(config: configs.Config, recipe: str = "default") -> list[str]:
    """The config flags that, after `--recipe recipe`, give `config`: the inverse of
    `config_from_args`, for scripts that start runs (experiments/basics.py)."""
    base, out = configs.RECIPES[recipe](), []
    for name in configs.field_types():
        value = getattr(config, name)
        if value == getattr(base, name):
            continue
        if value is None:
            raise ValueError(f"{name}=None has no flag (it is {getattr(base, name)!r} in "
                             f"the recipe {recipe!r})")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


def table_lines(rows, image: int = 28) -> list[str]:
    """`models.layer_table`'s rows as the text table `--summary` prints: the head's field
    is the part of the image its pool (or dense layer) sees."""
    lines = [f"{'layer':<15} {'output':<9} {'params':>7} {'field':>7} {'jump':>4} "
             f"{'mult-adds':>10}"]
    for r in rows:
        n = r.sees[1] - r.sees[0] + 1 if r.name == "head" else r.field
        lines.append(f"{r.name + ' ' + r.token:<15} {'x'.join(map(str, r.output)):<9} "
                     f"{r.params:>7,} {f'{n}x{n}':>7} {r.jump or '':>4} {r.madds:>10,}")
    params, madds = totals(rows)
    lines.append(f"{'total':<15} {'':<9} {params:>7,} {'':>7} {'':>4} {madds:>10,}")
    first, last = rows[-1].sees
    seen = ("the whole image" if (first, last) == (0, image - 1)
            else f"rows and columns {first}-{last} of the {image}x{image} image, not all of it")
    lines += ["field: the input pixels one unit sees; jump: the input pixels between "
              "neighbouring units.",
              f"The last layer's units see {rows[-2].field}x{rows[-2].field}; the head's "
              f"{'dense layer' if rows[-1].token == 'dense' else 'average pool'} sees {seen}."]
    return lines


def print_summary(config: configs.Config) -> None:
    """The layer table; and the teacher, loaded (a ConfigError if it cannot be)."""
    print("\n".join(table_lines(layer_table(steps.make_model(config)))))
    teacher = rundir.load_teacher(config)
    if teacher is not None:
        model, teacher_variables = teacher
        print(f"teacher {config.teacher}: {model.arch!r}, "
              f"{count_params(teacher_variables['params']):,} params; distill weight "
              f"{config.distill_weight:g}, temperature {config.distill_temperature:g}")


def summary_line(history: list[dict], wall: float) -> str:
    """The run's last line: final and best accuracy (the best labelled as chosen on the
    eval set), wall time and training throughput."""
    eval_name = "val" if "val_accuracy" in history[-1] else "test"
    final = history[-1]
    best = max(history, key=lambda h: h[f"{eval_name}_accuracy"])
    # Every epoch trains the same number of images: the overall rate is the harmonic mean.
    images_per_s = len(history) / sum(1 / h["train_images_per_s"] for h in history)
    shifts = final.get(f"{eval_name}_accuracy_by_shifts", {})
    tta = max((int(k) for k in shifts), default=0)
    note = rundir.shifts_note({"accuracy_by_shifts": shifts}, tta)
    return (f"final {eval_name} accuracy {100 * final[f'{eval_name}_accuracy']:.2f}%{note} "
            f"(epoch {final['epoch']}); best {100 * best[f'{eval_name}_accuracy']:.2f}% at "
            f"epoch {best['epoch']} (chosen on the {eval_name} set); wall {wall:.0f}s; "
            f"{images_per_s:.0f} train images/s on {jax.device_count()}x "
            f"{jax.devices()[0].platform}"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if multihost.requested(args):
        multihost.check_arguments(parser, args)
    try:
        config = config_from_args(args)
        if args.summary:
            print_summary(config)
            return 0
        run_dir = run_dir_of(args)
        teacher = None
        # Across processes the directory is checked, and a teacher loaded, once JAX knows
        # which process is 0 (nothing may touch JAX before it is initialised).
        if not multihost.requested(args):
            rundir.check(run_dir, config, args.resume)
            teacher = rundir.load_teacher(config)
    except ValueError as e:
        return report(PROG, e)
    if multihost.requested(args):
        return multihost.run(PROG, argv, args, lambda: train(args, config, run_dir))
    return train(args, config, run_dir, teacher)


def train(args, config: configs.Config, run_dir: Path, teacher=None) -> int:
    """Trains into `run_dir` (distilling from `teacher`, `rundir.load_teacher`'s, where
    the config names one) and prints the summary; returns the exit code."""
    # Log lines above the progress bar rather than through it.
    log_to_stderr(PROG, lambda line: tqdm.write(line, file=sys.stderr))
    t0 = time.perf_counter()
    try:
        train_and_evaluate(config, run_dir, data_dir=args.data_dir, tfds_dir=args.tfds_dir,
                           resume=args.resume, progress=not args.no_progress, teacher=teacher)
    except data.DownloadError as e:
        print_error(PROG, f"{e}: give its folder with --data-dir or $JAXMNIST_DATA_DIR")
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the newest checkpoint in {run_dir} is the last finished "
              "epoch: continue with --resume", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, ValueError) and multihost.peer_lost():
            raise multihost.PeerLost from e
        if isinstance(e, (ValueError, OSError, TrainingDiverged)):
            return report(PROG, e)
        raise
    if multihost.is_main():
        print(summary_line(rundir.read_metrics(run_dir), time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
