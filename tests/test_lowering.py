"""The compiled steps lower for TPU and GPU from a CPU host (`jax.export`), sharded over a
mesh of 8 devices that need not exist: a CPU-only operation or option fails here before a
user's Colab TPU or GPU meets it."""

import jax
import jax.export  # a submodule jax 0.7 does not import with jax
import jax.numpy as jnp
import pytest

from jaxmnist import configs, parallel, steps
from tests.conftest import synthetic_split

PLATFORMS = ("tpu", "cuda")

# Every kind of layer the arch language has, conv biases, dropout and every augmentation:
# what any recipe's step is made of.
EVERY_LAYER = configs.Config(arch="c4 s dc8 p v8 t8 dv8", bias=True, dropout=0.1,
                             rotate_degrees=7.0, shift_pixels=2.0, scale=0.1, brightness=0.2,
                             contrast=0.2, eval_batch_size=200, steps_per_call=2,
                             schedule="onecycle", ema_decay=0.9)


def abstract(tree, sharding):
    """`tree`'s leaves as shapes and dtypes placed by `sharding` (nothing on a device)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype if hasattr(x, "dtype")
                                       else jnp.result_type(x), sharding=sharding), tree)


def test_the_train_eval_and_scanned_steps_lower_for_tpu_and_gpu(monkeypatch):
    config = EVERY_LAYER
    assert config.fast_kernels is None  # unset: the plain Flax layers off the CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert not steps.make_model(config).fast
    trainer = parallel.Trainer(config, mesh=jax.sharding.AbstractMesh((8,), ("data",)))
    state = abstract(jax.eval_shape(
        lambda: steps.create_train_state(config, jax.random.key(0), 10)), trainer.replicated)
    key = abstract(jax.random.key(1), trainer.replicated)
    n, m = config.batch_size, config.eval_batch_size
    batch = abstract({"image": jnp.zeros((n, 28, 28, 1)), "label": jnp.zeros(n, jnp.int32)},
                     trainer.sharded)
    eval_batch = abstract({"image": jnp.zeros((m, 28, 28, 1)), "label": jnp.zeros(m, jnp.int32),
                           "mask": jnp.zeros(m)}, trainer.sharded)
    split = abstract(synthetic_split(512), trainer.replicated)
    perm = abstract(jnp.zeros((4, n), jnp.int32), trainer.replicated)
    index = jax.ShapeDtypeStruct((), jnp.int32)
    functions = {
        "train_step": (trainer.train_step, (state, batch, key)),
        "eval_step": (trainer.eval_step, (state, eval_batch)),
        "train_steps": (trainer.train_steps, (state, split, perm, index, key, key,
                                              config.steps_per_call)),
        "get_batch": (trainer.get_batch, (split, perm, index, key)),
    }
    for name, (fn, args) in functions.items():
        # One lowering for both: jax.export checks every op against each platform.
        exported = jax.export.export(fn, platforms=PLATFORMS)(*args)
        assert exported.platforms == PLATFORMS and exported.nr_devices == 8, name
        if name in ("train_step", "eval_step"):
            # The batch's arguments split over the 8 devices' "data" axis (Shardy's
            # annotation, or GSPMD's where JAX still lowers with it).
            text = exported.mlir_module()
            assert ('[{"data"}' in text or "devices=[8" in text), name


def test_an_abstract_mesh_checks_the_batch_against_its_devices():
    mesh = jax.sharding.AbstractMesh((8,), ("data",))
    with pytest.raises(configs.ConfigError, match="not divisible by the 8 devices"):
        parallel.Trainer(configs.Config(batch_size=100), mesh=mesh)
