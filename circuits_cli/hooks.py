"""Hook points: read and write any layer's activation during the forward pass.

The one place in the package that registers forward hooks (a test holds every other module to
it). Modelled on TransformerLens's ``HookPoint`` and ``run_with_hooks``:

- A **hook point** is the output of one module: a layer name of a
  :class:`~circuits_cli.zoo.base.LoadedModel` (``inception_4c``, ``4c``) or, on a bare
  ``nn.Module``, a dotted module path.
- A **hook function** ``fn(activation, hook)`` receives that output and the :class:`HookPoint`
  (its ``name``, ``module`` path and, during the call, the module's ``inputs``); returning a tensor
  **replaces** the activation for the rest of the pass, returning ``None`` keeps it. Capture,
  ablation (zero/mean), linearization (a ReLU returning its input), SAE splicing and steering are
  all hook functions.
- ``stop_at`` ends the pass as soon as the named points are computed (after their hooks ran):
  the rest of the network never runs, which is how a layer is read without paying for the logits.

    logits = run_with_hooks(model, images01, fwd_hooks=[("4c", lambda a, h: a * 0)])
    _, cache = run_with_cache(model, images01, ["4b", "4c"])        # stops after 4c
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised inside a hook once every ``stop_at`` point is computed; caught by the runners."""


@dataclass
class HookPoint:
    """Where a hook function is attached: ``name`` as the caller wrote it resolved to the layer's
    canonical name, ``module`` the dotted path of the module whose output it is. ``inputs`` holds
    the module's positional inputs while a hook function runs (a linearized ReLU returns
    ``hook.inputs[0]``). ``tokens`` is the view of a token layer (:func:`to_map`): hook
    functions of such a point see, and return, a feature map (N, D, h, w)."""

    name: str
    module: str
    inputs: tuple = field(default=(), repr=False)
    tokens: tuple[str, int] | None = None


