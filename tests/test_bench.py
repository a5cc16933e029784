"""`python -m jaxmnist.bench`: its JSON line and its argument errors."""

import json
import subprocess
import sys

import pytest


def run_bench(*args):
    return subprocess.run([sys.executable, "-m", "jaxmnist.bench", *args],
                          capture_output=True, text=True, timeout=600)


def test_bench_prints_one_json_line():
    r = run_bench("--steps", "3", "--eval-steps", "1", "--no-record")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for field in ("train_images_per_s", "eval_images_per_s", "compile_s", "device", "jax", "date"):
        assert field in result
    assert result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0
    assert result["compile_s"] > 0 and result["device"].endswith("cpu:cpu")
    assert result["compiler_options"] == "jaxmnist"


def test_bench_xla_defaults_compiles_with_xla_s_own_options():
    r = run_bench("--steps", "2", "--eval-steps", "1", "--xla-defaults", "--no-record")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["compiler_options"] == "xla-defaults" and result["train_images_per_s"] > 0


def test_bench_scan_times_several_steps_per_call():
    r = run_bench("--steps", "5", "--eval-steps", "1", "--scan", "2", "--no-record")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    # 5 steps round down to two calls of 2 scanned steps.
    assert result["steps_per_call"] == 2 and result["steps"] == 4
    assert result["train_images_per_s"] > 0


def test_bench_times_any_member_of_the_family():
    r = run_bench("--recipe", "fast", "--arch", "c4 p v8 v8", "--steps", "2", "--eval-steps",
                  "1", "--no-record")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["recipe"] == "fast" and result["arch"] == "c4 p v8 v8"
    assert result["params"] == 9 * 4 + 8 + 9 * 4 * 8 + 16 + 9 * 8 * 8 + 16 + 8 * 10
    assert result["batch_size"] == 128


@pytest.mark.parametrize("args, message", [
    (["--arch", "c8 q"], "unknown layer 'q'"),
    (["--recipe", "huge"], "invalid choice: 'huge'"),
    (["--scan", "0"], "must be > 0"),
    (["--steps", "0"], "must be > 0"),
    (["--steps", "x"], "expected a whole number"),
    (["--batch-size", "-2"], "must be > 0"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bench_rejects_bad_arguments(args, message):
    r = run_bench(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
