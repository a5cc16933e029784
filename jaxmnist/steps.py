"""The train state and the pure functions of one step: what `jax.jit` compiles.

`create_train_state`, `train_step` and `eval_step` in the shape of Flax's
examples/mnist, with the model and its schedule. This module imports neither the loop
(`jaxmnist.train`), the mesh (`jaxmnist.parallel`), the run directory
(`jaxmnist.rundir`) nor a command line: each of those imports it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from jaxmnist import configs, data
from jaxmnist.models import Net, count_params, whitening_kernel, whitening_layer


class TrainState(train_state.TrainState):
    batch_stats: Any
    # With `ema_decay` > 0: {"params", "batch_stats"} averaged over the steps (an
    # exponential moving average), which is what is evaluated and kept; else None.
    ema: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)
    # With a teacher (distillation): its eval-mode variables and apply function. Not
    # trained, not checkpointed: a resumed run loads the teacher again.
    teacher: Any = None
    teacher_apply_fn: Callable | None = struct.field(pytree_node=False, default=None)

    def variables(self) -> dict:
        """The newest weights and BatchNorm statistics, as `apply_fn` takes them."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    def apply_gradients(self, *, grads, **kwargs) -> TrainState:
        """The SGD step, then the average moved towards the new weights and statistics."""
        state = super().apply_gradients(grads=grads, **kwargs)
        if state.ema is None:
            return state
        # The decay ramps up, (1 + t) / (10 + t) after step t while that is smaller (timm's
        # ModelEmaV2 warm-up), so the early average is not mostly of the initial weights.
        step = jnp.asarray(state.step, jnp.float32)
        decay = jnp.minimum(state.ema_decay, (1 + step) / (10 + step))
        return state.replace(
            ema=optax.incremental_update(state.variables(), state.ema, 1 - decay))


def eval_variables(state: TrainState) -> dict:
    """The variables to evaluate and serve: the average where there is one."""
    return state.variables() if state.ema is None else state.ema


def uses_fast_kernels(config: configs.Config) -> bool:
    """`config.fast_kernels`, or where unset: on the CPU backend only (the kernels were
    made for XLA:CPU and are measured faster only there)."""
    if config.fast_kernels is None:
        return jax.default_backend() == "cpu"
    return config.fast_kernels


def make_model(config: configs.Config) -> Net:
    return Net(dropout_rate=config.dropout, fast=uses_fast_kernels(config), arch=config.arch,
               bias=config.bias, dropout_at=config.dropout_at,
               bn_before_relu=config.bn_before_relu, norm=config.norm,
               activation=config.activation, head=config.head,
               head_hidden=config.head_hidden, bn_scale=config.bn_scale)


def variable_shapes(config: configs.Config) -> dict:
    """The variables of `config`'s net as shapes (`jax.eval_shape`: nothing is compiled)."""
    return _shapes(make_model(config))


def _shapes(model: Net) -> dict:
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))


def param_count(config: configs.Config) -> int:
    """The parameters of `config`'s net, counted as PyTorch's summary counts them
    (weights, biases, BatchNorm's scale and offset), from shapes alone; once per net
    (dropout and the fast kernels change no parameter)."""
    return _net_param_count(make_model(config).clone(dropout_rate=0.0, fast=True))


@functools.cache
def _net_param_count(model: Net) -> int:
    return count_params(_shapes(model)["params"])


# An init runs once: on a CPU it is compiled without LLVM's optimisations, which take
# most of its compile (2-5 s against 0.5-0.7 s for the recipes' nets on a Zen 4:
# experiments/init_compile.py). The weights are the same bits; a uniform draw (conv
# biases) may round once differently, for want of a fused multiply-add
# (tests/test_models.py).
INIT_CPU_OPTIONS = {"xla_backend_optimization_level": 0}


