"""Faults a long run meets, caused for real: a damaged checkpoint, a full disk, a file
system turned read-only, paths that are not image files."""

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import chex
import jax
import pytest

from jaxmnist import backprop, bench, configs, files, predict, rundir, steps, train
from tests.conftest import run_in_process

# 3 epochs of 4 steps on the synthetic splits, a net that compiles in a moment.
SHORT = configs.Config(arch="c4 p v8", epochs=3, max_steps=4, eval_batch_size=500,
                       rotate_degrees=5.0)
REPO = Path(__file__).resolve().parents[1]


class _OnEpochLine(logging.Handler):
    """Calls `action()` when the "jaxmnist" logger reports epoch `epoch`."""

    def __init__(self, epoch, action):
        super().__init__()
        self.line, self.action = f"epoch {epoch:2d}", action

    def emit(self, record):
        if record.getMessage().startswith(self.line):
            self.action()


@contextlib.contextmanager
def on_epoch_line(epoch, action):
    log = logging.getLogger("jaxmnist")
    handler, level = _OnEpochLine(epoch, action), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@pytest.fixture
def warnings_seen():
    """The warnings the "jaxmnist" logger gives, as strings."""
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    log, handler = logging.getLogger("jaxmnist"), Keep()
    log.addHandler(handler)
    yield seen
    log.removeHandler(handler)


def metrics_of(run):
    return [{k: v for k, v in m.items() if k not in ("seconds", "train_images_per_s")}
            for m in rundir.read_metrics(run)]


def stop():
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def two_checkpoints(synthetic_splits, tmp_path_factory):
    """(a straight run of SHORT, a copy stopped after epoch 2 with checkpoints 1 and 2)."""
    root = tmp_path_factory.mktemp("runs")
    train.train_and_evaluate(SHORT, root / "straight", splits=synthetic_splits)
    with on_epoch_line(2, stop), pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(SHORT, root / "stopped", splits=synthetic_splits)
    assert rundir.complete_epochs(root / "stopped") == [2, 1]  # the newest two are kept
    return root / "straight", root / "stopped"


def damage_by_cutting(checkpoint: Path):
    """What a copy stopped half-way leaves: one file of the checkpoint cut to 100 bytes."""
    manifest = checkpoint / "default" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:100])


def damage_by_mixing_up_copies(checkpoint: Path):
    """Damage orbax reads back without complaint: the checkpoint's arrays replaced by
    another epoch's (a copy or sync that mixed two checkpoints up)."""
    other = checkpoint.parent / str(int(checkpoint.name) - 1)
    shutil.rmtree(checkpoint / "default")
    shutil.copytree(other / "default", checkpoint / "default")


@pytest.mark.parametrize("damage", [damage_by_cutting, damage_by_mixing_up_copies])
def test_resume_goes_on_from_the_newest_checkpoint_that_can_be_read(
        damage, two_checkpoints, synthetic_splits, tmp_path, warnings_seen):
    straight, stopped = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    damage(run / "checkpoints" / "2")
    train.train_and_evaluate(SHORT, run, splits=synthetic_splits, resume=True)
    assert len(warnings_seen) == 3, warnings_seen
    assert warnings_seen[0].startswith(f"{run / 'checkpoints' / '2'} cannot be read (")
    assert warnings_seen[1] == "using the checkpoint of epoch 1, the newest that can be read"
    assert warnings_seen[2].startswith(f"moved the unreadable checkpoints to {run}")
    # Epochs 2 and 3 again from epoch 1's checkpoint, its metrics cut to match: the result
    # of the run that was never damaged. The damaged checkpoint is kept, aside.
    assert metrics_of(run) == metrics_of(straight)
    chex.assert_trees_all_equal(rundir.load_trained(run)[1], rundir.load_trained(straight)[1])
    assert (run / "damaged-checkpoints" / "2" / "default").is_dir()


