"""A planted network and a planted image world for the evidence tests (dataset examples,
ablation, class lookup). Load it as a user model: ``--model tests/planted_evidence_model.py:build``.

Layers (64 x 64 RGB input, no preprocessing):

- ``relu1`` (8, 64, 64): channels 0/1/2 = "redness"/"greenness"/"blueness" of a pixel (the colour
  minus half the two others, minus 0.3); channels 3-7 random weak filters;
- ``relu2`` (16, 64, 64): channels 0/1/2 = red/green/blue **square** detectors: the average of
  the colour channel over a 5 x 5 window, thresholded so that a one-pixel line does not fire;
  channels 3-15 random weak filters;
- ``pool`` (16, 32, 32), then ``relu3`` (8, 32, 32): channel 0 = "a coloured square" = relu2
  channels 0 + 1 + 2 (centre taps, weight 1) plus weak random inputs from channels 3-15 (the
  planted target of ablation); channel 1 copies the red square detector, channel 2 the green
  one; the rest random;
- logits (3): "red square" = 5 x mean(relu3:1), "green square" = 5 x mean(relu3:2),
  "clutter" = mean of relu3:3-7.

:func:`make_images` draws scenes of grey noise with distractor squares (green, blue, white, black)
and thin red lines; a known subset also holds one red square, in the folder ``red_square``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 64
LABELS = ["red square", "green square", "clutter"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class PlantedNet(nn.Module):
    input_size = SIZE
    labels = LABELS

    def __init__(self, seed: int = 0):
        super().__init__()
        self.preprocess = _identity
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 8, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            for m in (self.conv1, self.conv2, self.conv3, self.fc):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
                m.bias.zero_()
            for ch, colour in enumerate(([1, -.5, -.5], [-.5, 1, -.5], [-.5, -.5, 1])):
                self.conv1.weight[ch].zero_()
                self.conv1.weight[ch, :, 1, 1] = torch.tensor(colour)
                self.conv1.bias[ch] = -0.3
            for ch in range(3):
                self.conv2.weight[ch].zero_()
                self.conv2.weight[ch, ch] = 4 / 25
                self.conv2.bias[ch] = -1.8
            w3 = self.conv3.weight
            w3[0, :3] = 0
            w3[0, :3, 1, 1] = 1.0
            w3[0, 3:] *= 0.2
            w3[1].zero_()
            w3[1, 0, 1, 1] = 1.0
            w3[2].zero_()
            w3[2, 1, 1, 1] = 1.0
            self.fc.weight.zero_()
            self.fc.weight[0, 1] = 5.0
            self.fc.weight[1, 2] = 5.0
            self.fc.weight[2, 3:] = 1.0

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.relu3(self.conv3(self.pool(x)))
        return self.fc(x.mean(dim=(2, 3)))


def build() -> PlantedNet:
    return PlantedNet()


def make_images(folder: Path, n: int = 40, n_red: int = 8, seed: int = 0) -> dict[str, tuple]:
    """Write ``n`` PNG scenes; ``n_red`` of them (in ``folder/red_square``) hold one red square.
    Returns {file name: (x0, y0, x1, y1) of the red square} for those."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    red = set(rng.choice(n, n_red, replace=False).tolist())
    boxes = {}
    for sub in ("red_square", "other"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((SIZE, SIZE, 3), rng.uniform(0.3, 0.7), dtype=np.float32)
        img += rng.normal(0, 0.04, img.shape).astype(np.float32)
        for _ in range(rng.integers(1, 4)):
            colour = [(0.1, 0.9, 0.1), (0.1, 0.1, 0.9), (1, 1, 1), (0.05, 0.05, 0.05)][
                rng.integers(4)]
            s = rng.integers(6, 14)
            y, x = rng.integers(8, SIZE - 8 - s, size=2)
            img[y:y + s, x:x + s] = colour
        if rng.random() < 0.5:  # a thin red line: red, but not a square
            y = rng.integers(8, SIZE - 8)
            img[y, 8:SIZE - 8] = (0.95, 0.05, 0.05)
        name = f"scene{i:03d}.png"
        if i in red:
            s = int(rng.integers(9, 14))
            y, x = (int(v) for v in rng.integers(8, SIZE - 8 - s, size=2))
            img[y:y + s, x:x + s] = (0.95, 0.05, 0.05)
            boxes[name] = (x, y, x + s, y + s)
        sub = "red_square" if i in red else "other"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / sub / name)
    return boxes
