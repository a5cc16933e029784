"""experiments/accelerator_check.sh, as a dry run on the CPU (same steps, tiny budgets)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_accelerator_check_dry_run(mnist_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "JAXMNIST_DATA_DIR": str(mnist_dir)}
    r = subprocess.run(["bash", str(REPO / "experiments/accelerator_check.sh"), "--dry-run",
                        str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.jsonl", "default-curves.png", "default-metrics.jsonl",
                     "devices.txt", "epoch_overhead.json", "fast-metrics.jsonl",
                     "pytest.txt", "timing.txt"]  # 8 files at most
    assert "backend cpu" in (out / "devices.txt").read_text()
    assert " passed" in (out / "pytest.txt").read_text()
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [b["steps_per_call"] for b in bench] == [1, 2]
    timing = (out / "timing.txt").read_text()
    assert "default: " in timing and "fast: " in timing and "final test accuracy" in timing
    assert "default --steps-per-call 2: " in timing
    assert timing.count("final test accuracy") == 3, timing
    for recipe in ("default", "fast"):
        (record,) = [json.loads(line) for line in
                     (out / f"{recipe}-metrics.jsonl").read_text().splitlines()]
        assert record["epoch"] == 1 and 0 <= record["test_accuracy"] <= 1
    overhead = json.loads((out / "epoch_overhead.json").read_text())["per_epoch"]
    assert set(overhead) == {"evaluate_10k_test_images", "save_checkpoint",
                             "save_checkpoint_in_background",
                             "append_metrics_line", "plot_curves_20_epochs"}
    assert all(0 < t["median_s"] < 60 for t in overhead.values()), overhead
