"""Backprop by hand for a 2-2-2 sigmoid network, proven right by `jax.grad`.

    inputs        hidden                     outputs                    errors
    i1 ──w1──┐
             ├─> h1 = w1·i1 + w2·i2 + b1 ─> a_h1 = σ(h1) ─┬─w5─> o1 = w5·a_h1 + w6·a_h2 + b2 ─> a_o1 = σ(o1) ─> E1 = ½(t1 − a_o1)²
    i2 ──w2──┘                                            ├─w7─┐
    i1 ──w3──┐                                            │    └> o2 = w7·a_h1 + w8·a_h2 + b2 ─> a_o2 = σ(o2) ─> E2 = ½(t2 − a_o2)²
             ├─> h2 = w3·i1 + w4·i2 + b1 ─> a_h2 = σ(h2) ─┴─(w6 to o1, w8 to o2)
    i2 ──w4──┘
                                                                                 E_total = E1 + E2

Run `python -m jaxmnist.backprop --lrs 0.1,0.5,1,2` to train it by gradient descent at
several learning rates at once and plot the total error against the iterations.
The biases b1 (hidden layer) and b2 (output layer) are optional and never trained;
with b1 = 0.35, b2 = 0.60 and lr 0.5 this is the classic published worked example
("A Step by Step Backpropagation Example", Matt Mazur, 2015).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxmnist.cli import ArgumentParser, positive_float, positive_int, report
from jaxmnist.files import check_writable_dir, replace_atomically

WEIGHTS = ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8")
BIASES = ("b1", "b2")
PARAMS = WEIGHTS + BIASES
INTERMEDIATES = ("h1", "a_h1", "h2", "a_h2", "o1", "a_o1", "o2", "a_o2", "E1", "E2", "E_total")

DEFAULT_WEIGHTS = dict(w1=0.15, w2=0.20, w3=0.25, w4=0.30, w5=0.40, w6=0.45, w7=0.50, w8=0.55)
DEFAULT_EXAMPLE = dict(i1=0.05, i2=0.10, t1=0.01, t2=0.99)
PUBLISHED_BIASES = (0.35, 0.60)


def init_params(weights: dict | None = None, biases: tuple[float, float] = (0.0, 0.0),
                dtype=None) -> dict[str, jax.Array]:
    """{'w1'..'w8', 'b1', 'b2'} as scalar arrays; zero biases mean "no biases"."""
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    values = {**weights, "b1": biases[0], "b2": biases[1]}
    return {k: jnp.asarray(values[k], dtype) for k in PARAMS}


def example(dtype=None, **overrides) -> dict[str, jax.Array]:
    """The training example {'i1', 'i2', 't1', 't2'} (defaults 0.05, 0.10, 0.01, 0.99)."""
    return {k: jnp.asarray(v, dtype) for k, v in {**DEFAULT_EXAMPLE, **overrides}.items()}


def sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def forward(p: dict, x: dict) -> dict[str, jax.Array]:
    """Every intermediate of the forward pass, by name. The comment on each line is the
    local derivative that the backward pass multiplies along that edge."""
    i1, i2, t1, t2 = x["i1"], x["i2"], x["t1"], x["t2"]
    h1 = p["w1"] * i1 + p["w2"] * i2 + p["b1"]  # ∂h1/∂w1 = i1, ∂h1/∂w2 = i2
    a_h1 = sigmoid(h1)  # ∂a_h1/∂h1 = a_h1·(1 − a_h1)
    h2 = p["w3"] * i1 + p["w4"] * i2 + p["b1"]  # ∂h2/∂w3 = i1, ∂h2/∂w4 = i2
    a_h2 = sigmoid(h2)  # ∂a_h2/∂h2 = a_h2·(1 − a_h2)
    o1 = p["w5"] * a_h1 + p["w6"] * a_h2 + p["b2"]  # ∂o1/∂w5 = a_h1, ∂o1/∂w6 = a_h2, ∂o1/∂a_h1 = w5, ∂o1/∂a_h2 = w6
    a_o1 = sigmoid(o1)  # ∂a_o1/∂o1 = a_o1·(1 − a_o1)
    o2 = p["w7"] * a_h1 + p["w8"] * a_h2 + p["b2"]  # ∂o2/∂w7 = a_h1, ∂o2/∂w8 = a_h2, ∂o2/∂a_h1 = w7, ∂o2/∂a_h2 = w8
    a_o2 = sigmoid(o2)  # ∂a_o2/∂o2 = a_o2·(1 − a_o2)
    E1 = 0.5 * (t1 - a_o1) ** 2  # ∂E1/∂a_o1 = a_o1 − t1
    E2 = 0.5 * (t2 - a_o2) ** 2  # ∂E2/∂a_o2 = a_o2 − t2
    E_total = E1 + E2  # ∂E_total/∂E1 = ∂E_total/∂E2 = 1
    return dict(h1=h1, a_h1=a_h1, h2=h2, a_h2=a_h2, o1=o1, a_o1=a_o1, o2=o2, a_o2=a_o2,
                E1=E1, E2=E2, E_total=E_total)


def loss(p: dict, x: dict) -> jax.Array:
    """E_total, the function `jax.grad` differentiates to check `manual_grads`."""
    return forward(p, x)["E_total"]


def manual_grads(p: dict, x: dict) -> dict[str, jax.Array]:
    """∂E_total/∂(w1..w8, b1, b2), each written out by the chain rule as on paper."""
    f = forward(p, x)
    i1, i2, t1, t2 = x["i1"], x["i2"], x["t1"], x["t2"]
    a_h1, a_h2, a_o1, a_o2 = f["a_h1"], f["a_h2"], f["a_o1"], f["a_o2"]
    w5, w6, w7, w8 = p["w5"], p["w6"], p["w7"], p["w8"]

    # Output layer. w5, w6 reach E_total only through o1 (so only E1); w7, w8 through o2.
    # ∂E/∂w5 = ∂E1/∂a_o1 · ∂a_o1/∂o1 · ∂o1/∂w5
    dw5 = (a_o1 - t1) * a_o1 * (1 - a_o1) * a_h1
    dw6 = (a_o1 - t1) * a_o1 * (1 - a_o1) * a_h2
    dw7 = (a_o2 - t2) * a_o2 * (1 - a_o2) * a_h1
    dw8 = (a_o2 - t2) * a_o2 * (1 - a_o2) * a_h2

    # Hidden layer. a_h1 feeds both outputs (via w5 to o1 and w7 to o2), so both errors
    # flow back into w1 and w2:
    # ∂E/∂w1 = (∂E1/∂a_o1·∂a_o1/∂o1·∂o1/∂a_h1 + ∂E2/∂a_o2·∂a_o2/∂o2·∂o2/∂a_h1) · ∂a_h1/∂h1 · ∂h1/∂w1
    dw1 = ((a_o1 - t1) * a_o1 * (1 - a_o1) * w5
           + (a_o2 - t2) * a_o2 * (1 - a_o2) * w7) * a_h1 * (1 - a_h1) * i1
    dw2 = ((a_o1 - t1) * a_o1 * (1 - a_o1) * w5
           + (a_o2 - t2) * a_o2 * (1 - a_o2) * w7) * a_h1 * (1 - a_h1) * i2
    # a_h2 reaches o1 via w6 and o2 via w8.
    dw3 = ((a_o1 - t1) * a_o1 * (1 - a_o1) * w6
           + (a_o2 - t2) * a_o2 * (1 - a_o2) * w8) * a_h2 * (1 - a_h2) * i1
    dw4 = ((a_o1 - t1) * a_o1 * (1 - a_o1) * w6
           + (a_o2 - t2) * a_o2 * (1 - a_o2) * w8) * a_h2 * (1 - a_h2) * i2

    # Shared biases: b2 enters o1 and o2 (∂o/∂b2 = 1), b1 enters h1 and h2 (∂h/∂b1 = 1).
    db2 = (a_o1 - t1) * a_o1 * (1 - a_o1) + (a_o2 - t2) * a_o2 * (1 - a_o2)
    db1 = (((a_o1 - t1) * a_o1 * (1 - a_o1) * w5
            + (a_o2 - t2) * a_o2 * (1 - a_o2) * w7) * a_h1 * (1 - a_h1)
           + ((a_o1 - t1) * a_o1 * (1 - a_o1) * w6
              + (a_o2 - t2) * a_o2 * (1 - a_o2) * w8) * a_h2 * (1 - a_h2))
    return dict(w1=dw1, w2=dw2, w3=dw3, w4=dw4, w5=dw5, w6=dw6, w7=dw7, w8=dw8, b1=db1, b2=db2)


def sgd_update(p: dict, grads: dict, lr) -> dict:
    """w ← w − lr·∂E_total/∂w for every weight; the biases stay fixed."""
    return {k: p[k] - lr * grads[k] if k in WEIGHTS else p[k] for k in PARAMS}


def gradient_descent(p: dict, x: dict, lrs: jax.Array, steps: int) -> dict[str, jax.Array]:
    """Trains one copy of `p` per learning rate, all in one call (vmap over `lrs`, scan
    over iterations). Returns arrays of shape (len(lrs), steps + 1) for every weight,
    bias, intermediate and gradient (key 'dE_d' + name); row 0 is before any update."""
    return _gradient_descent(p, x, jnp.asarray(lrs), steps)


@functools.partial(jax.jit, static_argnames="steps")  # compiled once per shape and steps
def _gradient_descent(p: dict, x: dict, lrs: jax.Array, steps: int) -> dict[str, jax.Array]:
    def snapshot(params):
        grads = manual_grads(params, x)
        return {**params, **forward(params, x), **{f"dE_d{k}": g for k, g in grads.items()}}

    def run(lr):
        def step(params, _):
            row = snapshot(params)
            new = sgd_update(params, {k: row[f"dE_d{k}"] for k in PARAMS}, lr)
            return new, row

        final, rows = jax.lax.scan(step, p, None, length=steps)
        last = snapshot(final)
        return jax.tree.map(lambda r, l: jnp.concatenate([r, l[None]]), rows, last)

    return jax.vmap(run)(lrs)


# ---------------------------------------------------------------------------------
# One step as on paper: each formula, with its numbers filled in.

# The forward pass, in the order it is computed: name, formula ({x} is a value by name).
FORWARD_FORMULAS = (
    ("h1", "{w1}·{i1} + {w2}·{i2} + {b1}"),
    ("a_h1", "σ({h1})"),
    ("h2", "{w3}·{i1} + {w4}·{i2} + {b1}"),
    ("a_h2", "σ({h2})"),
    ("o1", "{w5}·{a_h1} + {w6}·{a_h2} + {b2}"),
    ("a_o1", "σ({o1})"),
    ("o2", "{w7}·{a_h1} + {w8}·{a_h2} + {b2}"),
    ("a_o2", "σ({o2})"),
    ("E1", "½({t1} − {a_o1})²"),
    ("E2", "½({t2} − {a_o2})²"),
    ("E_total", "{E1} + {E2}"),
)

# Every local derivative the backward pass multiplies: its name on paper, its formula,
# and the same formula in code (v: the weights, the example and the forward values).
LOCAL_DERIVATIVES = (
    ("∂E1/∂a_o1", "{a_o1} − {t1}", lambda v: v["a_o1"] - v["t1"]),
    ("∂a_o1/∂o1", "{a_o1}·(1 − {a_o1})", lambda v: v["a_o1"] * (1 - v["a_o1"])),
    ("∂E2/∂a_o2", "{a_o2} − {t2}", lambda v: v["a_o2"] - v["t2"]),
    ("∂a_o2/∂o2", "{a_o2}·(1 − {a_o2})", lambda v: v["a_o2"] * (1 - v["a_o2"])),
    ("∂o1/∂w5", "{a_h1}", lambda v: v["a_h1"]),
    ("∂o1/∂w6", "{a_h2}", lambda v: v["a_h2"]),
    ("∂o2/∂w7", "{a_h1}", lambda v: v["a_h1"]),
    ("∂o2/∂w8", "{a_h2}", lambda v: v["a_h2"]),
    ("∂o1/∂a_h1", "{w5}", lambda v: v["w5"]),
    ("∂o2/∂a_h1", "{w7}", lambda v: v["w7"]),
    ("∂o1/∂a_h2", "{w6}", lambda v: v["w6"]),
    ("∂o2/∂a_h2", "{w8}", lambda v: v["w8"]),
    ("∂a_h1/∂h1", "{a_h1}·(1 − {a_h1})", lambda v: v["a_h1"] * (1 - v["a_h1"])),
    ("∂a_h2/∂h2", "{a_h2}·(1 − {a_h2})", lambda v: v["a_h2"] * (1 - v["a_h2"])),
    ("∂h1/∂w1", "{i1}", lambda v: v["i1"]),
    ("∂h1/∂w2", "{i2}", lambda v: v["i2"]),
    ("∂h2/∂w3", "{i1}", lambda v: v["i1"]),
    ("∂h2/∂w4", "{i2}", lambda v: v["i2"]),
)

_OUT1 = ("∂E1/∂a_o1", "∂a_o1/∂o1")  # E_total back to o1
_OUT2 = ("∂E2/∂a_o2", "∂a_o2/∂o2")  # E_total back to o2
# ∂E_total/∂w = (Σ over the paths from E_total to the weight's node of the product of
# their local derivatives) · (the product of the rest of the chain), in backward order.
CHAINS = {
    "w5": ((_OUT1,), ("∂o1/∂w5",)),
    "w6": ((_OUT1,), ("∂o1/∂w6",)),
    "w7": ((_OUT2,), ("∂o2/∂w7",)),
    "w8": ((_OUT2,), ("∂o2/∂w8",)),
    "w1": ((_OUT1 + ("∂o1/∂a_h1",), _OUT2 + ("∂o2/∂a_h1",)), ("∂a_h1/∂h1", "∂h1/∂w1")),
    "w2": ((_OUT1 + ("∂o1/∂a_h1",), _OUT2 + ("∂o2/∂a_h1",)), ("∂a_h1/∂h1", "∂h1/∂w2")),
    "w3": ((_OUT1 + ("∂o1/∂a_h2",), _OUT2 + ("∂o2/∂a_h2",)), ("∂a_h2/∂h2", "∂h2/∂w3")),
    "w4": ((_OUT1 + ("∂o1/∂a_h2",), _OUT2 + ("∂o2/∂a_h2",)), ("∂a_h2/∂h2", "∂h2/∂w4")),
}


def local_derivatives(values: dict) -> dict[str, jax.Array]:
    """Each entry of LOCAL_DERIVATIVES evaluated at `values` (weights, example, forward)."""
    return {name: fn(values) for name, _, fn in LOCAL_DERIVATIVES}


def chain_product(weight: str, factors: dict) -> jax.Array:
    """∂E_total/∂`weight` as CHAINS writes it, from the local derivatives `factors`."""
    paths, rest = CHAINS[weight]
    total = sum(math.prod(factors[f] for f in path) for path in paths)
    return total * math.prod(factors[f] for f in rest)


def _num(value, grouped: bool = True) -> str:
    """Nine significant digits; a negative number in parentheses where it is a factor."""
    text = f"{float(value):.9g}"
    return f"({text})" if grouped and text.startswith("-") else text


def _fill(formula: str, values: dict, numbers: bool) -> str:
    names = re.findall(r"{(\w+)}", formula)
    return formula.format(**{n: _num(values[n]) if numbers else n for n in names})


def _chain_text(weight: str, show) -> str:
    paths, rest = CHAINS[weight]
    terms = [ "·".join(show(f) for f in path) for path in paths]
    head = terms[0] if len(terms) == 1 else "(" + " + ".join(terms) + ")"
    return "·".join([head] + [show(f) for f in rest])


def worked_step(row: dict, after: dict, autodiff: dict, lr: float, step: int) -> dict:
    """Step `step` of gradient descent at learning rate `lr` as a worked example, each
    number formatted as `--explain` prints it: the title, the example and weights before
    the step; the forward pass and the local derivatives (name, formula, numbers, value);
    each ∂E_total/∂w as its chain of local derivatives beside `autodiff` (jax.grad's
    value); and each update. `row` holds the weights, biases, example, intermediates and
    gradients ('dE_d' + name) before the step; `after` the weights after it."""
    v = {k: float(x) for k, x in row.items()}
    factors = {k: float(x) for k, x in local_derivatives(v).items()}
    forward_rows = [{"name": name, "formula": _fill(formula, v, False),
                     "numbers": _fill(formula, v, True), "value": _num(v[name], False)}
                    for name, formula in FORWARD_FORMULAS]
    local_rows = []
    for name, formula, _ in LOCAL_DERIVATIVES:
        numeric, value = _fill(formula, v, True), _num(factors[name], False)
        local_rows.append({"name": name, "formula": _fill(formula, v, False),
                           # a factor that is itself a number needs no "= numbers" step
                           "numbers": numeric if numeric.strip("()") != value else None,
                           "value": value})
    backward_rows = []
    for w in ("w5", "w6", "w7", "w8", "w1", "w2", "w3", "w4"):
        hand, auto = v[f"dE_d{w}"], float(autodiff[w])
        backward_rows.append({
            "weight": w, "chain": _chain_text(w, lambda f: f),
            "numbers": _chain_text(w, lambda f: _num(factors[f])),
            "value": _num(hand, False), "jax_grad": _num(auto, False),
            "difference": f"{hand - auto:.2g}"})
    update_rows = [{"weight": w, "before": _num(v[w]), "gradient": _num(v[f"dE_d{w}"]),
                    "after": _num(after[w], False)} for w in WEIGHTS]
    return {
        "title": f"Step {step} of gradient descent, lr = {lr:g}, biases b1 = {v['b1']:g}, "
                 f"b2 = {v['b2']:g}",
        "example": f"inputs  i1 = {_num(v['i1'], False)}, i2 = {_num(v['i2'], False)}; "
                   f"targets t1 = {_num(v['t1'], False)}, t2 = {_num(v['t2'], False)}",
        "weights": "weights " + ", ".join(f"{k} = {_num(v[k], False)}" for k in WEIGHTS),
        "lr": f"{lr:g}", "forward": forward_rows, "local_derivatives": local_rows,
        "backward": backward_rows, "update": update_rows}


def explain_step(row: dict, after: dict, autodiff: dict, lr: float, step: int) -> str:
    """`worked_step` as the text `--explain` prints."""
    return worked_text(worked_step(row, after, autodiff, lr, step))


def worked_text(worked: dict) -> str:
    """A `worked_step` as the text `--explain` prints."""
    lines = [worked["title"], "", "Before the step:",
             "  " + worked["example"], "  " + worked["weights"], "", "Forward pass:"]
    for r in worked["forward"]:
        lines.append(f"  {r['name']:<7} = {r['formula']} = {r['numbers']} = {r['value']}")
    lines += ["", "Local derivatives (each edge of the chain rule):"]
    for r in worked["local_derivatives"]:
        middle = f" = {r['numbers']}" if r["numbers"] is not None else ""
        lines.append(f"  {r['name']:<9} = {r['formula']}{middle} = {r['value']}")
    lines += ["", "Backward pass (∂E_total/∂w = the chain of local derivatives; "
              "jax.grad beside it):"]
    for r in worked["backward"]:
        pad = " " * len(f"  ∂E_total/∂{r['weight']} ")
        lines += [f"  ∂E_total/∂{r['weight']} = {r['chain']}",
                  f"{pad}= {r['numbers']}",
                  f"{pad}= {r['value']}   (jax.grad: {r['jax_grad']}, "
                  f"difference {r['difference']})"]
    lines += ["", f"Update (w ← w − lr·∂E_total/∂w, lr = {worked['lr']}):"]
    for r in worked["update"]:
        w = r["weight"]
        lines.append(f"  {w} ← {w} − lr·∂E_total/∂{w} = {r['before']} − {worked['lr']}·"
                     f"{r['gradient']} = {r['after']}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------
# The same chain rule in matrix form, for any layer widths.


def init_mlp(key: jax.Array, widths: tuple[int, ...], dtype=jnp.float32) -> list[dict]:
    """[{'W': (n_out, n_in), 'b': (n_out,)}] for a sigmoid MLP with the given widths."""
    layers = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        key, kw, kb = jax.random.split(key, 3)
        layers.append({"W": jax.random.normal(kw, (n_out, n_in), dtype) / jnp.sqrt(n_in),
                       "b": 0.1 * jax.random.normal(kb, (n_out,), dtype)})
    return layers


def mlp_forward(layers: list[dict], x: jax.Array) -> list[jax.Array]:
    """Activations [a_0 = x, a_1, ..., a_L] for a batch x of shape (B, n_in)."""
    activations = [x]
    for layer in layers:
        activations.append(sigmoid(activations[-1] @ layer["W"].T + layer["b"]))
    return activations


def mlp_loss(layers: list[dict], x: jax.Array, t: jax.Array) -> jax.Array:
    """Σ over the batch and the outputs of ½(t − a_L)²."""
    return 0.5 * jnp.sum((t - mlp_forward(layers, x)[-1]) ** 2)


def mlp_manual_grads(layers: list[dict], x: jax.Array, t: jax.Array) -> list[dict]:
    """The 2-2-2 formulas in matrix form. With δ_l = ∂E/∂(pre-activation of layer l):
    δ_L = (a_L − t) ⊙ a_L(1 − a_L);  δ_l = (δ_{l+1} W_{l+1}) ⊙ a_l(1 − a_l);
    ∂E/∂W_l = δ_lᵀ a_{l−1};  ∂E/∂b_l = Σ_batch δ_l."""
    a = mlp_forward(layers, x)
    delta = (a[-1] - t) * a[-1] * (1 - a[-1])
    grads = [None] * len(layers)
    for l in reversed(range(len(layers))):
        grads[l] = {"W": delta.T @ a[l], "b": delta.sum(axis=0)}
        if l:
            delta = (delta @ layers[l]["W"]) * a[l] * (1 - a[l])
    return grads


# ---------------------------------------------------------------------------------
# Command line.


def _parse_lrs(text: str) -> list[float]:
    lrs = []
    for part in text.split(","):
        try:
            lr = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part.strip()!r}") from None
        if not (lr > 0 and math.isfinite(lr)):
            raise argparse.ArgumentTypeError(f"learning rates must be > 0, got {part.strip()}")
        lrs.append(lr)
    return lrs


def _parse_biases(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        b1, b2 = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B1,B2 (two numbers), got {text!r}") from None
    return b1, b2


def history_rows(lrs, hist) -> tuple[list[str], list[list[str]]]:
    """The spreadsheet view: one row per (lr, iteration), every value at full precision."""
    columns = (["lr", "iteration"] + list(PARAMS) + list(INTERMEDIATES)
               + [f"dE_d{k}" for k in PARAMS])
    values = {k: jax.device_get(v) for k, v in hist.items()}
    rows = []
    for i, lr in enumerate(lrs):
        for it in range(values["E_total"].shape[1]):
            rows.append([repr(float(lr)), str(it)]
                        + [repr(float(values[c][i, it])) for c in columns[2:]])
    return columns, rows


def plot_error(lrs, hist, path: Path) -> None:
    """Total error against iterations, one curve per learning rate (linear and log axes)."""
    from matplotlib.figure import Figure  # matplotlib only where a picture is drawn

    error = jax.device_get(hist["E_total"])
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, scale in zip(axes, ("linear", "log")):
        for i, lr in enumerate(lrs):
            ax.plot(error[i], label=f"lr = {lr:g}")
        ax.set(xlabel="iteration", ylabel="E_total", yscale=scale,
               title=f"Total error vs iterations ({scale} scale)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# Where each node sits in the picture (x: layer, y: row) and which edge each weight is.
_NODE_XY = {"i1": (0, 1), "i2": (0, 0), "h1": (1, 1), "h2": (1, 0), "o1": (2, 1), "o2": (2, 0)}
_EDGES = {"w1": ("i1", "h1"), "w2": ("i2", "h1"), "w3": ("i1", "h2"), "w4": ("i2", "h2"),
          "w5": ("h1", "o1"), "w6": ("h2", "o1"), "w7": ("h1", "o2"), "w8": ("h2", "o2")}


def network_labels(row: dict) -> dict:
    """The text the picture of the net carries at `row`: each node's values, each edge's
    weight and ∂E_total/∂w, each output's target and error, and E_total."""
    v = {k: float(x) for k, x in row.items()}
    nodes = {"i1": [f"i1 = {v['i1']:.6g}"], "i2": [f"i2 = {v['i2']:.6g}"]}
    for layer, act in (("h", "a_h"), ("o", "a_o")):
        for k in "12":
            nodes[layer + k] = [f"{layer}{k} = {v[layer + k]:.6g}",
                                f"{act}{k} = {v[act + k]:.6g}"]
    return {
        "nodes": nodes,
        "edges": {w: [f"{w} = {v[w]:.6g}", f"∂E/∂{w} = {v['dE_d' + w]:.4g}"] for w in _EDGES},
        "outputs": {k: [f"t{k} = {v['t' + k]:.6g}", f"E{k} = ½(t{k} − a_o{k})²",
                        f"   = {v['E' + k]:.6g}"] for k in "12"},
        "total": f"E_total = {v['E_total']:.6g}",
        "biases": (f"biases (fixed): b1 = {v['b1']:g} into h1, h2; b2 = {v['b2']:g} into o1, o2"
                   if v["b1"] or v["b2"] else None),
    }


