"""Training recipes as plain Python. Every field is also a `jaxmnist.train` flag."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

from jaxmnist.models import SEED_ARCH, ArchError, no_head_refusal, parse_arch

MNIST_TRAIN_IMAGES = 60_000


class ConfigError(ValueError):
    """A config field with a value it cannot have; `field` names it."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field} {reason}")


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run's settings; checked when made (a ConfigError names the field)."""

    arch: str = SEED_ARCH  # the net, as a layer string (jaxmnist.models)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.04  # the peak learning rate for the one-cycle schedule
    # SGD with momentum, or Adam (its first-moment decay beta1 is `momentum`, its second
    # `beta2`; PyTorch's Adam(betas=(momentum, beta2)), eps 1e-8)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    beta2: float = 0.999
    nesterov: bool = False  # Nesterov's momentum (PyTorch SGD's nesterov=True)
    schedule: Literal["constant", "onecycle"] = "constant"
    warmup_fraction: float = 0.3  # one-cycle: share of the steps spent rising to `lr`
    dropout: float = 0.069
    dropout_at: Literal["blocks", "pools"] = "blocks"  # after every block, or each pool
    bias: bool = False  # every conv with a bias (PyTorch's Conv2d default)
    bn_before_relu: bool = False  # blocks conv -> BN -> ReLU instead of conv -> ReLU -> BN
    # the blocks' normalization: BatchNorm (2 params a channel), or "layer": each image's
    # activations standardised over height, width and channels, no params (PyTorch's
    # GroupNorm(1, C, affine=False)); "none": no norm at all
    norm: Literal["batch", "layer", "none"] = "batch"
    # False: every BatchNorm's scale held at 1, only its offset learned (1 param a channel;
    # airbench freezes it)
    bn_scale: bool = True
    # every block's nonlinearity: PyTorch's LeakyReLU (slope 0.01), PReLU (one learned
    # slope a block, from 0.25)
    activation: Literal["relu", "sigmoid", "leaky_relu", "prelu"] = "relu"
    # the head: global average pool then a 1x1 conv to 10, or flatten then a dense layer;
    # "none": no head layer, the global average pool of the last layer's 10 channels
    head: Literal["gap", "dense", "none"] = "gap"
    # with head "gap": a hidden layer of this many units between the average pool and the
    # logits (a 1x1 conv with the blocks' activation, norm and dropout; GAP -> dense 16 ->
    # 10 with 16); 0: none
    head_hidden: int = 0
    label_smoothing: float = 0.0
    # distillation: a trained run's directory whose eval-mode logits on each training batch
    # are soft targets; the loss is (1 - w)·CE(labels) + w·T²·KL(softmax(teacher/T) ‖
    # softmax(student/T)) with w `distill_weight` and T `distill_temperature`; "": none
    teacher: str = ""
    distill_weight: float = 0.5
    distill_temperature: float = 4.0
    # the teacher's logits computed once per training image before training, of the
    # images as they are (not augmented), instead of on every augmented batch
    distill_once: bool = False
    # L2 weight decay: `weight_decay * w` added to every parameter's gradient before the
    # momentum (PyTorch SGD's weight_decay); 0: none
    weight_decay: float = 0.0
    # an exponential moving average of the weights (and BatchNorm statistics), updated
    # every step with this decay, is what is evaluated and kept; 0: none
    ema_decay: float = 0.0
    rotate_degrees: float = 0.0  # augmentation: random rotation in ±degrees
    shift_pixels: float = 0.0  # augmentation: random shift in ±pixels
    scale: float = 0.0  # augmentation: random zoom by a factor in [1 - scale, 1 + scale]
    brightness: float = 0.0  # augmentation: + U(±brightness) on [0, 1] pixels, clipped
    contrast: float = 0.0  # augmentation: × (1 + U(±contrast)), clipped
    # augmentation: an elastic distortion (Simard et al. 2003): every pixel moved by
    # `elastic_alpha` times a uniform(±1) field smoothed by a Gaussian of `elastic_sigma`
    # pixels (jaxmnist.data.elastic_field); 0: none
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    # progressive resizing: the first `small_epochs` epochs train on the images resized to
    # `small_size` x `small_size` (bilinear; the net is fully convolutional), the rest at
    # 28x28; evaluation is always at 28x28. 0: every epoch at 28x28
    small_epochs: int = 0
    small_size: int = 20
    # augmentation: the chance an image gets the geometric transform, and independently
    # the brightness/contrast one (Albumentations' p)
    augment_probability: float = 1.0
    validation: int = 0  # hold out the last N training images and evaluate on them
    seed: int = 0
    # jaxmnist.kernels (same maths as plain Flax layers, measured faster on XLA:CPU);
    # None: on where the default backend is the CPU, plain Flax layers elsewhere.
    fast_kernels: bool | None = None
    # test-time augmentation: each evaluation averages the log-softmax over the image and
    # its 4 (up, down, left, right) or 8 (and diagonal) one-pixel shifts, the background
    # filling in (jaxmnist.steps.eval_step); its passes are part of each epoch's seconds.
    # 0: one pass
    tta: Literal[0, 4, 8] = 0
    eval_batch_size: int = 1000
    max_steps: int = 0  # 0: every batch; N > 0 cuts each epoch short (smoke tests)
    steps_per_call: int = 1  # steps per jitted call, in a lax.scan when > 1

    def __post_init__(self):
        try:
            parse_arch(self.arch)
        except ArchError as e:
            raise ConfigError("arch", f"{self.arch!r}: {e}") from None
        object.__setattr__(self, "arch", " ".join(self.arch.split()))
        for name in ("epochs", "batch_size", "eval_batch_size", "steps_per_call"):
            _check(name, getattr(self, name), lambda v: v > 0, "must be > 0")
        _check("max_steps", self.max_steps, lambda v: v >= 0,
               "must be >= 0")
        _check("head_hidden", self.head_hidden, lambda v: v >= 0, "must be >= 0")
        _check("small_epochs", self.small_epochs, lambda v: 0 <= v < self.epochs,
               f"must be in [0, epochs) (the last epoch trains at 28x28; epochs is "
               f"{self.epochs})")
        _check("small_size", self.small_size, lambda v: 1 <= v < 28, "must be in [1, 28)")
        if self.small_epochs:
            try:
                parse_arch(self.arch, self.small_size)
            except ArchError as e:
                raise ConfigError("small_size", f"{self.small_size}: at "
                                  f"{self.small_size}x{self.small_size}, {e}") from None
        if self.head_hidden and self.head != "gap":
            raise ConfigError("head_hidden", f"needs head 'gap', got {self.head!r}")
        if self.bn_scale is False and self.norm != "batch":
            raise ConfigError("bn_scale", f"false needs norm 'batch', got {self.norm!r}")
        _check("lr", self.lr, lambda v: math.isfinite(v) and v > 0,
               "must be a finite number > 0")
        for name in ("momentum", "beta2", "dropout", "warmup_fraction", "label_smoothing",
                     "scale", "brightness", "contrast", "ema_decay", "weight_decay"):
            _check(name, getattr(self, name), lambda v: 0 <= v < 1, "must be in [0, 1)")
        for name in ("rotate_degrees", "shift_pixels", "elastic_alpha"):
            _check(name, getattr(self, name), lambda v: math.isfinite(v) and v >= 0,
                   "must be a finite number >= 0")
        _check("elastic_sigma", self.elastic_sigma, lambda v: math.isfinite(v) and v > 0,
               "must be a finite number > 0")
        _check("augment_probability", self.augment_probability, lambda v: 0 < v <= 1,
               "must be in (0, 1]")
        _check("validation", self.validation, lambda v: 0 <= v < MNIST_TRAIN_IMAGES,
               f"must be in [0, {MNIST_TRAIN_IMAGES})")
        for name, kind in field_types().items():
            if typing.get_origin(kind) is typing.Literal:  # one of its values
                choices = typing.get_args(kind)
                _check(name, getattr(self, name), lambda v, choices=choices: v in choices,
                       f"must be {' or '.join(map(repr, choices))}")
            elif kind is bool and not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be true or false, got {getattr(self, name)!r}")
        _check("distill_weight", self.distill_weight, lambda v: 0 <= v <= 1,
               "must be in [0, 1]")
        _check("distill_temperature", self.distill_temperature,
               lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
        if not self.teacher:
            for name in ("distill_weight", "distill_temperature", "distill_once"):
                if getattr(self, name) != self.__dataclass_fields__[name].default:
                    raise ConfigError(name, "needs a teacher (a trained run's directory), "
                                      "got none")
        if self.head == "none" and (reason := no_head_refusal(self.arch)):
            raise ConfigError("head", reason)
        if self.nesterov and not self.momentum:
            raise ConfigError("nesterov", "needs a momentum > 0, got momentum 0")
        if self.optimizer != "adam":
            if self.beta2 != self.__dataclass_fields__["beta2"].default:
                raise ConfigError("beta2", f"is Adam's: needs optimizer 'adam', got "
                                  f"{self.optimizer!r}")
        elif self.nesterov:
            raise ConfigError("nesterov", "is SGD's: needs optimizer 'sgd', got 'adam'")
        train_images = MNIST_TRAIN_IMAGES - self.validation
        if self.batch_size > train_images:
            raise ConfigError("batch_size", f"{self.batch_size} is larger than the "
                              f"{train_images} training images")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """The config a run's config.json describes; fields it predates keep their
        defaults (a run written before `arch` existed is the seed net)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        return cls(**values)


def _check(name: str, value, ok, requirement: str) -> None:
    if isinstance(value, bool) or not ok(value):
        raise ConfigError(name, f"{requirement}, got {value!r}")


def field_types() -> dict[str, typing.Any]:
    """Each Config field's type (the annotations resolved)."""
    return typing.get_type_hints(Config)


def seed() -> Config:
    """The seed recipe: constant lr 0.04, momentum 0.9, no augmentation."""
    return Config()


def default() -> Config:
    """What `make train` runs: the seed net and budget (12,088 params, 20 epochs, batch
    128, SGD momentum 0.9) with a one-cycle schedule peaking at lr 0.1 and a small
    random rotation (±7°) and shift (±1 px).

    Chosen on a validation split (the last 5,000 training images; trained on the other
    55,000) against the same schedule without augmentation:
    experiments/results/selection/default-1/, docs/selection-small.md."""
    return Config(lr=0.1, schedule="onecycle", rotate_degrees=7.0, shift_pixels=1.0)


FAST_ARCH = "c8 s c16 c16 v16 v16 v16 v16"


def fast() -> Config:
    """The shortest budget found that ends near 99.4 % on the validation split: 4 epochs
    of `FAST_ARCH` with conv biases (16,682 params: one 8-channel block at 28x28, a
    space-to-depth to 14x14x32, then the seed net's 16-channel blocks), one-cycle
    peaking at lr 0.4, no dropout, no augmentation (`make train-fast`); its time against
    one seed-net epoch is measured in docs/performance.md.

    Chosen on the same validation split as `default`, against the seed net's 4 epochs
    (the recipe before it) and other nets that pool or space-to-depth early: rounds
    experiments/results/selection/fast-1/ to fast-12/, docs/selection-fast.md; kept
    through Adam, test-time augmentation, 3 epochs and label smoothing (fast-13/,
    fast-14/), and level with a strided conv and progressive resizing, which are not
    timed yet (fast-15/, fast-16/)."""
    return Config(arch=FAST_ARCH, bias=True, dropout=0.0, epochs=4, lr=0.4,
                  schedule="onecycle")


TINY_ARCH = "c8 p v8 v10 v10 v12"


def tiny() -> Config:
    """A net under the published 3,762 parameters: `TINY_ARCH` with conv biases, 3,622
    parameters (one 8-channel block at 28x28, a pool, four valid blocks of 8-12
    channels), no dropout, `default`'s one-cycle schedule stretched to 60 epochs (peak lr
    0.1) and augmentation as the published 3,762-parameter net had it: rotation ±7°,
    shift ±2 px, zoom ±9 %, brightness and contrast ±0.2, and a leaky ReLU (slope 0.01)
    in every ReLU's place (`make train-tiny`).

    Chosen on the validation split among recipes for nets of 3,622-3,720 params
    (experiments/results/selection/tiny-2/) and kept through the later rounds (tiny-3/ to
    tiny-8/: the published net's own recipe, an average of the weights, weight decay,
    separable blocks; tiny-9/, tiny-10/: 40 epochs, two teachers, a shared-weight
    block); then test-time augmentation, a PReLU, and the leaky ReLU against a ReLU over
    three seeds each (tiny-11/, tiny-12/; the ReLU version is superseded); kept against
    factorised convs and no head layer (tiny-13/, tiny-14/); 60 epochs beat 20 (tiny-15/;
    the 20-epoch version is superseded); kept against an elastic distortion (tiny-16/:
    the same mean) and BatchNorm without its scale (tiny-17/); docs/selection-small.md,
    docs/selection-tiny.md."""
    return dataclasses.replace(
        default(), arch=TINY_ARCH, bias=True, dropout=0.0, shift_pixels=2.0, scale=0.09,
        brightness=0.2, contrast=0.2, activation="leaky_relu", epochs=60)


MICRO_ARCH = "c8 p v10 v10x4"


def micro() -> Config:
    """A net under 2,000 parameters: `MICRO_ARCH` with conv biases, 1,946 parameters (one
    8-channel block at 28x28, a pool, a valid block of 10 channels, then one valid conv
    of 10 channels applied four times with its weights shared, each time with its own
    BatchNorm: 12x12 down to 4x4), a leaky ReLU (slope 0.01) in every ReLU's place, no
    dropout, `default`'s one-cycle schedule (20 epochs, peak lr 0.1) and augmentation
    (rotation ±7°, shift ±1 px) (`make train-micro`).

    Chosen on the validation split against the same nets with the shared conv applied
    once and three times, separable nets of 1,746-1,850 params (the published
    1,936-parameter net's shape), a norm without parameters, `tiny`'s augmentation, 40
    epochs and a teacher (experiments/results/selection/micro-1/, micro-2/), then
    test-time augmentation, a PReLU, and the leaky ReLU against a ReLU over three seeds
    each (micro-3/, micro-4/; the ReLU version is superseded); kept against 60 epochs,
    factorised convs and no head layer (micro-5/ to micro-7/), less augmentation, a higher
    lr, a smaller batch, an elastic distortion, a hidden head layer, BatchNorm without
    its scale and strided convs (micro-8/ to micro-12/); docs/selection-micro.md."""
    return dataclasses.replace(default(), arch=MICRO_ARCH, bias=True, dropout=0.0,
                               activation="leaky_relu")


NANO_ARCH = "c6 p dc10 dc10x2 p dc10x3"


def nano() -> Config:
    """A net under 700 parameters: `NANO_ARCH` with no head layer, 680 parameters (one
    6-channel block at 28x28, a pool, a depthwise-separable block of 10 channels at
    14x14 and one applied twice with its weights shared, a pool, one applied three times
    at 7x7, each application with its own BatchNorm; the last block's 10 channels,
    averaged, are the logits), no conv biases, no dropout, no augmentation, `default`'s
    one-cycle schedule stretched to 60 epochs (peak lr 0.1) (`make train-nano`).

    Chosen on the validation split among nets of 644-698 params with plain and
    depthwise-separable blocks, with and without mild augmentation
    (experiments/results/selection/nano-1/ to nano-5/); kept through 40 epochs, a
    teacher, a norm without parameters and a shared separable block (nano-6/),
    test-time augmentation and a leaky ReLU (nano-7/, nano-8/); the head layer's
    parameters moved to depth beat `c4 p dc8 dc10 p dc14` with a head (698 params,
    superseded) and `c4 p dc10 dc10 p dc10x3` (nano-9/); 60 epochs beat 20 (nano-10/;
    the 20-epoch version is superseded); kept against BatchNorm without its scale
    (nano-11/); docs/selection-nano.md."""
    return dataclasses.replace(default(), arch=NANO_ARCH, head="none", dropout=0.0,
                               rotate_degrees=0.0, shift_pixels=0.0, epochs=60)


def teacher() -> Config:
    """The teacher the small recipes distil from (`--teacher`): the seed net and
    `default`'s schedule with `tiny`'s augmentation, so that it reads the images the
    students see (`make train-teacher`), trained on the first 55,000 training images
    only: no student's teacher has seen the validation split its recipe was chosen on."""
    return dataclasses.replace(tiny(), arch=SEED_ARCH, bias=False, dropout=0.069,
                               activation="relu", epochs=20, validation=5000)


RECIPES = {"default": default, "fast": fast, "micro": micro, "nano": nano, "seed": seed,
           "teacher": teacher, "tiny": tiny}


# The seed net taken apart (experiments/basics.py, docs/architecture.md): `default` for
# BASICS_EPOCHS epochs, with one choice changed at a time. It explains the seed's design
# and chooses no recipe, so it is measured on the test set.
BASICS_EPOCHS = 2


def basics_base() -> Config:
    """The study's base: `default` (the seed net, one-cycle to lr 0.1, rotation ±7° and
    shift ±1 px), cut to BASICS_EPOCHS epochs."""
    return dataclasses.replace(default(), epochs=BASICS_EPOCHS)


# name: (what changed, the fields changed)
BASICS = {
    "as-is": ("the net as it is", {}),
    "no-batchnorm": ("no BatchNorm", {"norm": "none"}),
    "no-dropout": ("no dropout", {"dropout": 0.0}),
    "bn-before-relu": ("BatchNorm before ReLU", {"bn_before_relu": True}),
    "no-transition": ("no 1×1 transition (t8)", {"arch": "c8 c16 c16 p v16 v16 v16 v16"}),
    "pool-after-1": ("the max-pool after block 1",
                     {"arch": "c8 p c16 c16 t8 v16 v16 v16 v16"}),
    "pool-after-5": ("the max-pool after block 5",
                     {"arch": "c8 c16 c16 t8 v16 v16 p v16 v16"}),
    "no-pool": ("no max-pool", {"arch": "c8 c16 c16 t8 v16 v16 v16 v16"}),
    "sigmoid": ("sigmoid in place of ReLU", {"activation": "sigmoid"}),
    "dense-head": ("flatten + dense head in place of the average pool", {"head": "dense"}),
    "constant-lr-0.01": ("constant lr 0.01", {"schedule": "constant", "lr": 0.01}),
    "constant-lr-0.04": ("constant lr 0.04 (the seed's)", {"schedule": "constant", "lr": 0.04}),
    "constant-lr-0.1": ("constant lr 0.1", {"schedule": "constant", "lr": 0.1}),
    "batch-32": ("batch 32", {"batch_size": 32}),
    "batch-512": ("batch 512", {"batch_size": 512}),
    "no-augmentation": ("no augmentation", {"rotate_degrees": 0.0, "shift_pixels": 0.0}),
}


def basics_config(name: str) -> Config:
    """The study's config for variant `name` (a key of BASICS)."""
    if name not in BASICS:
        raise KeyError(f"no variant {name!r} of the basics study (one of {sorted(BASICS)})")
    return dataclasses.replace(basics_base(), **BASICS[name][1])
