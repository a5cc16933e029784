"""Distillation (--teacher) and the norm without parameters (--norm layer)."""

import dataclasses
import functools
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmnist import configs, data, parallel, rundir, steps, train
from jaxmnist.models import Net, count_params
from jaxmnist.train import __main__ as train_cli
from tests.conftest import run_in_process

STUDENT = configs.Config(arch="c4 p v8", dropout=0.0, epochs=1, eval_batch_size=500)
TEACHER = configs.Config(arch="c8 p v16 v16", epochs=1, eval_batch_size=500)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A run directory to distil from, as `load_teacher` reads it: `TEACHER`'s config and
    its state at step 0 as the checkpoint of its one epoch (untrained: the loss's
    arithmetic needs a teacher, not a good one)."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    run_dir.mkdir()
    rundir.write_config(run_dir, TEACHER)
    manager = rundir.checkpoint_manager(run_dir)
    rundir.save_checkpoint(manager, TEACHER.epochs,
                           steps.create_train_state(TEACHER, jax.random.key(0), 8))
    manager.close()
    return run_dir


@pytest.fixture(scope="module")
def trained_teacher_run(synthetic_splits, tmp_path_factory):
    """A trained run to distil from: one epoch on the synthetic splits."""
    run_dir = tmp_path_factory.mktemp("trained-teacher") / "run"
    train.train_and_evaluate(TEACHER, run_dir, splits=synthetic_splits)
    return run_dir


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_the_distillation_loss_of_two_rows_by_hand():
    student = np.array([[2.0, 0.5, -1.0] + [0.0] * 7, [0.0] * 9 + [3.0]], np.float32)
    teacher = np.array([[4.0, 1.0, 0.0] + [-2.0] * 7, [1.0] * 5 + [0.0] * 5], np.float32)
    t = 2.0
    p, q = softmax(teacher / t), softmax(student / t)
    # T² · mean over rows of Σ p (log p - log q)
    by_hand = t**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    got = steps.distillation_loss(jnp.asarray(student), jnp.asarray(teacher), t)
    np.testing.assert_allclose(float(got), by_hand, rtol=1e-5)
    assert float(steps.distillation_loss(jnp.asarray(teacher), jnp.asarray(teacher), t)) == \
        pytest.approx(0.0, abs=1e-6)


def _states(teacher_run, **fields):
    """A student's state with the teacher loaded, for `STUDENT` with `fields`."""
    config = dataclasses.replace(STUDENT, teacher=str(teacher_run), **fields)
    teacher = rundir.load_teacher(config)
    return config, teacher, steps.create_train_state(config, jax.random.key(0), 10, teacher)


def test_the_step_loss_is_the_weighted_sum_for_two_rows(teacher_run):
    config, (teacher_model, teacher_variables), state = _states(
        teacher_run, distill_weight=0.3, distill_temperature=2.0)
    batch = {"image": jax.random.normal(jax.random.key(3), (2, 28, 28, 1)),
             "label": jnp.array([3, 7])}
    logits = np.asarray(jax.jit(functools.partial(state.apply_fn, train=True,
                                                  mutable=["batch_stats"]))(
        state.variables(), batch["image"])[0])
    teacher_logits = np.asarray(jax.jit(teacher_model.apply)(teacher_variables, batch["image"]))
    log_q = np.log(softmax(logits))
    ce = -np.mean(log_q[[0, 1], [3, 7]])
    p, q2 = softmax(teacher_logits / 2.0), softmax(logits / 2.0)
    kd = 4.0 * np.mean(np.sum(p * (np.log(p) - np.log(q2)), axis=1))
    step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.key(1),
                                                 **steps.loss_options(config)))
    _, metrics = step(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), 0.7 * ce + 0.3 * kd, rtol=1e-5)