def init_variables(model: Net, rng: jax.Array, images: jax.Array) -> dict:
    """`model.init(rng, images, train=False)`, compiled whole (op by op, each of its many
    small ops would be compiled on its own), with `INIT_CPU_OPTIONS` on a CPU."""
    options = INIT_CPU_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(functools.partial(model.init, train=False), compiler_options=options)(
        rng, images)


def make_schedule(config: configs.Config, steps_per_epoch: int) -> optax.Schedule:
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    # "onecycle", PyTorch OneCycleLR's shape: cosine up from lr/25, down to lr/(25*1e4).
    total = config.epochs * steps_per_epoch
    return optax.cosine_onecycle_schedule(
        transition_steps=total,
        peak_value=config.lr,
        # At least one warm-up step: older optax (0.2.4) divides by a warm-up of zero
        # steps, giving NaN, when a very short run rounds it down to nothing.
        pct_start=max(config.warmup_fraction, 1.0 / total),
    )


# The training images a whitening layer's kernel is computed from: airbench's 5,000.
WHITENING_IMAGES = 5_000


def whitening_of(config: configs.Config, split: data.Split) -> jax.Array | None:
    """The frozen kernel of `config`'s whitening layer (`wN`), from the first
    `WHITENING_IMAGES` images of `split` standardised as the net sees them
    (`models.whitening_kernel`); None for a net without one."""
    layer = whitening_layer(config.arch)
    if layer is None:
        return None
    images = data.standardize(split.images[:WHITENING_IMAGES].astype(jnp.float32) / 255.0)
    return whitening_kernel(images, layer[1])


def create_train_state(config: configs.Config, rng: jax.Array, steps_per_epoch: int,
                       teacher: tuple[Net, dict] | None = None,
                       whitening: jax.Array | None = None) -> TrainState:
    """The state of step 0 of `config`'s run; `teacher` (model, variables), the trained
    net whose logits `train_step` distils (`rundir.load_teacher`), if any. A net with a
    whitening layer (`wN`) takes `whitening` as its frozen kernel (`whitening_of` the
    training split); without it the kernel keeps its random init, which is only for
    states whose params are then restored, or timed."""
    model = make_model(config)
    variables = init_variables(model, rng, jnp.zeros((1, 28, 28, 1), jnp.float32))
    # A net without BatchNorm (norm="layer") has no statistics: an empty collection.
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    layer = whitening_layer(config.arch)
    if whitening is not None:
        if layer is None:
            raise ValueError(f"a whitening kernel is given, but {config.arch!r} has no "
                             "whitening layer (wN)")
        params = {**variables["params"]}
        params[layer[0]] = {**params[layer[0]], "kernel": whitening}
        variables["params"] = params
    schedule = make_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        tx = optax.adam(schedule, b1=config.momentum, b2=config.beta2)
    else:
        tx = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.weight_decay:
        # Decay before momentum, as PyTorch's SGD(weight_decay=...) (and Adam) does.
        # Without it the optimizer state is plain SGD's, as in every checkpoint written
        # before it.
        # A whitening layer's frozen kernel is not decayed either (a mask only then: the
        # state of a masked decay is not the plain one's).
        mask = None
        if layer:
            mask = jax.tree.map(lambda _: True, variables["params"])
            mask[layer[0]] = {**mask[layer[0]], "kernel": False}
        tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=mask), tx)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables["batch_stats"], ema_decay=config.ema_decay,
        # A copy: the state is donated to the step, and no buffer may appear twice in it.
        ema=jax.tree.map(jnp.copy, dict(variables)) if config.ema_decay else None,
        # A copy too: the state is donated, and the caller may use its teacher again.
        teacher=None if teacher is None else jax.tree.map(jnp.copy, teacher[1]),
        teacher_apply_fn=None if teacher is None else teacher[0].apply,
    )


def loss_options(config: configs.Config) -> dict:
    """`train_step`'s loss arguments for `config`: label smoothing, and distillation
    where it has a teacher."""
    return {"label_smoothing": config.label_smoothing,
            "distill_weight": config.distill_weight if config.teacher else 0.0,
            "distill_temperature": config.distill_temperature}


