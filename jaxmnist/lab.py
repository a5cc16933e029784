"""The architecture lab: a net typed as a layer string, its table, trained live, looked inside.

This module knows no HTTP (`jaxmnist.serve` puts it on `/architecture` and `/api/...`):

- `describe(request)`: the layer table (`models.layer_table`) of `{"arch", "recipe"?,
  "options"?}` as JSON rows, with the totals and whether the net is within `LIMITS`.
- `Lab`: trains one job at a time in a thread of its own (`submit`, `job`, `cancel`),
  into an ordinary run directory under its runs folder, and shows what the layers of any
  run it knows make of a digit (`runs`, `activations`).

A request's fields are checked before anything is trained; a LabError names the field
(and, for a bad layer string, the token). "options" are the `Config` fields a student
may change beside the net (`OPTIONS`), e.g. {"norm": "none", "head": "dense"}: how the
rows of the basics study load into the lab.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import threading
import time
import typing
from pathlib import Path

import numpy as np

from jaxmnist import configs, data, rundir, steps
from jaxmnist.inside import Inside, centre_window
from jaxmnist.models import layer_table, totals
from jaxmnist.train import Stopped, TrainingDiverged, train_and_evaluate

# What the lab trains at most: each limit bounds the memory a job can take (about 1 GB
# of activations and their gradients at batch 512, the largest batch allowed).
LIMITS = {"params": 200_000, "madds": 30_000_000, "activations": 150_000, "epochs": 20,
          "batch_size": 512, "arch_chars": 200}
# The Config fields a request's "options" may set beside the net.
OPTIONS = ("bias", "norm", "bn_scale", "activation", "head", "head_hidden", "bn_before_relu",
           "dropout", "dropout_at", "lr", "schedule", "momentum", "batch_size", "rotate_degrees",
           "shift_pixels", "seed")
RECIPES = ("default", "fast", "tiny", "micro", "nano", "seed")  # those a job may start from
INSIDE_CACHE = 4  # compiled runs kept for /api/activations


class LabError(ValueError):
    """A request the lab cannot take; `field` names the field at fault (or None)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Busy(RuntimeError):
    """A job is running already; `job` is its snapshot."""

    def __init__(self, job: dict):
        super().__init__(f"job {job['id']} is running ({job['arch']!r}, epoch "
                         f"{job['epoch']} of {job['epochs']}): one job at a time")
        self.job = job


def _typed(name: str, value, kind):
    """`value` as Config field `name`'s type, or a LabError naming it."""
    if kind is bool:
        if not isinstance(value, bool):
            raise LabError(f"{name}: expected true or false, got {value!r}", name)
        return value
    if kind is int or kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                kind is int and value != int(value)):
            raise LabError(f"{name}: expected {'a whole' if kind is int else 'a'} number, "
                           f"got {value!r}", name)
        return kind(value)
    if typing.get_origin(kind) is typing.Literal:
        if value not in typing.get_args(kind):
            choices = " or ".join(map(repr, typing.get_args(kind)))
            raise LabError(f"{name}: expected {choices}, got {value!r}", name)
        return value
    raise LabError(f"{name}: cannot be set here", name)  # (no such option)


