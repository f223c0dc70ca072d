"""The one interface every model of the zoo answers.

A :class:`LoadedModel` is an ``nn.Module`` in eval mode plus what circuit work needs to know about
it: its addressable layers in forward order (with the branch split of Inception blocks), how an
image in [0, 1] becomes the model's input, its class labels and where its weights came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CircuitsError, suggest
from ..hooks import probe


@dataclass(frozen=True)
class LayerInfo:
    """An addressable layer: the output of one module of the network.

    ``name`` is what users type (``mixed4c``, ``inception_4c/3x3``); ``module`` is the dotted path
    of the module whose forward output is the layer's activation (the hook point). ``shape`` is
    (C, H, W) at the model's default input size. ``branches`` gives the channel split of a
    concatenation, e.g. ``(("1x1", 128), ("3x3", 256), ("5x5", 64), ("pool", 64))``; the branch
    of a channel is found with :meth:`branch_of`.
    """

    name: str
    module: str
    channels: int
    shape: tuple[int, int, int] | None = None
    branches: tuple[tuple[str, int], ...] = ()
    kind: str = "conv"

    def branch_of(self, channel: int) -> tuple[str, int] | None:
        """(branch name, index inside the branch) of ``channel``, or None for a plain layer."""
        start = 0
        for branch, size in self.branches:
            if channel < start + size:
                return branch, channel - start
            start += size
        return None


@dataclass(frozen=True)
class Branch:
    """One branch of an Inception block: optional max-pool, then convolutions, input to output.

    ``convs`` are dotted module paths of ``nn.Conv2d`` modules (e.g. the 1x1 bottleneck then the
    3x3). ``pool`` is (kernel, stride, padding) of a max-pool applied to the block input before the
    convolutions (the pool branch), else None. A ReLU follows every convolution.
    """

    name: str
    convs: tuple[str, ...]
    pool: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class InceptionBlock:
    """An Inception (mixed) block: ``input`` layer -> branches -> concatenation ``output`` layer.
    Branches are listed in concatenation order. Used by the exact expanded-weights method."""

    output: str
    input: str
    branches: tuple[Branch, ...]


@dataclass
class LoadedModel:
    """A network ready for circuit work. Build one with :func:`circuits_cli.zoo.load_model`."""

    name: str
    module: nn.Module
    layers: dict[str, LayerInfo]
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    input_size: int = 224
    labels: list[str] = field(default_factory=list)  # human-readable class names, output order
    class_ids: list[str] = field(default_factory=list)  # e.g. ImageNet wnids, output order
    weights_id: str = "random"
    aliases: dict[str, str] = field(default_factory=dict)
    description: str = ""
    blocks: dict[str, InceptionBlock] = field(default_factory=dict)  # keyed by output layer
    #: How the weights were made, where the checkpoint records it (the toy model's training
    #: recipe, from which its initialisation can be rebuilt); None elsewhere.
    recipe: dict | None = None
    #: Results that library code derives from this network and reuses (e.g. the module call
    #: order and receptive-field geometry of :mod:`circuits_cli.connections`), keyed
    #: ``"module.what"``. They belong to the model and go with it: no module-level caches. A
    #: copy made with :func:`dataclasses.replace` starts empty; change the weights or the
    #: structure of ``module`` in place and call ``memo.clear()``.
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> LoadedModel:
        self.module.to(device)
        return self

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name`` (or a short alias such as ``4c``); a clear error otherwise."""
        key = self.aliases.get(name, name)
        if key in self.layers:
            return self.layers[key]
        raise CircuitsError(suggest(name, self.layers, "layer")
                            + f" ('circuits layers -m {self.name}' lists the layers)")

    def layer_names(self) -> list[str]:
        return list(self.layers)

    def submodule(self, layer: str) -> nn.Module:
        """The module whose output is ``layer``'s activation (the hook point)."""
        return self.module.get_submodule(self.layer(layer).module)

    def layer_index(self, layer: str) -> int:
        return list(self.layers).index(self.layer(layer).name)

    def label(self, index: int) -> str:
        if 0 <= index < len(self.labels):
            return self.labels[index]
        return f"class {index}"

    @torch.no_grad()
    def logits(self, images01: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of RGB images in [0, 1] (N, 3, H, W)."""
        return self.module(self.preprocess(images01.to(self.device)))


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ImageNet preprocessing: [0, 1] RGB to mean/std normalised RGB."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def discover_layers(module: nn.Module, input_size: int,
                    keep: Callable[[str, nn.Module], bool]) -> dict[str, LayerInfo]:
    """Layers of an arbitrary network: the modules ``keep`` accepts, in the order they run,
    with their output shapes, found by one forward pass on a zero image."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    paths = [path for path, sub in module.named_modules() if path and keep(path, sub)]
    shapes = probe(module, torch.zeros(1, 3, input_size, input_size, device=device), paths)
    order = [(path, shape) for path, shape in shapes.items() if shape is not None
             and len(shape) == 3]
    kinds = {path: type(module.get_submodule(path)).__name__ for path, _ in order}
    return {path: LayerInfo(name=path, module=path, channels=shape[0], shape=shape,
                            kind="conv" if kinds[path] == "Conv2d" else "block")
            for path, shape in order}
