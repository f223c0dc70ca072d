"""The local replacement model: the network with its nonlinear parts frozen for one input.

Attribution graphs ("Circuit Tracing", Ameisen et al., 2025) read a computation through a
*local replacement model*: for the input at hand, everything that makes the network nonlinear is
fixed at the value it took, so that what remains is linear in the activations it carries. For a
vision network that means:

- **ReLU gates** (and ReLU6, leaky ReLU, hardtanh): the mask of where the unit passed its input;
- **max-pool selections**: the index each window chose;
- **local response normalisation**: the denominator (Inception models);
- **layer / group normalisation**: the scale ``1/σ`` (the mean stays, it is linear);
- **smooth activations** (GELU, SiLU, ELU, ...): the ratio ``f(x)/x`` at the point;
- **softmax, sigmoid, tanh** (attention patterns, squeeze-and-excitation gates): their output.

BatchNorm in eval, convolutions, linear layers, pools that average, additions and concatenations
are linear already. Each frozen piece takes exactly the value it had, so the replacement model's
activations on the recorded input equal the network's; its map from any layer to any later one is
affine, and a target's value is exactly the sum of its inputs' contributions plus a bias.

:func:`record` runs the network once and keeps each piece's frozen state in call order;
:func:`replay` runs it again (on any batch, any values) with those states, through a
:class:`~torch.overrides.TorchFunctionMode` that sees the functional calls every module makes.
Functions it does not know run as they are: their gradient at the point stands in for the frozen
map, and :attr:`Frozen.unfrozen` names them so that the graph's metadata can say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_RELU = {"relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_"}
_SMOOTH = {"gelu", "silu", "silu_", "elu", "elu_", "selu", "celu", "mish", "softplus",
           "hardswish", "hardsigmoid"}
_CONSTANT = {"softmax", "_softmax", "sigmoid", "sigmoid_", "tanh", "tanh_", "log_softmax"}
_MAXPOOL = {"max_pool1d", "max_pool2d", "_max_pool2d", "max_pool2d_with_indices",
            "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
_KNOWN_LINEAR = {"conv2d", "conv1d", "linear", "batch_norm", "avg_pool2d", "adaptive_avg_pool2d",
                 "dropout", "cat", "add", "flatten", "mean", "matmul", "bmm", "einsum"}

#: What each kind of frozen piece is called in a graph's metadata.
DESCRIPTION = {
    "relu": "ReLU gates (the mask of units that passed their input)",
    "maxpool": "max-pool selections (the index each window chose)",
    "lrn": "local response normalisation denominators",
    "norm": "layer/group normalisation scales (1/sigma; the mean stays linear)",
    "smooth": "smooth activations as their ratio f(x)/x at the point (GELU, SiLU, ...)",
    "constant": "softmax, sigmoid and tanh outputs (attention patterns and gates) held fixed",
    "sae": "each SAE's active set (the features that fired)",
}


def _name(func) -> str:
    return getattr(func, "__name__", "")


def _arg(args, kwargs, i: int, key: str, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(key, default)


def _lrn_denominator(x: torch.Tensor, size: int, alpha: float, beta: float, k: float):
    """``(k + alpha/size * sum of x^2 over the channel window)^beta``, as PyTorch computes it."""
    div = x.mul(x).unsqueeze(1)
    if x.dim() == 3:
        div = F.pad(div, (0, 0, size // 2, (size - 1) // 2))
        div = F.avg_pool2d(div, (size, 1), stride=1).squeeze(1)
    else:
        shape = x.shape
        div = div.view(shape[0], 1, shape[1], shape[2], -1)
        div = F.pad(div, (0, 0, 0, 0, size // 2, (size - 1) // 2))
        div = F.avg_pool3d(div, (size, 1, 1), stride=1).squeeze(1).view(shape)
    return div.mul(alpha).add(k).pow(beta)


@dataclass
class Frozen:
    """The frozen state of one forward pass, in call order: ``(kind, state)`` pairs."""

    states: list[tuple[str, object]] = field(default_factory=list)
    unfrozen: set[str] = field(default_factory=set)

    def kinds(self) -> list[str]:
        """The kinds of pieces frozen, in the order of :data:`DESCRIPTION`."""
        present = {k for k, _ in self.states}
        return [k for k in DESCRIPTION if k in present]


class _Mode(TorchFunctionMode):
    """Records frozen states (``replaying=False``) or applies them (``replaying=True``)."""

    def __init__(self, frozen: Frozen, replaying: bool):
        super().__init__()
        self.frozen = frozen
        self.replaying = replaying
        self.i = 0

    def _next(self, kind: str):
        if self.i >= len(self.frozen.states):
            raise RuntimeError("the replayed forward pass calls more nonlinear functions than "
                               "the recorded one")
        got, state = self.frozen.states[self.i]
        if got != kind:
            raise RuntimeError(f"replayed call {self.i} is {kind}, recorded {got}")
        self.i += 1
        return state

    def _keep(self, kind: str, state) -> None:
        self.frozen.states.append((kind, state))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in _RELU or name in _SMOOTH:
            return self._gate("relu" if name in _RELU else "smooth", func, name, args, kwargs)
        if name in _CONSTANT:
            if self.replaying:
                return self._next("constant")
            out = func(*args, **kwargs)
            self._keep("constant", out.detach())
            return out
        if name in _MAXPOOL:
            return self._maxpool(func, name, args, kwargs)
        if name == "local_response_norm":
            x = args[0]
            if self.replaying:
                return x / self._next("lrn")
            size, alpha = _arg(args, kwargs, 1, "size"), _arg(args, kwargs, 2, "alpha", 1e-4)
            beta, k = _arg(args, kwargs, 3, "beta", 0.75), _arg(args, kwargs, 4, "k", 1.0)
            with torch.no_grad():
                self._keep("lrn", _lrn_denominator(x, size, alpha, beta, k).detach())
            return func(*args, **kwargs)
        if name in ("layer_norm", "group_norm"):
            return self._norm(func, name, args, kwargs)
        if name == "scaled_dot_product_attention":
            return self._attention(func, args, kwargs)
        if name == "multi_head_attention_forward" and _plain_mha(args, kwargs):
            return self._mha(func, args, kwargs)
        if not self.replaying and name and name not in _KNOWN_LINEAR and _nonlinear_guess(name):
            self.frozen.unfrozen.add(name)
        return func(*args, **kwargs)

    def _gate(self, kind, func, name, args, kwargs):
        """An elementwise activation as a factor on its input: 1 where a ReLU passed its input,
        the slope elsewhere (leaky ReLU), 0 where it was cut (or clipped, for ReLU6 and
        hardtanh); for smooth activations f(x)/x at the point."""
        x = args[0]
        if self.replaying:
            return x * self._next(kind)
        if name.endswith("_") or kwargs.get("inplace") or (len(args) > 1 and args[-1] is True):
            x = x.clone()  # an in-place activation overwrites the input it is a factor on
        out = func(*args, **kwargs)
        with torch.no_grad():
            gate = torch.where(x != 0, out / torch.where(x != 0, x, torch.ones_like(x)),
                               torch.zeros_like(x))
        self._keep(kind, gate.detach())
        return out

    def _maxpool(self, func, name, args, kwargs):
        x = args[0]
        if self.replaying:
            idx, shape = self._next("maxpool")
            flat = x.flatten(-2)
            n = flat.shape[0]
            picked = flat.gather(-1, idx.flatten(-2).expand(n, *idx.shape[1:-2], -1))
            out = picked.view(n, *shape[1:])
            return (out, idx) if "indices" in name or kwargs.get("return_indices") else out
        if name.startswith("adaptive"):
            out, idx = F.adaptive_max_pool2d(x, _arg(args, kwargs, 1, "output_size"),
                                             return_indices=True)
        else:
            ks = _arg(args, kwargs, 1, "kernel_size")
            stride = _arg(args, kwargs, 2, "stride") or ks
            padding = _arg(args, kwargs, 3, "padding", 0)
            dilation = _arg(args, kwargs, 4, "dilation", 1)
            ceil = _arg(args, kwargs, 5, "ceil_mode", False)
            out, idx = F.max_pool2d(x, ks, stride, padding, dilation, ceil_mode=ceil,
                                    return_indices=True)
        self._keep("maxpool", (idx.detach(), tuple(out.shape)))
        return (out, idx) if "indices" in name or kwargs.get("return_indices") else out

    def _norm(self, func, name, args, kwargs):
        x = args[0]
        if name == "layer_norm":
            shape = tuple(_arg(args, kwargs, 1, "normalized_shape"))
            weight, bias = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
            eps = _arg(args, kwargs, 4, "eps", 1e-5)
            dims = tuple(range(-len(shape), 0))
            mean = x.mean(dim=dims, keepdim=True)
            if self.replaying:
                rstd = self._next("norm")
            else:
                with torch.no_grad():
                    rstd = (x.var(dim=dims, keepdim=True, unbiased=False) + eps).rsqrt()
                self._keep("norm", rstd.detach())
                return func(*args, **kwargs)
            out = (x - mean) * rstd
            if weight is not None:
                out = out * weight
            return out + bias if bias is not None else out
        groups = _arg(args, kwargs, 1, "num_groups")
        weight, bias = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
        eps = _arg(args, kwargs, 4, "eps", 1e-5)
        n, c = x.shape[:2]
        g = x.reshape(n, groups, -1)
        mean = g.mean(-1, keepdim=True)
        if self.replaying:
            rstd = self._next("norm")
        else:
            with torch.no_grad():
                rstd = (g.var(-1, keepdim=True, unbiased=False) + eps).rsqrt()
            self._keep("norm", rstd.detach())
            return func(*args, **kwargs)
        out = ((g - mean) * rstd).reshape(x.shape)
        view = (1, c) + (1,) * (x.dim() - 2)
        if weight is not None:
            out = out * weight.view(view)
        return out + bias.view(view) if bias is not None else out

    def _mha(self, func, args, kwargs):
        """nn.MultiheadAttention's functional form with its attention pattern held: the output
        is out_proj(pattern @ v_proj(value)), linear in the value."""
        a = _mha_args(args, kwargs)
        value, heads = a["value"], int(a["num_heads"])
        s, n, e = value.shape
        if self.replaying:
            pattern = self._next("constant")  # (1, heads, L, S)
            w_v = a["in_proj_weight"][2 * e:]
            b_v = a["in_proj_bias"][2 * e:] if a.get("in_proj_bias") is not None else None
            v = F.linear(value, w_v, b_v)  # (S, N, E)
            v = v.reshape(s, n * heads, e // heads).transpose(0, 1)  # (N*heads, S, hd)
            p = pattern.expand(n, *pattern.shape[1:]).reshape(n * heads, *pattern.shape[2:])
            out = (p @ v).transpose(0, 1).reshape(-1, n, e)  # (L, N, E)
            out = F.linear(out, a["out_proj_weight"], a["out_proj_bias"])
            return out, (pattern if a.get("need_weights") else None)
        kw = dict(kwargs)
        call = list(args)
        for key, val in (("need_weights", True), ("average_attn_weights", False)):
            i = _MHA_ARGS.index(key)
            if i < len(call):
                call[i] = val
            else:
                kw[key] = val
        out, weights = func(*call, **kw)
        self._keep("constant", weights.detach())  # (N, heads, L, S)
        keep = a.get("need_weights", True)
        if keep and a.get("average_attn_weights", True):
            weights = weights.mean(1)
        return out, (weights if keep else None)

    def _attention(self, func, args, kwargs):
        q, k, v = args[:3]
        if self.replaying:
            return self._next("constant") @ v
        mask = _arg(args, kwargs, 3, "attn_mask")
        causal = kwargs.get("is_causal", False)
        scale = kwargs.get("scale")
        with torch.no_grad():
            s = q @ k.transpose(-2, -1) * (scale if scale is not None else q.shape[-1] ** -0.5)
            if causal:
                t = s.shape[-1]
                s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1),
                                  float("-inf"))
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
            pattern = s.softmax(-1)
        self._keep("constant", pattern.detach())
        return func(*args, **kwargs)


_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight",
             "in_proj_bias", "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight",
             "out_proj_bias", "training", "key_padding_mask", "need_weights", "attn_mask",
             "use_separate_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
             "static_k", "static_v", "average_attn_weights", "is_causal")


def _mha_args(args, kwargs) -> dict:
    a = dict(zip(_MHA_ARGS, args, strict=False))
    a.update(kwargs)
    return a


def _plain_mha(args, kwargs) -> bool:
    """nn.MultiheadAttention as ViTs use it: packed projections, no extra key/value biases,
    no dropout in eval; the pattern can then be frozen exactly."""
    a = _mha_args(args, kwargs)
    return (not a.get("use_separate_proj_weight") and a.get("bias_k") is None
            and a.get("bias_v") is None and not a.get("add_zero_attn")
            and a.get("static_k") is None and a.get("static_v") is None
            and not (a.get("training") and a.get("dropout_p")))


def _nonlinear_guess(name: str) -> bool:
    """Functions whose output is not linear in their input and that we do not freeze: named
    in the graph's metadata (their gradient at the point stands in for the frozen map)."""
    return name in {"multi_head_attention_forward", "exp", "log", "pow", "sqrt", "rsqrt",
                    "div", "mul", "max", "min", "clamp", "abs", "sign", "sort", "topk"}


@contextmanager
def record(frozen: Frozen | None = None) -> Iterator[Frozen]:
    """Within the block, forward passes run as usual and their nonlinear pieces' states are
    recorded (one forward pass per :class:`Frozen`)."""
    frozen = frozen if frozen is not None else Frozen()
    with _Mode(frozen, replaying=False):
        yield frozen


@contextmanager
def replay(frozen: Frozen) -> Iterator[None]:
    """Within the block, one forward pass runs the local replacement model: each nonlinear
    piece is replaced by its frozen linear version, in the recorded call order. States were
    recorded on a batch of one and broadcast over the batch given here."""
    mode = _Mode(frozen, replaying=True)
    with mode:
        yield
