"""Weight-based connections between units: expanded weights ("Zoom In", "Visualizing Weights").

The expanded weight from channel ``i`` of an earlier (source) layer to a unit ``j`` of a later
(target) layer is a spatial kernel: how much, and where in ``j``'s receptive field, ``i`` excites
(positive) or inhibits (negative) ``j``. :func:`expanded_weights` returns them as a tensor
``[n_targets, C_in, h, w]``, for many targets at once. Two methods:

``exact``
    Multiply the kernels out. Between a conv layer and the conv that reads it, the kernel itself,
    with any eval-mode BatchNorm between them folded in (``gamma / sqrt(var + eps)`` per channel,
    on the conv's input or output side; its shift is the operating point, not a weight).
    Across an Inception block (``model.blocks``: block input -> block output), per branch: the 1x1
    kernel; for 3x3/5x5 branches the 3x3/5x5 kernel composed with its 1x1 bottleneck
    (``E[j, i] = sum_k W3x3[j, k] * W1x1[k, i]``), ignoring the ReLU between them. The pool branch
    (3x3 max-pool, then a 1x1 projection) uses the **average-pool equivalent**: the projection
    spread uniformly over the pool window (``W[j, i] / 9`` at each of the 3x3 positions), which is
    what the linearized method gives away from the border of the map. Kernels of all branches are
    centred in a common size (5x5 for GoogLeNet).

``linear``
    The linear approximation, for any pair of layers (across pools, concatenations, branches,
    several blocks, and up to the class logits): ReLUs become the identity and max-pools become
    average pools with the same geometry (averaging over the window's valid, non-padded entries);
    other non-linearities (local response normalisation) keep their gradient at the operating
    point. A residual addition passes both of its paths, so the skip connection of a block is
    an input like its convs (the identity kernel; exact where the block is linear once its ReLUs
    are, otherwise as approximate as the rest). The expanded weight is the gradient of the
    target unit's centre activation with respect to the source layer, taken at a zero source.
    Targets are batched: one batch of zero sources, one backward pass per chunk, the source
    map shrunk to the receptive field where the path keeps the spatial size (checked against
    the full-size map before it is used).

``auto`` (default) is ``exact`` where the path is a conv or an Inception block, ``linear``
otherwise. As the papers say, the linear approximation is exact where the layers in between are
linear and can mislead where cancellation happens: evidence, not proof.

``target="logits"`` (linear method only) gives, per class, the gradient of its logit with respect
to the whole source map, ``[n_classes, C_in, H, W]``.

:func:`rank_inputs` ranks a target's inputs by the L2 norm of their spatial kernels, keeping the
kernel (its sign pattern) and the sign of its sum (excitation +1, inhibition -1).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import CircuitsError
from .hooks import forward, hooks, probe, run_with_hooks
from .zoo.base import InceptionBlock, LayerInfo, LoadedModel

__all__ = ["Connection", "expanded_weights", "rank_inputs", "resolve_method", "exact_available",
           "linearized", "LOGITS", "METHODS"]

LOGITS = "logits"
METHODS = ("auto", "exact", "linear")
_MARGINS = (0, 2)  # source positions kept around the receptive field when the map is shrunk
_SMALL_IMAGE = 64  # input side tried for the layers before a shrunk source
_ZERO = 1e-9  # an input weaker than this fraction of the strongest is no input (rounding)
_ELEMENT_BUDGET = 12_000_000  # source-gradient elements per batch (activations scale with it)


# ---------------------------------------------------------------------------------------------
# Ranking


@dataclass(frozen=True)
class Connection:
    """One input of a target unit: source ``channel``, ``strength`` (L2 norm of its spatial
    kernel), ``sign`` (+1 excitation / -1 inhibition: the sign of the kernel's sum) and the
    ``kernel`` itself (h, w), signed."""

    channel: int
    strength: float
    sign: int
    kernel: np.ndarray

    def to_dict(self) -> dict:
        return {"channel": self.channel, "strength": self.strength, "sign": self.sign,
                "kernel": np.asarray(self.kernel, dtype=float).round(7).tolist()}


def rank_inputs(kernels, top_k: int | None = None) -> list[Connection]:
    """The inputs of one target, strongest first. ``kernels`` is ``[C_in, h, w]`` (a row of
    :func:`expanded_weights`), torch or numpy; ``top_k`` None keeps them all. Ties keep channel
    order. Inputs of strength 0 (below 1e-9 of the strongest: rounding) are left out, so fewer
    than ``top_k`` may come back."""
    k = kernels.detach().cpu().numpy() if isinstance(kernels, torch.Tensor) else np.asarray(kernels)
    if k.ndim != 3:
        raise ValueError(f"rank_inputs expects kernels [C_in, h, w], got shape {k.shape}")
    if top_k is not None and top_k < 1:
        raise CircuitsError(f"top-k must be at least 1, got {top_k}")
    k = k.astype(np.float64)
    strength = np.sqrt((k ** 2).sum(axis=(1, 2)))
    order = np.argsort(-strength, kind="stable")
    # an input of strength 0 is no input (a channel that the path does not reach): never listed
    floor = _ZERO * float(strength.max()) if strength.size else 0.0
    order = order[strength[order] > floor]
    if top_k is not None:
        order = order[:top_k]
    return [Connection(channel=int(c), strength=float(strength[c]),
                       sign=1 if k[c].sum() >= 0 else -1, kernel=k[c].astype(np.float32))
            for c in order]


# ---------------------------------------------------------------------------------------------
# Entry point


def expanded_weights(model: LoadedModel, source: str, target: str,
                     channels: Sequence[int] | None = None, method: str = "auto", *,
                     batch_size: int | None = None,
                     images: torch.Tensor | None = None) -> torch.Tensor:
    """Expanded weights ``[n_targets, C_in, h, w]`` from layer ``source`` to the units
    ``channels`` of layer ``target`` (all of them when None), on the model's device, detached.

    ``target`` may be ``"logits"`` (channels = class indices; linear method; the kernels then
    cover the whole source map). ``method``: ``auto``, ``exact`` or ``linear`` (module docstring).
    ``batch_size`` caps the targets per backward pass of the linear method (default: by memory).
    Through a token layer (a transformer's residual stream) the linear method freezes attention
    patterns, LayerNorm scales and activation gates on ``images`` ([0, 1] RGB; default a
    mid-grey image), :func:`frozen`: the kernels then span the whole token grid, to the target's
    centre patch (or its class token).
    """
    if method not in METHODS:
        raise CircuitsError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    src = model.layer(source)
    if target == LOGITS:
        if method == "exact":
            raise CircuitsError("the exact method has no path to the logits; use method "
                                "'linear' (or 'auto')")
        chans = _check_channels(channels, _n_logits(model), "logits")
        if through_tokens(model, src.name, LOGITS):
            return _frozen_linear(model, src, None, chans, images)
        return _linear(model, src, None, chans, batch_size)
    tgt = model.layer(target)
    if model.layer_index(src.name) >= model.layer_index(tgt.name):
        raise CircuitsError(f"source layer {src.name!r} does not come before target layer "
                            f"{tgt.name!r}; the source must be an earlier layer")
    chans = _check_channels(channels, tgt.channels, tgt.name)
    if resolve_method(model, src.name, tgt.name, method) == "exact":
        return _exact(model, src, tgt, chans)
    if through_tokens(model, src.name, tgt.name):
        return _frozen_linear(model, src, tgt, chans, images)
    return _linear(model, src, tgt, chans, batch_size)


def unit_weights(model: LoadedModel, source: str, target, method: str = "auto", *,
                 images: torch.Tensor | None = None) -> torch.Tensor:
    """Expanded weights ``[C_in, h, w]`` from layer ``source`` into one unit of any kind: a
    neuron's own kernels, or for a direction / dictionary feature its encoder direction applied
    to the expanded weights of every channel of its layer (``sum_j enc_j E[j]``, the linear part
    of its read-out; the bias and ReLU are the operating point)."""
    from .units import is_neuron

    if is_neuron(target):
        return expanded_weights(model, source, target.layer, [target.channel], method,
                                images=images)[0]
    info = model.layer(target.layer)
    enc = target.encoder(info.channels)
    kernels = expanded_weights(model, source, info.name, None, method, images=images)
    return torch.einsum("j,jchw->chw", enc.to(kernels.device, kernels.dtype), kernels)


@torch.no_grad()
def unit_to_logits(model: LoadedModel, unit, step: float = 1e-3) -> torch.Tensor:
    """(n_classes,) how much writing ``unit`` (its decoder direction, at every position of its
    layer) moves each class logit in the linearized network: the expanded weights to the logits
    summed over positions and contracted with the decoder, ``sum_chw E[k, c, h, w] dec_c``. Two
    forward passes (a finite difference along the decoder at the zero-source operating point)
    instead of a backward pass per class. Through attention (a token layer, or one before
    them) the difference is taken at the mid-grey image's own activations, in the network as
    it is: its local linearization."""
    info = model.layer(unit.layer)
    dec = unit.decoder(info.channels).to(model.device, _dtype(model))
    tokens = through_tokens(model, info.name, LOGITS)

    def source(amount):
        def fn(out, _hook):
            base = out if tokens else torch.zeros_like(out)
            return base + amount * dec.to(out.dtype)[None, :, None, None]
        return fn

    image = _image(model, 1)
    with contextlib.nullcontext() if tokens else linearized(model):
        outs = [run_with_hooks(model, image, [(info.name, source(a))], preprocess=False)
                for a in (0.0, step)]
    if outs[0] is None or outs[0].dim() != 2:
        raise CircuitsError("the model has no class logits to steer towards")
    return ((outs[1] - outs[0])[0] / step).float()


def through_decoders(kernels: torch.Tensor, units, channels: int) -> torch.Tensor:
    """Expanded weights from units of the source layer (any kind): each unit's decoder
    direction applied to the per-channel kernels ``[C_in, h, w]`` -> ``[len(units), h, w]``.
    For neurons this picks their kernels; for dictionary features of an earlier SAE it gives
    feature-to-feature weights (a feature circuit)."""
    dec = torch.stack([u.decoder(channels) for u in units]).to(kernels.device, kernels.dtype)
    return torch.einsum("kc,chw->khw", dec, kernels)


def resolve_method(model: LoadedModel, source: str, target: str, method: str = "auto") -> str:
    """``exact`` or ``linear``: what ``method`` means for this pair of layers (``exact`` where it
    is not available is an error)."""
    if method not in METHODS:
        raise CircuitsError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method == "linear" or target == LOGITS:
        if method == "exact":
            raise CircuitsError("the exact method has no path to the logits; use 'linear'")
        return "linear"
    available = exact_available(model, source, target)
    if method == "exact" and not available:
        raise CircuitsError(
            f"no exact path from {source!r} to {target!r}: the exact method covers a conv "
            "layer feeding a conv and an Inception block's input to its output; use method "
            "'linear' (or 'auto')")
    return "exact" if available else "linear"


def through_tokens(model: LoadedModel, source: str, target: str) -> bool:
    """Whether a hop from ``source`` to ``target`` (or the logits) reads, writes or crosses a
    token layer: its linear method freezes attention on the operating-point images
    (:func:`frozen`)."""
    names = list(model.layers)
    a = names.index(model.layer(source).name)
    b = len(names) - 1 if target == LOGITS else names.index(model.layer(target).name)
    return any(model.layers[n].tokens is not None for n in names[a:b + 1])


def exact_available(model: LoadedModel, source: str, target: str) -> bool:
    """Whether the exact method covers ``source`` -> ``target``."""
    if through_tokens(model, source, target):
        return False
    src, tgt = model.layer(source).name, model.layer(target).name
    block = model.blocks.get(tgt)
    if block is not None and model.layer(block.input).name == src:
        return _block_exactable(model, block)
    return _adjacent_conv(model, src, tgt) is not None


def _check_channels(channels, n: int, layer: str) -> list[int]:
    if channels is None:
        return list(range(n))
    chans = [int(c) for c in channels]
    if not chans:
        raise CircuitsError(f"no target units given for {layer!r}")
    bad = [c for c in chans if not 0 <= c < n]
    if bad:
        raise CircuitsError(f"channel {bad[0]} is out of range for {layer!r}, which has {n} "
                            f"channels (0-{n - 1})")
    return chans


# ---------------------------------------------------------------------------------------------
# Exact method


def _conv(model: LoadedModel, path: str) -> nn.Conv2d | None:
    try:
        conv = model.module.get_submodule(path)
    except AttributeError:
        return None
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or tuple(conv.dilation) != (1, 1):
        return None
    return conv


def _block_exactable(model: LoadedModel, block: InceptionBlock) -> bool:
    for branch in block.branches:
        convs = [_conv(model, p) for p in branch.convs]
        if not convs or any(c is None or tuple(c.stride) != (1, 1) for c in convs):
            return False
        if any(k % 2 == 0 for c in convs for k in c.kernel_size):
            return False
        if branch.pool is not None:
            k, s, p = branch.pool
            if s != 1 or 2 * p != k - 1:
                return False
    return True


def _compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Kernel of ``outer`` applied after ``inner`` (stride-1 'same' convs, no non-linearity):
    ``[o, m, a, b]`` after ``[m, i, c, d]`` -> ``[o, i, a+c-1, b+d-1]``."""
    if inner.shape[-2:] == (1, 1):
        return torch.einsum("omhw,mi->oihw", outer, inner[:, :, 0, 0])
    if outer.shape[-2:] == (1, 1):
        return torch.einsum("om,mihw->oihw", outer[:, :, 0, 0], inner)
    a, b = outer.shape[-2:]
    # full 2-D convolution over space, contraction over m: conv2d with the flipped outer kernel
    x = F.pad(inner.transpose(0, 1), (b - 1, b - 1, a - 1, a - 1))  # [i, m, c+2a-2, d+2b-2]
    return F.conv2d(x, outer.flip(-1, -2)).transpose(0, 1)


def _exact(model: LoadedModel, src: LayerInfo, tgt: LayerInfo, chans: list[int]) -> torch.Tensor:
    with torch.no_grad():
        block = model.blocks.get(tgt.name)
        if block is not None and model.layer(block.input).name == src.name:
            return _exact_block(model, block, src, tgt, chans)
        return _adjacent_conv(model, src.name, tgt.name)[chans].detach().clone()


def _exact_block(model: LoadedModel, block: InceptionBlock, src: LayerInfo, tgt: LayerInfo,
                 chans: list[int]) -> torch.Tensor:
    branches = []  # (first channel, n channels, convs, pool)
    start = 0
    for branch in block.branches:
        convs = [_conv(model, p) for p in branch.convs]
        n = convs[-1].out_channels
        branches.append((start, n, convs, branch.pool))
        start += n
    if start != tgt.channels or branches[0][2][0].in_channels != src.channels:
        raise CircuitsError(f"the block description of {tgt.name!r} does not match its layers "
                            f"({start} branch channels for {tgt.channels}); use method 'linear'")
    sizes = []
    for _, _, convs, pool in branches:
        size = sum(c.kernel_size[0] - 1 for c in convs) + 1 + (pool[0] - 1 if pool else 0)
        sizes.append(size)
    K = max(sizes)
    ref = branches[0][2][0].weight
    out = torch.zeros(len(chans), src.channels, K, K, dtype=ref.dtype, device=ref.device)
    index = torch.as_tensor(chans)
    for (first, n, convs, pool), size in zip(branches, sizes, strict=True):
        rows = ((index >= first) & (index < first + n)).nonzero().flatten()
        if len(rows) == 0:
            continue
        kernel = convs[-1].weight[index[rows] - first]
        for conv in reversed(convs[:-1]):
            kernel = _compose(kernel, conv.weight)
        if pool is not None:  # average-pool equivalent of the max-pool: a uniform k x k window
            k = pool[0]
            o, i = kernel.shape[:2]
            flat = kernel.reshape(o * i, 1, *kernel.shape[-2:])
            box = torch.full((1, 1, k, k), 1.0 / (k * k), dtype=kernel.dtype, device=kernel.device)
            kernel = F.conv2d(F.pad(flat, (k - 1,) * 4), box).reshape(o, i, size, size)
        pad = (K - size) // 2
        out[rows, :, pad:pad + size, pad:pad + size] = kernel
    return out


def _call_order(model: LoadedModel) -> list[str]:
    """conv-feeds-conv detection: the leaf modules in call order (kept in ``model.memo``)."""
    cached = model.memo.get("connections.call_order")
    if cached is None:
        cached = list(probe(model.module, _image(model, 1)))
        model.memo["connections.call_order"] = cached
    return cached


def _is_relu(module: nn.Module) -> bool:
    return "relu" in type(module).__name__.lower() and not list(module.parameters())


def _bn_scale(bn: nn.Module) -> torch.Tensor | None:
    """The per-channel scale ``gamma / sqrt(var + eps)`` of an eval-mode BatchNorm2d (its shift
    is the operating point, not a weight), None for one without running statistics."""
    if getattr(bn, "running_var", None) is None:
        return None
    scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    return scale.detach()


def _adjacent_conv(model: LoadedModel, source: str, target: str) -> torch.Tensor | None:
    """The kernel ``[C_out, C_in, kh, kw]`` from ``source`` to ``target`` when nothing but one
    conv, ReLUs and BatchNorms run between their hook points (module-wise), the BatchNorms folded
    in (before the conv: ``W[:, i] * s_i``; after it: ``W[o] * s_o``, with ``s`` = gamma /
    sqrt(var + eps)); else None."""
    src, tgt = model.layer(source), model.layer(target)
    order = _call_order(model)
    if src.module not in order or tgt.module not in order:
        return None
    a, b = order.index(src.module), order.index(tgt.module)
    if b <= a:
        return None
    between = [p for p in order[a + 1:b + 1]
               if not list(model.module.get_submodule(p).children())]
    convs = [p for p in between if isinstance(model.module.get_submodule(p), nn.Conv2d)]
    norms = [p for p in between if isinstance(model.module.get_submodule(p), nn.BatchNorm2d)]
    others = [p for p in between if p not in convs and p not in norms
              and not _is_relu(model.module.get_submodule(p))]
    if len(convs) != 1 or others:
        return None
    conv = _conv(model, convs[0])
    if conv is None or conv.in_channels != src.channels or conv.out_channels != tgt.channels:
        return None
    kernel = conv.weight.detach()
    for path in norms:
        bn = model.module.get_submodule(path)
        scale = _bn_scale(bn)
        if scale is None:
            return None
        before = between.index(path) < between.index(convs[0])
        if bn.num_features != (conv.in_channels if before else conv.out_channels):
            return None
        kernel = kernel * (scale.view(1, -1, 1, 1) if before else scale.view(-1, 1, 1, 1))
    return kernel


# ---------------------------------------------------------------------------------------------
# Linearization


def _avg_for_max(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False):
    """A max-pool's average-pool counterpart with the same geometry, averaging over the valid
    entries of each window (explicit -inf padding and implicit padding excluded)."""
    if return_indices or dilation not in (1, (1, 1), [1, 1]):
        return None
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel_size
    valid = torch.isfinite(x[:1])  # padding is the same for every item of the batch
    if bool(valid.all()):
        return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad=False)
    x0 = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    num = F.avg_pool2d(x0, kernel_size, stride, padding, ceil_mode, count_include_pad=True)
    den = F.avg_pool2d(valid.to(x.dtype), kernel_size, stride, padding, ceil_mode,
                       count_include_pad=True)
    return num / den.clamp_min(torch.finfo(x.dtype).tiny)


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6}
_RELU_NAMES = {"relu", "relu_", "relu6"}
_MAXPOOL_NAMES = {"max_pool2d", "_max_pool2d"}


