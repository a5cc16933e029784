"""Part A's worked example as JSON, for the /backprop page: `lesson(request)`.

A request is a JSON object whose every field is optional; a field left out takes the
seed's example's value, so `{}` is the seed's example:

    i1, i2, t1, t2      the example (0.05, 0.10; 0.01, 0.99)
    w1 ... w8           the starting weights (0.15, 0.20, ..., 0.55)
    b1, b2              the fixed biases (0, 0: none; 0.35, 0.60 is the classic example)
    lrs                 1 to 6 learning rates (0.1, 0.2, 0.5, 0.8, 1, 2)
    steps               gradient-descent iterations, 1 to MAX_STEPS (500)
    lr_index, step      which run and which step to work out (the run at 0.5, step 1)

Every number in the answer comes from `jaxmnist.backprop` in float64: the error curves
from `gradient_descent`, the worked step from `worked_step` (the text `--explain`
prints, field by field, with `jax.grad`'s value beside each chain), the picture's labels
from `network_labels`. A bad field raises LessonError naming it.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist import backprop as bp

MAX_LRS = 6  # as the seed's sheet
MAX_STEPS = 10_000  # every run is computed to here (tens of ms), then cut to `steps`
MAX_VALUE = 1_000.0  # |a weight, bias, input or target|, and a learning rate, at most
MAX_CURVE_POINTS = 1_000  # the curves are sent at most at this many iterations (+ the last)
SEED_EXAMPLE = {**bp.DEFAULT_EXAMPLE, **bp.DEFAULT_WEIGHTS, "b1": 0.0, "b2": 0.0,
                "lrs": [0.1, 0.2, 0.5, 0.8, 1.0, 2.0], "steps": 500}
NUMBERS = ("i1", "i2", "t1", "t2") + bp.WEIGHTS + bp.BIASES
FIELDS = NUMBERS + ("lrs", "steps", "lr_index", "step")


class LessonError(ValueError):
    """A request field that cannot be used: `field` names it, str() says why."""

    def __init__(self, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def _number(field: str, value, low: float = -MAX_VALUE, high: float = MAX_VALUE) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LessonError(field, f"not a number: {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise LessonError(field, f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise LessonError(field, f"not a finite number: {value!r}")
    if not low <= number <= high:
        raise LessonError(field, f"must be between {low:g} and {high:g}, got {number:g}")
    return number


def _integer(field: str, value, low: int, high: int) -> int:
    number = _number(field, value, low, high)
    if number != int(number):
        raise LessonError(field, f"must be a whole number, got {value!r}")
    return int(number)


def parse_request(request) -> dict:
    """The request with every field checked and every missing one filled in."""
    if not isinstance(request, dict):
        raise LessonError(None, "the body must be a JSON object, e.g. {\"lrs\": [0.5]}")
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise LessonError(unknown[0], f"no such field (the fields are {', '.join(FIELDS)})")
    fields = {k: _number(k, request.get(k, SEED_EXAMPLE[k])) for k in NUMBERS}
    lrs = request.get("lrs", SEED_EXAMPLE["lrs"])
    if not isinstance(lrs, list) or not 1 <= len(lrs) <= MAX_LRS:
        raise LessonError("lrs", f"give 1 to {MAX_LRS} learning rates as a list, got {lrs!r}")
    fields["lrs"] = [_number("lrs", lr) for lr in lrs]
    for lr in fields["lrs"]:
        if lr <= 0:
            raise LessonError("lrs", f"learning rates must be > 0, got {lr:g}")
    fields["steps"] = _integer("steps", request.get("steps", SEED_EXAMPLE["steps"]), 1,
                               MAX_STEPS)
    default_index = fields["lrs"].index(0.5) if 0.5 in fields["lrs"] else 0
    fields["lr_index"] = _integer("lr_index", request.get("lr_index", default_index), 0,
                                  len(fields["lrs"]) - 1)
    fields["step"] = _integer("step", request.get("step", 1), 1, fields["steps"])
    return fields


def _float64():
    """float64 in this thread only (a server's other requests keep their float32)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # jax < 0.8 (the floor is 0.7)
    return enable_x64()


@functools.lru_cache(maxsize=16)  # a slider moving over one set of runs computes them once
def _history(numbers: tuple, lrs: tuple) -> dict[str, np.ndarray]:
    """Every run to MAX_STEPS, (len(lrs), MAX_STEPS + 1) per value: one compiled shape
    for every request (the learning rates padded to MAX_LRS)."""
    values = dict(zip(NUMBERS, numbers))
    with _float64():
        p = bp.init_params({w: values[w] for w in bp.WEIGHTS}, (values["b1"], values["b2"]),
                           jnp.float64)
        x = bp.example(jnp.float64, **{k: values[k] for k in ("i1", "i2", "t1", "t2")})
        padded = jnp.asarray(lrs + (lrs[0],) * (MAX_LRS - len(lrs)), jnp.float64)
        hist = jax.device_get(bp.gradient_descent(p, x, padded, MAX_STEPS))
    return {k: v[: len(lrs)] for k, v in hist.items()}


_jax_grad = jax.jit(jax.grad(bp.loss))


def lesson(request) -> dict:
    """The answer to a /api/backprop request (see the module's docstring)."""
    t0 = time.perf_counter()
    fields = parse_request(request)
    lrs, steps = fields["lrs"], fields["steps"]
    hist = _history(tuple(fields[k] for k in NUMBERS), tuple(lrs))
    example = {k: fields[k] for k in ("i1", "i2", "t1", "t2")}
    index, step = fields["lr_index"], fields["step"]
    row = {**example, **{k: float(v[index, step - 1]) for k, v in hist.items()}}
    after = {k: float(v[index, step]) for k, v in hist.items()}
    with _float64():
        before = {k: jnp.asarray(row[k], jnp.float64) for k in bp.PARAMS}
        autodiff = {k: float(v) for k, v in _jax_grad(
            before, {k: jnp.asarray(v, jnp.float64) for k, v in example.items()}).items()}
    worked = bp.worked_step(row, after, autodiff, lrs[index], step)
    error = hist["E_total"][:, : steps + 1]
    stride = max(1, math.ceil(steps / MAX_CURVE_POINTS))
    iterations = list(range(0, steps + 1, stride))
    if iterations[-1] != steps:
        iterations.append(steps)
    return {
        "request": fields,
        "curves": {"iterations": iterations,
                   "E_total": [[float(e) for e in run[iterations]] for run in error]},
        "final": [{"lr": f"{lr:g}", "start": f"{run[0]:.9f}", "last": f"{run[-1]:.9f}"}
                  for lr, run in zip(lrs, error)],
        "network": bp.network_labels(row),
        "worked": worked,
        "text": bp.worked_text(worked),
        "ms": round(1000 * (time.perf_counter() - t0), 1),
    }
