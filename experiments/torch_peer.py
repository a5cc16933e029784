"""The same 12,088-parameter net and seed recipe in PyTorch eager, for `compare.py`.

Times steady-state training steps (batch 128, dropout 0.069, SGD lr 0.04 momentum 0.9)
on synthetic MNIST-shaped batches and prints one JSON line with `train_images_per_s`.
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


def block(cin, cout, padding, dropout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=padding, bias=False), nn.ReLU(),
                         nn.BatchNorm2d(cout), nn.Dropout(dropout))


class Net(nn.Module):
    def __init__(self, dropout=0.069):
        super().__init__()
        self.features = nn.Sequential(
            block(1, 8, 1, dropout), block(8, 16, 1, dropout), block(16, 16, 1, dropout),
            nn.MaxPool2d(2), nn.Conv2d(16, 8, 1, bias=False),
            block(8, 16, 0, dropout), block(16, 16, 0, dropout), block(16, 16, 0, dropout),
            block(16, 16, 0, dropout), nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 10, 1, bias=False))

    def forward(self, x):
        return self.features(x).flatten(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--tuned", action="store_true",
                   help="channels_last and bfloat16 autocast (default: plain fp32 eager)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Net()
    assert sum(p.numel() for p in model.parameters()) == 12_088
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
                      "tuned": args.tuned,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
