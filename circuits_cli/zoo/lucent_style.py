"""Layers and Inception blocks of networks named the way lucent names InceptionV1.

``inceptionv1`` and ``toy`` share lucent's module names: ``mixed4c_3x3_bottleneck_pre_relu_conv``
is a convolution, ``mixed4c_3x3_bottleneck`` the ReLU after it (the addressable layer),
``mixed4c_pool`` the max-pool of the pool branch and ``mixed4c`` the concatenation. From those
names and one forward pass on a zero image, :func:`describe` gives the layer table (shapes,
branch splits, kinds) and the :class:`~circuits_cli.zoo.base.InceptionBlock` descriptions that the
exact expanded-weights method reads.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..hooks import probe
from .base import Branch, InceptionBlock, LayerInfo

#: (branch name in the layer table, suffix of the module that outputs it), in concat order.
BRANCH_OUTPUTS = (("1x1", "1x1"), ("3x3", "3x3"), ("5x5", "5x5"), ("pool", "pool_reduce"))


def layer_kind(name: str, blocks: Sequence[str]) -> str:
    if name in blocks:
        return "block"
    if "pool" in name and not name.endswith("pool_reduce"):
        return "pool"
    if name.startswith("localresponsenorm"):
        return "norm"
    return "branch" if name.startswith("mixed") else "conv"


def inception_block(name: str, block_input: str) -> InceptionBlock:
    """The block ``name`` with lucent's conv names; the pool branch is a 3x3/1/1 max-pool."""
    return InceptionBlock(output=name, input=block_input, branches=(
        Branch("1x1", (f"{name}_1x1_pre_relu_conv",)),
        Branch("3x3", (f"{name}_3x3_bottleneck_pre_relu_conv", f"{name}_3x3_pre_relu_conv")),
        Branch("5x5", (f"{name}_5x5_bottleneck_pre_relu_conv", f"{name}_5x5_pre_relu_conv")),
        Branch("pool", (f"{name}_pool_reduce_pre_relu_conv",), pool=(3, 1, 1)),
    ))


def output_shapes(module: nn.Module, names: Sequence[str],
                  input_size: int) -> dict[str, tuple[int, ...]]:
    """(C, H, W) of each named module's output, from one forward pass on a zero image, run on
    a copy on the meta device (shapes only: no memory, no arithmetic; about 7x faster for
    InceptionV1 on a CPU), or on the module itself where an operation has no meta kernel."""
    try:
        meta = copy.deepcopy(module).to("meta")
        return probe(meta, torch.zeros(1, 3, input_size, input_size, device="meta"), names)
    except (NotImplementedError, RuntimeError):
        device = next(module.parameters()).device
        return probe(module, torch.zeros(1, 3, input_size, input_size, device=device), names)


def describe(module: nn.Module, names: Sequence[str], blocks: Sequence[str],
             block_inputs: Mapping[str, str], input_size: int
             ) -> tuple[dict[str, LayerInfo], dict[str, InceptionBlock]]:
    """Layer table and Inception blocks. ``names`` are the addressable layers in forward order;
    a block reads ``block_inputs[block]`` if given, else the previous block."""
    shapes = output_shapes(module, names, input_size)
    layers: dict[str, LayerInfo] = {}
    described: dict[str, InceptionBlock] = {}
    for name in names:
        branches: tuple[tuple[str, int], ...] = ()
        if name in blocks:
            branches = tuple((b, shapes[f"{name}_{suffix}"][0]) for b, suffix in BRANCH_OUTPUTS)
            block_input = block_inputs.get(name) or blocks[list(blocks).index(name) - 1]
            described[name] = inception_block(name, block_input)
        layers[name] = LayerInfo(name=name, module=name, channels=shapes[name][0],
                                 shape=shapes[name], branches=branches,
                                 kind=layer_kind(name, blocks))
    return layers, described