def to_map(x: torch.Tensor, tokens: tuple[str, int] | None) -> torch.Tensor:
    """A token sequence (N, T, D) as a feature map: ``("patches", P)`` the tokens after the P
    prefix tokens on their square grid (N, D, h, w); ``("cls", i)`` token i, (N, D, 1, 1)."""
    if tokens is None:
        return x
    kind, k = tokens
    if kind == "cls":
        return x[:, k, :, None, None]
    patches = x[:, k:, :]
    side = math.isqrt(patches.shape[1])
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def from_map(x: torch.Tensor, m: torch.Tensor, tokens: tuple[str, int] | None) -> torch.Tensor:
    """The token sequence ``x`` with the positions of :func:`to_map`'s view replaced by the map
    ``m`` (a batch in ``x`` that ``m``'s batch is a multiple of is repeated to it)."""
    if tokens is None:
        return m
    if x.shape[0] != m.shape[0] and m.shape[0] % x.shape[0] == 0:
        # a hook that stacked k variants of the batch (variant-major, as the circuit metrics
        # evaluate them): the rest of the sequence is the same in each
        x = x.repeat(m.shape[0] // x.shape[0], *(1,) * (x.dim() - 1))
    seq = m.flatten(2).transpose(1, 2).to(x.dtype)
    kind, k = tokens
    if kind == "cls":
        return torch.cat([x[:, :k], seq, x[:, k + 1:]], dim=1)
    return torch.cat([x[:, :k], seq], dim=1)


def _root(net) -> nn.Module:
    """The ``nn.Module`` of a LoadedModel, or ``net`` itself."""
    return net if isinstance(net, nn.Module) else net.module


def resolve(net, point: str) -> HookPoint:
    """A hook point by layer name (LoadedModel: aliases allowed, a clear error with the closest
    name otherwise) or by module path (bare ``nn.Module``)."""
    if isinstance(net, nn.Module):
        net.get_submodule(point)  # raises AttributeError for a wrong path
        return HookPoint(point, point)
    info = net.layer(point)
    return HookPoint(info.name, info.module, tokens=getattr(info, "tokens", None))


@contextmanager
def hooks(net, fwd_hooks: Sequence[tuple[str, HookFn]] = (),
          stop_at: str | Sequence[str] | None = None,
          capture: Sequence[str] = ()) -> Iterator[dict[str, torch.Tensor]]:
    """While active, forward passes of ``net`` run ``fwd_hooks``, stop once every ``stop_at``
    point is computed, and fill the yielded dict with the (possibly replaced) activations of the
    ``capture`` and ``stop_at`` points. Run the pass through :func:`forward` (or catch
    :class:`StopForward` yourself). Hooks on one point run in the order given; several points
    on one module (a token layer's patches and its class token) run in the order named."""
    stops = [stop_at] if isinstance(stop_at, str) else list(stop_at or [])
    points: dict[str, HookPoint] = {}  # canonical name -> point
    by_module: dict[str, list[str]] = {}  # module path -> canonical names on it
    fns: dict[str, list[HookFn]] = {}
    keep: set[str] = set()  # canonical names to record

    def add(name: str) -> HookPoint:
        hp = resolve(net, name)
        if hp.name not in points:
            points[hp.name] = hp
            by_module.setdefault(hp.module, []).append(hp.name)
        return points[hp.name]

    for name, fn in fwd_hooks:
        fns.setdefault(add(name).name, []).append(fn)
    for name in [*capture, *stops]:
        keep.add(add(name).name)
    wanted = {resolve(net, name).name for name in stops}
    acts: dict[str, torch.Tensor] = {}
    done: set[str] = set()  # stop points computed in the current pass
    root = _root(net)
    handles = []

    def make(path: str):
        names = by_module[path]

        def hook(_m, inputs, out):
            current, changed = out, False
            for name in names:
                hp = points[name]
                view = to_map(current, hp.tokens)
                replaced = None
                hp.inputs = inputs
                try:
                    for fn in fns.get(name, ()):
                        new = fn(view if replaced is None else replaced, hp)
                        if new is not None:
                            replaced = new
                finally:
                    hp.inputs = ()
                if replaced is not None:
                    current, changed = from_map(current, replaced, hp.tokens), True
                if name in keep:
                    acts[name] = view if replaced is None else replaced
                    done.add(name)
            if wanted and wanted.issubset(done):
                raise StopForward
            return current if changed else None

        return hook

    try:
        if wanted:  # a new pass starts with nothing computed
            handles.append(root.register_forward_pre_hook(lambda _m, _i: done.clear()))
        for path in by_module:
            handles.append(root.get_submodule(path).register_forward_hook(make(path)))
        yield acts
    finally:
        for h in handles:
            h.remove()


def forward(net, inputs: torch.Tensor) -> Any:
    """Run ``net`` on model inputs; ``None`` when a hook stopped the pass early."""
    try:
        return _root(net)(inputs)
    except StopForward:
        return None


def _inputs(net, images: torch.Tensor, preprocess: bool) -> torch.Tensor:
    if preprocess:
        if isinstance(net, nn.Module):
            raise TypeError("preprocess=True needs a LoadedModel (a bare module has no "
                            "preprocessing)")
        return net.preprocess(images.to(net.device))
    return images


def run_with_hooks(net, images: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = (),
                   stop_at: str | Sequence[str] | None = None, preprocess: bool = True) -> Any:
    """The forward pass with ``fwd_hooks`` attached: the model's output (logits), or ``None``
    when it stopped at ``stop_at``. ``images`` are RGB in [0, 1] (``preprocess=False``: they
    are already the model's input)."""
    x = _inputs(net, images, preprocess)
    with hooks(net, fwd_hooks, stop_at=stop_at):
        return forward(net, x)


def run_with_cache(net, images: torch.Tensor, names: Sequence[str] | str,
                   fwd_hooks: Sequence[tuple[str, HookFn]] = (), stop: bool = True,
                   preprocess: bool = True) -> tuple[Any, dict[str, torch.Tensor]]:
    """(output or ``None``, ``{layer: activation}``): the activations of ``names`` after any
    ``fwd_hooks`` wrote to them. ``stop=True`` ends the pass after the deepest of them.
    Gradients flow through the cached tensors when enabled (rendering optimises them)."""
    names = [names] if isinstance(names, str) else list(names)
    x = _inputs(net, images, preprocess)
    with hooks(net, fwd_hooks, stop_at=names if stop else None, capture=names) as acts:
        out = forward(net, x)
    canonical = [resolve(net, n).name for n in names]
    missing = [n for n in canonical if n not in acts]
    if missing:
        raise RuntimeError(f"layers {missing} were never computed by the forward pass")
    return out, {n: acts[n] for n in canonical}


def capture(model, images01: torch.Tensor, layers: Sequence[str] | str, stop: bool = True,
            preprocess: bool = True) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` for a batch of [0, 1] RGB images (gradients kept if enabled).
    ``preprocess=False`` means ``images01`` is already the model's input."""
    return run_with_cache(model, images01, layers, stop=stop, preprocess=preprocess)[1]


@contextmanager
def hooked(model, layers: Sequence[str], stop: bool = True) -> Iterator[dict]:
    """Capture ``layers`` during forward passes run inside the block (through :func:`forward`
    or :func:`run_until`); with ``stop=True`` a pass ends once all of them are in."""
    with hooks(model, stop_at=layers if stop else None, capture=layers) as acts:
        yield acts


def run_until(model, inputs: torch.Tensor) -> None:
    """Run the network on already-preprocessed ``inputs`` under :func:`hooked`."""
    forward(model, inputs)


@torch.no_grad()
def probe(module: nn.Module, inputs: torch.Tensor,
          paths: Sequence[str] | None = None) -> dict[str, tuple[int, ...] | None]:
    """One forward pass of ``module`` on ``inputs`` (a zero image; the meta device works) that
    records, in call order, the output shape of each module in ``paths`` (every submodule when
    None) the first time it runs; ``None`` for outputs that are not tensors. Layer tables and
    conv-adjacency come from this."""
    if paths is None:
        paths = [p for p, _ in module.named_modules() if p]
    seen: dict[str, tuple[int, ...] | None] = {}

    def record(path):
        def fn(out, _hook):
            if path not in seen:
                seen[path] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
        return fn

    with hooks(module, [(p, record(p)) for p in paths]):
        forward(module, inputs)
    return seen


def select_output(module: nn.Module, key: int | str) -> Any:
    """Make ``module`` return ``out[key]`` instead of its whole output (a tuple or a dict, e.g.
    logits plus features): a persistent hook on the root, so every forward pass, hooked or not,
    sees the logits alone. Returns the handle (``.remove()`` undoes it)."""

    def pick(_m, _inputs, out):
        return out[key]

    return module.register_forward_hook(pick)


@torch.no_grad()
def dataflow(module: nn.Module, inputs: torch.Tensor, paths: Sequence[str]
             ) -> list[tuple[str, torch.Tensor | None, torch.Tensor | None]]:
    """One forward pass of ``module`` recording, in call order, ``(path, output, first input)``
    of each module in ``paths`` the first time it runs (None where not a tensor). The tensors
    are kept alive, so two entries holding the same tensor (a block and its last module, an
    in-place ReLU and the conv before it) can be recognised by identity."""
    seen: dict[str, tuple] = {}

    def record(path):
        def fn(out, hook):
            if path not in seen:
                first = hook.inputs[0] if hook.inputs else None
                seen[path] = (out if isinstance(out, torch.Tensor) else None,
                              first if isinstance(first, torch.Tensor) else None)
        return fn

    with hooks(module, [(p, record(p)) for p in paths]):
        forward(module, inputs)
    return [(path, out, first) for path, (out, first) in seen.items()]
