"""A hand-built network whose units are known detectors: the ground truth of the rendering tests.

Layer ``detect`` (hooked after its ReLU as ``relu``) has seven channels:

- 0-3: oriented grating detectors, Gabor kernels at 0, 45, 90 and 135 degrees (x to the right,
  y down, the angle of the wave vector), period 8 pixels, same weight on R, G and B;
- 4-6: colour detectors for red, green and blue (+1 on the colour, -0.5 on the others, spread
  evenly over the kernel).

Layer ``poly`` (1 x 1 spatially, on ``pooled``, the image-wide mean of ``relu``) has one
polysemantic unit: the 0-degree plus the 90-degree grating detector. Its single best picture
mixes both (an unoriented plaid); the diversity objective should show two oriented facets.

Load it as a user model: ``--model tests/planted_render_model.py:detectors``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ANGLES = (0.0, 45.0, 90.0, 135.0)
PERIOD = 8.0
COLOURS = ("red", "green", "blue")
KERNEL = 11


def gabor(theta_deg: float, period: float = PERIOD, size: int = KERNEL,
          sigma: float = 3.0) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    t = math.radians(theta_deg)
    wave = torch.cos(2 * math.pi * (x * math.cos(t) + y * math.sin(t)) / period)
    g = wave * torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    return (g - g.mean()).float()


class Detectors(nn.Module):
    input_size = 64

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(3, len(ANGLES) + len(COLOURS), KERNEL, padding=KERNEL // 2)
        self.relu = nn.ReLU()
        self.pooled = nn.AdaptiveAvgPool2d(1)
        self.poly = nn.Conv2d(len(ANGLES) + len(COLOURS), 1, 1, bias=False)
        w = torch.zeros_like(self.detect.weight)
        for i, angle in enumerate(ANGLES):
            w[i] = gabor(angle).expand(3, KERNEL, KERNEL) / 3
        for j in range(len(COLOURS)):
            colour = torch.full((3,), -0.5)
            colour[j] = 1.0
            w[len(ANGLES) + j] = colour.view(3, 1, 1).expand(3, KERNEL, KERNEL) / KERNEL**2
        with torch.no_grad():
            self.detect.weight.copy_(w)
            self.detect.bias.zero_()
            self.poly.weight.zero_()
            self.poly.weight[0, [0, 2]] = 1.0  # 0 and 90 degrees

    @staticmethod
    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return x - 0.5

    def forward(self, x):
        return self.poly(self.pooled(self.relu(self.detect(x))))


def detectors() -> nn.Module:
    return Detectors()
