"""The one interface every model of the zoo answers.

A :class:`LoadedModel` is an ``nn.Module`` in eval mode plus what circuit work needs to know about
it: its addressable layers in forward order (with the branch split of Inception blocks), how an
image in [0, 1] becomes the model's input, its class labels and where its weights came from.
"""

from __future__ import annotations

import math
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
    #: A token layer (a module output (N, T, D), e.g. a transformer block's residual stream) is
    #: read as a feature map: ``("patches", P)`` the patch tokens after P prefix tokens (class,
    #: registers) laid out on their square grid, (N, D, h, w); ``("cls", i)`` token i alone, a
    #: 1x1 map (N, D, 1, 1). None for a feature map. :mod:`circuits_cli.hooks` does the view.
    tokens: tuple[str, int] | None = None

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
    #: Which element of the module's output holds the logits, in words (``output[0] of a tuple
    #: of 2``), when it returns a tuple or dict (:mod:`circuits_cli.zoo.outputs`); "" otherwise.
    output: str = ""
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


def normalizer(mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    """Preprocessing from [0, 1] RGB with the per-channel ``mean`` and ``std`` of a model's
    config (timm's data config, a user model's ``mean``/``std`` attributes)."""
    mean_t = torch.as_tensor([float(m) for m in mean]).view(1, 3, 1, 1)
    std_t = torch.as_tensor([float(s) for s in std]).view(1, 3, 1, 1)
    if torch.allclose(mean_t, torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) and \
            torch.allclose(std_t, torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)):
        return imagenet_normalize

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x - mean_t.to(x.device, x.dtype)) / std_t.to(x.device, x.dtype)

    return normalize


def _grid(tokens: int, prefix: int | None) -> int | None:
    """The number of prefix tokens of a sequence of ``tokens`` whose rest is a square grid of
    patches (``prefix`` when known, else 0 or 1 tried in turn), None when there is none."""
    for p in ([prefix] if prefix is not None else [0, 1]):
        n = tokens - p
        if n > 1 and math.isqrt(n) ** 2 == n:
            return p
    return None


def _stacked(module: nn.Module, path: str) -> bool:
    """Whether ``path`` is an element of a stack of blocks (its parent a Sequential or
    ModuleList): the residual stream between transformer blocks, not a branch inside one."""
    parent = path.rpartition(".")[0]
    holder = module.get_submodule(parent) if parent else module
    return isinstance(holder, (nn.Sequential, nn.ModuleList))


def discover_layers(module: nn.Module, input_size: int,
                    keep: Callable[[str, nn.Module], bool],
                    prefix_tokens: int | None = None) -> dict[str, LayerInfo]:
    """Layers of an arbitrary network: the modules ``keep`` accepts, in the order they run,
    with their output shapes, found by one forward pass on a zero image.

    Feature maps (N, C, H, W) are layers as they are. Token sequences (N, T, D) output by the
    elements of a stack of blocks (the residual stream of a transformer) are layers too, read
    over their patch tokens as a (D, h, w) map (``tokens=("patches", P)``; ``prefix_tokens``
    P is the number of class/register tokens before the patches, guessed as 0 or 1 when None);
    with a class token, ``NAME/cls`` is the class token alone, a (D, 1, 1) layer."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    paths = [path for path, sub in module.named_modules() if path and keep(path, sub)]
    shapes = probe(module, torch.zeros(1, 3, input_size, input_size, device=device), paths)
    layers: dict[str, LayerInfo] = {}
    for path, shape in shapes.items():
        if shape is None:
            continue
        if len(shape) == 3:
            kind = "conv" if type(module.get_submodule(path)).__name__ == "Conv2d" else "block"
            layers[path] = LayerInfo(name=path, module=path, channels=shape[0], shape=shape,
                                     kind=kind)
            continue
        if len(shape) != 2 or not _stacked(module, path):
            continue
        tokens, dim = shape
        prefix = _grid(tokens, prefix_tokens)
        if prefix is None:
            continue
        side = math.isqrt(tokens - prefix)
        layers[path] = LayerInfo(name=path, module=path, channels=dim, shape=(dim, side, side),
                                 kind="tokens", tokens=("patches", prefix))
        if prefix >= 1:
            layers[f"{path}/cls"] = LayerInfo(name=f"{path}/cls", module=path, channels=dim,
                                              shape=(dim, 1, 1), kind="token",
                                              tokens=("cls", 0))
    return layers