class _Linearize(TorchFunctionMode):
    """Function-level linearization: relu -> identity, max_pool2d -> valid-entry average pool,
    adaptive max-pool -> adaptive average pool."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if func in _RELU_FUNCS or (name in _RELU_NAMES and getattr(func, "__module__", "")
                                   in ("torch.nn.functional", "torch")):
            return args[0]
        if func is F.max_pool2d or func is torch.max_pool2d or name in _MAXPOOL_NAMES:
            out = _avg_for_max(*args, **kwargs)
            if out is not None:
                return out
        if func is F.adaptive_max_pool2d and not kwargs.get("return_indices", False):
            return F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1
                                         else kwargs["output_size"])
        return func(*args, **kwargs)


@contextmanager
def linearized(model: LoadedModel):
    """Within the block, ``model.module`` runs linearized: every ReLU (modules, functional calls,
    lucent's redirected ReLU) is the identity and every max-pool an average pool."""
    # a ReLU module's output becomes its input (works for custom autograd ReLUs too; in-place
    # functional relus are already identities under _Linearize)
    relus = [(path, _identity) for path, sub in model.module.named_modules()
             if path and _is_relu(sub)]
    with hooks(model.module, relus), _Linearize():
        yield


def _identity(_out: torch.Tensor, hook) -> torch.Tensor:
    return hook.inputs[0]


def _image(model: LoadedModel, n: int, side: int | None = None) -> torch.Tensor:
    """A mid-grey input batch (the operating point of the layers before the source)."""
    p = next(model.module.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    side = side or model.input_size
    x = torch.full((n, 3, side, side), 0.5, dtype=dtype, device=model.device)
    return model.preprocess(x)


def _grad(model: LoadedModel, src: LayerInfo, tgt: LayerInfo | None, coef: torch.Tensor,
          size: tuple[int, int] | None, side: int | None = None
          ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Gradient of ``sum_j coef[b, j] * target[b, j, centre]`` (or the logits) with respect to
    a zero source of spatial ``size`` (None: the natural one), in the linearized network.
    ``side``: size of the input image that runs the layers before the source (None: the
    model's). Returns ([n, C_in, H, W], target shape)."""
    n = coef.shape[0]
    state: dict = {}

    def on_source(out, _hook):
        shape = (n, out.shape[1], *(size or out.shape[2:]))
        state["src"] = torch.zeros(shape, dtype=out.dtype, device=out.device, requires_grad=True)
        return state["src"]

    def run(image):
        with torch.enable_grad(), linearized(model):
            with hooks(model, [(src.name, on_source)],
                       stop_at=tgt.name if tgt is not None else None,
                       capture=[tgt.name] if tgt is not None else ()) as acts:
                logits = forward(model, image)
            if tgt is not None and tgt.name not in acts:
                raise CircuitsError(f"layer {tgt.name!r} was not computed by the forward pass")
            state["tgt"] = acts[tgt.name] if tgt is not None else logits
            out = state["tgt"]
            if tgt is None:
                if out.dim() != 2:
                    raise CircuitsError(f"the model's output has shape {tuple(out.shape)}, not "
                                        "(N, classes); it has no logits to explain")
                value = (out * coef).sum()
            else:
                if out.dim() == 4:
                    out = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
                value = (out.reshape(out.shape[0], -1) * coef).sum()
            if "src" not in state:
                raise CircuitsError(f"layer {src.name!r} was not computed before "
                                    f"{tgt.name if tgt else 'the logits'!r}")
            if not value.requires_grad:
                raise CircuitsError(f"{tgt.name if tgt else 'the logits'!r} does not depend on "
                                    f"layer {src.name!r}")
            (grad,) = torch.autograd.grad(value, state["src"])
            return grad, tuple(state["tgt"].shape[1:])

    try:
        return run(_image(model, 1, side))
    except RuntimeError:
        if n == 1:
            raise
        return run(_image(model, n, side))  # something after the source mixes in earlier layers


@dataclass(frozen=True)
class _Geometry:
    size: tuple[int, int] | None  # source map size to compute at (None: natural)
    window: tuple[slice, slice]   # crop of the gradient that holds the receptive field
    target_shape: tuple[int, ...]
    side: int | None = None       # input image size that runs the layers before the source



def _support_box(g: torch.Tensor) -> tuple[int, int, int, int] | None:
    mask = g.abs().sum(dim=(0, 1)) > 0
    if not mask.any():
        return None
    ys, xs = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1])


def _geometry(model: LoadedModel, src: LayerInfo, tgt: LayerInfo | None) -> _Geometry:
    """Where the target's receptive field lies in the source map, and the smallest source map
    that computes it exactly; found with one probe (a random mix of all target channels)."""
    key = (src.name, tgt.name if tgt else LOGITS, model.input_size)
    per_model = model.memo.setdefault("connections.geometry", {})
    if key in per_model:
        return per_model[key]
    n_out = tgt.channels if tgt else _n_logits(model)
    gen = torch.Generator().manual_seed(0)
    coef = torch.randn(1, n_out, generator=gen).to(model.device, _dtype(model))
    g, tshape = _grad(model, src, tgt, coef, None)
    H, W = g.shape[-2:]
    if tgt is None or len(tshape) != 3:
        geo = _Geometry(None, (slice(0, H), slice(0, W)), tshape)
        per_model[key] = geo
        return geo
    box = _support_box(g)
    if box is None:
        raise CircuitsError(f"layer {tgt.name!r} does not depend on layer {src.name!r} in the "
                            "linearized network (no path between them)")
    same = tuple(tshape[1:]) == (H, W)
    size, image_side = None, None
    # a receptive field that reaches the border of the map: compute on a larger source map
    # (odd for a stride-1 path; for a strided one grown by multiples of 16, which keeps the
    # phase of strides up to 16 between the target's centre and the source)
    limit = 8 * max(H, W)
    while max(H, W) < limit and (box[0] == 0 or box[2] == 0 or box[1] == H - 1
                                 or box[3] == W - 1):
        if same:
            size = (2 * H + 1, 2 * W + 1)
        else:
            size = (H + 16 * math.ceil(H / 16), W + 16 * math.ceil(W / 16))
        g, tshape = _grad(model, src, tgt, coef, size)
        H, W = g.shape[-2:]
        box = _support_box(g)
    y0, y1, x0, x1 = box
    if not same and (y0 == 0 or x0 == 0 or y1 == H - 1 or x1 == W - 1):
        warnings.warn(f"the receptive field of {tgt.name} reaches the border of {src.name}; "
                      "its expanded weights are cut at the border", stacklevel=3)
    window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    if same:  # shrink the map to the receptive field (plus a margin), if the probe agrees
        cy, cx = H // 2, W // 2
        radius = max(cy - y0, y1 - cy, cx - x0, x1 - cx)
        full = g[..., window[0], window[1]]
        found = False
        for margin in _MARGINS:
            s = 2 * (radius + margin) + 1
            if s >= min(H, W):
                break
            c = s // 2
            crop = (slice(c - (cy - y0), c + (y1 - cy) + 1),
                    slice(c - (cx - x0), c + (x1 - cx) + 1))
            # the layers before the source only set the operating point: try a small image
            for side in (_SMALL_IMAGE, None):
                try:
                    small, small_shape = _grad(model, src, tgt, coef, (s, s), side)
                except (RuntimeError, ValueError, CircuitsError):
                    continue
                if small_shape[1:] == (s, s) and torch.allclose(
                        small[..., crop[0], crop[1]], full, rtol=1e-4,
                        atol=1e-6 * float(full.abs().max())):
                    size, window, image_side, found = (s, s), crop, side, True
                    break
            if found:
                break
    geo = _Geometry(size, window, tshape, image_side)
    per_model[key] = geo
    return geo


def _dtype(model: LoadedModel) -> torch.dtype:
    p = next(model.module.parameters(), None)
    return p.dtype if p is not None else torch.float32


def _n_logits(model: LoadedModel) -> int:
    if model.labels:
        return len(model.labels)
    with torch.no_grad():
        out = model.module(_image(model, 1))
    if out.dim() != 2:
        raise CircuitsError(f"the model's output has shape {tuple(out.shape)}, not (N, classes); "
                            "it has no logits to explain")
    return out.shape[1]


def _linear(model: LoadedModel, src: LayerInfo, tgt: LayerInfo | None, chans: list[int],
            batch_size: int | None) -> torch.Tensor:
    geo = _geometry(model, src, tgt)
    n_out = tgt.channels if tgt else _n_logits(model)
    H, W = geo.size or (src.shape[1:] if src.shape else (1, 1))
    if batch_size is None:
        batch_size = max(1, _ELEMENT_BUDGET // max(1, src.channels * H * W))
    n_chunks = math.ceil(len(chans) / batch_size)
    per = math.ceil(len(chans) / n_chunks)
    out = []
    for start in range(0, len(chans), per):
        part = torch.as_tensor(chans[start:start + per], device=model.device)
        coef = torch.zeros(len(part), n_out, dtype=_dtype(model), device=model.device)
        coef[torch.arange(len(part), device=model.device), part] = 1.0
        g, _ = _grad(model, src, tgt, coef, geo.size, geo.side)
        out.append(g[..., geo.window[0], geo.window[1]].detach())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# Through attention: nonlinearities frozen at the operating point

_GATED = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
          F.gelu, F.silu, F.hardswish, F.mish, F.elu, F.leaky_relu, F.leaky_relu_}


def _frozen_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
    """Scaled dot-product attention with its pattern (the softmax) detached: linear in v."""
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    scores = (q @ k.transpose(-2, -1)) * s
    if is_causal:
        L, S = scores.shape[-2:]
        causal = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask
    return scores.softmax(-1).detach() @ v


class _Freeze(TorchFunctionMode):
    """The network made linear in its activations at the operating point: attention patterns
    (softmax, scaled dot-product attention) detached, LayerNorm dividing by its detached
    standard deviation, each activation function a detached gate times its input."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return _frozen_sdpa(*args, **kwargs)
        if func in (F.softmax, torch.softmax, torch.Tensor.softmax):
            return func(*args, **kwargs).detach()
        if func is F.layer_norm:
            x, shape = args[0], args[1]
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            bias = args[3] if len(args) > 3 else kwargs.get("bias")
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            dims = tuple(range(-len(shape), 0))
            mean = x.mean(dims, keepdim=True)
            std = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + eps).detach()
            y = (x - mean) / std
            y = y * weight if weight is not None else y
            return y + bias if bias is not None else y
        if func in _GATED:
            x = args[0]
            inplace = func in (torch.relu_, torch.Tensor.relu_, F.leaky_relu_) \
                or kwargs.get("inplace", False) or (len(args) > 1 and args[-1] is True)
            with torch.no_grad():
                y = func(x.clone(), *args[1:], **kwargs) if inplace else \
                    func(*args, **kwargs)
                gate = torch.where(x != 0, y / torch.where(x != 0, x, 1), 0)
            return x * gate
        if func is F.multi_head_attention_forward:
            frozen_mha = _frozen_mha(*args, **kwargs)
            if frozen_mha is not None:
                return frozen_mha
        return func(*args, **kwargs)


def _frozen_mha(*args, **kwargs):
    """``F.multi_head_attention_forward`` (nn.MultiheadAttention, torchvision's ViT) with its
    attention pattern detached, for plain self-attention (packed in-projection, no masks or
    extra key/value biases); None for other uses (then run as it is)."""
    import inspect

    a = inspect.signature(F.multi_head_attention_forward).bind(*args, **kwargs)
    a.apply_defaults()
    p = a.arguments
    if (p["bias_k"] is not None or p["bias_v"] is not None or p["add_zero_attn"]
            or p["key_padding_mask"] is not None or p["attn_mask"] is not None
            or p["use_separate_proj_weight"] or p["static_k"] is not None
            or p["static_v"] is not None or p["is_causal"]):
        return None
    q_in, k_in, v_in = p["query"], p["key"], p["value"]  # (L, N, E)
    heads, w, b = p["num_heads"], p["in_proj_weight"], p["in_proj_bias"]
    E = q_in.shape[-1]
    wq, wk, wv = w.chunk(3)
    bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
    L, N = q_in.shape[:2]

    def split(t):  # (L, N, E) -> (N, heads, L, E / heads)
        return t.reshape(t.shape[0], N, heads, E // heads).permute(1, 2, 0, 3)

    q = split(F.linear(q_in, wq, bq))
    k = split(F.linear(k_in, wk, bk))
    v = split(F.linear(v_in, wv, bv))
    pattern = ((q @ k.transpose(-2, -1)) / math.sqrt(E // heads)).softmax(-1).detach()
    out = (pattern @ v).permute(2, 0, 1, 3).reshape(L, N, E)
    out = F.linear(out, p["out_proj_weight"], p["out_proj_bias"])
    weights = None
    if p["need_weights"]:
        weights = pattern.mean(1) if p["average_attn_weights"] else pattern
    return out, weights


@contextmanager
def frozen(model: LoadedModel):
    """Within the block, ``model.module`` runs linear in its activations, with attention
    patterns, LayerNorm scales and activation gates frozen at the values of the pass (what
    attribution graphs do): the gradient of a later layer with respect to an earlier one is then
    exactly the linear map of the frozen network, at the images run."""
    with _Freeze():
        yield


def _operating_images(model: LoadedModel, images: torch.Tensor | None) -> torch.Tensor:
    if images is None:
        return _image(model, 1)
    side = model.input_size
    x = images.to(model.device, _dtype(model))
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return model.preprocess(x)


def _frozen_linear(model: LoadedModel, src: LayerInfo, tgt: LayerInfo | None, chans: list[int],
                   images: torch.Tensor | None) -> torch.Tensor:
    """Expanded weights through attention: the gradient of each target's centre (or logit) with
    respect to the whole source map, in the frozen network (:func:`frozen`), averaged over the
    operating-point ``images``."""
    x = _operating_images(model, images)
    n_img = x.shape[0]
    n_out = tgt.channels if tgt else _n_logits(model)
    per = max(1, 32 // n_img)
    out = []
    for start in range(0, len(chans), per):
        part = chans[start:start + per]
        n = len(part)
        coef = torch.zeros(n, n_out, dtype=_dtype(model), device=model.device)
        coef[torch.arange(n), torch.as_tensor(part)] = 1.0 / n_img
        state: dict = {}

        def on_source(act, _hook):
            delta = torch.zeros((n, *act.shape[1:]), dtype=act.dtype, device=act.device,
                                requires_grad=True)
            state["src"] = delta
            return act.detach() + delta.repeat_interleave(n_img, dim=0)

        with torch.enable_grad(), frozen(model):
            with hooks(model, [(src.name, on_source)],
                       stop_at=tgt.name if tgt is not None else None,
                       capture=[tgt.name] if tgt is not None else ()) as acts:
                logits = forward(model, x.repeat(n, 1, 1, 1))
            value = acts[tgt.name] if tgt is not None else logits
            if tgt is None and value.dim() != 2:
                raise CircuitsError(f"the model's output has shape {tuple(value.shape)}, not "
                                    "(N, classes); it has no logits to explain")
            if value.dim() == 4:
                value = value[:, :, value.shape[2] // 2, value.shape[3] // 2]
            value = value.reshape(n, n_img, -1)
            if "src" not in state or not value.requires_grad:
                raise CircuitsError(f"{tgt.name if tgt else 'the logits'!r} does not depend on "
                                    f"layer {src.name!r}")
            total = (value * coef[:, None, :]).sum()
            (grad,) = torch.autograd.grad(total, state["src"])
        out.append(grad.detach())
    return torch.cat(out)