def test_loading_a_run_falls_back_and_says_so(two_checkpoints, tmp_path, warnings_seen):
    _, stopped = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    damage_by_mixing_up_copies(run / "checkpoints" / "2")
    _, variables = rundir.load_trained(run)
    manager = rundir.checkpoint_manager(run)
    fresh = steps.create_train_state(SHORT, jax.random.key(3), 4)
    _, epoch1 = rundir.restore_checkpoint(manager, fresh, 1)
    chex.assert_trees_all_equal(variables["params"], jax.device_get(epoch1.params))
    # The run was stopped after epoch 2 of SHORT's: it says so first.
    assert warnings_seen[0].startswith(f"{run} is unfinished: its newest checkpoint is epoch 2 "
                                       f"of {SHORT.epochs} (python -m jaxmnist.train --out ")
    assert "its values differ from those it was saved with" in warnings_seen[1]
    assert warnings_seen[2] == "using the checkpoint of epoch 1, the newest that can be read"
    assert (run / "checkpoints" / "2").is_dir()  # loading moves nothing


def test_no_readable_checkpoint_is_one_line_exit_2_and_nothing_is_deleted(
        two_checkpoints, synthetic_splits, tmp_path, capsys):
    _, stopped = two_checkpoints
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    for epoch in (1, 2):
        damage_by_cutting(run / "checkpoints" / str(epoch))
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    with pytest.raises(rundir.CheckpointError, match="no checkpoint can be read .epoch 2: a"):
        train.train_and_evaluate(SHORT, run, splits=synthetic_splits, resume=True)
    r = run_in_process(predict.main, capsys, "--run", str(run),
                       str(REPO / "experiments/digits/mnist-test-41-label2-dark-on-light.png"))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    # unfinished (stopped after epoch 2), checkpoint 2 unreadable, 1 unreadable, the error
    assert len(lines) == 4 and lines[-1].startswith("python -m jaxmnist.predict: error: ")
    assert "no checkpoint can be read" in lines[-1] and "is unfinished" in lines[0]
    assert all(line.startswith("python -m jaxmnist.predict: warning: ") for line in lines[:3])
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


# --- a disk that fills up, or turns read-only, in the middle of a run -------------------

@pytest.fixture
def disk_of(tmp_path):
    """`disk_of(size)`: a tmpfs of `size` (e.g. "100k") of our own (root, Linux)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs to fill needs root on Linux")
    mounted = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.fixture
def small_disk(disk_of):
    """A 4 MiB tmpfs of our own (root, Linux); skipped where one cannot be mounted."""
    return disk_of("4m")


def fill(disk: Path):
    """Takes every free byte of `disk` (into disk/filler)."""
    with open(disk / "filler", "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)


def after_epoch_1s_checkpoint(run: Path, then):
    """`then()`, once epoch 1's checkpoint (written in the background) is complete."""
    def action():
        for _ in range(200):
            if rundir.complete_epochs(run) == [1]:
                return then()
            jax.block_until_ready(jax.numpy.zeros(()))  # (a moment)
        raise AssertionError("epoch 1's checkpoint never completed")
    return action


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_disk_that_fails_mid_run_is_one_error_and_the_run_resumes(
        fault, small_disk, two_checkpoints, synthetic_splits):
    straight, _ = two_checkpoints
    run = small_disk / "run"
    if fault == "full":
        def break_disk():
            fill(small_disk)

        def mend_disk():
            (small_disk / "filler").unlink()
        reason = "no space left on the device"
    else:
        def remount(mode):
            subprocess.run(["mount", "-o", f"remount,{mode}", str(small_disk)], check=True)
        break_disk, mend_disk = (lambda: remount("ro")), (lambda: remount("rw"))
        reason = "the file system is read-only"
    with on_epoch_line(1, after_epoch_1s_checkpoint(run, break_disk)), \
            pytest.raises(files.WriteError) as e:
        train.train_and_evaluate(SHORT, run, splits=synthetic_splits)
    message = str(e.value)
    assert message.startswith(f"cannot write {run}/"), message
    assert f": {reason}; the checkpoint of epoch 1 is complete: free space" in message
    assert "\n" not in message
    mend_disk()
    train.train_and_evaluate(SHORT, run, splits=synthetic_splits, resume=True)
    assert metrics_of(run) == metrics_of(straight)


