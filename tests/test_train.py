"""Training: the step, short runs, determinism, resume, failing well, the command line."""

import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import configs, data, kernels, rundir, steps, train
from jaxmnist.train import __main__ as train_cli
from tests.conftest import run_in_process

# Short runs on the synthetic splits: 8 steps of 128 an epoch, 500 images to evaluate,
# with augmentation, dropout and BatchNorm as the recipes have them, on a net of the
# family that compiles in a fraction of the seed net's time.
SHORT = configs.Config(arch="c8 p v16 v16", epochs=2, eval_batch_size=500, rotate_degrees=5.0,
                       shift_pixels=1.0)


def random_batch(n=64, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"image": jax.random.normal(k1, (n, 28, 28, 1)),
            "label": jax.random.randint(k2, (n,), 0, 10)}


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    config = configs.seed()
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    step = jax.jit(steps.train_step)
    batch = random_batch()
    losses = []
    for _ in range(25):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.75 * losses[0], losses
    assert int(state.step) == 25
    # BatchNorm statistics moved; parameters changed.
    fresh = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    assert not np.allclose(state.batch_stats["block1"]["bn"]["mean"],
                           fresh.batch_stats["block1"]["bn"]["mean"])


def test_label_smoothing_trains_against_smoothed_targets():
    config = configs.Config(arch="c4 p c8", dropout=0.0)
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    batch = random_batch(n=16)
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            batch["image"], train=True, mutable=["batch_stats"])[0]
    # Cross-entropy against (1 - a)·one_hot + a/10, written out.
    log_p = np.asarray(jax.nn.log_softmax(logits))
    targets = 0.9 * np.eye(10)[np.asarray(batch["label"])] + 0.01
    expected = -(targets * log_p).sum(-1).mean()
    _, m = jax.jit(steps.train_step, static_argnums=3)(state, batch, jax.random.key(1), 0.1)
    _, plain = jax.jit(steps.train_step)(state, batch, jax.random.key(1))
    np.testing.assert_allclose(float(m["loss"]), expected, rtol=1e-5)
    assert abs(float(m["loss"]) - float(plain["loss"])) > 1e-3


def test_weight_decay_adds_its_multiple_of_the_weights_to_the_gradient():
    plain = configs.Config(arch="c4 p c8", dropout=0.0)  # constant lr 0.04, momentum 0.9
    decayed = dataclasses.replace(plain, weight_decay=0.1)
    batch, step = random_batch(n=16), jax.jit(steps.train_step)
    a = steps.create_train_state(plain, jax.random.key(0), steps_per_epoch=10)
    b = steps.create_train_state(decayed, jax.random.key(0), steps_per_epoch=10)
    w0 = jax.device_get(a.params)
    a, _ = step(a, batch, jax.random.key(1))
    b, _ = step(b, batch, jax.random.key(1))
    # The same first gradient g: one step moves by -lr (g + wd w0) against -lr g.
    chex.assert_trees_all_close(
        jax.tree.map(lambda x, y: x - y, b.params, a.params),
        jax.tree.map(lambda w: -0.04 * 0.1 * w, w0), atol=1e-6)
    # Before the momentum (PyTorch's order): with the same g and w twice, the second
    # update is -lr (0.9 (g + wd w) + g + wd w).
    g, w = jnp.ones(3), jnp.full(3, 2.0)
    tx = steps.create_train_state(decayed, jax.random.key(0), steps_per_epoch=10).tx
    opt_state = tx.init(w)
    for _ in range(2):
        update, opt_state = tx.update(g, opt_state, w)
    np.testing.assert_allclose(update, -0.04 * 1.9 * (1 + 0.1 * 2.0), rtol=1e-6)
    assert configs.Config().weight_decay == 0.0


