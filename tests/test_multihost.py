"""One run over 2 local processes (1 CPU device each, gloo collectives): the same run as
one process with 2 devices, resumable across processes, and failing with one line."""

import os
import shutil
import socket
import subprocess
import sys
import time

import chex
import pytest

from jaxmnist import rundir
from jaxmnist.train import __main__ as train_cli

from .test_train import metrics_of, train_process

ARGS = ["--recipe", "default", "--epochs", "2", "--max-steps", "12"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(n, *args, tfds_dir, mnist_dir, timeout=60, ids=None):
    """Processes `ids` (default all) of an `n`-process run."""
    address = f"127.0.0.1:{free_port()}"
    return [train_process(*ARGS, *args, "--coordinator", address, "--num-processes", str(n),
                      "--process-id", str(i), "--distributed-timeout", str(timeout),
                      tfds_dir=tfds_dir, mnist_dir=mnist_dir)
            for i in (range(n) if ids is None else ids)]


def finish(processes, timeout=600):
    return [(p.wait(timeout=timeout), p.stdout.read(), p.stderr.read()) for p in processes]


@pytest.mark.slow
def test_two_processes_train_one_run(mnist_splits, tfds_dir, mnist_dir, tmp_path):
    out = ["--out", str(tmp_path)]
    # References: one process with 2 devices (the same program as 2 processes with 1
    # device each) and one process with 1 device.
    attempts = 4
    for attempt in range(1, attempts + 1):
        ref2 = train_process(*ARGS, *out, "--name", "two-devices", tfds_dir=tfds_dir,
                         mnist_dir=mnist_dir,
                         env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
        code, err = ref2.wait(timeout=600), ref2.stderr.read()
        # XLA:CPU sometimes aborts two in-process devices whose all-reduce thread was not
        # scheduled within its rendezvous limit (seen on 2 cores: with jaxlib 0.7.0, and
        # twice in a row in one run with the current jaxlib): that reference run, not the
        # code under test, is tried again.
        if code == -6 and "rendezvous" in err and attempt < attempts:
            shutil.rmtree(tmp_path / "two-devices")
            continue
        assert code == 0, err
        break
    ref1 = train_process(*ARGS, *out, "--name", "one-device", tfds_dir=tfds_dir,
                         mnist_dir=mnist_dir)
    assert ref1.wait(timeout=600) == 0, ref1.stderr.read()

    # Two processes; process 1 dies during epoch 2.
    run = tmp_path / "two-processes"
    procs = start_processes(2, *out, "--name", run.name, tfds_dir=tfds_dir, mnist_dir=mnist_dir)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 600
    # Epoch 1's line and checkpoint, complete (orbax writes it in a thread).
    while not ((run / "checkpoints" / "1").is_dir() and metrics.exists()
               and metrics.read_text().count("\n") >= 1):
        assert all(p.poll() is None for p in procs), finish(procs)
        assert time.time() < deadline
        time.sleep(0.05)
    procs[1].kill()
    killed_at = time.time()
    code, stdout, stderr = finish(procs[:1])[0]
    # The survivor notices within --distributed-timeout (60 s here) of the last heartbeat,
    # which may be close to 60 s after the kill; then it stops. Far from a hang (600 s).
    assert time.time() - killed_at < 60 + 30
    assert code == 1, stderr
    # Process 0 printed its epoch 1 line, then one error line: no C++ log, no trace.
    lines = stderr.strip().splitlines()
    assert lines[0].startswith("epoch  1 ") and len(lines) == 2, stderr
    assert lines[1] == ("python -m jaxmnist.train: error: process 0: another process stopped "
                        "or cannot be reached; the newest checkpoint is the last finished "
                        "epoch: start every process again with --resume")
    assert metrics.read_text().count("\n") == 1

    results = finish(start_processes(2, *out, "--name", run.name, "--resume",
                                     tfds_dir=tfds_dir, mnist_dir=mnist_dir))
    assert [code for code, _, _ in results] == [0, 0], results
    (_, out0, err0), (_, out1, err1) = results
    assert "final test accuracy" in out0 and "in 2 processes" in out0, out0
    assert err0.strip().startswith("epoch  2 ")  # messages from process 0 only
    assert out1 == "" and err1 == "", (out1, err1)
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint_digests.json", "checkpoints", "config.json", "curves.png", "metrics.jsonl"]

    # The global batch is split over the processes, BatchNorm sees all of it: the same
    # metrics and weights as one process with 2 devices, bit for bit...
    assert metrics_of(run) == metrics_of(tmp_path / "two-devices")
    _, resumed = rundir.load_trained(run)
    _, reference = rundir.load_trained(tmp_path / "two-devices")
    chex.assert_trees_all_equal(resumed, reference)
    # ...and one device's up to float32 round-off, as in test_parallel.py (which compares
    # 4 steps; the round-off grows with the steps of this early, chaotic phase, so the
    # first epoch's 12).
    first, first_one_device = metrics_of(run)[0], metrics_of(tmp_path / "one-device")[0]
    assert abs(first["train_loss"] - first_one_device["train_loss"]) < 2e-3, (
        first, first_one_device)


@pytest.mark.slow
def test_a_process_reports_its_own_error_as_its_own(mnist_dir, tmp_path):
    """Process 0 fails of itself (its TFDS data dir is a file), with an error whose
    message happens to say "Connection refused": it prints that error; process 1, whose
    peer is gone, prints the peer line."""
    blocker = tmp_path / "Connection refused"
    blocker.write_text("a file where a directory should be")
    procs = start_processes(2, "--out", str(tmp_path / "runs"), "--tfds-dir", str(blocker),
                            tfds_dir=tmp_path / "unused", mnist_dir=mnist_dir, timeout=20)
    (code0, _, err0), (code1, _, err1) = finish(procs, timeout=300)
    assert code0 == 1 and len(err0.strip().splitlines()) == 1, err0
    assert err0.startswith("python -m jaxmnist.train: error: ") and "Not a directory" in err0
    assert "Connection refused" in err0 and "another process" not in err0
    assert code1 == 1, err1
    assert err1.strip().splitlines()[-1] == (
        "python -m jaxmnist.train: error: process 1: another process stopped or cannot be "
        "reached; the newest checkpoint is the last finished epoch: start every process "
        "again with --resume"), err1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_missing_process_ends_the_others_with_one_line(mnist_splits, tfds_dir, mnist_dir,
                                                          tmp_path):
    # Process 1 never starts.
    (alone,) = start_processes(2, "--out", str(tmp_path), tfds_dir=tfds_dir,
                               mnist_dir=mnist_dir, timeout=3, ids=[0])
    code, _, stderr = finish([alone], timeout=120)[0]
    assert code == 1
    assert stderr.strip() == (
        "python -m jaxmnist.train: error: process 0: not all processes reached the "
        "coordinator in time; start them all with the same --coordinator and "
        "--num-processes"), stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--coordinator", "127.0.0.1:1234"], "go together (or --distributed alone)"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator must be HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 must be < --num-processes 2"),
    (["--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"], "must be > 0"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "-1"], "must be >= 0"),
])
def test_bad_multi_process_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_distributed_without_a_cluster_is_one_line():
    # Not a TPU pod, SLURM, ...: found out by the training process the supervisor starts.
    r = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--distributed"],
                       capture_output=True, text=True, timeout=120, env={**os.environ})
    assert r.returncode == 2
    assert "JAX found no cluster settings here" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