def distillation_loss(logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), the mean over the rows (Hinton,
    Vinyals and Dean 2015: T² keeps its gradients' scale as T changes)."""
    kl = optax.losses.kl_divergence_with_log_targets(
        jax.nn.log_softmax(logits / temperature), jax.nn.log_softmax(teacher_logits / temperature))
    return temperature**2 * kl.mean()


def train_step(state: TrainState, batch: dict, rng: jax.Array, label_smoothing: float = 0.0,
               distill_weight: float = 0.0, distill_temperature: float = 1.0
               ) -> tuple[TrainState, dict]:
    """One optimizer step on `batch`; dropout masks come from `rng` folded with the step.
    The loss is cross-entropy, against labels smoothed by `label_smoothing` if > 0; with
    `distill_weight` w > 0, (1 - w) times that plus w times `distillation_loss` against
    the batch's "teacher_logits" where it has them (computed once per image), else the
    state's teacher's eval-mode logits on the same (augmented) images."""
    dropout_rng = jax.random.fold_in(rng, state.step)
    if distill_weight:
        if "teacher_logits" in batch:
            teacher_logits = batch["teacher_logits"]
        elif state.teacher is None:
            raise ValueError("distill_weight > 0 needs teacher logits in the batch or a "
                             "state made with a teacher")
        else:
            teacher_logits = jax.lax.stop_gradient(
                state.teacher_apply_fn(state.teacher, batch["image"], train=False))

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            rngs={"dropout": dropout_rng}, mutable=["batch_stats"],
        )
        if label_smoothing:
            targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], 10), label_smoothing)
            loss = optax.softmax_cross_entropy(logits, targets).mean()
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        if distill_weight:
            loss = ((1 - distill_weight) * loss + distill_weight
                    * distillation_loss(logits, teacher_logits, distill_temperature))
        return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state, {"loss": loss, "accuracy": accuracy}


# Test-time augmentation (`Config.tta`): the image itself, then its one-pixel shifts, as
# (rows down, columns right): the four neighbours, then the four diagonals.
SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def shifted(images: jax.Array, down: int, right: int) -> jax.Array:
    """`images` (N, H, W, C), normalised, moved `down` rows and `right` columns (each
    -1, 0 or 1), the background (a 0 pixel, normalised) filling in what comes in."""
    _, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)),
                     constant_values=data.standardize(0.0))
    return padded[:, 1 - down:1 - down + h, 1 - right:1 - right + w, :]


def eval_step(state: TrainState, batch: dict, tta: int = 0) -> dict:
    """Summed loss and correct count over the rows of `batch` where `mask` is set, of
    `eval_variables(state)`.

    With `tta` (4 or 8) the prediction is the mean of the log-softmax over the image and
    its first `tta` shifts (`SHIFTS`), and the loss is the cross-entropy of that mean;
    `correct_by_shifts` then also counts the single pass (0) and, for 8, the 4 shifts."""
    variables = eval_variables(state)
    mask = batch["mask"]
    log_p = [jax.nn.log_softmax(state.apply_fn(variables, shifted(batch["image"], *shift),
                                               train=False))
             for shift in SHIFTS[:1 + tta]]

    means = {shifts: sum(log_p[:1 + shifts]) / (1 + shifts)
             for shifts in (0, 4, 8)[:1 + tta // 4]}
    correct_by_shifts = {shifts: jnp.sum((jnp.argmax(mean, -1) == batch["label"]) * mask)
                         for shifts, mean in means.items()}
    loss = optax.softmax_cross_entropy_with_integer_labels(means[tta], batch["label"])
    out = {"loss": jnp.sum(loss * mask), "correct": correct_by_shifts[tta]}
    if tta:
        out["correct_by_shifts"] = correct_by_shifts
    return out