def test_weight_zero_is_the_step_without_a_teacher(teacher_run):
    config, _, with_teacher = _states(teacher_run, distill_weight=0.0)
    plain = steps.create_train_state(STUDENT, jax.random.key(0), 10)
    batch = {"image": jax.random.normal(jax.random.key(3), (16, 28, 28, 1)),
             "label": jnp.arange(16) % 10}
    a, ma = jax.jit(lambda s: steps.train_step(s, batch, jax.random.key(1),
                                               **steps.loss_options(config)))(with_teacher)
    b, mb = jax.jit(lambda s: steps.train_step(s, batch, jax.random.key(1)))(plain)
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(ma, mb)
    assert steps.loss_options(STUDENT)["distill_weight"] == 0.0  # no teacher: no distillation


@pytest.mark.slow  # three short runs; the quick suite checks the distilled step's loss
def test_a_distilled_run_resumes_and_keeps_no_teacher_in_its_checkpoint(
        trained_teacher_run, synthetic_splits, tmp_path):
    config = dataclasses.replace(STUDENT, teacher=str(trained_teacher_run), epochs=2,
                                 distill_weight=1.0, lr=0.1)
    straight = train.train_and_evaluate(config, tmp_path / "straight", splits=synthetic_splits)
    one = train.train_and_evaluate(dataclasses.replace(config, epochs=1), tmp_path / "one",
                                   splits=synthetic_splits)
    # Distilled with w = 1: the loss is the distillation term alone, and it falls.
    first, last = rundir.read_metrics(tmp_path / "straight")
    assert last["train_loss"] < 0.8 * first["train_loss"], (first, last)
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["teacher"] == \
        str(trained_teacher_run)
    # The checkpoint holds the student alone: it loads without its teacher.
    model, variables = rundir.load_trained(tmp_path / "one")
    assert set(variables) == {"params", "batch_stats"} and model.arch == "c4 p v8"
    # Resume: epoch 2 on top of a copy of epoch 1 gives the straight run's weights.
    (tmp_path / "one" / "config.json").write_text(json.dumps(config.to_dict()))
    resumed = train.train_and_evaluate(config, tmp_path / "one", splits=synthetic_splits,
                                       resume=True)
    chex.assert_trees_all_close(resumed.params, straight.params, atol=1e-6)
    assert int(one.step) == 8


@pytest.mark.slow  # ends in a two-epoch run; the quick suite keeps the distilled step's loss
def test_logits_computed_once_are_the_teachers_of_the_images_as_they_are(
        trained_teacher_run, synthetic_splits, tmp_path):
    config = dataclasses.replace(STUDENT, teacher=str(trained_teacher_run), distill_once=True,
                                 rotate_degrees=10.0)
    model, variables = rundir.load_teacher(config)
    trainer = parallel.Trainer(config)
    split = trainer.put(synthetic_splits[0])
    logits = trainer.logits(model, variables, split)
    chex.assert_shape(logits, (1024, 10))
    plain = data.get_batch(split, jnp.arange(1000, 1024))  # the last, partial eval batch
    np.testing.assert_allclose(logits[1000:], model.apply(variables, plain["image"]),
                               atol=1e-5)
    # An augmented batch carries the logits of its images as they are.
    split = dataclasses.replace(split, teacher_logits=logits)
    perm = trainer.permutation(jax.random.key(3), len(split), config.batch_size)
    batch = trainer.get_batch(split, perm, 2, jax.random.key(4))
    np.testing.assert_array_equal(batch["teacher_logits"], logits[perm[2]])
    # A run: its state holds no teacher, and it learns from those logits alone (w = 1).
    run = dataclasses.replace(config, distill_weight=1.0, lr=0.1, epochs=2)
    state = train.train_and_evaluate(run, tmp_path / "run", splits=synthetic_splits)
    assert state.teacher is None
    first, last = rundir.read_metrics(tmp_path / "run")
    assert last["train_loss"] < 0.8 * first["train_loss"], (first, last)


def test_a_teacher_that_cannot_be_loaded_is_a_config_error(tmp_path, teacher_run, monkeypatch):
    with pytest.raises(configs.ConfigError, match="cannot be loaded .*no config.json") as e:
        rundir.load_teacher(dataclasses.replace(STUDENT, teacher=str(tmp_path)))
    assert e.value.field == "teacher"

    class OtherImages(nn.Module):  # a net for 32x32 images
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(10)(x.reshape(x.shape[0], 32 * 32))

    other = OtherImages()
    variables = other.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    monkeypatch.setattr(rundir, "load_trained", lambda run_dir: (other, variables))
    with pytest.raises(configs.ConfigError, match="does not take 28x28x1 images to 10 logits"):
        rundir.load_teacher(dataclasses.replace(STUDENT, teacher=str(teacher_run)))