def config_of(request: dict, *, training: bool = False) -> configs.Config:
    """The Config a request describes: `recipe` (default "default") with `arch`, its
    `options`, and for a job `epochs` and `max_steps`. LabError names a bad field."""
    if not isinstance(request, dict):
        raise LabError("the body must be a JSON object")
    allowed = {"arch", "recipe", "options"} | ({"epochs", "max_steps"} if training else set())
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise LabError(f"{unknown[0]}: unknown field (expected {', '.join(sorted(allowed))})",
                       unknown[0])
    arch = request.get("arch")
    if not isinstance(arch, str) or not arch.strip():
        raise LabError(f"arch: expected a layer string such as {configs.SEED_ARCH!r}, "
                       f"got {arch!r}", "arch")
    if len(arch) > LIMITS["arch_chars"]:
        raise LabError(f"arch: {len(arch)} characters is over the lab's limit of "
                       f"{LIMITS['arch_chars']}", "arch")
    recipe = request.get("recipe", "default")
    if recipe not in RECIPES:
        raise LabError(f"recipe: expected one of {', '.join(RECIPES)}, got {recipe!r}", "recipe")
    options = request.get("options") or {}
    if not isinstance(options, dict):
        raise LabError(f"options: expected an object of config fields, got {options!r}",
                       "options")
    types = configs.field_types()
    fields = {}
    for name, value in options.items():
        if name not in OPTIONS:
            raise LabError(f"options.{name}: not an option here (one of {', '.join(OPTIONS)})",
                           f"options.{name}")
        fields[name] = _typed(f"options.{name}", value, types[name])
    if training:
        fields["epochs"] = _typed("epochs", request.get("epochs"), int)
        if not 1 <= fields["epochs"] <= LIMITS["epochs"]:
            raise LabError(f"epochs: expected 1 to {LIMITS['epochs']}, got "
                           f"{fields['epochs']}", "epochs")
        fields["max_steps"] = _typed("max_steps", request.get("max_steps", 0), int)
        if fields["max_steps"] < 0:
            raise LabError(f"max_steps: expected 0 (every step) or more, got "
                           f"{fields['max_steps']}", "max_steps")
    try:
        return dataclasses.replace(configs.RECIPES[recipe](), arch=arch, **fields)
    except configs.ConfigError as e:
        if e.field == "arch":  # the token's message, without the whole string again
            raise LabError(f"arch: {str(e).split(': ', 1)[-1]}", "arch") from None
        field = e.field if e.field in ("epochs", "max_steps") else f"options.{e.field}"
        raise LabError(f"{field}: {e.reason}", field) from None


def activations_per_image(rows) -> int:
    """The values a net's layers hold for one image (each shared block's K applications
    counted): what its training memory grows with, times the batch."""
    return sum(r.activations for r in rows[:-1])


def over_limit(config: configs.Config, rows) -> str | None:
    """One line naming the limit `config`'s net is over, or None."""
    params, madds = totals(rows)
    for what, words, value in (("params", "parameters", params),
                               ("madds", "multiply-adds per image", madds),
                               ("activations", "activations per image",
                                activations_per_image(rows))):
        if value > LIMITS[what]:
            return f"arch: {value:,} {words} is over the lab's limit of {LIMITS[what]:,}"
    if config.batch_size > LIMITS["batch_size"]:
        return (f"options.batch_size: {config.batch_size:,} is over the lab's limit of "
                f"{LIMITS['batch_size']:,}")
    return None


def describe(request: dict) -> dict:
    """The layer table of the net `request` describes (`config_of`), as JSON."""
    config = config_of(request)
    rows = layer_table(steps.make_model(config))
    params, madds = totals(rows)
    first, last = rows[-1].sees
    return {
        "arch": config.arch,
        "rows": [{"name": r.name, "token": r.token, "output": list(r.output),
                  "params": r.params, "field": r.field, "jump": r.jump, "madds": r.madds,
                  "sees": list(r.sees),
                  # the square one unit in the middle of the map sees, cut to the image
                  "centre": list(centre_window(r)) if r.name != "head" else
                  [first, first, last - first + 1]}
                 for r in rows],
        "totals": {"params": params, "madds": madds,
                   "activations": activations_per_image(rows)},
        "whole_image": (first, last) == (0, 27),
        "limits": LIMITS,
        "over_limit": over_limit(config, rows),
    }


@dataclasses.dataclass
class Job:
    """One training job of the lab, run in a thread of its own."""

    id: str
    config: configs.Config
    run_dir: Path
    state: str = "running"  # running, cancelling, done, cancelled, failed
    epoch: int = 0
    step: int = 0
    steps: int = 0
    error: str | None = None
    started: float = dataclasses.field(default_factory=time.time)
    finished: float | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)

    def on_step(self, epoch: int, done: int, total: int) -> None:
        self.epoch, self.step, self.steps = epoch, done, total
        if self.cancel.is_set():
            raise Stopped(f"cancelled at epoch {epoch}, step {done} of {total}")

    def snapshot(self) -> dict:
        metrics = []
        path = self.run_dir / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                metrics.append(json.loads(line))
            except ValueError:  # the line being appended as this reads it
                break
        return {"id": self.id, "state": self.state, "arch": self.config.arch,
                "epochs": self.config.epochs, "epoch": self.epoch, "step": self.step,
                "steps": self.steps, "metrics": metrics, "error": self.error,
                "run": self.id, "run_dir": str(self.run_dir),
                "resume": rundir.resume_command(self.run_dir),
                "seconds": round((self.finished or time.time()) - self.started, 1)}


