"""Planted networks for tracing through the layers of modern models: BatchNorm after convs, and
residual blocks whose known path runs through the skip connection. Load them as user models
(``tests/planted_residual.py:bn_stack``, ``...:residual``); their weights are set by hand.

``bn_stack``: conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> relu2 -> mean -> fc (32 x 32 input). The
BatchNorms have running statistics away from (0, 1), so folding them in changes the weights.

``residual``: stem (conv 3 -> 8, ReLU) -> block1 -> block2 -> mean -> fc, each block
``relu(x + conv_b(relu(conv_a(x))))`` with 8 channels, 32 x 32. Planted:

- block1 channel 0 = stem:0 through the skip connection (weight 1) + stem:2 through the convs
  (conv_a[1, 2] = 2 at the centre, conv_b[0, 1] = 0.75 at the centre: 1.5 in all);
- block2 channel 0 = block1:0 through the skip connection alone (conv_b[0] is zero);
- every other weight random and weak (0.01).

So ``trace block2:0 --depth 2`` must find block2:0 <- block1:0 (strength 1, the skip path) and
block1:0 <- stem:2 (strength 1.5, the convs), stem:0 (strength 1, the skip path).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

SIZE = 32


def _identity(x):
    return x


class BNStack(nn.Module):
    input_size = SIZE

    def __init__(self):
        super().__init__()
        self.preprocess = _identity
        g = torch.Generator().manual_seed(1)
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 6, 3, padding=1)), ("bn1", nn.BatchNorm2d(6)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(6, 5, 3, padding=1)), ("bn2", nn.BatchNorm2d(5)),
            ("relu2", nn.ReLU()),
        ]))
        self.fc = nn.Linear(5, 4)
        with torch.no_grad():
            for bn in (self.features.bn1, self.features.bn2):
                n = bn.num_features
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                bn.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.2)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv_a = nn.Conv2d(c, c, 3, padding=1)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.conv_b(self.relu_a(self.conv_a(x))))


class Residual(nn.Module):
    input_size = SIZE

    def __init__(self):
        super().__init__()
        self.preprocess = _identity
        g = torch.Generator().manual_seed(2)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block1 = Block(8)
        self.block2 = Block(8)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
                    m.bias.zero_()
            b1, b2 = self.block1, self.block2
            b1.conv_a.weight[1].zero_()
            b1.conv_a.weight[1, 2, 1, 1] = 2.0
            b1.conv_b.weight[0].zero_()
            b1.conv_b.weight[0, 1, 1, 1] = 0.75
            b2.conv_b.weight[0].zero_()

    def forward(self, x):
        return self.fc(self.block2(self.block1(self.stem(x))).mean(dim=(2, 3)))


def bn_stack() -> BNStack:
    return BNStack()


def residual() -> Residual:
    return Residual()
