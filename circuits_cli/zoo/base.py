"""The one interface every model of the zoo answers.

A :class:`LoadedModel` is an ``nn.Module`` in eval mode plus what circuit work needs to know about
it: its addressable layers in forward order (with the branch split of Inception blocks), how an
image in [0, 1] becomes the model's input, its class labels and where its weights came from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..errors import CircuitsError, suggest
from ..hooks import dataflow


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
    #: The layer this one collapses into for tracing, when it holds the same tensor (a block
    #: and its last module) or only a per-channel BatchNorm / activation of it (conv, then
    #: BatchNorm, then ReLU: the ReLU's output is the layer): see :func:`collapse_aliases`.
    alias_of: str | None = None

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
    #: Why the model has no class logits (a backbone returning feature maps), "" when it has:
    #: :meth:`require_logits` refuses with it.
    no_logits: str = ""
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

    @property
    def fixed_input_size(self) -> bool:
        """Whether the network takes only ``input_size`` images: one with token layers (its
        position embeddings fix the number of patches)."""
        return any(info.tokens is not None for info in self.layers.values())

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

    def require_logits(self) -> None:
        """A clear error when the model returns no class logits (checked before any work)."""
        if self.no_logits:
            raise CircuitsError(f"this needs class logits, and {self.no_logits}")

    @torch.no_grad()
    def logits(self, images01: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of RGB images in [0, 1] (N, 3, H, W)."""
        self.require_logits()
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
    flow = dataflow(module, torch.zeros(1, 3, input_size, input_size, device=device), paths)
    layers: dict[str, LayerInfo] = {}
    for path, out, _ in flow:
        if out is None:
            continue
        shape = tuple(out.shape[1:])
        if len(shape) == 3 and shape[0] == shape[1] != shape[2] and shape[2] > shape[0] \
                and type(module.get_submodule(path)).__name__ != "Conv2d":
            continue  # channels-last (N, H, W, C) inside a block (timm's ConvNeXt MLP): no map
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
    return collapse_aliases(module, layers, flow)


#: Modules that act per channel (or per element) on one input: their output is the layer they
#: read, rescaled or rectified, and collapses into it for tracing.
_PER_CHANNEL = ("BatchNorm", "ReLU", "ReLU6", "GELU", "SiLU", "LeakyReLU", "ELU", "Hardswish",
                "Sigmoid", "Tanh", "Identity", "Dropout", "Dropout2d", "FrozenBatchNorm2d",
                "Mish", "Softplus", "StochasticDepth", "DropPath")


def _per_channel(sub: nn.Module) -> bool:
    name = type(sub).__name__
    return any(name.startswith(p) for p in _PER_CHANNEL) and not list(sub.children())


def collapse_aliases(module: nn.Module, layers: dict[str, LayerInfo],
                     flow: list[tuple[str, torch.Tensor | None, torch.Tensor | None]]
                     ) -> dict[str, LayerInfo]:
    """Mark aliases (``LayerInfo.alias_of``): layers that hold the same tensor as another (a
    block and its last block or module; an in-place ReLU and the conv before it), and layers
    that are a per-channel module (BatchNorm, ReLU, ...) applied to another layer. Each group
    is one layer for tracing, named by its shallowest member (the last of those in call order):
    ``layer4`` for ``layer4`` and ``layer4.1``; the ReLU for conv -> BatchNorm -> ReLU (also
    when a Sequential ends with them: the Sequential holds earlier layers too)."""
    group: dict[str, int] = {}  # layer -> group id
    by_tensor: dict[tuple, int] = {}
    new_ids = itertools.count()

    def key(t: torch.Tensor) -> tuple:
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))

    for path, out, first in flow:
        if path not in layers or layers[path].tokens is not None or out is None:
            continue
        gid = by_tensor.get(key(out))
        if gid is None and first is not None and _per_channel(module.get_submodule(path)) \
                and first.shape == out.shape:
            gid = by_tensor.get(key(first))
        if gid is None:
            gid = next(new_ids)
        group[path] = gid
        by_tensor[key(out)] = gid
    members: dict[int, list[str]] = {}
    for path in layers:  # call order
        if path in group:
            members.setdefault(group[path], []).append(path)
    out_layers = dict(layers)
    for names in members.values():
        if len(names) < 2:
            continue
        # a Sequential ending in conv -> BatchNorm -> ReLU is not that layer: it holds the
        # earlier ones too. A block ending in a ReLU of its sum, or a stage ending in a block,
        # is its output (and named for it).
        start = module.get_submodule(layers[names[0]].module)
        leaf_op = not list(start.children()) and not _per_channel(start)
        eligible = [n for n in names if not (leaf_op and layers[names[0]].module.startswith(
            layers[n].module + "."))]
        depth = min(n.count(".") for n in eligible)
        canonical = [n for n in eligible if n.count(".") == depth][-1]
        for n in names:
            if n != canonical:
                out_layers[n] = replace(layers[n], alias_of=canonical)
    return out_layers
