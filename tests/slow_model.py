"""A small user model whose every forward pass sleeps (``--model tests/slow_model.py:slow``).

The fault-injection tests interrupt long passes (rendering, the activation pass) with SIGINT and
SIGKILL at a chosen moment; on the toy model a whole pass over a few dozen images takes less
time than a test can react in. The sleep makes each batch take a known minimum time, so a signal
reliably lands in the middle of the pass. ``$SLOW_MODEL_SECONDS`` sets the sleep (default 0.05).
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn


class Slow(nn.Module):
    input_size = 32

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        self.labels = ["a", "b", "c", "d"]

    def forward(self, x):
        time.sleep(float(os.environ.get("SLOW_MODEL_SECONDS", "0.05")))
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def slow() -> nn.Module:
    return Slow()