def test_a_whitening_layer_s_kernel_is_the_images_and_no_step_moves_it():
    from jaxmnist.models import whitening_kernel

    # With weight decay, which skips the frozen kernel and decays the rest.
    config = configs.Config(arch="w4 p c4", dropout=0.0, weight_decay=0.1)
    batch = random_batch(n=16)
    kernel = whitening_kernel(batch["image"], 4)
    state = steps.create_train_state(config, jax.random.key(0), 10, whitening=kernel)
    np.testing.assert_array_equal(state.params["block1"]["kernel"], kernel)
    after, _ = jax.jit(steps.train_step)(state, batch, jax.random.key(1))
    np.testing.assert_array_equal(after.params["block1"]["kernel"], kernel)
    assert np.abs(after.params["block1"]["bias"]).min() > 0  # learned, from 0
    assert not np.allclose(after.params["block2"]["conv"]["kernel"],
                           state.params["block2"]["conv"]["kernel"])
    # Without the images the kernel keeps its random init (for restored or timed states).
    fresh = steps.create_train_state(config, jax.random.key(0), 10)
    assert not np.allclose(fresh.params["block1"]["kernel"], kernel)
    with pytest.raises(ValueError, match="'c4 p c4' has no whitening layer"):
        steps.create_train_state(configs.Config(arch="c4 p c4"), jax.random.key(0), 10,
                                 whitening=kernel)


@pytest.mark.slow  # a run end to end; the step and the state are checked above
def test_a_run_whitens_with_its_first_training_images(synthetic_splits, tmp_path):
    from jaxmnist.models import whitening_kernel

    config = dataclasses.replace(SHORT, arch="w4 p v8", epochs=1)
    state = train.train_and_evaluate(config, tmp_path / "run", splits=synthetic_splits)
    train_split = synthetic_splits[0]
    # all 1,024 images here (the first 5,000), standardised as the net sees them
    images = (np.asarray(train_split.images, np.float32) / 255 - data.MEAN) / data.STD
    np.testing.assert_allclose(state.params["block1"]["kernel"],
                               whitening_kernel(images, 4), atol=1e-5)
    np.testing.assert_array_equal(state.params["block1"]["kernel"],
                                  steps.whitening_of(config, train_split))
    assert steps.whitening_of(SHORT, train_split) is None


def test_nesterov_momentum_looks_one_step_ahead():
    # With the same gradient g every step, plain momentum moves by -lr g (1 + m + m^2 ...)
    # and Nesterov's by -lr g (m·trace + 1): (1 + m) on the first step, 1 + m + m^2 on the
    # second, as PyTorch's SGD(nesterov=True) does.
    config = configs.Config(arch="c4 p c8", momentum=0.9, nesterov=True)
    tx = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10).tx
    g, w = jnp.ones(3), jnp.zeros(3)
    opt_state = tx.init(w)
    first, opt_state = tx.update(g, opt_state, w)
    second, _ = tx.update(g, opt_state, w)
    np.testing.assert_allclose(first, -0.04 * 1.9, rtol=1e-6)
    np.testing.assert_allclose(second, -0.04 * (1 + 0.9 + 0.81), rtol=1e-6)
    assert not configs.Config().nesterov


def test_adam_takes_pytorchs_steps_with_momentum_as_beta1():
    config = configs.Config(arch="c4 p c8", optimizer="adam", momentum=0.7, beta2=0.9, lr=0.01)
    tx = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10).tx
    w = jnp.zeros(2)
    opt_state = tx.init(w)
    m = v = np.zeros(2)
    for t, g in enumerate((np.array([1.0, -2.0]), np.array([3.0, 0.5])), start=1):
        update, opt_state = tx.update(jnp.asarray(g), opt_state, w)
        # PyTorch's Adam, written out: bias-corrected moments, eps 1e-8 outside the root.
        m, v = 0.7 * m + 0.3 * g, 0.9 * v + 0.1 * g * g
        expected = -0.01 * (m / (1 - 0.7**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-8)
        np.testing.assert_allclose(update, expected, rtol=1e-5)
    assert configs.Config().optimizer == "sgd"


def test_the_weight_average_follows_the_steps_and_is_what_is_evaluated():
    config = configs.Config(arch="c4 p c8", dropout=0.0, ema_decay=0.9)
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=10)
    assert configs.Config(arch="c4 p c8").ema_decay == 0.0
    assert steps.create_train_state(configs.Config(arch="c4 p c8"), jax.random.key(0), 10).ema \
        is None
    chex.assert_trees_all_equal(state.ema, {"params": state.params,
                                            "batch_stats": state.batch_stats})
    step, batch = jax.jit(steps.train_step), random_batch(n=16)
    expected = jax.device_get(state.ema)
    for t in range(1, 31):
        state, _ = step(state, batch, jax.random.key(1))
        decay = min(0.9, (1 + t) / (10 + t))  # 0.18 at the first step, 0.9 from the 80th
        live = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        expected = jax.tree.map(lambda e, w, d=decay: d * e + (1 - d) * w, expected, live)
    chex.assert_trees_all_close(state.ema, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(state.ema["params"]["head"]["kernel"], state.params["head"]["kernel"])
    # eval_step scores the average, not the newest weights.
    eval_batch = {**batch, "mask": jnp.ones(16)}
    averaged = steps.eval_step(state, eval_batch)
    chex.assert_trees_all_close(averaged, steps.eval_step(
        state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"],
                      ema=None), eval_batch), rtol=1e-6)
    assert float(averaged["loss"]) != float(steps.eval_step(state.replace(ema=None),
                                                            eval_batch)["loss"])