def test_distillation_settings_need_a_teacher():
    for field, value in (("distill_weight", 0.9), ("distill_temperature", 2.0),
                         ("distill_once", True)):
        with pytest.raises(configs.ConfigError, match="needs a teacher") as e:
            configs.Config(**{field: value})
        assert e.value.field == field
    with pytest.raises(configs.ConfigError, match=r"must be in \[0, 1\]"):
        configs.Config(teacher="x", distill_weight=1.5)
    with pytest.raises(configs.ConfigError, match="must be a finite number > 0"):
        configs.Config(teacher="x", distill_temperature=0.0)


def test_the_cli_refuses_a_missing_teacher_in_one_line_before_any_data(capsys, tmp_path):
    code, out, err = run_in_process(
        train_cli.main, capsys, "--no-progress", "--teacher", str(tmp_path / "nowhere"),
        "--data-dir", str(tmp_path / "no-mnist"), "--tfds-dir", str(tmp_path / "tfds"),
        "--out", str(tmp_path / "runs"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m jaxmnist.train: error: --teacher ")
    assert "no config.json" in err and "MNIST" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "tfds").exists()
    code, _, err = run_in_process(train_cli.main, capsys, "--distill-weight", "0.9",
                                  "--out", str(tmp_path / "runs"))
    assert code == 2 and "--distill-weight needs a teacher" in err


def test_summary_names_the_teacher(capsys, teacher_run):
    code, out, _ = run_in_process(train_cli.main, capsys, "--summary", "--arch", "c4 p v8",
                                  "--teacher", str(teacher_run), "--distill-weight", "0.7")
    assert code == 0
    assert out.splitlines()[-1] == (f"teacher {teacher_run}: 'c8 p v16 v16', 3,768 params; "
                                    "distill weight 0.7, temperature 4")


# --- the norm without parameters -----------------------------------------------------


def test_layer_norm_has_no_params_and_standardises_each_image():
    batch_norm = Net(arch="c8 p dc8x2", dropout_rate=0.0)
    layer_norm = Net(arch="c8 p dc8x2", dropout_rate=0.0, norm="layer")
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    vb = jax.eval_shape(batch_norm.init, jax.random.key(1), x)  # shapes are enough here
    vl = jax.jit(layer_norm.init)(jax.random.key(1), x)
    # BatchNorm's 2 params a channel, three times (block1 once, the shared block twice).
    assert count_params(vb["params"]) - count_params(vl["params"]) == 2 * 8 * 3
    assert "batch_stats" not in vl
    _, inter = jax.jit(functools.partial(layer_norm.apply, train=True,
                                         capture_intermediates=True,
                                         mutable=["intermediates"]))(vl, x)
    out = np.asarray(inter["intermediates"]["block1"]["ln"]["__call__"][0])
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    # The same in training and eval: it keeps no statistics.
    apply = jax.jit(layer_norm.apply, static_argnames="train")
    np.testing.assert_allclose(apply(vl, x, train=True), apply(vl, x, train=False), rtol=1e-6)


@pytest.mark.slow  # a run end to end; the norm's maths is tested above, in the quick suite
def test_a_layer_norm_run_trains_and_loads(synthetic_splits, tmp_path):
    config = dataclasses.replace(TEACHER, norm="layer", epochs=2, lr=0.03)
    state = train.train_and_evaluate(config, tmp_path / "run", splits=synthetic_splits)
    assert rundir.read_metrics(tmp_path / "run")[-1]["test_accuracy"] > 0.7  # chance: 0.1
    _, variables = rundir.load_trained(tmp_path / "run")
    chex.assert_trees_all_close(variables["params"], state.params)
    assert variables["batch_stats"] == {}