class Lab:
    """Trains the lab's jobs, one at a time, into `runs_dir`; knows the runs of
    `known` ({name: run directory}: the committed recipes, the served run) and its own."""

    def __init__(self, runs_dir: str | Path, known: dict[str, Path] | None = None,
                 data_dir=None, tfds_dir=None, splits=None):
        self.runs_dir = Path(runs_dir)
        self.known = dict(known or {})
        self.data_dir, self.tfds_dir = data_dir, tfds_dir
        self._splits = splits  # (train, test) host arrays, read once on the first job
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._thread: threading.Thread | None = None
        self._inside: collections.OrderedDict[tuple, Inside] = collections.OrderedDict()

    # --- jobs -----------------------------------------------------------------------------
    def submit(self, request: dict) -> Job:
        """Starts a job (`config_of(request, training=True)`); Busy while one runs,
        LabError for a request it cannot take."""
        config = config_of(request, training=True)
        rows = layer_table(steps.make_model(config))
        if (reason := over_limit(config, rows)) is not None:
            raise LabError(reason, reason.split(":")[0])
        with self._lock:
            if self._running is not None:
                raise Busy(self._running.snapshot())
            job_id = self._next_id()
            job = Job(job_id, config, self.runs_dir / job_id)
            self._jobs[job_id] = job
            self._running = job
            self._thread = threading.Thread(target=self._train, args=(job,), daemon=True,
                                            name=f"jaxmnist-lab-{job_id}")
            self._thread.start()
        return job

    def _next_id(self) -> str:
        taken = [int(m[1]) for p in self.runs_dir.glob("lab-*")
                 if (m := re.fullmatch(r"lab-(\d+)", p.name))] if self.runs_dir.is_dir() else []
        return f"lab-{max(taken + [int(k.split('-')[1]) for k in self._jobs] + [0]) + 1}"

    def _train(self, job: Job) -> None:
        try:
            if self._splits is None:
                self._splits = data.load_mnist(self.data_dir, self.tfds_dir)
            train_and_evaluate(job.config, job.run_dir, splits=self._splits,
                               on_step=job.on_step)
            job.state = "done"
        except Stopped:
            job.state = "cancelled"
        except TrainingDiverged as e:
            job.state, job.error = "failed", str(e)
        except Exception as e:  # the server stays up; the job says what ended it
            job.state, job.error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
        finally:
            job.finished = time.time()
            with self._lock:
                self._running = None

    def job(self, job_id: str) -> Job:
        if job_id not in self._jobs:
            raise KeyError(f"no job {job_id!r}")
        return self._jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        """Asks `job_id` to stop at its next step (it keeps its complete epochs)."""
        job = self.job(job_id)
        if job.state == "running":
            job.cancel.set()
            job.state = "cancelling"
        return job

    def wait(self, timeout: float | None = None) -> None:
        """Until the running job (if any) has ended."""
        if self._thread is not None:
            self._thread.join(timeout)

    # --- runs -----------------------------------------------------------------------------
    def run_dirs(self) -> dict[str, Path]:
        """Every run the lab knows, by name: `known`, then its own (lab-1, lab-2, ...)."""
        runs = dict(self.known)
        if self.runs_dir.is_dir():
            for path in sorted(self.runs_dir.glob("lab-*"),
                               key=lambda p: int(p.name.split("-")[1])
                               if p.name.split("-")[1].isdigit() else 0):
                if (path / "config.json").is_file():
                    runs[path.name] = path
        return runs

    def runs(self) -> list[dict]:
        """Each known run: name, arch, params, epochs complete of its epochs, whether it
        is finished, and its last test accuracy."""
        out = []
        for name, path in self.run_dirs().items():
            try:
                config = rundir.read_config(path)
                done, epochs = rundir.progress(path)
            except ValueError:
                continue
            metrics = rundir.read_metrics(path)[:done]
            last = metrics[-1] if metrics else {}
            out.append({"name": name, "arch": config.arch, "epochs": epochs, "complete": done,
                        "finished": done == epochs,
                        "running": self._running is not None and self._running.run_dir == path,
                        "accuracy": last.get("test_accuracy", last.get("val_accuracy"))})
        return out

    def activations(self, name: str, image: np.ndarray) -> dict:
        """What the layers of run `name` make of `image` (28, 28) in [0, 1]: the
        prediction, and each block's channels as tiles of bytes (0-255, each tile
        scaled to its own range)."""
        runs = self.run_dirs()
        if name not in runs:
            raise LabError(f"run: no run {name!r} here (one of {', '.join(runs)})", "run")
        path = runs[name]
        done, epochs = rundir.progress(path)
        if done == 0:
            raise LabError(f"run: {name} has no complete epoch yet", "run")
        key = (str(path), done)
        inside = self._inside.get(key)
        if inside is None:
            inside = Inside(*rundir.load_trained(path))
            self._inside[key] = inside
            while len(self._inside) > INSIDE_CACHE:
                self._inside.popitem(last=False)
        self._inside.move_to_end(key)
        seen = inside(image)
        blocks = []
        for row, out in seen.blocks():
            lo = out.min(axis=(0, 1), keepdims=True)
            span = np.maximum(out.max(axis=(0, 1), keepdims=True) - lo, 1e-12)
            tiles = np.round(255 * (out - lo) / span).astype(np.uint8)
            blocks.append({"name": row.name, "token": row.token, "output": list(row.output),
                           "field": row.field, "centre": list(centre_window(row)),
                           "tiles": tiles.transpose(2, 0, 1).tolist()})
        p = seen.probabilities
        return {"run": name, "digit": int(np.argmax(p)),
                "probabilities": [round(float(x), 6) for x in p],
                "finished": done == epochs, "epoch": done, "blocks": blocks}