@pytest.mark.skipif(not kernels.xla_cpu_knows(tuple(kernels.XLA_CPU_OPTIONS.items())),
                    reason=f"jaxlib {jax.__version__} has no YNNPACK option")
def test_trainer_compiles_without_ynnpack_on_cpu():
    config = dataclasses.replace(configs.seed(), arch="c4 p v8")  # any net with convs
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    batch, key = random_batch(8), jax.random.key(1)

    def compiled(trainer):
        return trainer.train_step.lower(trainer.put(state), batch, key).compile().as_text()

    ours = compiled(train.Trainer(config))
    assert "convolution" in ours and "__ynn_fusion" not in ours
    # XLA's defaults ({}) would send the convolutions to YNNPACK.
    assert "__ynn_fusion" in compiled(train.Trainer(config, compiler_options={}))


def test_eval_step_masks_padding():
    config = configs.Config(arch="c4 p c8")
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    batch = random_batch(8)
    eval_step = jax.jit(steps.eval_step)
    full = eval_step(state, {**batch, "mask": jnp.ones(8)})
    half = eval_step(state, {**batch, "mask": jnp.array([1.0] * 4 + [0.0] * 4)})
    first = eval_step(state, {k: v[:4] for k, v in batch.items()} | {"mask": jnp.ones(4)})
    chex.assert_trees_all_close(half, first, rtol=1e-5)
    assert float(full["loss"]) > float(half["loss"])


def test_a_shift_moves_every_pixel_one_place_and_brings_in_the_background():
    images = jnp.zeros((1, 5, 6, 1)).at[0, 2, 3, 0].set(1.0)  # one pixel on
    background = data.standardize(0.0)
    for down, right in steps.SHIFTS:
        out = np.asarray(steps.shifted(data.standardize(images), down, right))[0, :, :, 0]
        assert out.shape == (5, 6)
        assert np.argwhere(out > background + 1).tolist() == [[2 + down, 3 + right]]
        if down:  # the row that came in is background
            np.testing.assert_allclose(out[0 if down == 1 else -1], background)
        if right:
            np.testing.assert_allclose(out[:, 0 if right == 1 else -1], background)


def test_test_time_augmentation_averages_the_log_softmax_of_the_shifted_images():
    config = configs.Config(arch="c4 p c8", dropout=0.0)
    state = steps.create_train_state(config, jax.random.key(0), steps_per_epoch=1)
    batch = random_batch(16) | {"mask": jnp.array([1.0] * 12 + [0.0] * 4)}
    variables = steps.eval_variables(state)
    log_p = np.asarray(jax.jit(lambda v, x: jnp.stack([jax.nn.log_softmax(state.apply_fn(
        v, steps.shifted(x, *shift), train=False)) for shift in steps.SHIFTS]))(
        variables, batch["image"]))
    labels, mask = np.asarray(batch["label"]), np.asarray(batch["mask"])

    def by_hand(n):  # correct count and summed loss of the mean over the first n passes
        mean = np.mean(log_p[:n], axis=0)
        loss = -(mean - np.log(np.exp(mean).sum(-1, keepdims=True)))[np.arange(16), labels]
        return np.sum((mean.argmax(-1) == labels) * mask), np.sum(loss * mask)

    one = jax.jit(steps.eval_step)(state, batch)
    eight = jax.jit(functools.partial(steps.eval_step, tta=8))(state, batch)
    four = jax.jit(functools.partial(steps.eval_step, tta=4))(state, batch)
    assert "correct_by_shifts" not in one
    for out, n in ((one, 1), (four, 5), (eight, 9)):
        correct, loss = by_hand(n)
        assert int(out["correct"]) == correct
        np.testing.assert_allclose(float(out["loss"]), loss, rtol=1e-5)
    assert {k: int(v) for k, v in eight["correct_by_shifts"].items()} == {
        0: by_hand(1)[0], 4: by_hand(5)[0], 8: by_hand(9)[0]}
    assert list(four["correct_by_shifts"]) == [0, 4]


