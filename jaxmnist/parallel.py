"""The train and eval steps compiled for a mesh of devices, the data sharded over it.

One 1-D mesh ("data") of all devices (of every process, in a multi-process run): each
batch is sharded over it and the state replicated; XLA's partitioner turns BatchNorm's
batch means and the gradients into all-reduces over the global batch, so N devices
compute what one device would.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmnist import configs, data, kernels, steps


class Trainer:
    """Compiled functions bound to one mesh of devices (all of them by default).

    They are compiled with `compiler_options` (default: `kernels.compiler_options`,
    which turns XLA:CPU's YNNPACK convolutions off on CPU; `{}` keeps XLA's defaults).
    `mesh` (a `jax.sharding.AbstractMesh` with one axis, "data") binds them to devices
    that need not be here: for `jax.export` to another platform, with XLA's defaults."""

    def __init__(self, config: configs.Config, devices=None, compiler_options=None,
                 mesh=None):
        if mesh is None:
            devices = devices if devices is not None else jax.devices()
            if compiler_options is None:
                compiler_options = kernels.compiler_options(devices)
            # Auto axes: XLA's partitioner propagates the batch sharding through the step
            # (BatchNorm's batch means become all-reduces over the global batch).
            mesh = jax.make_mesh((len(devices),), ("data",), devices=devices,
                                 axis_types=(jax.sharding.AxisType.Auto,))
        jit = functools.partial(jax.jit, compiler_options=compiler_options or None)
        self.mesh = mesh
        self.replicated = NamedSharding(self.mesh, P())
        self.sharded = NamedSharding(self.mesh, P("data"))
        n = self.mesh.shape["data"]
        for name in ("batch_size", "eval_batch_size"):
            if getattr(config, name) % n:
                raise configs.ConfigError(
                    name, f"{getattr(config, name)} is not divisible by the {n} devices")
        self.config = config
        self.jit = jit
        self._train_step = functools.partial(steps.train_step, **steps.loss_options(config))
        self.train_step = jit(self._train_step, donate_argnums=0,
                              out_shardings=(self.replicated, self.replicated))
        self.eval_step = jit(functools.partial(steps.eval_step, tta=config.tta),
                             out_shardings=self.replicated)
        self.permutation = jit(data.epoch_permutation, static_argnums=(1, 2),
                               out_shardings=self.replicated)
        self.get_batch = jit(self._get_batch, static_argnames=("size",),
                             out_shardings=self.sharded)
        self.train_steps = jit(self._train_steps, static_argnums=(6,), static_argnames=("size",),
                               donate_argnums=0,
                               out_shardings=(self.replicated, self.replicated))
        self.get_eval_batch = jit(self._get_eval_batch, static_argnums=(2,),
                                  out_shardings=self.sharded)

    def _get_batch(self, split, perm, i, key, size=None):
        """Batch `i` of `perm`, augmented as the config asks, at `size` x `size` if given
        (the first epochs of progressive resizing: `Config.small_epochs`)."""
        key = jax.random.fold_in(key, i)
        return data.get_batch(split, perm[i], key, **data.augmentation_options(self.config),
                              size=size)

    def _train_steps(self, state, split, perm, start, key, dropout_rng, n, size=None):
        """Batches `start` … `start + n - 1` of `perm`, cut and trained on in one call
        (a `lax.scan`): one dispatch for `n` steps, the same steps as `n` calls."""
        def body(state, i):
            batch = self._get_batch(split, perm, i, key, size)
            batch = jax.lax.with_sharding_constraint(batch, self.sharded)
            return self._train_step(state, batch, dropout_rng)

        return jax.lax.scan(body, state, start + jnp.arange(n))

    @staticmethod
    def _get_eval_batch(split, start, size):
        index = start + jnp.arange(size)
        mask = index < len(split)
        batch = data.get_batch(split, jnp.where(mask, index, 0))
        return {**batch, "mask": mask.astype(jnp.float32)}

    def logits(self, model, variables, split: data.Split) -> jax.Array:
        """`model`'s eval-mode logits with `variables` for every image of `split`, (N, 10),
        replicated on the mesh (a teacher's, computed once: `Config.distill_once`)."""
        size = self.config.eval_batch_size
        apply = self.jit(lambda v, b: model.apply(v, b["image"], train=False),
                         out_shardings=self.replicated)
        parts = [apply(variables, self.get_eval_batch(split, start, size))
                 for start in range(0, len(split), size)]
        return self.put(jnp.concatenate(parts)[:len(split)])

    def put(self, tree):
        """`tree` replicated on every device of the mesh."""
        if jax.process_count() > 1:
            # Across processes, device_put takes host values (a jax array on one of this
            # process's devices is not a value every process agrees on).
            tree = jax.device_get(tree)
        return jax.device_put(tree, self.replicated)

    def evaluate(self, state, split: data.Split) -> dict:
        size = self.config.eval_batch_size
        sums = [self.eval_step(state, self.get_eval_batch(split, start, size))
                for start in range(0, len(split), size)]
        total = jax.device_get(jax.tree.map(lambda *x: sum(x), *sums))
        out = {"loss": float(total["loss"]) / len(split),
               "accuracy": float(total["correct"]) / len(split)}
        if "correct_by_shifts" in total:  # test-time augmentation: 0, 4 (and 8) shifts
            out["accuracy_by_shifts"] = {str(k): float(v) / len(split)
                                         for k, v in total["correct_by_shifts"].items()}
        return out