def basics(results: Path | None) -> list[dict]:
    """The rows of the basics study (`configs.BASICS`): what changed, the request that
    loads it into the lab, params, the last block's receptive field, multiply-adds, and
    where `results` (experiments/results) holds them, the final-epoch test accuracy of
    each complete seed (`studies/basics/<name>-seedN`) and the seconds an epoch takes
    with the machine to itself (`studies/basics_timing.jsonl`: 60,000 training and
    10,000 test images at the measured rates, the median of the rounds)."""
    timing = collections.defaultdict(list)
    path = results / "studies" / "basics_timing.jsonl" if results is not None else None
    if path is not None and path.is_file():
        for line in path.read_text().splitlines():
            t = json.loads(line)
            timing[t["variant"]].append(60_000 / t["train_images_per_s"]
                                        + 10_000 / t["eval_images_per_s"])
    rows = []
    for name, (what, fields) in configs.BASICS.items():
        config = configs.basics_config(name)
        table = layer_table(steps.make_model(config))
        params, madds = totals(table)
        accuracies, failed = [], []
        for run in sorted((results / "studies" / "basics").glob(f"{name}-seed*")
                          if results is not None else []):
            metrics = rundir.read_metrics(run)
            if len(metrics) == config.epochs:
                accuracies.append(100 * metrics[-1]["test_accuracy"])
            elif (run / "failed.txt").is_file():  # e.g. a loss that stopped being finite
                failed.append((run / "failed.txt").read_text().strip())
        seconds = timing.get(name)
        rows.append({
            "name": name, "what": what,
            "request": {"arch": config.arch, "recipe": "default", "epochs": config.epochs,
                        "options": {k: v for k, v in fields.items() if k != "arch"}},
            "params": params, "madds": madds,
            "field": [r.field for r in table if r.name.startswith("block")][-1],
            "accuracies": [round(a, 2) for a in accuracies], "failed": failed,
            "mean": round(float(np.mean(accuracies)), 2) if accuracies else None,
            "std": round(float(np.std(accuracies, ddof=1)), 2) if len(accuracies) > 1 else None,
            "seconds_per_epoch": round(float(np.median(seconds)), 1) if seconds else None})
    return rows
