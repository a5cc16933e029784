"""`python -m jaxmnist.bench`: its JSON line, where it writes, and its argument errors."""

import json

import pytest

from jaxmnist import bench
from tests.conftest import run_in_process


@pytest.fixture
def run_bench(capsys, tmp_path, monkeypatch):
    """`python -m jaxmnist.bench ARGS` in this process, in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    return lambda *args: run_in_process(bench.main, capsys, *args)


ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni

processor\t: 1
model name\t: another CPU
"""


@pytest.mark.parametrize("flags, units", [
    ("sse2 avx avx2 fma", "AVX2"), ("avx2 avx512f avx512bw", "AVX2, AVX-512"),
    ("avx2 avx512f avx512_bf16", "AVX2, AVX-512, AVX-512 BF16"),
    ("avx2 avx512f avx512_bf16 amx_tile amx_bf16", "AVX2, AVX-512, AVX-512 BF16, AMX"),
    ("sse2", "no AVX2"),
])
def test_describe_cpu_names_the_model_family_and_vector_units(flags, units):
    text = ZEN5.replace("fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni", flags)
    assert bench.describe_cpu(text) == f"AMD EPYC (family 26, model 2; {units})"


@pytest.mark.slow  # an option, in a process of its own; the quick suite runs bench already
def test_bench_xla_defaults_compiles_with_xla_s_own_options_and_out_names_the_file(
        run_bench, tmp_path):
    r = run_bench("--arch", "c4 p v8", "--steps", "2", "--eval-steps", "1", "--xla-defaults",
                  "--out", str(tmp_path / "mine.jsonl"))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["compiler_options"] == "xla-defaults" and result["train_images_per_s"] > 0
    assert [json.loads(line) for line in (tmp_path / "mine.jsonl").read_text().splitlines()] \
        == [result]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # an option, in a process of its own; the quick suite runs bench already
def test_bench_scan_times_several_steps_per_call(run_bench):
    r = run_bench("--arch", "c4 p v8", "--steps", "5", "--eval-steps", "1", "--scan", "2",
                  "--no-record")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    # 5 steps round down to two calls of 2 scanned steps.
    assert result["steps_per_call"] == 2 and result["steps"] == 4
    assert result["train_images_per_s"] > 0


@pytest.mark.slow  # one more process and compile; the quick suite benches c4 p v8 once
def test_bench_times_any_member_of_the_family(run_bench):
    r = run_bench("--recipe", "fast", "--arch", "c4 p v8 v8", "--steps", "2", "--eval-steps",
                  "1", "--no-record")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["recipe"] == "fast" and result["arch"] == "c4 p v8 v8"
    # `fast` gives every conv a bias: 4 + 8 + 8 + 10 on top of weights and BatchNorm.
    assert result["params"] == (9 * 4 + 8 + 9 * 4 * 8 + 16 + 9 * 8 * 8 + 16 + 8 * 10
                                + 4 + 8 + 8 + 10)
    assert result["batch_size"] == 128


@pytest.mark.parametrize("args, message", [
    (["--arch", "c8 q"], "unknown layer 'q'"),
    (["--recipe", "huge"], "invalid choice: 'huge'"),
    (["--scan", "0"], "must be > 0"),
    (["--steps", "0"], "must be > 0"),
    (["--steps", "x"], "expected a whole number"),
    (["--batch-size", "-2"], "must be > 0"),
    (["--batch-size", "70000"], "--batch-size 70000 is larger than the 60000 training images"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_bench_rejects_bad_arguments(args, message, run_bench, tmp_path):
    r = run_bench(*args)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any(tmp_path.iterdir())


def test_bench_prints_one_json_line_and_appends_it_under_runs_or_to_out(run_bench, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bench.jsonl").write_text('{"earlier": 1}\n')  # kept, appended to
    r = run_bench("--arch", "c4 p v8", "--steps", "2", "--eval-steps", "1")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])  # the line it prints ...
    for field in ("train_images_per_s", "eval_images_per_s", "compile_s", "device", "jax", "date"):
        assert field in result
    assert result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0
    assert result["compile_s"] > 0 and result["device"].endswith("cpu:cpu")
    assert result["compiler_options"] == "jaxmnist" and result["arch"] == "c4 p v8"
    assert result["cores"] == bench.usable_cores() >= 1
    assert result["cpu"] == bench.host_cpu()
    lines = (tmp_path / "runs" / "bench.jsonl").read_text().splitlines()  # ... and appends
    assert len(lines) == 2 and lines[0] == '{"earlier": 1}'
    assert json.loads(lines[1]) == result
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_bench("--out", str(blocker / "bench.jsonl"))
    assert r.returncode == 2 and "is not a directory" in r.stderr
    assert blocker.read_text() == ""
