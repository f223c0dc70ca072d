"""``ToyInceptionV1``: a small InceptionV1 for 64x64 scenes, with lucent's layer names.

The layout follows the network of the Circuits papers at a twentieth of its width::

    conv2d0 (5x5, stride 2) -> maxpool0 -> conv2d1 (1x1) -> conv2d2 (3x3)     32x32 -> 16x16
    -> mixed3a -> mixed3b                                                      16x16
    -> maxpool4 -> mixed4a -> mixed4b -> mixed4c                               8x8
    -> global average pool -> softmax2_pre_activation_matmul (logits)

Each mixed block has the four branches 1x1 | 3x3 | 5x5 | pool, concatenated in that order. Names
are lucent's: the convolution ``mixed4b_3x3_pre_relu_conv`` is followed by the ReLU module
``mixed4b_3x3`` (the branch's addressable output), ``mixed4b_pool`` is the branch's max-pool and
``mixed4b`` the :class:`Concat` module whose output is the block's. Every addressable layer is
the output of its own module, so forward hooks see all of them. There is no normalisation layer:
the weights are all there is between two layers, as the expanded-weights method assumes.
"""

from __future__ import annotations

import torch
from torch import nn

#: Mixed blocks in forward order; the max-pool ``maxpool4`` runs before ``mixed4a``.
BLOCKS = ("mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c")
POOL_BEFORE = {"mixed4a": "maxpool4"}
#: Per mixed block: 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool reduce.
BRANCH_FIELDS = ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool_reduce")

DEFAULT_ARCH: dict = {
    "conv2d0": 32, "conv2d1": 32, "conv2d2": 64,
    "mixed3a": (24, 32, 48, 8, 12, 12),
    "mixed3b": (32, 48, 64, 12, 16, 16),
    "mixed4a": (48, 48, 80, 12, 16, 16),
    "mixed4b": (48, 48, 96, 16, 24, 24),
    "mixed4c": (48, 48, 96, 16, 32, 16),
    "classes": 8,
}


class Concat(nn.Module):
    """Concatenates its inputs along channels (the hook point of a mixed block)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


def block_channels(spec) -> dict[str, int]:
    """``{"1x1": n, "3x3": n, "5x5": n, "pool": n}``: a block's output split."""
    c = dict(zip(BRANCH_FIELDS, spec, strict=True))
    return {"1x1": c["1x1"], "3x3": c["3x3"], "5x5": c["5x5"], "pool": c["pool_reduce"]}


class ToyInceptionV1(nn.Module):
    """Small InceptionV1; takes the *preprocessed* image (see :func:`preprocess`), returns
    logits. ``arch`` (see :data:`DEFAULT_ARCH`) sets every width and is saved with weights."""

    def __init__(self, arch: dict | None = None):
        super().__init__()
        self.arch = dict(DEFAULT_ARCH if arch is None else arch)
        a = self.arch
        self._conv("conv2d0", 3, a["conv2d0"], 5, stride=2, padding=2)
        self.maxpool0 = nn.MaxPool2d(3, stride=2, padding=1)
        self._conv("conv2d1", a["conv2d0"], a["conv2d1"], 1)
        self._conv("conv2d2", a["conv2d1"], a["conv2d2"], 3, padding=1)
        c_in = a["conv2d2"]
        for name in BLOCKS:
            if name in POOL_BEFORE:
                setattr(self, POOL_BEFORE[name], nn.MaxPool2d(3, stride=2, padding=1))
            n1, n3r, n3, n5r, n5, npr = a[name]
            self._conv(f"{name}_1x1", c_in, n1, 1)
            self._conv(f"{name}_3x3_bottleneck", c_in, n3r, 1)
            self._conv(f"{name}_3x3", n3r, n3, 3, padding=1)
            self._conv(f"{name}_5x5_bottleneck", c_in, n5r, 1)
            self._conv(f"{name}_5x5", n5r, n5, 5, padding=2)
            setattr(self, f"{name}_pool", nn.MaxPool2d(3, stride=1, padding=1))
            self._conv(f"{name}_pool_reduce", c_in, npr, 1)
            setattr(self, name, Concat())
            c_in = n1 + n3 + n5 + npr
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.softmax2_pre_activation_matmul = nn.Linear(c_in, a["classes"])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def _conv(self, name: str, c_in: int, c_out: int, k: int, stride: int = 1,
              padding: int = 0) -> None:
        setattr(self, f"{name}_pre_relu_conv", nn.Conv2d(c_in, c_out, k, stride, padding))
        setattr(self, name, nn.ReLU())

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``name``_pre_relu_conv, then the ReLU module ``name`` (the addressable output)."""
        return getattr(self, name)(getattr(self, f"{name}_pre_relu_conv")(x))

    def _mixed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        b1 = self._run(f"{name}_1x1", x)
        b3 = self._run(f"{name}_3x3", self._run(f"{name}_3x3_bottleneck", x))
        b5 = self._run(f"{name}_5x5", self._run(f"{name}_5x5_bottleneck", x))
        bp = self._run(f"{name}_pool_reduce", getattr(self, f"{name}_pool")(x))
        return getattr(self, name)(b1, b3, b5, bp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool0(self._run("conv2d0", x))
        x = self._run("conv2d2", self._run("conv2d1", x))
        for name in BLOCKS:
            if name in POOL_BEFORE:
                x = getattr(self, POOL_BEFORE[name])(x)
            x = self._mixed(name, x)
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return self.softmax2_pre_activation_matmul(x)


#: Fixed input normalisation: [0, 1] RGB -> roughly zero mean, unit spread.
MEAN, STD = 0.5, 0.25


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """The toy model's input convention: RGB in [0, 1] -> ``(x - 0.5) / 0.25``."""
    return (x - MEAN) / STD


def layer_names() -> list[str]:
    """Addressable layers in forward order (hook points = module names)."""
    names = ["conv2d0", "maxpool0", "conv2d1", "conv2d2"]
    for block in BLOCKS:
        if block in POOL_BEFORE:
            names.append(POOL_BEFORE[block])
        names += [f"{block}_{b}" for b in BRANCH_FIELDS[:5]] + [f"{block}_pool",
                                                                 f"{block}_pool_reduce", block]
    return names


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
