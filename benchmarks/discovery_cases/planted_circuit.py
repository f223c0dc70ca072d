"""A planted network whose circuit is known, with distractors (a user model file:
``--model benchmarks/discovery_cases/planted_circuit.py:build``).

Input: 32 x 32 RGB in [0, 1], no preprocessing. Layers:

- ``features`` (6, 32, 32): colour detectors, one per colour of the world: red, green, blue,
  cyan, magenta, yellow (1 on a square of that colour, 0 on the grey background and on the
  other colours).
- ``units`` (10, 32, 32), each a ReLU of the features (f0..f5 the colours above):
  u0 = red, u1 = green, u2 = blue, u3 = cyan - 5 (never fires: a dead unit),
  u4 = 4 x yellow + 0.5 (the strongest unit, always on), u5 = red + magenta (polysemantic),
  u6 = cyan + magenta and u7 = cyan + yellow (cyan stored in superposition over two units),
  u8, u9 = weak random mixtures.
- ``target`` (3, 32, 32): channel 0 is the planted target,
  ReLU(u0 + u1 - u2 + 0.5 u6 + 0.5 u7 + 2 u3 + 0.05 (u8 - u9) + 0.2), read at the centre tap
  of a 3 x 3 kernel: the **known circuit** is u0, u1 (excitatory), u2 (inhibitory) and u6, u7
  (cyan, in superposition). The distractors: u3 has the largest weight but never fires (in the
  weights, not in the circuit on any image); u4 is the strongest unit and never used; u5 is
  polysemantic (red, like u0, and magenta) and unused; u8, u9 have tiny weights.
  Channels 1 and 2 read the units at random.
- logits (2): 3 x mean(target:0), mean(target:1).
"""

from __future__ import annotations

import torch
from torch import nn

SIZE = 32
COLOURS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0))
NAMES = ("red", "green", "blue", "cyan", "magenta", "yellow")
# units = relu(W_units @ features + b_units)
W_UNITS = [
    [1, 0, 0, 0, 0, 0],
    [0, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0],
    [0, 0, 0, 1, 0, 0],
    [0, 0, 0, 0, 0, 4],
    [1, 0, 0, 0, 1, 0],
    [0, 0, 0, 1, 1, 0],
    [0, 0, 0, 1, 0, 1],
]
B_UNITS = [0, 0, 0, -5, 0.5, 0, 0, 0]
W_TARGET = [1.0, 1.0, -1.0, 2.0, 0.0, 0.0, 0.5, 0.5, 0.05, -0.05]
B_TARGET = 0.2
KNOWN = {0: 1, 1: 1, 2: -1, 6: 1, 7: 1}  # unit -> sign of its edge into target:0


def _identity(x):
    return x


class ConvReLU(nn.Module):
    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


class PlantedCircuit(nn.Module):
    input_size = SIZE
    labels = ["target", "other"]

    def __init__(self, seed: int = 0):
        super().__init__()
        self.preprocess = _identity
        g = torch.Generator().manual_seed(seed)
        self.features = ConvReLU(3, 6, 1)
        self.units = ConvReLU(6, 10, 1)
        self.target = ConvReLU(10, 3, 3)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            for i, colour in enumerate(COLOURS):  # 2 v . (x - 0.5) - 2, v = 2 colour - 1
                v = 2 * torch.tensor(colour, dtype=torch.float32) - 1
                self.features.conv.weight[i, :, 0, 0] = 2 * v
                self.features.conv.bias[i] = -float(v.sum()) - 2
            w = torch.zeros(10, 6)
            w[:8] = torch.tensor(W_UNITS, dtype=torch.float32)
            w[8:] = torch.rand(2, 6, generator=g) * 0.5
            self.units.conv.weight.copy_(w.view(10, 6, 1, 1))
            self.units.conv.bias.copy_(torch.tensor(B_UNITS + [0.0, 0.0]))
            self.target.conv.weight.copy_(torch.randn(3, 10, 3, 3, generator=g) * 0.1)
            self.target.conv.weight[0].zero_()
            self.target.conv.weight[0, :, 1, 1] = torch.tensor(W_TARGET)
            self.target.conv.bias.copy_(torch.tensor([B_TARGET, 0.0, 0.0]))
            self.fc.weight.zero_()
            self.fc.weight[0, 0] = 3.0
            self.fc.weight[1, 1] = 1.0
            self.fc.bias.zero_()

    def forward(self, x):
        t = self.target(self.units(self.features(x)))
        return self.fc(t.mean(dim=(2, 3)))


def build() -> PlantedCircuit:
    return PlantedCircuit()
