"""Training: the step, a short real run, determinism, resume after a kill, failing well."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import configs, data, kernels, train


def small_splits(splits, n_train=1024, n_test=500):
    train_split, test_split = splits
    return (data.Split(train_split.images[:n_train], train_split.labels[:n_train]),
            data.Split(test_split.images[:n_test], test_split.labels[:n_test]))


def random_batch(n=64, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"image": jax.random.normal(k1, (n, 28, 28, 1)),
            "label": jax.random.randint(k2, (n,), 0, 10)}


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    config = configs.seed()
    state = train.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    step = jax.jit(train.train_step)
    batch = random_batch()
    losses = []
    for _ in range(25):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.75 * losses[0], losses
    assert int(state.step) == 25
    # BatchNorm statistics moved; parameters changed.
    fresh = train.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    assert not np.allclose(state.batch_stats["block1"]["bn"]["mean"],
                           fresh.batch_stats["block1"]["bn"]["mean"])


@pytest.mark.skipif(not kernels.xla_cpu_knows(tuple(kernels.XLA_CPU_OPTIONS.items())),
                    reason=f"jaxlib {jax.__version__} has no YNNPACK option")
def test_trainer_compiles_without_ynnpack_on_cpu():
    config = configs.seed()
    state = train.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    batch, key = random_batch(8), jax.random.key(1)

    def compiled(trainer):
        return trainer.train_step.lower(trainer.put(state), batch, key).compile().as_text()

    ours = compiled(train.Trainer(config))
    assert "convolution" in ours and "__ynn_fusion" not in ours
    # XLA's defaults ({}) would send the convolutions to YNNPACK.
    assert "__ynn_fusion" in compiled(train.Trainer(config, compiler_options={}))


def test_eval_step_masks_padding():
    config = configs.seed()
    state = train.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    batch = random_batch(8)
    full = train.eval_step(state, {**batch, "mask": jnp.ones(8)})
    half = train.eval_step(state, {**batch, "mask": jnp.array([1.0] * 4 + [0.0] * 4)})
    first = train.eval_step(state, {k: v[:4] for k, v in batch.items()} | {"mask": jnp.ones(4)})
    chex.assert_trees_all_close(half, first, rtol=1e-5)
    assert float(full["loss"]) > float(half["loss"])


def test_short_run_on_real_mnist(mnist_splits, tmp_path):
    config = configs.Config(epochs=1)
    run_dir = tmp_path / "run"
    state = train.train_and_evaluate(config, run_dir, splits=mnist_splits, max_steps=60,
                                     progress=False, verbose=False)
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # 60 steps of 128 images already classify most of the 10,000 test digits (84.6 %
    # with jax 0.7's random numbers, more with later versions').
    assert record["test_accuracy"] > 0.8, record
    assert record["train_loss"] < 1.5
    assert int(state.step) == 60
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model, variables = train.load_trained(run_dir)
    chex.assert_trees_all_close(variables["params"], state.params)


def test_same_seed_same_metrics(mnist_splits, tmp_path):
    config = configs.Config(epochs=2, rotate_degrees=5.0, shift_pixels=1.0)
    splits = small_splits(mnist_splits)
    runs = []
    for name in ("a", "b"):
        train.train_and_evaluate(config, tmp_path / name, splits=splits, progress=False,
                                 verbose=False)
        runs.append([{k: v for k, v in json.loads(line).items()
                      if k not in ("seconds", "train_images_per_s")}
                     for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert runs[0] == runs[1]
    assert len(runs[0]) == 2


def test_steps_in_a_scan_match_one_step_per_call(mnist_splits, tmp_path):
    config = configs.Config(epochs=1, rotate_degrees=5.0, shift_pixels=1.0)
    splits = small_splits(mnist_splits)
    trainer = train.Trainer(config)
    split = trainer.put(splits[0])
    perm = trainer.permutation(jax.random.key(3), len(split), config.batch_size)
    aug_key, dropout_key = jax.random.key(4), jax.random.key(5)

    def fresh_state():
        return trainer.put(train.create_train_state(config, jax.random.key(0), 8))

    # The same batch, augmentation and dropout: the same step, to float32 round-off
    # (XLA may order a reduction differently inside the loop).
    state, _ = trainer.train_step(fresh_state(), trainer.get_batch(split, perm, 0, aug_key),
                                  dropout_key)
    scanned, m = trainer.train_steps(fresh_state(), split, perm, 0, aug_key, dropout_key, 1)
    chex.assert_trees_all_close(scanned.params, state.params, atol=1e-6)
    chex.assert_trees_all_close(scanned.batch_stats, state.batch_stats, atol=1e-6)

    # Later steps amplify that round-off a little (momentum, and a max-pool or ReLU whose
    # choice it moves), so three steps' losses agree to 1e-4.
    state, losses = fresh_state(), []
    for i in range(3):
        state, m = trainer.train_step(state, trainer.get_batch(split, perm, i, aug_key),
                                      dropout_key)
        losses.append(float(m["loss"]))
    scanned, m = trainer.train_steps(fresh_state(), split, perm, 0, aug_key, dropout_key, 3)
    chex.assert_shape(m["loss"], (3,))
    np.testing.assert_allclose(np.asarray(m["loss"]), losses, atol=1e-4)
    assert int(scanned.step) == 3

    # A run: 8 steps an epoch in calls of 3, 3 and 2 against 8 calls of one step. The
    # round-off grows with the steps of this early phase (as across devices).
    states = {k: train.train_and_evaluate(config, tmp_path / str(k), splits=splits,
                                          steps_per_call=k, progress=False, verbose=False)
              for k in (1, 3)}
    assert int(states[3].step) == int(states[1].step) == 8
    (one,), (three,) = metrics_of(tmp_path / "1"), metrics_of(tmp_path / "3")
    assert abs(one["train_loss"] - three["train_loss"]) < 2e-3, (one, three)
    assert abs(one["train_accuracy"] - three["train_accuracy"]) < 0.01, (one, three)


def test_non_finite_loss_stops_with_epoch_and_step(mnist_splits, tmp_path):
    config = configs.Config(epochs=2, lr=1e6, momentum=0.0)
    with pytest.raises(train.TrainingDiverged, match=r"epoch 1, step \d+ of 8") as e:
        train.train_and_evaluate(config, tmp_path / "run", splits=small_splits(mnist_splits),
                                 progress=False, verbose=False)
    assert "non-finite" in str(e.value)
    assert not (tmp_path / "run" / "checkpoints" / "1").exists()


# --- the command line, in subprocesses ----------------------------------------------


def train_cli(*args, tfds_dir, mnist_dir, env_extra=None, **kwargs):
    env = {**os.environ, "JAXMNIST_DATA_DIR": str(mnist_dir), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "jaxmnist.train", "--tfds-dir", str(tfds_dir), "--no-progress",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def metrics_of(run_dir):
    return [{k: v for k, v in json.loads(line).items()
             if k not in ("seconds", "train_images_per_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_a_kill_matches_a_straight_run(mnist_splits, tfds_dir, mnist_dir, tmp_path):
    args = ["--recipe", "default", "--epochs", "2", "--max-steps", "12", "--out", str(tmp_path)]
    straight = train_cli(*args, "--name", "straight", tfds_dir=tfds_dir, mnist_dir=mnist_dir)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    killed = train_cli(*args, "--name", "killed", tfds_dir=tfds_dir, mnist_dir=mnist_dir)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 600
    # Epoch 1's checkpoint, complete (orbax writes it in a thread, renaming it when done).
    while not ((tmp_path / "killed" / "checkpoints" / "1").is_dir() and metrics.exists()
               and metrics.read_text().count("\n") >= 1):
        assert killed.poll() is None, killed.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # during epoch 2
    killed.wait()
    assert metrics.read_text().count("\n") == 1

    resumed = train_cli(*args, "--name", "killed", "--resume", tfds_dir=tfds_dir,
                        mnist_dir=mnist_dir)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert metrics_of(tmp_path / "killed") == metrics_of(tmp_path / "straight")
    _, a = train.load_trained(tmp_path / "straight")
    _, b = train.load_trained(tmp_path / "killed")
    chex.assert_trees_all_equal(a, b)  # params and BatchNorm statistics, bit for bit


def run_train_cli(*args, tfds_dir, mnist_dir):
    p = train_cli(*args, tfds_dir=tfds_dir, mnist_dir=mnist_dir)
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--epochs", "two"], "expected a whole number"),
    (["--epochs", "-3"], "must be > 0"),
    (["--lr", "-0.1"], "must be a finite number > 0"),
    (["--lr", "nan"], "must be a finite number > 0"),
    (["--dropout", "1.5"], "must be in [0, 1)"),
    (["--recipe", "fancy"], "invalid choice: 'fancy'"),
    (["--batch-size", "70000"], "larger than the 60000 training images"),
])
def test_train_cli_rejects_bad_arguments(args, message, mnist_splits, tfds_dir, mnist_dir,
                                         tmp_path):
    # mnist_splits: the TFDS dir is prepared already, so no preparation output on stderr.
    code, _, err = run_train_cli(*args, "--out", str(tmp_path), tfds_dir=tfds_dir,
                                 mnist_dir=mnist_dir)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # nothing written


def test_train_cli_rejects_unusable_directories(mnist_splits, tfds_dir, mnist_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_train_cli("--out", str(blocker), tfds_dir=tfds_dir, mnist_dir=mnist_dir)
    assert code == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_train_cli("--data-dir", str(tmp_path / "nowhere"), "--out",
                                 str(tmp_path / "runs"), "--tfds-dir", str(tmp_path / "fresh"),
                                 tfds_dir=tfds_dir, mnist_dir=mnist_dir)
    assert code == 2 and "MNIST directory not found" in err, err
    assert len(err.strip().splitlines()) == 1
    run = tmp_path / "runs" / "default"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(configs.seed().to_dict()))
    code, _, err = run_train_cli("--out", str(tmp_path / "runs"), tfds_dir=tfds_dir,
                                 mnist_dir=mnist_dir)
    assert code == 2 and "holds a run with a different config" in err, err


def test_training_never_imports_tensorflow(mnist_splits, tfds_dir, mnist_dir, tmp_path):
    # A stand-in `tensorflow` that is importable, as where TensorFlow is installed, and
    # leaves a mark if anything imports it.
    fake = tmp_path / "site" / "tensorflow"
    fake.mkdir(parents=True)
    mark = tmp_path / "tensorflow-was-imported"
    (fake / "__init__.py").write_text(f"open({str(mark)!r}, 'w').close()\n")
    script = ("import sys\nfrom jaxmnist import train\n"
              "code = train.main(sys.argv[1:])\n"
              "assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow']\n"
              "sys.exit(code)\n")
    path = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "JAXMNIST_DATA_DIR": str(mnist_dir), "PYTHONPATH": path}
    r = subprocess.run([sys.executable, "-c", script, "--epochs", "1", "--max-steps", "3",
                        "--no-progress", "--tfds-dir", str(tfds_dir), "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "final test accuracy" in r.stdout
    assert not mark.exists()


def test_summary_prints_the_layer_table():
    r = subprocess.run([sys.executable, "-m", "jaxmnist.train", "--summary"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    assert "block7       6x6x16" in r.stdout and "12,088" in r.stdout.splitlines()[-1]


def test_an_interrupted_save_leaves_the_previous_checkpoint(mnist_splits, tmp_path):
    config = configs.Config(epochs=1)
    run_dir = tmp_path / "run"
    state = train.train_and_evaluate(config, run_dir, splits=small_splits(mnist_splits),
                                     progress=False, verbose=False)
    # What a crash in the middle of saving epoch 2 leaves: orbax's temporary directory.
    partial = run_dir / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    partial.mkdir()
    (partial / "half-written").write_bytes(b"\0" * 100)
    _, variables = train.load_trained(run_dir)
    chex.assert_trees_all_equal(variables["params"], jax.device_get(state.params))
