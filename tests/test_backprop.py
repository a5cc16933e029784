"""Part A: the hand-derived gradients against jax.grad, and the published worked example."""

import csv
import re
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import backprop as bp
from tests.conftest import run_in_process


@pytest.fixture(autouse=True)
def float64():
    # jax.config rather than the `jax.enable_x64` context manager, which jax 0.7 lacks.
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def random_point(key, biases: bool):
    keys = jax.random.split(key, 4)
    w = jax.random.uniform(keys[0], (8,), jnp.float64, -2.0, 2.0)
    b = jax.random.uniform(keys[1], (2,), jnp.float64, -1.0, 1.0) if biases else jnp.zeros(2)
    i = jax.random.uniform(keys[2], (2,), jnp.float64, -1.0, 1.0)
    t = jax.random.uniform(keys[3], (2,), jnp.float64, 0.0, 1.0)
    params = bp.init_params(dict(zip(bp.WEIGHTS, w)), tuple(b), jnp.float64)
    x = bp.example(jnp.float64, i1=i[0], i2=i[1], t1=t[0], t2=t[1])
    return params, x


class ManualGradsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_default_point_matches_jax_grad(self):
        for biases in [(0.0, 0.0), bp.PUBLISHED_BIASES]:
            params = bp.init_params(biases=biases, dtype=jnp.float64)
            x = bp.example(jnp.float64)
            manual = self.variant(bp.manual_grads)(params, x)
            auto = self.variant(jax.grad(bp.loss))(params, x)
            chex.assert_trees_all_close(manual, auto, rtol=1e-12, atol=1e-15)

    @chex.variants(with_jit=True, without_jit=True)
    def test_random_points_match_jax_grad(self):
        manual_fn = self.variant(bp.manual_grads)
        auto_fn = self.variant(jax.grad(bp.loss))
        for seed in range(50):
            params, x = random_point(jax.random.key(seed), biases=seed % 2 == 1)
            chex.assert_trees_all_close(manual_fn(params, x), auto_fn(params, x),
                                        rtol=1e-11, atol=1e-14)

    def test_every_weight_and_bias_has_a_gradient(self):
        grads = bp.manual_grads(bp.init_params(dtype=jnp.float64), bp.example(jnp.float64))
        assert set(grads) == set(bp.PARAMS)
        assert all(float(g) != 0.0 for k, g in grads.items() if k in bp.WEIGHTS)


def test_forward_returns_every_intermediate():
    f = bp.forward(bp.init_params(dtype=jnp.float64), bp.example(jnp.float64))
    assert tuple(f) == bp.INTERMEDIATES
    np.testing.assert_allclose(f["E_total"], f["E1"] + f["E2"])
    np.testing.assert_allclose(f["a_o1"], 1 / (1 + np.exp(-f["o1"])))


# "A Step by Step Backpropagation Example" (Matt Mazur, 2015): b1 = 0.35, b2 = 0.60,
# lr = 0.5. Every figure the post derives step by step, with the digits it prints.
PUBLISHED_FORWARD = {
    "h1": "0.3775", "a_h1": "0.593269992", "a_h2": "0.596884378", "o1": "1.105905967",
    "a_o1": "0.75136507", "a_o2": "0.772928465", "E1": "0.274811083", "E2": "0.023560026",
    "E_total": "0.298371109",
}
PUBLISHED_AFTER_ONE_STEP = {
    "w1": "0.149780716", "w2": "0.19956143", "w3": "0.24975114", "w4": "0.29950229",
    "w5": "0.35891648", "w6": "0.408666186", "w7": "0.511301270", "w8": "0.561370121",
}


def decimals(text: str) -> int:
    return len(text.split(".")[1])


def assert_matches_published(value, text: str):
    """`value` rounds to the published figure at the published number of decimals."""
    assert round(float(value), decimals(text)) == pytest.approx(float(text), abs=1e-12), (
        f"{float(value)!r} does not round to the published {text}")


def test_reproduces_the_published_worked_example():
    params = bp.init_params(biases=bp.PUBLISHED_BIASES, dtype=jnp.float64)
    x = bp.example(jnp.float64)
    f = bp.forward(params, x)
    for name, text in PUBLISHED_FORWARD.items():
        assert_matches_published(f[name], text)
    grads = bp.manual_grads(params, x)
    assert_matches_published(grads["w5"], "0.082167041")  # ∂E_total/∂w5
    assert_matches_published(grads["w1"], "0.000438568")  # ∂E_total/∂w1
    updated = bp.sgd_update(params, grads, 0.5)
    for name, text in PUBLISHED_AFTER_ONE_STEP.items():
        assert_matches_published(updated[name], text)
    assert updated["b1"] == 0.35 and updated["b2"] == 0.60  # biases are not trained


