"""A jaxmnist recipe's net and step in PyTorch eager, for `compare.py`.

Builds the recipe's net (`--recipe`, default the seed net: 12,088 params) layer for
layer from its `arch` string, with its bias, dropout, dropout placement, block order
and norm, checks that it has the same number of parameters as the jaxmnist net, and
times steady-state training steps (the recipe's batch size and dropout, SGD momentum
0.9) on synthetic MNIST-shaped batches; prints one JSON line with `train_images_per_s`.
`--tuned` runs it as a PyTorch user would tune it for a CPU: model and input in
`channels_last` memory format and the forward pass under bfloat16 autocast.
Needs the `compare` extra (`pip install -e '.[compare]'`, torch==2.13.0, CPU build).
"""

import argparse
import json
import os
import time

import torch
from torch import nn


def build(config) -> nn.Sequential:
    """The PyTorch net `jaxmnist.models.Net` builds for `config`."""
    from jaxmnist.models import BLOCK_KINDS, Net, layer_table, parse_arch

    layers, channels = [], 1
    block_dropout = config.dropout if config.dropout_at == "blocks" else 0.0
    for kind, _, features, repeats in parse_arch(config.arch):
        if kind == "whitening":  # a 3x3 conv with its weight frozen, a bias, the activation
            conv = nn.Conv2d(channels, features, 3, padding=1, bias=True)
            conv.weight.requires_grad_(False)
            layers += [conv, activation(config)]
        elif kind in BLOCK_KINDS:
            padding = 0 if kind.endswith("valid") else 1
            if kind.startswith("separable"):
                conv = [nn.Conv2d(channels, channels, 3, padding=padding, groups=channels,
                                  bias=config.bias),
                        nn.Conv2d(channels, features, 1, bias=config.bias)]
            elif kind.startswith("factorised"):
                conv = [nn.Conv2d(channels, features, (3, 1), padding=(padding, 0),
                                  bias=config.bias),
                        nn.Conv2d(features, features, (1, 3), padding=(0, padding),
                                  bias=config.bias)]
            else:  # a strided conv (scN) moves 2 pixels a step
                conv = [nn.Conv2d(channels, features, 3, stride=2 if kind == "strided_conv"
                                  else 1, padding=padding, bias=config.bias)]
            # A shared block: the same conv modules again (parameters() counts them once),
            # a norm of its own each time.
            for _ in range(repeats):
                layers += block(conv, features, config, block_dropout)
        elif kind == "pool":
            layers.append(nn.MaxPool2d(2))
            if config.dropout_at == "pools" and config.dropout:
                layers.append(nn.Dropout(config.dropout))
            features = channels
        elif kind == "space_to_depth":
            layers.append(nn.PixelUnshuffle(2))
            features = 4 * channels
        else:
            layers.append(nn.Conv2d(channels, features, 1, bias=config.bias))
        channels = features
    if config.head == "dense":
        # jaxmnist flattens in (H, W, C) order: the same layer on a channels-last copy
        size = [layer.output[0] for layer in layer_table(Net(arch=config.arch))][-2]
        layers += [Permute(0, 2, 3, 1), nn.Flatten(1),
                   nn.Linear(size * size * channels, 10, bias=config.bias)]
    elif config.head == "none":  # the last layer's 10 channels, averaged, are the logits
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    else:
        layers.append(nn.AdaptiveAvgPool2d(1))
        if config.head_hidden:  # a 1x1 block: conv, the blocks' activation, norm, dropout
            layers += block([nn.Conv2d(channels, config.head_hidden, 1, bias=config.bias)],
                            config.head_hidden, config, block_dropout)
            channels = config.head_hidden
        layers += [nn.Conv2d(channels, 10, 1, bias=config.bias), nn.Flatten(1)]
    return nn.Sequential(*layers)


def block(conv: list, features: int, config, dropout: float) -> list:
    """One application of a block: `conv`, then the norm and activation in `config`'s
    order, then dropout. With `bn_scale` false, BatchNorm's weight stays 1 (no grad)."""
    norm = {"layer": [nn.GroupNorm(1, features, eps=1e-5, affine=False)],
            "none": [], "batch": [nn.BatchNorm2d(features)]}[config.norm]
    if config.norm == "batch" and not config.bn_scale:
        norm[0].weight.requires_grad_(False)
    act = [activation(config)]
    return (conv + (norm + act if config.bn_before_relu else act + norm)
            + ([nn.Dropout(dropout)] if dropout else []))


def activation(config) -> nn.Module:
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "prelu": nn.PReLU,
            "leaky_relu": nn.LeakyReLU}[config.activation]()


def stored_params(model: nn.Module) -> int:
    """The parameters jaxmnist's net stores: all but the BatchNorm weights held at 1
    (`bn_scale` off), which it does not have; a whitening layer's frozen weight is
    stored, and counted."""
    return sum(p.numel() for m in model.modules() for name, p in m.named_parameters(recurse=False)
               if not (isinstance(m, nn.BatchNorm2d) and name == "weight" and not p.requires_grad))


class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="seed", help="whose net and batch size (default seed)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, help="default: the recipe's")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--tuned", action="store_true",
                   help="channels_last and bfloat16 autocast (default: plain fp32 eager)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from jaxmnist import configs
    from jaxmnist.steps import param_count

    config = configs.RECIPES[args.recipe]()
    args.batch_size = args.batch_size or config.batch_size
    model = build(config)
    params = stored_params(model)
    expected = param_count(config)
    if params != expected:
        raise SystemExit(f"torch_peer: {params} params, jaxmnist's net has {expected}")
    opt = torch.optim.SGD(model.parameters(), lr=0.04, momentum=0.9)
    x = torch.randn(args.batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch_size,))
    loss_fn = nn.CrossEntropyLoss()
    if args.tuned:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.tuned):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    model.train()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    print(json.dumps({"train_images_per_s": round(args.steps * args.batch_size / dt, 1),
                      "step_ms": round(1000 * dt / args.steps, 2), "threads": args.threads,
                      "tuned": args.tuned, "recipe": args.recipe, "params": params,
                      "batch_size": args.batch_size,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