def test_a_checkpoint_that_cannot_be_written_names_its_path(small_disk, synthetic_splits):
    state = steps.create_train_state(SHORT, jax.random.key(0), 4)
    manager = rundir.checkpoint_manager(small_disk / "run")
    fill(small_disk)
    with pytest.raises(files.WriteError, match="no space left on the device") as e:
        rundir.save_checkpoint(manager, 1, state)
    assert e.value.path.startswith(str(small_disk / "run"))
    rundir.close(manager)


def test_bench_and_backprop_on_a_full_disk_say_so_in_one_line(small_disk, capsys, monkeypatch):
    monkeypatch.chdir(small_disk)
    # A record that fills its block exactly, so that the next line needs a new one.
    earlier = '{"earlier": "' + "x" * (4096 - 16) + '"}\n'
    (small_disk / "bench.jsonl").write_text(earlier)
    (small_disk / "study").mkdir()
    fill(small_disk)
    r = run_in_process(bench.main, capsys, "--arch", "c4 p v8", "--steps", "2",
                       "--eval-steps", "1", "--out", str(small_disk / "bench.jsonl"))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "no space left on the device" in r.stderr
    assert (small_disk / "bench.jsonl").read_text() == earlier  # untouched
    r = run_in_process(backprop.main, capsys, "--lrs", "0.5", "--steps", "3", "--out",
                       str(small_disk / "study"))
    assert r.returncode == 1 and r.stderr.startswith("python -m jaxmnist.backprop: error: "
                                                     f"cannot write {small_disk / 'study'}/")
    assert len(r.stderr.splitlines()) == 1
    assert [p.name for p in (small_disk / "study").iterdir()] == []  # nothing half-written


def test_a_write_error_says_why_in_words():
    import errno

    for code, words in [(errno.ENOSPC, "no space left on the device"),
                        (errno.EROFS, "the file system is read-only"),
                        (errno.EACCES, "permission denied")]:
        assert files.reason(OSError(code, os.strerror(code))) == words
    # orbax and TensorStore wrap the error's text without its errno
    wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/x": Failed to write '
                         '4565 bytes to file 5: No space left on device [os_error_code=\'28\']')
    assert files.reason(wrapped) == "no space left on the device"
    assert rundir._failed_path(wrapped, "default") == "/x"


# --- predict on paths that are not image files ------------------------------------------