def test_gradient_descent_history_matches_single_steps():
    params = bp.init_params(biases=bp.PUBLISHED_BIASES, dtype=jnp.float64)
    x = bp.example(jnp.float64)
    lrs = jnp.array([0.1, 0.5, 2.0])
    hist = bp.gradient_descent(params, x, lrs, steps=5)
    chex.assert_shape(hist["E_total"], (3, 6))
    chex.assert_shape(hist["dE_dw1"], (3, 6))
    p = params
    for it in range(6):  # lr 0.5, by hand
        np.testing.assert_allclose(hist["E_total"][1, it], bp.loss(p, x), rtol=1e-14)
        np.testing.assert_allclose(hist["w7"][1, it], p["w7"], rtol=1e-14)
        p = bp.sgd_update(p, bp.manual_grads(p, x), 0.5)
    # The error falls at every step and faster with a larger lr (this convex-ish start).
    e = np.asarray(hist["E_total"])
    assert np.all(np.diff(e, axis=1) < 0)
    assert e[0, -1] > e[1, -1] > e[2, -1]


class MatrixFormTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_mlp_manual_grads_match_jax_grad(self):
        # Three layers, from MNIST's 784 inputs (each new shape compiles each op again
        # without jit: one net is a few seconds; the 2-2-2 net is the test below).
        for widths in [(784, 16, 12, 10)]:
            key = jax.random.key(len(widths))
            layers = bp.init_mlp(key, widths, jnp.float64)
            x = jax.random.normal(jax.random.key(1), (7, widths[0]), jnp.float64)
            t = jax.random.uniform(jax.random.key(2), (7, widths[-1]), jnp.float64)
            chex.assert_trees_all_close(
                self.variant(bp.mlp_manual_grads)(layers, x, t),
                self.variant(jax.grad(bp.mlp_loss))(layers, x, t), rtol=1e-10, atol=1e-13)

    def test_matrix_form_equals_the_2_2_2_formulas(self):
        params = bp.init_params(biases=bp.PUBLISHED_BIASES, dtype=jnp.float64)
        x = bp.example(jnp.float64)
        p = {k: float(v) for k, v in params.items()}
        layers = [
            {"W": jnp.array([[p["w1"], p["w2"]], [p["w3"], p["w4"]]]),
             "b": jnp.array([p["b1"], p["b1"]])},
            {"W": jnp.array([[p["w5"], p["w6"]], [p["w7"], p["w8"]]]),
             "b": jnp.array([p["b2"], p["b2"]])},
        ]
        g = bp.mlp_manual_grads(layers, jnp.array([[0.05, 0.10]]), jnp.array([[0.01, 0.99]]))
        manual = bp.manual_grads(params, x)
        np.testing.assert_allclose(
            np.ravel(g[0]["W"]), [manual[k] for k in ("w1", "w2", "w3", "w4")], rtol=1e-12)
        np.testing.assert_allclose(
            np.ravel(g[1]["W"]), [manual[k] for k in ("w5", "w6", "w7", "w8")], rtol=1e-12)
        np.testing.assert_allclose(g[0]["b"].sum(), manual["b1"], rtol=1e-12)
        np.testing.assert_allclose(g[1]["b"].sum(), manual["b2"], rtol=1e-12)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxmnist.backprop", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_history_and_plot(tmp_path):
    out = tmp_path / "bp"
    r = run_cli("--lrs", "0.1,0.5,1,2", "--steps", "20", "--biases", "0.35,0.60",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == 4 * 21
    assert {"lr", "iteration", "w1", "w8", "a_o2", "E_total", "dE_dw1", "dE_dw8"} <= set(rows[0])
    first_lr05 = next(r for r in rows if r["lr"] == "0.5" and r["iteration"] == "1")
    assert_matches_published(first_lr05["w5"], "0.35891648")
    assert float(rows[0]["E_total"]) == pytest.approx(0.2983711087600027, rel=1e-15)
    png = (out / "error_vs_iterations.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    network = (out / "network.png").read_bytes()
    assert network[:8] == b"\x89PNG\r\n\x1a\n" and len(network) > 20_000
    assert "0.298371109" in r.stdout


def run_main(capsys, *args):
    """`python -m jaxmnist.backprop ARGS` in this process: (exit code, stdout, stderr)."""
    return run_in_process(bp.main, capsys, *args)


@pytest.mark.parametrize("args, message", [
    (["--lrs", "0.1,abc"], "not a number: 'abc'"),
    (["--lrs", "0.1,-1"], "must be > 0"),
    (["--lrs", "0"], "must be > 0"),
    (["--steps", "0"], "must be > 0"),
    (["--steps", "ten"], "expected a whole number"),
    (["--biases", "0.35"], "expected B1,B2"),
    (["--nope"], "unrecognized arguments"),
    (["--explain", "--step", "501"], "--step 501 is beyond --steps 500"),
    (["--explain", "--steps", "5", "--step", "6"], "--step 6 is beyond --steps 5"),
    (["--explain", "--step", "0"], "must be > 0"),
    (["--explain", "--lr", "0"], "must be a finite number > 0"),
    (["--explain", "--lr", "-0.5"], "must be a finite number > 0"),
    (["--lr", "0.5"], "--lr and --step go with --explain"),
    (["--step", "2"], "--lr and --step go with --explain"),
])
def test_cli_rejects_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "bp"
    code, stdout, stderr = run_main(capsys, *args, "--out", str(out))
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("python -m jaxmnist.backprop: error: ")
    assert not out.exists()


def explained_texts(text: str) -> dict[str, list[str]]:
    """name -> the number after the last '=' of each line that starts with that name
    ('grad' and 'jax.grad': the two values of each backward-pass result line)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.match(r"\s+(\S+)\s+(?:=|←).*= (-?[0-9.e+-]+)$", line)
        if m:
            values.setdefault(m.group(1), []).append(m.group(2))
        m = re.match(r"\s+= (\S+)\s+\(jax\.grad: (\S+), difference (\S+)\)", line)
        if m:
            values.setdefault("grad", []).append(m.group(1))
            values.setdefault("jax.grad", []).append(m.group(2))
    return values


def explained_values(text: str) -> dict[str, list[float]]:
    return {k: [float(v) for v in vs] for k, vs in explained_texts(text).items()}


def assert_digits_agree(printed: str, published: str):
    """The printed and the published figure agree to the digits both give (the printout
    has nine significant digits, the published example up to nine decimals)."""
    assert len(printed.replace(".", "").lstrip("0")) <= 9, printed
    d = min(decimals(printed) if "." in printed else 0, decimals(published))
    assert round(float(printed), d) == pytest.approx(round(float(published), d), abs=1e-12), (
        f"printed {printed} and published {published} differ at {d} decimals")


def test_explain_prints_what_the_code_computes(tmp_path, capsys):
    """Step 3 at lr 0.8: every printed value against forward / manual_grads / jax.grad at
    the weights history.csv holds before the step, and the updates against the row after."""
    code, text, _ = run_main(capsys, "--explain", "--lr", "0.8", "--step", "3",
                             "--out", str(tmp_path / "x"))
    assert code == 0
    assert text.startswith("Step 3 of gradient descent, lr = 0.8")
    code, _, _ = run_main(capsys, "--lrs", "0.8", "--steps", "5", "--out", str(tmp_path / "h"))
    assert code == 0
    rows = [r for r in csv.DictReader((tmp_path / "h" / "history.csv").open())]
    before, after = rows[2], rows[3]  # iterations 2 and 3: step 3 goes from one to the other
    p = {k: jnp.asarray(float(before[k])) for k in bp.PARAMS}
    x = bp.example(jnp.float64)
    f = bp.forward(p, x)
    manual = bp.manual_grads(p, x)
    auto = jax.grad(bp.loss)(p, x)
    got = explained_values(text)
    for name in bp.INTERMEDIATES:
        assert got[name] == [pytest.approx(float(f[name]), rel=1e-8)], name
        assert got[name][0] == pytest.approx(float(before[name]), rel=1e-8), name
    values = {**{k: float(v) for k, v in p.items()}, **{k: float(v) for k, v in x.items()},
              **{k: float(v) for k, v in f.items()}}
    factors = bp.local_derivatives(values)
    for name, value in factors.items():
        assert got[name] == [pytest.approx(value, rel=1e-8)], name
    order = ("w5", "w6", "w7", "w8", "w1", "w2", "w3", "w4")
    assert got["grad"] == [pytest.approx(float(manual[w]), rel=1e-8) for w in order]
    assert got["grad"] == [pytest.approx(float(before[f"dE_d{w}"]), rel=1e-8) for w in order]
    assert got["jax.grad"] == [pytest.approx(float(auto[w]), rel=1e-8) for w in order]
    for w in bp.WEIGHTS:  # "w1 ← w1 − lr·∂E/∂w1 = … = new"
        assert got[w] == [pytest.approx(float(after[w]), rel=1e-8)], w
    png = (tmp_path / "x" / "network.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_chains_multiply_out_to_the_hand_gradients():
    """Each weight's printed chain (CHAINS over LOCAL_DERIVATIVES) is manual_grads'."""
    for seed in range(10):
        params, x = random_point(jax.random.key(seed), biases=seed % 2 == 1)
        values = {**params, **x, **bp.forward(params, x)}
        factors = bp.local_derivatives(values)
        manual = bp.manual_grads(params, x)
        for w in bp.WEIGHTS:
            np.testing.assert_allclose(bp.chain_product(w, factors), manual[w], rtol=1e-12)


def test_explain_is_the_published_worked_example(tmp_path, capsys):
    code, text, _ = run_main(capsys, "--explain", "--biases", "0.35,0.60",
                             "--out", str(tmp_path))
    assert code == 0
    assert "Step 1 of gradient descent, lr = 0.5, biases b1 = 0.35, b2 = 0.6" in text
    got = explained_texts(text)
    for name, published in PUBLISHED_FORWARD.items():
        assert_digits_agree(got[name][0], published)
    grads = dict(zip(("w5", "w6", "w7", "w8", "w1", "w2", "w3", "w4"), got["grad"]))
    assert_digits_agree(grads["w5"], "0.082167041")
    assert_digits_agree(grads["w1"], "0.000438568")
    for name, published in PUBLISHED_AFTER_ONE_STEP.items():
        assert_digits_agree(got[name][0], published)


def test_cli_rejects_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_main(capsys, "--steps", "5", "--out", str(blocker / "sub"))
    assert code == 2 and "is not a directory" in err
    assert len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a directory"
