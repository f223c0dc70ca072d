"""A tiny planted vision transformer whose attention head copies a feature from one patch to
another. Load it as a user model: ``tests/planted_vit.py:build``.

32 x 32 input, 8 x 8 patches (a 4 x 4 grid), a class token first, width 8. ``patch_embed``
(a conv) writes the mean redness of a patch to channel 0; learned position embeddings mark the
copying head's query patch Q = (2, 2) (the centre of the grid, patch 10) in channel 6 and its key
patch K = (0, 1) (patch 1) in channel 7. Two blocks, ``blocks.0`` and ``blocks.1``, each
``x + proj(attention(x))`` (no LayerNorm, no MLP):

- ``blocks.0``'s head writes nothing (its output projection is zero): the block is the identity;
- ``blocks.1``'s head attends from Q to K (score 40 against 0 for every other token: the pattern
  is one-hot up to e^-40) and copies channel 0 of K into channel 1 of Q with weight ``COPY``.

So the expanded weight from ``blocks.0`` channel 0 to ``blocks.1`` channel 1 at Q is ``COPY`` at
K's position and 0 elsewhere, and channel 1 reads its own channel at Q with weight 1 (the
residual stream).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIZE, PATCH, DIM = 32, 8, 8
GRID = SIZE // PATCH
QUERY, KEY = (2, 2), (0, 1)
COPY = 0.7


def _identity(x):
    return x


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(DIM, DIM, bias=False)
        self.k = nn.Linear(DIM, DIM, bias=False)
        self.v = nn.Linear(DIM, DIM, bias=False)
        self.proj = nn.Linear(DIM, DIM, bias=False)

    def forward(self, x):
        att = F.scaled_dot_product_attention(self.q(x)[:, None], self.k(x)[:, None],
                                             self.v(x)[:, None], scale=1.0)
        return x + self.proj(att[:, 0])


class PlantedViT(nn.Module):
    input_size = SIZE
    labels = ["red", "other"]

    def __init__(self):
        super().__init__()
        self.preprocess = _identity
        self.patch_embed = nn.Conv2d(3, DIM, PATCH, stride=PATCH, bias=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + GRID * GRID, DIM))
        self.blocks = nn.Sequential(Head(), Head())
        self.head = nn.Linear(DIM, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
            self.patch_embed.weight[0, 0] = 1.0 / PATCH ** 2
            q, k = 1 + QUERY[0] * GRID + QUERY[1], 1 + KEY[0] * GRID + KEY[1]
            self.pos_embed[0, q, 6] = 1.0
            self.pos_embed[0, k, 7] = 1.0
            copy = self.blocks[1]
            copy.q.weight[0, 6] = 40.0
            copy.k.weight[0, 7] = 1.0
            copy.v.weight[2, 0] = 1.0
            copy.proj.weight[1, 2] = COPY
            self.head.weight[0, 1] = 1.0
            self.head.weight[1, 0] = 1.0

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.head(x[:, 0] + x[:, 1:].mean(1))


def build() -> PlantedViT:
    return PlantedViT()