def test_predict_names_what_a_path_is_when_it_is_not_an_image_file(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    good = REPO / "experiments/digits/mnist-test-41-label2-dark-on-light.png"
    # A file whose read fails: /proc/self/mem is a regular file that cannot be read from
    # its start, even by root (for whom no file mode bits forbid reading).
    unreadable = Path("/proc/self/mem")
    r = run_in_process(predict.main, capsys, "--run", str(REPO / "experiments/results/default"),
                       str(tmp_path), str(fifo), str(tmp_path / "absent.png"), str(unreadable),
                       str(good))
    assert r.returncode == 2
    errors = r.stderr.splitlines()
    assert errors == [
        f"python -m jaxmnist.predict: error: {tmp_path}: a directory, not an image file",
        f"python -m jaxmnist.predict: error: {fifo}: not a regular file (a FIFO, socket or device)",
        f"python -m jaxmnist.predict: error: {tmp_path / 'absent.png'}: file not found",
        "python -m jaxmnist.predict: error: /proc/self/mem: cannot be read "
        "(an input/output error (a failing disk?))",
    ]
    assert r.stdout.startswith(f"{good}: 2")


def test_the_digests_file_follows_the_checkpoints_kept(two_checkpoints):
    _, stopped = two_checkpoints
    digests = json.loads((stopped / rundir.DIGESTS).read_text())
    assert sorted(digests) == ["1", "2"]
    state = rundir.restore_checkpoint(rundir.checkpoint_manager(stopped),
                                      steps.create_train_state(SHORT, jax.random.key(0), 4), 2)[1]
    assert rundir.state_digest(state) == digests["2"]


@pytest.mark.slow
def test_the_command_line_on_a_disk_that_fills_mid_run(small_disk, mnist_splits, tfds_dir,
                                                      mnist_dir):
    """As a user meets it: the real process, its whole stderr, its exit code; then the run
    resumed, and a damaged newest checkpoint read past by predict."""
    import sys
    import time

    args = [sys.executable, "-m", "jaxmnist.train", "--no-progress", "--arch", "c4 p v8",
            "--epochs", "3", "--max-steps", "60", "--out", str(small_disk), "--name", "run",
            "--data-dir", str(mnist_dir), "--tfds-dir", str(tfds_dir)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
    run = small_disk / "run"
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "1").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    fill(small_disk)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, err
    *epochs, last = err.splitlines()  # no traceback, no library's log lines
    assert all(line.startswith("epoch ") for line in epochs), err
    assert last.startswith(f"python -m jaxmnist.train: error: cannot write {run}/"), err
    assert ": no space left on the device; the checkpoint of epoch " in err
    assert "is complete: free space (or make it writable), then continue with --resume" in err
    (small_disk / "filler").unlink()
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert [m["epoch"] for m in rundir.read_metrics(run)] == [1, 2, 3]
    damage_by_cutting(run / "checkpoints" / "3")
    r = subprocess.run([sys.executable, "-m", "jaxmnist.predict", "--run", str(run),
                        str(REPO / "experiments/digits/mnist-test-41-label2-dark-on-light.png")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0].startswith(
        f"python -m jaxmnist.predict: warning: {run}/checkpoints/3 cannot be read (a file is")
    assert r.stderr.splitlines()[1] == ("python -m jaxmnist.predict: warning: using the "
                                        "checkpoint of epoch 2, the newest that can be read")
    assert len(r.stderr.splitlines()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("when", ["after the first checkpoint", "during the first checkpoint"])
def test_the_seed_net_on_a_disk_that_fills_prints_its_epochs_and_one_line(
        when, disk_of, mnist_splits, tfds_dir, mnist_dir):
    """The seed net's checkpoint has many arrays, written concurrently: the writes still
    in flight when the first one fails must say nothing (no "Event loop is closed"
    tracebacks, no "Task exception was never retrieved"), then or at exit."""
    import sys
    import time

    # 100 KB: the run's files fit, its first checkpoint does not.
    disk = disk_of("4m" if when == "after the first checkpoint" else "100k")
    args = [sys.executable, "-m", "jaxmnist.train", "--no-progress", "--recipe", "seed",
            "--epochs", "2", "--max-steps", "3", "--out", str(disk), "--name", "run",
            "--data-dir", str(mnist_dir), "--tfds-dir", str(tfds_dir)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
    run = disk / "run"
    if when == "after the first checkpoint":
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "1").is_dir() and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fill(disk)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1, err
    *epochs, last = err.splitlines()
    assert epochs and all(re.fullmatch(r"epoch +\d+  train loss .*s", line) for line in epochs), err
    complete = ("the checkpoint of epoch 1 is complete" if when == "after the first checkpoint"
                else "no epoch's checkpoint is complete yet")
    assert re.fullmatch(
        rf"python -m jaxmnist.train: error: cannot write {re.escape(str(run))}/\S+: no space "
        rf"left on the device; {complete}: free space \(or make it writable\), then continue "
        r"with --resume", last), err
    assert out == ""