def draw_network(row: dict, path: Path, title: str) -> None:
    """The 2-2-2 net as the worked example draws it: inputs, hidden and output nodes with
    their values, each of the eight edges with its weight and ∂E_total/∂w at `row`."""
    from matplotlib.figure import Figure  # matplotlib only where a picture is drawn
    from matplotlib.patches import Circle

    labels = network_labels(row)
    fig = Figure(figsize=(11, 6.2))
    ax = fig.add_subplot()
    ax.set(xlim=(-0.45, 3.15), ylim=(-0.55, 1.55), aspect="equal", title=title)
    ax.axis("off")
    colours = {"i": "#dbe9f6", "h": "#fde8c8", "o": "#d9f0d3"}
    for w, (a, b) in _EDGES.items():
        (x0, y0), (x1, y1) = _NODE_XY[a], _NODE_XY[b]
        ax.annotate("", (x1 - 0.13 * (x1 - x0), y1 - 0.13 * (y1 - y0)), (x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="0.45", lw=1.2, shrinkA=14))
        # Crossing edges get their labels near their start, where they are apart.
        f = 0.5 if y0 == y1 else 0.27
        ax.text(x0 + f * (x1 - x0), y0 + f * (y1 - y0) + (0.07 if y0 == y1 else 0),
                "\n".join(labels["edges"][w]), ha="center",
                va="bottom" if y0 == y1 else "center", fontsize=8.5,
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.8"))
    for name, (x, y) in _NODE_XY.items():
        ax.add_patch(Circle((x, y), 0.11, fc=colours[name[0]], ec="0.3", zorder=3))
        ax.text(x, y, name, ha="center", va="center", fontsize=11, weight="bold", zorder=4)
        ax.text(x, y + (0.16 if y else -0.16), "\n".join(labels["nodes"][name]), ha="center",
                va="bottom" if y else "top", fontsize=8.5, zorder=4)
    for k, y in (("1", 1), ("2", 0)):
        ax.annotate("", (2.55, y), (2.11, y), arrowprops=dict(arrowstyle="-|>", color="0.45"))
        ax.text(2.6, y, "\n".join(labels["outputs"][k]), va="center", fontsize=8.5)
    ax.text(2.6, 0.5, labels["total"], va="center", fontsize=9.5, weight="bold")
    if labels["biases"]:
        ax.text(1.5, -0.5, labels["biases"], ha="center", fontsize=8.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def history_row(hist: dict, x: dict, lr_index: int, iteration: int) -> dict[str, float]:
    """Everything at one iteration of one learning rate's run, with the example."""
    row = {k: float(v[lr_index, iteration]) for k, v in jax.device_get(hist).items()}
    return {**{k: float(v) for k, v in x.items()}, **row}


def explain(params: dict, x: dict, lr: float, step: int, out: Path) -> str:
    """The worked text of step `step` at `lr` (from the same `gradient_descent` run as
    history.csv), and its picture drawn to `out`/network.png."""
    hist = gradient_descent(params, x, jnp.asarray([lr]), step)
    row = history_row(hist, x, 0, step - 1)
    after = history_row(hist, x, 0, step)
    before = {k: jnp.asarray(row[k]) for k in PARAMS}
    autodiff = jax.grad(loss)(before, x)
    replace_atomically(out / "network.png", lambda tmp: draw_network(
        row, tmp, f"Step {step} at lr {lr:g}: values before the update, ∂E_total/∂w on each edge"))
    return explain_step(row, after, autodiff, lr, step)


def main(argv=None) -> int:
    prog = "python -m jaxmnist.backprop"
    p = ArgumentParser(prog=prog, description="Train the 2-2-2 net by hand-derived gradients.")
    p.add_argument("--lrs", type=_parse_lrs, default=[0.1, 0.2, 0.5, 0.8, 1.0, 2.0],
                   help="comma-separated learning rates (default 0.1,0.2,0.5,0.8,1,2)")
    p.add_argument("--steps", type=positive_int, default=500,
                   help="gradient-descent iterations (default 500)")
    p.add_argument("--biases", type=_parse_biases, default=None, metavar="B1,B2",
                   help="fixed biases, e.g. 0.35,0.60 (default: none)")
    p.add_argument("--out", default="runs/backprop", help="output directory")
    p.add_argument("--explain", action="store_true",
                   help="print one step worked out (forward pass, chain rule, update) and "
                        "draw it to OUT/network.png")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="with --explain: the learning rate (default 0.5)")
    p.add_argument("--step", type=positive_int, default=None, metavar="N",
                   help="with --explain: which step, 1 to --steps (default 1, the first)")
    args = p.parse_args(argv)
    if not args.explain and (args.lr is not None or args.step is not None):
        p.error("--lr and --step go with --explain (the study's learning rates are --lrs)")
    step = args.step or 1
    if step > args.steps:
        p.error(f"--step {step} is beyond --steps {args.steps}")
    out = Path(args.out)
    try:
        check_writable_dir(out)
    except ValueError as e:
        return report(prog, e)

    # Float64 throughout: the CSV is the spreadsheet view and checks to the last digit.
    jax.config.update("jax_enable_x64", True)
    params = init_params(biases=args.biases or (0.0, 0.0))
    x = example()
    try:
        if args.explain:
            out.mkdir(parents=True, exist_ok=True)
            print(explain(params, x, args.lr or 0.5, step, out), end="")
            print(f"wrote {out / 'network.png'}")
            return 0
        hist = gradient_descent(params, x, jnp.asarray(args.lrs), args.steps)
        table = write_study(out, args.lrs, hist, x, args.steps)
    except OSError as e:  # a full disk, say: one line; each file is whole or absent
        return report(prog, e)
    print("\n".join(table))
    print(f"wrote {out / 'history.csv'}, {out / 'error_vs_iterations.png'}, "
          f"{out / 'network.png'} and {out / 'final_error.txt'}")
    return 0


def write_study(out: Path, lrs: list[float], hist: dict, x: dict, steps: int) -> list[str]:
    """The study's files in `out` (each written whole or not at all); returns the table
    of final_error.txt as lines."""
    columns, rows = history_rows(lrs, hist)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    out.mkdir(parents=True, exist_ok=True)
    replace_atomically(out / "history.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    replace_atomically(out / "error_vs_iterations.png", lambda tmp: plot_error(lrs, hist, tmp))
    # Iteration 0 is the same for every learning rate.
    replace_atomically(out / "network.png", lambda tmp: draw_network(
        history_row(hist, x, 0, 0), tmp,
        "Before the first step: values, and ∂E_total/∂w on each edge"))
    error = jax.device_get(hist["E_total"])
    table = [f"{'lr':>6}  {'E_total at 0':>14}  {f'E_total at {steps}':>16}"]
    table += [f"{lr:>6g}  {error[i, 0]:>14.9f}  {error[i, -1]:>16.9f}"
              for i, lr in enumerate(lrs)]
    replace_atomically(out / "final_error.txt", lambda tmp: tmp.write_text("\n".join(table) + "\n"))
    return table


if __name__ == "__main__":
    sys.exit(main())