def test_a_run_with_test_time_augmentation_records_each_count_of_shifts(
        synthetic_splits, tmp_path):
    config = dataclasses.replace(SHORT, arch="c4 p v8", epochs=1, tta=8)
    train.train_and_evaluate(config, tmp_path / "run", splits=synthetic_splits)
    (last,) = rundir.read_metrics(tmp_path / "run")
    assert set(last["test_accuracy_by_shifts"]) == {"0", "4", "8"}
    assert last["test_accuracy"] == last["test_accuracy_by_shifts"]["8"]
    assert all(0 <= a <= 1 for a in last["test_accuracy_by_shifts"].values())
    with pytest.raises(configs.ConfigError, match="tta"):
        configs.Config(tta=3)


@pytest.mark.slow  # a run end to end, compiled at two sizes; the resize by hand is quick
def test_progressive_resizing_trains_the_first_epochs_small_and_evaluates_at_28(
        synthetic_splits, tmp_path, monkeypatch):
    sizes = []  # each batch's image size, as the jitted steps are traced
    get_batch = data.get_batch

    def recording(*args, size=None, **kwargs):
        batch = get_batch(*args, size=size, **kwargs)
        sizes.append(batch["image"].shape[1])
        return batch

    asked = []  # the size each training batch is asked for, call by call

    class Recording(train.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            jitted = self.get_batch
            self.get_batch = lambda *a, size=None: asked.append(size) or jitted(*a, size=size)

    monkeypatch.setattr(data, "get_batch", recording)
    monkeypatch.setattr(train, "Trainer", Recording)
    config = dataclasses.replace(SHORT, arch="c4 p v8", epochs=3, small_epochs=2,
                                 small_size=16)
    train.train_and_evaluate(config, tmp_path / "run", splits=synthetic_splits)
    assert asked == [16] * 16 + [None] * 8  # 8 steps an epoch
    # The batches traced: the first at 16, then 28 (an evaluation traced before, by
    # another test in this process, is not traced again)
    assert sizes[0] == 16 and set(sizes) == {16, 28}
    assert len(rundir.read_metrics(tmp_path / "run")) == 3


def metrics_of(run_dir):
    return [{k: v for k, v in json.loads(line).items()
             if k not in ("seconds", "train_images_per_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_short_run_learns_and_writes_its_run_directory(synthetic_splits, tmp_path):
    config = dataclasses.replace(SHORT, lr=0.1, schedule="onecycle")
    run_dir = tmp_path / "run"
    state = train.train_and_evaluate(config, run_dir, splits=synthetic_splits)
    first, last = rundir.read_metrics(run_dir)
    assert last["train_loss"] < first["train_loss"]
    assert last["test_accuracy"] > 0.5, last  # chance is 0.1
    assert int(state.step) == 16
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model, variables = rundir.load_trained(run_dir)
    chex.assert_trees_all_close(variables["params"], state.params)


@pytest.mark.slow  # two runs; the quick suite's resumed run equals a straight one already
def test_same_seed_same_metrics(synthetic_splits, tmp_path):
    for name in ("a", "b"):
        train.train_and_evaluate(SHORT, tmp_path / name, splits=synthetic_splits)
    assert metrics_of(tmp_path / "a") == metrics_of(tmp_path / "b")
    assert len(metrics_of(tmp_path / "a")) == 2


@pytest.mark.slow  # --steps-per-call, an option: three paths compiled, 11-25 s
def test_steps_in_a_scan_match_one_step_per_call(synthetic_splits, tmp_path):
    config = dataclasses.replace(SHORT, epochs=1)
    trainer = train.Trainer(config)
    split = trainer.put(synthetic_splits[0])
    perm = trainer.permutation(jax.random.key(3), len(split), config.batch_size)
    aug_key, dropout_key = jax.random.key(4), jax.random.key(5)

    def fresh_state():
        return trainer.put(steps.create_train_state(config, jax.random.key(0), 8))

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
    states = {k: train.train_and_evaluate(dataclasses.replace(config, steps_per_call=k),
                                          tmp_path / str(k), splits=synthetic_splits)
              for k in (1, 3)}
    assert int(states[3].step) == int(states[1].step) == 8
    (one,), (three,) = metrics_of(tmp_path / "1"), metrics_of(tmp_path / "3")
    assert abs(one["train_loss"] - three["train_loss"]) < 2e-3, (one, three)
    assert abs(one["train_accuracy"] - three["train_accuracy"]) < 0.01, (one, three)


def test_non_finite_loss_stops_with_epoch_and_step(synthetic_splits, tmp_path):
    config = dataclasses.replace(SHORT, lr=1e6, momentum=0.0)
    with pytest.raises(train.TrainingDiverged, match=r"epoch 1, step \d+ of 8") as e:
        train.train_and_evaluate(config, tmp_path / "run", splits=synthetic_splits)
    assert "non-finite" in str(e.value) and "no checkpoint had been saved yet" in str(e.value)
    assert not (tmp_path / "run" / "checkpoints" / "1").exists()


class _StopAfterFirstEpoch(logging.Handler):
    """Interrupts a run, as Ctrl-C would, when its first epoch's line is logged."""

    def emit(self, record):
        if record.getMessage().startswith("epoch  1"):
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_to_the_same_result(synthetic_splits, tmp_path):
    train.train_and_evaluate(SHORT, tmp_path / "straight", splits=synthetic_splits)
    log = logging.getLogger("jaxmnist")
    handler, level = _StopAfterFirstEpoch(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.train_and_evaluate(SHORT, tmp_path / "stopped", splits=synthetic_splits)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert len(metrics_of(tmp_path / "stopped")) == 1
    with pytest.raises(rundir.RunDirError, match="already holds this run"):
        train.train_and_evaluate(SHORT, tmp_path / "stopped", splits=synthetic_splits)
    train.train_and_evaluate(SHORT, tmp_path / "stopped", splits=synthetic_splits, resume=True)
    assert metrics_of(tmp_path / "stopped") == metrics_of(tmp_path / "straight")
    _, a = rundir.load_trained(tmp_path / "straight")
    _, b = rundir.load_trained(tmp_path / "stopped")
    chex.assert_trees_all_equal(a, b)  # params and BatchNorm statistics, bit for bit


@pytest.mark.slow  # a run end to end; the quick suite keeps the average's maths (above)
def test_a_run_with_a_weight_average_keeps_and_serves_it(synthetic_splits, tmp_path):
    config = dataclasses.replace(SHORT, epochs=1, ema_decay=0.5)
    state = train.train_and_evaluate(config, tmp_path / "run", splits=synthetic_splits)
    _, variables = rundir.load_trained(tmp_path / "run")
    chex.assert_trees_all_equal(variables, jax.device_get(state.ema))
    # A resumed run restores the average with the rest of the state.
    manager = rundir.checkpoint_manager(tmp_path / "run")
    fresh = steps.create_train_state(config, jax.random.key(9), steps_per_epoch=8)
    epoch, restored = rundir.restore_checkpoint(manager, fresh)
    assert epoch == 1
    chex.assert_trees_all_equal(jax.device_get(restored.ema), jax.device_get(state.ema))


def test_an_interrupted_save_leaves_the_previous_checkpoint(synthetic_splits, tmp_path):
    config = dataclasses.replace(SHORT, epochs=1)
    run_dir = tmp_path / "run"
    state = train.train_and_evaluate(config, run_dir, splits=synthetic_splits)
    # What a crash in the middle of saving epoch 2 leaves: orbax's temporary directory.
    partial = run_dir / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    partial.mkdir()
    (partial / "half-written").write_bytes(b"\0" * 100)
    _, variables = rundir.load_trained(run_dir)
    chex.assert_trees_all_equal(variables["params"], jax.device_get(state.params))


def test_fast_kernels_are_the_default_on_cpu_only(monkeypatch):
    config = configs.default()
    assert config.fast_kernels is None
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert steps.make_model(config).fast
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not steps.make_model(config).fast
    assert steps.make_model(dataclasses.replace(config, fast_kernels=True)).fast


@pytest.mark.parametrize("values, message", [
    (dict(epochs=0), "epochs must be > 0, got 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0, got nan"),
    (dict(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
    (dict(schedule="cosine"), "schedule must be 'constant' or 'onecycle', got 'cosine'"),
    (dict(arch="c8 q"), "arch 'c8 q': unknown layer 'q'"),
    (dict(batch_size=59_001, validation=1000), "batch_size 59001 is larger than the 59000"),
    (dict(validation=-1), "validation must be in [0, 60000), got -1"),
    (dict(rotate_degrees=-5.0), "rotate_degrees must be a finite number >= 0, got -5.0"),
    (dict(dropout_at="convs"), "dropout_at must be 'blocks' or 'pools', got 'convs'"),
    (dict(label_smoothing=1.0), "label_smoothing must be in [0, 1), got 1.0"),
    (dict(scale=-0.1), "scale must be in [0, 1), got -0.1"),
    (dict(bias=1), "bias must be true or false, got 1"),
    (dict(bn_before_relu="yes"), "bn_before_relu must be true or false, got 'yes'"),
    (dict(bn_scale=False, norm="layer"), "bn_scale false needs norm 'batch', got 'layer'"),
    (dict(bn_scale="no"), "bn_scale must be true or false, got 'no'"),
    (dict(small_epochs=20), "small_epochs must be in [0, epochs) (the last epoch trains at "
     "28x28; epochs is 20), got 20"),
    (dict(small_size=28), "small_size must be in [1, 28), got 28"),
    (dict(small_size=20, small_epochs=1, arch="c8 p v8x6"),
     "small_size 20: at 20x20, 'v8x6' (layer 3) shrinks the 10x10 map it gets below 1x1"),
    (dict(augment_probability=0.0), "augment_probability must be in (0, 1], got 0.0"),
    (dict(ema_decay=1.0), "ema_decay must be in [0, 1), got 1.0"),
    (dict(weight_decay=-0.1), "weight_decay must be in [0, 1), got -0.1"),
    (dict(nesterov=True, momentum=0.0), "nesterov needs a momentum > 0, got momentum 0"),
    (dict(optimizer="lion"), "optimizer must be 'sgd' or 'adam', got 'lion'"),
    (dict(beta2=0.9), "beta2 is Adam's: needs optimizer 'adam', got 'sgd'"),
    (dict(beta2=1.0, optimizer="adam"), "beta2 must be in [0, 1), got 1.0"),
    (dict(nesterov=True, optimizer="adam"), "nesterov is SGD's: needs optimizer 'sgd'"),
    (dict(norm="group"), "norm must be 'batch' or 'layer' or 'none', got 'group'"),
    (dict(head_hidden=-1), "head_hidden must be >= 0, got -1"),
    (dict(head_hidden=16, head="dense"), "head_hidden needs head 'gap', got 'dense'"),
    (dict(elastic_alpha=-1.0), "elastic_alpha must be a finite number >= 0, got -1.0"),
    (dict(elastic_sigma=0.0), "elastic_sigma must be a finite number > 0, got 0.0"),
])
def test_a_config_names_the_value_it_cannot_have(values, message):
    with pytest.raises(configs.ConfigError) as e:
        configs.Config(**values)
    assert message in str(e.value) and e.value.field == next(iter(values))
    assert "--" not in str(e.value)  # library errors name values, not flags


def test_run_directory_errors_name_values_not_flags(synthetic_splits, tmp_path):
    config = dataclasses.replace(SHORT, epochs=1)
    train.train_and_evaluate(config, tmp_path / "run", splits=synthetic_splits)
    with pytest.raises(rundir.RunDirError) as e:
        train.train_and_evaluate(dataclasses.replace(config, lr=0.5), tmp_path / "run",
                                 splits=synthetic_splits)
    assert "holds a run with a different config (lr 0.04 there, 0.5 here)" in str(e.value)
    assert "--" not in str(e.value)


# --- the command line: in this process where the process is not what is tested -------


def run_main(capsys, *args):
    """`python -m jaxmnist.train --no-progress ARGS` in this process."""
    return run_in_process(train_cli.main, capsys, "--no-progress", *args)


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--epochs", "two"], "expected a whole number"),
    (["--epochs", "-3"], "--epochs must be > 0, got -3"),
    (["--lr", "-0.1"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--recipe", "fancy"], "invalid choice: 'fancy'"),
    (["--schedule", "cosine"], "invalid choice: 'cosine'"),
    (["--batch-size", "70000"], "--batch-size 70000 is larger than the 60000 training images"),
    (["--validation", "60000"], "--validation must be in [0, 60000)"),
    (["--arch", "c8 q"], "unknown layer 'q'"),
    (["--fast-kernels", "yes"], "unrecognized arguments: yes"),
])
def test_train_cli_rejects_bad_arguments_before_anything_else(args, message, capsys, tmp_path,
                                                              monkeypatch):
    # A fresh machine: no MNIST prepared, none to read. Bad input is one line all the same.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    code, out, err = run_main(capsys, *args, "--out", str(tmp_path / "runs"),
                              "--tfds-dir", str(tmp_path / "tfds"))
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m jaxmnist.train: error: ")
    assert not any(tmp_path.iterdir())  # nothing prepared, nothing written


def test_every_config_field_is_a_flag(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(configs.Config):
        assert "--" + field.name.replace("_", "-") in text, field.name
    assert "--no-fast-kernels" in text


def test_train_cli_rejects_unusable_directories(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_main(capsys, "--out", str(blocker))
    assert code == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(capsys, "--data-dir", str(tmp_path / "nowhere"), "--out",
                            str(tmp_path / "runs"), "--tfds-dir", str(tmp_path / "fresh"))
    assert code == 2 and "MNIST directory not found" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "fresh" / "mnist").exists()
    run = tmp_path / "runs" / "default"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(configs.seed().to_dict()))
    code, _, err = run_main(capsys, "--out", str(tmp_path / "runs"))
    assert code == 2 and "holds a run with a different config" in err, err
    assert len(err.strip().splitlines()) == 1


def test_offline_without_a_local_copy_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("JAXMNIST_DATA_DIR", raising=False)

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t0 = time.monotonic()
    code, _, err = run_main(capsys, "--out", str(tmp_path / "runs"),
                            "--tfds-dir", str(tmp_path / "tfds"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot download MNIST: storage.googleapis.com cannot be reached" in err
    assert "connect to the internet" in err and "--data-dir" in err
    assert "JAXMNIST_DATA_DIR" in err
    assert time.monotonic() - t0 < 60  # no minutes of retries
    assert not (tmp_path / "runs" / "default").exists()


def test_summary_prints_the_layer_table(capsys):
    code, out, _ = run_main(capsys, "--summary")
    assert code == 0
    total = [line for line in out.splitlines() if line.startswith("total")]
    assert "block7 v16      6x6x16" in out and "12,088" in total[0]


def test_summary_line_labels_the_best_epoch_as_chosen_on_the_eval_set():
    history = [{"epoch": 1, "val_accuracy": 0.99, "train_images_per_s": 100.0},
               {"epoch": 2, "val_accuracy": 0.98, "train_images_per_s": 300.0}]
    line = train_cli.summary_line(history, wall=12.3)
    assert line.startswith("final val accuracy 98.00% (epoch 2); best 99.00% at epoch 1 "
                           "(chosen on the val set); wall 12s; 150 train images/s on 1x cpu")
    # With test-time augmentation the line names the shifts and gives the single pass.
    history[-1]["val_accuracy_by_shifts"] = {"0": 0.9722, "4": 0.975, "8": 0.98}
    line = train_cli.summary_line(history, wall=12.3)
    assert line.startswith("final val accuracy 98.00% with 8 shifts (single pass 97.22%) "
                           "(epoch 2); best 99.00% at epoch 1")


# --- end to end, in processes of their own --------------------------------------------


def train_process(*args, tfds_dir, mnist_dir, env_extra=None, **kwargs):
    env = {**os.environ, "JAXMNIST_DATA_DIR": str(mnist_dir), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "jaxmnist.train", "--tfds-dir", str(tfds_dir), "--no-progress",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.mark.slow
def test_short_run_on_real_mnist(mnist_splits, tmp_path):
    config = configs.Config(epochs=1, max_steps=60)
    run_dir = tmp_path / "run"
    state = train.train_and_evaluate(config, run_dir, splits=mnist_splits)
    (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # 60 steps of 128 images already classify most of the 10,000 test digits (84.6 %
    # with jax 0.7's random numbers, more with later versions').
    assert record["test_accuracy"] > 0.8, record
    assert record["train_loss"] < 1.5
    assert int(state.step) == 60


@pytest.mark.slow
def test_resume_after_a_kill_matches_a_straight_run(mnist_splits, tfds_dir, mnist_dir, tmp_path):
    args = ["--recipe", "default", "--epochs", "2", "--max-steps", "12", "--out", str(tmp_path)]
    straight = train_process(*args, "--name", "straight", tfds_dir=tfds_dir, mnist_dir=mnist_dir)
    out, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err
    assert out.startswith("final test accuracy") and "(chosen on the test set)" in out

    killed = train_process(*args, "--name", "killed", tfds_dir=tfds_dir, mnist_dir=mnist_dir)
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

    resumed = train_process(*args, "--name", "killed", "--resume", tfds_dir=tfds_dir,
                            mnist_dir=mnist_dir)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert metrics_of(tmp_path / "killed") == metrics_of(tmp_path / "straight")
    _, a = rundir.load_trained(tmp_path / "straight")
    _, b = rundir.load_trained(tmp_path / "killed")
    chex.assert_trees_all_equal(a, b)  # params and BatchNorm statistics, bit for bit


@pytest.mark.slow
def test_training_never_imports_tensorflow(mnist_splits, tfds_dir, mnist_dir, tmp_path):
    # A stand-in `tensorflow` that is importable, as where TensorFlow is installed, and
    # leaves a mark if anything imports it.
    fake = tmp_path / "site" / "tensorflow"
    fake.mkdir(parents=True)
    mark = tmp_path / "tensorflow-was-imported"
    (fake / "__init__.py").write_text(f"open({str(mark)!r}, 'w').close()\n")
    script = ("import sys\nfrom jaxmnist.train import __main__ as train_cli\n"
              "code = train_cli.main(sys.argv[1:])\n"
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


def test_config_flags_are_the_inverse_of_the_parser(monkeypatch):
    # one field of each kind: a bool each way, a choice, a float, an int, a string with
    # spaces; unchanged fields give no flag
    config = dataclasses.replace(configs.tiny(), bias=False, nesterov=True, momentum=0.8,
                                 lr=0.0123, epochs=7, arch="c8 p fv12 fv12x4", tta=4)
    flags = train_cli.config_flags(config, "tiny")
    assert flags == ["--arch", "c8 p fv12 fv12x4", "--epochs", "7", "--lr", "0.0123",
                     "--momentum", "0.8", "--nesterov", "--no-bias", "--tta", "4"]
    args = train_cli.build_parser().parse_args(["--recipe", "tiny", *flags])
    assert train_cli.config_from_args(args) == config
    assert train_cli.config_flags(configs.tiny(), "tiny") == []
    # None (the backend decides) has no flag once a recipe sets the field
    monkeypatch.setitem(configs.RECIPES, "kernels-on",
                        lambda: dataclasses.replace(configs.tiny(), fast_kernels=True))
    with pytest.raises(ValueError, match="fast_kernels=None has no flag"):
        train_cli.config_flags(configs.tiny(), "kernels-on")
