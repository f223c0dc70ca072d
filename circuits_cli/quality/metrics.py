"""Faithfulness, completeness and minimality of a circuit given as a node set.

A **node set** (a circuit) is ``{layer: mask}``: a boolean mask of shape ``(C,)`` keeps whole
units (each channel at every position), ``(C, H, W)`` keeps units at given positions. A **node**
is one ``(layer, channel)`` of it (at the positions its mask gives). The layers named in the dict
are the circuit's layers; a layer whose mask is all False is in the circuit with no node kept.

Running the **circuit** means: at each of its layers, every activation outside the mask is
replaced by its ablated value, all layers at once in one forward pass (forward hooks of
:mod:`circuits_cli.hooks`), so a kept unit of a later layer sees only the kept units of the
earlier ones. ``F(X)`` is the :class:`Target`'s value averaged over the images with the node set
``X`` kept. ``M`` is the whole model (nothing ablated), ``∅`` the empty circuit (everything at
the circuit's layers ablated).

- **faithfulness** = ``(F(C) - F(∅)) / (F(M) - F(∅))`` (Wang et al. 2022; MIB 2025): 1 when the
  circuit alone does what the model does, 0 when it does no more than nothing.
- **completeness** (Wang et al.): for subsets ``K`` of the circuit, removing ``K`` from the
  circuit should hurt as much as removing it from the whole model. The gap
  ``|F(C \\ K) - F(M \\ K)| / |F(M) - F(∅)|`` is computed for ``K`` = each node and ``K = C``;
  a complete circuit has all gaps near 0 (a missing path shows up as a large gap for ``K = C``).
- **minimality**: each node's own drop in faithfulness, ``faith(C) - faith(C \\ {v})``; a node
  whose drop is near 0 is not needed.
- the **faithfulness curve**: faithfulness of the first ``k`` nodes (in the discovery method's
  order), ``k = 0..n``, and its area over ``k / n`` in [0, 1] (trapezoids), as MIB scores
  methods by the area under their faithfulness curve.

**Ablation** (what a removed activation becomes): ``zero``; ``mean``: its mean over a reference
set of images, per channel and position; ``resample``: its value on another image of the
reference set (a seeded draw; when the reference set is the images themselves, never the image
itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CircuitsError

ABLATIONS = ("mean", "zero", "resample")

NodeSet = dict[str, "torch.Tensor | Features"]
Node = tuple[str, int]


class Features:
    """A layer seen as a dictionary of units (directions, SAE features: anything with
    :class:`~circuits_cli.units.Unit`'s ``read`` and ``write``) with the ones in the circuit
    marked in ``keep``. Ablating a unit outside the circuit writes its activation to its
    ablated value along its decoder: ``x - sum_u (read_u(x) - fill_u) dec_u`` (with a complete
    dictionary and zero ablation of every unit, what the dictionary does not explain stays:
    the error term of a feature circuit)."""

    def __init__(self, units, keep=None):
        self.units = list(units)
        n = len(self.units)
        self.keep = (torch.zeros(n, dtype=torch.bool) if keep is None
                     else torch.as_tensor(keep, dtype=torch.bool).clone())
        if self.keep.shape != (n,):
            raise CircuitsError(f"{n} units but a keep mask of shape {tuple(self.keep.shape)}")

    def clone(self) -> Features:
        return Features(self.units, self.keep)

    def full(self, value: bool) -> Features:
        return Features(self.units, torch.full_like(self.keep, value))

    def dim(self) -> int:
        return 1

    @property
    def shape(self):
        return self.keep.shape

    def numpy(self):
        return self.keep.numpy()

    def __getitem__(self, i):
        return self.keep[i]

    def __setitem__(self, i, value) -> None:
        self.keep[i] = value


def _full(m, value: bool):
    if isinstance(m, Features):
        return m.full(value)
    return torch.ones_like(m) if value else torch.zeros_like(m)


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """What a circuit is for: a class ``logit``, the summed ``probability`` of a set of classes,
    or a ``unit``'s activation (its spatial mean). Build one with :func:`logit`,
    :func:`probability` or :func:`unit_target`."""

    kind: str
    classes: tuple[int, ...] = ()
    unit: object = None  # a circuits_cli.units.Unit for kind "unit"
    name: str = ""

    @property
    def layer(self) -> str | None:
        """The layer the target is read from (None: the model's output)."""
        return self.unit.layer if self.kind == "unit" else None

    def value(self, output: torch.Tensor | None, act: torch.Tensor | None) -> torch.Tensor:
        """(N,) from the model's ``output`` (logits) or the target layer's activation."""
        if self.kind == "unit":
            v = self.unit.read(act.float())
            return v.flatten(1).mean(1) if v.dim() > 1 else v
        out = output.float()
        if self.kind == "logit":
            return out[:, self.classes[0]]
        return out.softmax(1)[:, list(self.classes)].sum(1)

    def __str__(self) -> str:
        return self.name


def logit(cls: int, name: str | None = None) -> Target:
    return Target("logit", (int(cls),), name=name or f"logit {cls}")


def probability(classes: Sequence[int], name: str | None = None) -> Target:
    classes = tuple(int(c) for c in classes)
    if not classes:
        raise CircuitsError("a probability target needs at least one class")
    return Target("probability", classes, name=name or f"p({', '.join(map(str, classes))})")


def unit_target(unit) -> Target:
    """A unit's activation, its mean over positions (the channel objective)."""
    return Target("unit", unit=unit, name=str(unit))


# ---------------------------------------------------------------------------------------------
# Node sets


def node_set(nodes: Sequence[Node], channels: dict[str, int]) -> NodeSet:
    """``{layer: (C,) mask}`` keeping ``nodes`` (``(layer, channel)`` pairs) over the layers of
    ``channels`` (``{layer: number of channels}``): the layers without a node are in the
    circuit with nothing kept."""
    masks = {layer: torch.zeros(c, dtype=torch.bool) for layer, c in channels.items()}
    for layer, ch in nodes:
        if layer not in masks:
            raise CircuitsError(f"node {layer}:{ch} is not on a layer of the circuit "
                                f"({', '.join(masks)})")
        masks[layer][ch] = True
    return masks


def nodes_of(circuit: NodeSet) -> list[Node]:
    """The circuit's nodes ``(layer, channel)``: each channel kept at one position or more."""
    out = []
    for layer, mask in circuit.items():
        m = mask.keep if isinstance(mask, Features) else torch.as_tensor(mask, dtype=torch.bool)
        kept = m.flatten(1).any(1) if m.dim() > 1 else m
        out += [(layer, int(c)) for c in torch.nonzero(kept).flatten()]
    return out


def _check(circuit: NodeSet) -> NodeSet:
    if not circuit:
        raise CircuitsError("the circuit names no layer; give {layer: mask}")
    out = {}
    for layer, mask in circuit.items():
        if isinstance(mask, Features):
            out[layer] = mask
            continue
        m = torch.as_tensor(mask).bool().cpu()
        if m.dim() not in (1, 3):
            raise CircuitsError(f"the mask of {layer!r} has shape {tuple(m.shape)}; give (C,) "
                                "or (C, H, W)")
        out[layer] = m
    return out


def without(circuit: NodeSet, drop: Sequence[Node]) -> NodeSet:
    """``circuit`` with the nodes ``drop`` removed (all their positions)."""
    out = {layer: m.clone() for layer, m in circuit.items()}
    for layer, ch in drop:
        out[layer][ch] = False
    return out


def everything(circuit: NodeSet) -> NodeSet:
    """The whole model over the circuit's layers (every mask all True)."""
    return {layer: _full(m, True) for layer, m in circuit.items()}


def nothing(circuit: NodeSet) -> NodeSet:
    """The empty circuit over the same layers."""
    return {layer: _full(m, False) for layer, m in circuit.items()}


# ---------------------------------------------------------------------------------------------
# Evaluation: the target under many node sets, batched


@dataclass
class Evaluator:
    """Runs ``model`` on ``images`` with node sets kept and the rest of their layers ablated.

    The ablated values of the layers are computed once from ``reference`` (default: the images)
    when the evaluator is built. :meth:`values` gives the target per node set and image;
    variants share one forward pass (stacked along the batch after the first hooked layer), so
    the layers before the circuit run once per image."""

    model: object
    images: torch.Tensor
    target: Target
    layers: list[str]
    ablation: str = "mean"
    reference: torch.Tensor | None = None
    seed: int = 0
    batch_rows: int = 128
    preprocess: bool = True
    fills: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    perm: np.ndarray | None = field(default=None, repr=False)
    memo: dict = field(default_factory=dict, repr=False)  # node set -> (N,) values
    #: layers seen as dictionaries of units ({layer: [Unit, ...]}, from :class:`Features`)
    features: dict = field(default_factory=dict, repr=False)
    unit_fills: dict = field(default_factory=dict, repr=False)  # layer -> (U, N or 1, H, W)

    def __post_init__(self):
        if self.ablation not in ABLATIONS:
            raise CircuitsError(f"unknown ablation {self.ablation!r}; use "
                                f"{', '.join(ABLATIONS)}")
        if len(self.images) == 0:
            raise CircuitsError("no images to measure the circuit on")
        if self.ablation == "zero":
            return
        ref = self.images if self.reference is None else self.reference
        acts = self._capture(ref)
        reads = {k: torch.stack([u.read(acts[k]) for u in units])
                 for k, units in self.features.items()}  # (U, N_ref, H, W)
        if self.ablation == "mean":
            self.fills = {k: v.mean(0, keepdim=True) for k, v in acts.items()}
            self.unit_fills = {k: r.mean(1, keepdim=True) for k, r in reads.items()}
            return
        n, m = len(self.images), len(ref)
        rng = np.random.default_rng(self.seed)
        if self.reference is None:
            if n < 2:
                raise CircuitsError("resample ablation needs at least two images (each takes "
                                    "another image's activations)")
            order = rng.permutation(n)  # one cycle through a random order: no fixed point
            perm = np.empty(n, dtype=np.int64)
            perm[order] = np.roll(order, -1)
        else:
            perm = rng.choice(m, size=n, replace=m < n)
        self.perm = perm
        self.fills = {k: v[torch.from_numpy(perm)] for k, v in acts.items()}
        self.unit_fills = {k: r[:, torch.from_numpy(perm)] for k, r in reads.items()}

    @torch.no_grad()
    def _capture(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from ..hooks import run_with_cache

        out: dict[str, list] = {k: [] for k in self.layers}
        for i in range(0, len(images), self.batch_rows):
            _, cache = run_with_cache(self.model, images[i:i + self.batch_rows], self.layers,
                                      preprocess=self.preprocess)
            for k, name in zip(self.layers, cache, strict=True):
                out[k].append(cache[name].detach().float().cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    def _fill(self, layer: str, rows: slice, like: torch.Tensor) -> torch.Tensor:
        if self.ablation == "zero":
            return torch.zeros((), dtype=like.dtype, device=like.device)
        f = self.fills[layer]
        if self.ablation == "resample":
            f = f[rows]
        return f.to(like.device, like.dtype)

    @torch.no_grad()
    def values(self, variants: Sequence[NodeSet | None]) -> np.ndarray:
        """(V, N) target values; a variant ``None`` is the whole model; a node set keeps its
        masks at its layers (a layer it does not name is kept whole)."""
        from ..hooks import forward, hooks

        variants = list(variants)
        n_img = len(self.images)
        out = np.zeros((len(variants), n_img))
        if not variants:
            return out
        keeps = {}
        for layer in self.layers:
            rows = []
            for v in variants:
                m = None if v is None else v.get(layer)
                rows.append(m)
            keeps[layer] = rows
        img_batch = max(1, self.batch_rows // len(variants))
        var_chunk = max(1, min(len(variants), self.batch_rows))
        t_layer = self.target.layer
        state: dict = {}

        def make(layer):
            def hook(o, _hp):
                v0, v1, n = state["v0"], state["v1"], state["n"]
                k = v1 - v0
                x = o
                if x.shape[0] == n and k > 1:
                    x = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
                elif x.shape[0] != k * n:
                    raise _Unstackable
                masks = keeps[layer][v0:v1]
                if all(m is None for m in masks):
                    return x if x is not o else None
                if layer in self.features:
                    return self._ablate_units(layer, x, masks, k, n, state["rows"])
                keep = torch.stack([torch.ones(x.shape[1:], dtype=torch.bool)
                                    if m is None else _expand(m, x.shape[1:], layer)
                                    for m in masks]).to(x.device)
                fill = self._fill(layer, state["rows"], x)
                xv = x.reshape(k, n, *x.shape[1:])
                res = torch.where(keep[:, None], xv, fill)
                return res.reshape(k * n, *x.shape[1:])
            return hook

        fwd = [(layer, make(layer)) for layer in self.layers]
        stop = t_layer
        with hooks(self.model, fwd, stop_at=stop) as acts:
            for i0 in range(0, n_img, img_batch):
                i1 = min(n_img, i0 + img_batch)
                x = self.images[i0:i1]
                x = self.model.preprocess(x.to(self.model.device)) if self.preprocess else x
                n = i1 - i0
                for v0 in range(0, len(variants), var_chunk):
                    v1 = min(len(variants), v0 + var_chunk)
                    state.update(v0=v0, v1=v1, n=n, rows=slice(i0, i1))
                    try:
                        res = forward(self.model, x)
                        val = self.target.value(res, acts.get(_canon(self.model, t_layer)))
                        if val.shape[0] != (v1 - v0) * n:
                            raise _Unstackable
                        out[v0:v1, i0:i1] = val.reshape(v1 - v0, n).cpu().double().numpy()
                    except _Unstackable:  # a skip connection around a hooked layer
                        for v in range(v0, v1):
                            state.update(v0=v, v1=v + 1)
                            res = forward(self.model, x)
                            val = self.target.value(res,
                                                    acts.get(_canon(self.model, t_layer)))
                            out[v, i0:i1] = val.cpu().double().numpy()
        return out

    def _ablate_units(self, layer: str, x: torch.Tensor, masks: list, k: int, n: int,
                      rows: slice) -> torch.Tensor:
        """``x`` (k * n, C, H, W) with each variant's units outside its keep mask written to
        their ablated value along their decoders."""
        units = self.features[layer]
        c = x.shape[1]
        dec = torch.stack([u.decoder(c) for u in units]).to(x.device, x.dtype)  # (U, C)
        xv = x.reshape(k, n, *x.shape[1:])
        reads = torch.stack([u.read(xv[i]) for i in range(k) for u in units]).reshape(
            k, len(units), n, *x.shape[2:])  # (k, U, n, H, W)
        if self.ablation == "zero":
            fill = torch.zeros((), dtype=x.dtype, device=x.device)
        else:
            fill = self.unit_fills[layer]
            fill = (fill[:, rows] if self.ablation == "resample" else fill).to(x.device, x.dtype)
        drop = torch.stack([torch.zeros(len(units), dtype=torch.bool) if m is None else ~m.keep
                            for m in masks]).to(x.device, x.dtype)  # (k, U)
        delta = torch.einsum("ku,kunhw,uc->knchw", drop, reads - fill, dec)
        return (xv - delta).reshape(k * n, *x.shape[1:])

    def F(self, variants: Sequence[NodeSet | None]) -> np.ndarray:
        """(V,) the target averaged over the images, per node set. Node sets measured before
        by this evaluator are not run again (the measures share M, the empty circuit, C and
        C without each node)."""
        keys = [_key(v, self.layers) for v in variants]
        todo = {}
        for k, v in zip(keys, variants, strict=True):
            if k not in self.memo and k not in todo:
                todo[k] = v
        if todo:
            vals = self.values(list(todo.values()))
            for k, row in zip(todo, vals, strict=True):
                self.memo[k] = row
        return np.array([self.memo[k].mean() for k in keys])


def _key(v: NodeSet | None, layers: list[str]):
    if v is None:
        return None
    return tuple((layer, tuple(v[layer].shape), v[layer].numpy().tobytes()) if layer in v
                 else (layer, None, None) for layer in layers)


class _Unstackable(Exception):
    pass


def _canon(model, layer: str | None) -> str | None:
    if layer is None:
        return None
    from ..hooks import resolve

    return resolve(model, layer).name


def _expand(mask: torch.Tensor, shape: torch.Size, layer: str) -> torch.Tensor:
    if mask.dim() == 1:
        if mask.shape[0] != shape[0]:
            raise CircuitsError(f"the mask of {layer!r} has {mask.shape[0]} channels, the layer "
                                f"has {shape[0]}")
        return mask.view(-1, *([1] * (len(shape) - 1))).expand(shape)
    if tuple(mask.shape) != tuple(shape):
        raise CircuitsError(f"the mask of {layer!r} has shape {tuple(mask.shape)}, the layer's "
                            f"activation {tuple(shape)}")
    return mask


def evaluator(model, images: torch.Tensor, target: Target, circuit: NodeSet, *,
              ablation: str = "mean", reference: torch.Tensor | None = None, seed: int = 0,
              batch_rows: int = 128, preprocess: bool | None = None) -> Evaluator:
    """An :class:`Evaluator` over the circuit's layers (``preprocess``: default True for a
    LoadedModel, False for a bare ``nn.Module`` whose input is ``images`` as given)."""
    from torch import nn

    if preprocess is None:
        preprocess = not isinstance(model, nn.Module)
    circuit = _check(circuit)
    features = {k: m.units for k, m in circuit.items() if isinstance(m, Features)}
    return Evaluator(model, images, target, list(circuit), ablation=ablation,
                     reference=reference, seed=seed, batch_rows=batch_rows,
                     preprocess=preprocess, features=features)


def _ratio(fc: float, fe: float, fm: float) -> float:
    den = fm - fe
    if abs(den) <= 1e-12 * max(1.0, abs(fm), abs(fe)):
        return float("nan")
    return float((fc - fe) / den)


# ---------------------------------------------------------------------------------------------
# The metrics


def faithfulness(model, images: torch.Tensor, target: Target, circuit: NodeSet, *,
                 ablation: str = "mean", reference: torch.Tensor | None = None, seed: int = 0,
                 evaluator_: Evaluator | None = None, **kwargs) -> float:
    """``(F(C) - F(∅)) / (F(M) - F(∅))`` (module docstring); nan when ablating the circuit's
    layers does not move the target at all (``F(M) = F(∅)``)."""
    circuit = _check(circuit)
    ev = evaluator_ or evaluator(model, images, target, circuit, ablation=ablation,
                                 reference=reference, seed=seed, **kwargs)
    fm, fe, fc = ev.F([None, nothing(circuit), circuit])
    return _ratio(fc, fe, fm)


@dataclass
class Completeness:
    """``gaps[k]`` = |F(C \\ K) - F(M \\ K)| / |F(M) - F(∅)| for each ``K`` named by ``k``:
    a node ``"layer:channel"`` or ``"circuit"`` (K = C)."""

    gaps: dict[str, float]
    f_circuit_minus: dict[str, float]
    f_model_minus: dict[str, float]

    @property
    def max_gap(self) -> float:
        vals = [v for v in self.gaps.values() if np.isfinite(v)]
        return max(vals) if vals else float("nan")

    @property
    def circuit_gap(self) -> float:
        return self.gaps.get("circuit", float("nan"))


def _name(node: Node) -> str:
    return f"{node[0]}:{node[1]}"


def completeness(model, images: torch.Tensor, target: Target, circuit: NodeSet, *,
                 subsets: Sequence[Sequence[Node]] | None = None, ablation: str = "mean",
                 reference: torch.Tensor | None = None, seed: int = 0,
                 evaluator_: Evaluator | None = None, **kwargs) -> Completeness:
    """Wang et al.'s comparison of ``F(C \\ K)`` and ``F(M \\ K)`` for ``K`` = each node and
    ``K = C`` (or the given ``subsets``)."""
    circuit = _check(circuit)
    ev = evaluator_ or evaluator(model, images, target, circuit, ablation=ablation,
                                 reference=reference, seed=seed, **kwargs)
    nodes = nodes_of(circuit)
    if subsets is None:
        ks = {_name(v): [v] for v in nodes}
        ks["circuit"] = nodes
    else:
        ks = {("circuit" if set(map(tuple, k)) == set(nodes) else
               "+".join(_name(v) for v in k)): [tuple(v) for v in k] for k in subsets}
    whole = everything(circuit)
    variants: list = [None, nothing(circuit)]
    for k in ks.values():
        variants += [without(circuit, k), _model_without(whole, circuit, k)]
    f = ev.F(variants)
    fm, fe = f[0], f[1]
    scale = abs(fm - fe)
    gaps, fc_k, fm_k = {}, {}, {}
    for i, name in enumerate(ks):
        a, b = float(f[2 + 2 * i]), float(f[3 + 2 * i])
        fc_k[name], fm_k[name] = a, b
        gaps[name] = abs(a - b) / scale if scale > 0 else float("nan")
    return Completeness(gaps, fc_k, fm_k)


def _model_without(whole: NodeSet, circuit: NodeSet, k: Sequence[Node]) -> NodeSet:
    """M \\ K: the whole model with K's units ablated at K's positions in the circuit."""
    out = {layer: m.clone() for layer, m in whole.items()}
    for layer, ch in k:
        m = circuit[layer]
        if m.dim() == 1:
            out[layer][ch] = False
        else:
            out[layer][ch] = out[layer][ch] & ~m[ch]
    return out


def minimality(model, images: torch.Tensor, target: Target, circuit: NodeSet, *,
               ablation: str = "mean", reference: torch.Tensor | None = None, seed: int = 0,
               evaluator_: Evaluator | None = None, **kwargs) -> dict[str, float]:
    """Each node's own drop in faithfulness, ``faith(C) - faith(C \\ {v})``, by
    ``"layer:channel"``, in the circuit's node order."""
    circuit = _check(circuit)
    ev = evaluator_ or evaluator(model, images, target, circuit, ablation=ablation,
                                 reference=reference, seed=seed, **kwargs)
    nodes = nodes_of(circuit)
    f = ev.F([None, nothing(circuit), circuit] + [without(circuit, [v]) for v in nodes])
    fm, fe, fc = f[:3]
    full = _ratio(fc, fe, fm)
    return {_name(v): full - _ratio(f[3 + i], fe, fm) for i, v in enumerate(nodes)}


@dataclass
class Curve:
    """Faithfulness of the first ``sizes[i]`` nodes of ``order``; ``area`` is its area over
    ``k / n`` (trapezoids)."""

    order: list[str]
    sizes: list[int]
    faithfulness: list[float]

    @property
    def area(self) -> float:
        return curve_area(self.sizes, self.faithfulness)


def curve_area(sizes: Sequence[int], values: Sequence[float]) -> float:
    """Area under ``values`` over ``sizes / max(sizes)`` (trapezoids), nan if undefined."""
    x = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or x[-1] <= 0 or not np.isfinite(y).all():
        return float("nan")
    x = x / x[-1]
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def faithfulness_curve(model, images: torch.Tensor, target: Target, circuit: NodeSet,
                       order: Sequence[Node] | None = None, *, ablation: str = "mean",
                       reference: torch.Tensor | None = None, seed: int = 0,
                       sizes: Sequence[int] | None = None,
                       evaluator_: Evaluator | None = None, **kwargs) -> Curve:
    """Faithfulness as the circuit grows node by node in ``order`` (default: the circuit's
    nodes in layer and channel order), from 0 nodes to all of ``order``; ``sizes`` picks
    which prefix lengths to measure (default every one). Nodes of ``order`` may lie outside
    ``circuit``'s masks as long as they are on its layers (a method's ranking)."""
    circuit = _check(circuit)
    order = [tuple(v) for v in (nodes_of(circuit) if order is None else order)]
    for layer, _ in order:
        if layer not in circuit:
            raise CircuitsError(f"node of {layer!r} is not on a layer of the circuit")
    ev = evaluator_ or evaluator(model, images, target, circuit, ablation=ablation,
                                 reference=reference, seed=seed, **kwargs)
    sizes = list(range(len(order) + 1)) if sizes is None else sorted(set(sizes))
    empty = nothing(circuit)
    variants = []
    for k in sizes:
        s = {layer: m.clone() for layer, m in empty.items()}
        for layer, ch in order[:k]:
            s[layer][ch] = True
        variants.append(s)
    f = ev.F([None, empty] + variants)
    fm, fe = f[0], f[1]
    return Curve([_name(v) for v in order], sizes, [_ratio(x, fe, fm) for x in f[2:]])


# ---------------------------------------------------------------------------------------------
# Everything at once


@dataclass
class CircuitQuality:
    """Faithfulness, completeness, the minimality scan and the faithfulness curve of one circuit
    on one target, with how they were measured."""

    target: str
    ablation: str
    n_images: int
    f_model: float
    f_empty: float
    f_circuit: float
    faithfulness: float
    completeness: Completeness
    minimality: dict[str, float]
    curve: Curve
    nodes: list[str]
    layers: list[str]
    seed: int = 0
    #: faithfulness of the circuit cut after its first d layers (the deeper ones kept whole),
    #: d = 1, 2, ...: where a circuit traced hop by hop stops being faithful
    by_depth: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        def r(v):
            v = float(v)
            return round(v, 6) if np.isfinite(v) else None

        return {"target": self.target, "ablation": self.ablation, "n_images": self.n_images,
                "seed": self.seed, "layers": self.layers, "nodes": self.nodes,
                "F_model": r(self.f_model), "F_empty": r(self.f_empty),
                "F_circuit": r(self.f_circuit), "faithfulness": r(self.faithfulness),
                "faithfulness_by_depth": [{"layers": self.layers[:d + 1], "faithfulness": r(v)}
                                          for d, v in enumerate(self.by_depth)],
                "completeness": {"gaps": {k: r(v) for k, v in self.completeness.gaps.items()},
                                 "max_gap": r(self.completeness.max_gap),
                                 "circuit_gap": r(self.completeness.circuit_gap)},
                "minimality": {k: r(v) for k, v in self.minimality.items()},
                "curve": {"order": self.curve.order, "sizes": self.curve.sizes,
                          "faithfulness": [r(v) for v in self.curve.faithfulness],
                          "area": r(self.curve.area)}}

    def summary(self) -> str:
        """A few lines for the terminal."""
        mins = sorted(self.minimality.items(), key=lambda kv: kv[1])
        least = ", ".join(f"{k} {v:+.3f}" for k, v in mins[:3])
        return "\n".join([
            f"Circuit quality on {self.target} ({self.ablation} ablation of everything else at "
            f"{', '.join(self.layers)}; {self.n_images} images):",
            f"  faithfulness {self.faithfulness:.3f}  (F(C) {self.f_circuit:.4g}, model "
            f"{self.f_model:.4g}, empty {self.f_empty:.4g})"
            + ("" if len(self.by_depth) < 2 else "; cut after each layer: " + ", ".join(
                f"{layer} {v:.3f}" for layer, v in zip(self.layers, self.by_depth,
                                                       strict=True))),
            f"  completeness gap: {self.completeness.circuit_gap:.3f} removing the whole "
            f"circuit, at most {self.completeness.max_gap:.3f} over single nodes and the circuit",
            f"  minimality: smallest drops in faithfulness without one node: {least}",
            f"  faithfulness curve area {self.curve.area:.3f} (nodes added in trace order)"])


def circuit_quality(model, images: torch.Tensor, target: Target, circuit: NodeSet,
                    order: Sequence[Node] | None = None, *, ablation: str = "mean",
                    reference: torch.Tensor | None = None, seed: int = 0,
                    progress: Callable[[str], None] | None = None,
                    **kwargs) -> CircuitQuality:
    """All four measures sharing one :class:`Evaluator` (the reference activations are
    computed once)."""
    circuit = _check(circuit)
    ev = evaluator(model, images, target, circuit, ablation=ablation, reference=reference,
                   seed=seed, **kwargs)
    fm, fe, fc = ev.F([None, nothing(circuit), circuit])
    comp = completeness(model, images, target, circuit, evaluator_=ev)
    mins = minimality(model, images, target, circuit, evaluator_=ev)
    curve = faithfulness_curve(model, images, target, circuit, order, evaluator_=ev)
    by_depth = [float(faithfulness(model, images, target, circuit, evaluator_=ev))]
    if len(circuit) > 1:
        by_depth = [float(v) for v in _by_depth(ev, circuit)]
    return CircuitQuality(target=str(target), ablation=ablation, n_images=len(images),
                          f_model=float(fm), f_empty=float(fe), f_circuit=float(fc),
                          faithfulness=_ratio(fc, fe, fm), completeness=comp, minimality=mins,
                          curve=curve, nodes=[_name(v) for v in nodes_of(circuit)],
                          layers=list(circuit), seed=seed, by_depth=by_depth)


def _by_depth(ev: Evaluator, circuit: NodeSet) -> list[float]:
    """Faithfulness of the circuit cut after each of its layers (in the dict's order), the
    layers after the cut kept whole, against the empty circuit cut the same way."""
    layers = list(circuit)
    variants = [None]
    for d in range(1, len(layers) + 1):
        head = layers[:d]
        cut = {k: (circuit[k] if k in head else _full(circuit[k], True)) for k in layers}
        empty = {k: _full(circuit[k], k not in head) for k in layers}
        variants += [cut, empty]
    f = ev.F(variants)
    return [_ratio(f[1 + 2 * i], f[2 + 2 * i], f[0]) for i in range(len(layers))]
