"""Circuit-discovery methods, and how to score one against a known circuit.

A **method** ranks the units of one layer (``source``) by how much they build a target: it is a
function ``method(model, images, target, source, *, ablation, seed) -> Ranking`` (most important
first). Four come with the package:

- ``weights``: expanded weights (what ``circuits trace`` ranks by): the L2 norm of each input
  unit's spatial kernel into a unit target. No images needed; a unit target only.
- ``patching``: activation patching, the slow reference: ablate each unit of ``source`` alone
  (everything else clean) and rank by how far the target moves, ``|F(M) - F(M \\ {u})|``.
  One forward pass per unit.
- ``gradient_x_activation``: the first-order estimate of patching (attribution patching):
  ``|mean over images of sum over positions of (a - fill) * dF/da|``, one backward pass, with
  ``fill`` the ablated value (zero or the mean).
- ``random``: a seeded random order, the floor.

:func:`register_method` adds another (an attribution graph, a user's tool). :func:`score`
gives the precision and recall of a ranking's top ``k`` against the known nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CircuitsError
from .metrics import Node, Target, evaluator


@dataclass
class Ranking:
    """Units of ``layer`` ordered most important first, with each one's score."""

    method: str
    layer: str
    channels: list[int]
    scores: list[float] = field(default_factory=list)

    def nodes(self, k: int | None = None) -> list[Node]:
        return [(self.layer, c) for c in self.channels[:k]]


MethodFn = Callable[..., Ranking]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str, fn: MethodFn) -> None:
    """Make ``fn(model, images, target, source, *, ablation, seed) -> Ranking`` available as
    ``name`` (e.g. an attribution graph)."""
    METHODS[name] = fn


def rank(method: str, model, images: torch.Tensor, target: Target, source: str, *,
         ablation: str = "mean", seed: int = 0) -> Ranking:
    """Rank the units of ``source`` for ``target`` with the method called ``method``."""
    if method not in METHODS:
        raise CircuitsError(f"unknown discovery method {method!r}; use one of "
                            f"{', '.join(METHODS)}")
    return METHODS[method](model, images, target, source, ablation=ablation, seed=seed)


def _order(method: str, layer: str, scores: np.ndarray) -> Ranking:
    order = np.argsort(-scores, kind="stable")
    return Ranking(method, layer, [int(c) for c in order], [float(scores[c]) for c in order])


def _channels(model, source: str, images: torch.Tensor) -> int:
    from ..hooks import capture

    with torch.no_grad():
        return int(capture(model, images[:1], [source], preprocess=_pre(model))[
            _canon(model, source)].shape[1])


def _pre(model) -> bool:
    from torch import nn

    return not isinstance(model, nn.Module)


def _canon(model, layer: str) -> str:
    from ..hooks import resolve

    return resolve(model, layer).name


def weights_method(model, images, target: Target, source: str, *, ablation: str = "mean",
                   seed: int = 0) -> Ranking:
    from ..connections import rank_inputs, unit_weights

    if target.kind != "unit":
        raise CircuitsError("the weights method ranks the inputs of a unit; give a unit target")
    with torch.no_grad():
        k = unit_weights(model, source, target.unit).detach().cpu().double()
    ranked = rank_inputs(k)  # inputs of strength 0 are not listed: they rank last, in order
    listed = [c.channel for c in ranked]
    rest = [c for c in range(k.shape[0]) if c not in set(listed)]
    return Ranking("weights", source, listed + rest,
                   [c.strength for c in ranked] + [0.0] * len(rest))


def patching_method(model, images, target: Target, source: str, *, ablation: str = "mean",
                    seed: int = 0) -> Ranking:
    n = _channels(model, source, images)
    mask = torch.ones(n, dtype=torch.bool)
    ev = evaluator(model, images, target, {source: mask}, ablation=ablation, seed=seed)
    variants = [None]
    for c in range(n):
        m = mask.clone()
        m[c] = False
        variants.append({source: m})
    f = ev.F(variants)
    return _order("patching", source, np.abs(f[0] - f[1:]))


def gradient_x_activation_method(model, images, target: Target, source: str, *,
                                 ablation: str = "mean", seed: int = 0,
                                 batch: int = 64) -> Ranking:
    from ..hooks import run_with_cache

    if ablation == "resample":
        raise CircuitsError("gradient x activation estimates zero or mean ablation")
    src = _canon(model, source)
    names = [src] + ([target.layer] if target.layer else [])
    total = None
    acts_all = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        with torch.enable_grad():
            out, cache = run_with_cache(model, x, names, fwd_hooks=[(src, _leaf)],
                                        stop=target.layer is not None,
                                        preprocess=_pre(model))
            a = cache[src]
            t_act = cache[_canon(model, target.layer)] if target.layer else None
            value = target.value(out, t_act).sum()
            (g,) = torch.autograd.grad(value, a)
        acts_all.append(a.detach().float().cpu())
        gxa = (g.detach().float().cpu(), a.detach().float().cpu())
        total = [gxa] if total is None else total + [gxa]
    fill = 0.0
    if ablation == "mean":
        fill = torch.cat(acts_all).mean(0, keepdim=True)
    s = sum(((a - fill) * g).flatten(2).sum(2).sum(0) for g, a in total)
    return _order("gradient_x_activation", source, (s / len(images)).abs().double().numpy())


def _leaf(out: torch.Tensor, _hook) -> torch.Tensor:
    """The source activation as a leaf that gradients are taken with respect to."""
    return out.detach().requires_grad_(True)


def random_method(model, images, target: Target, source: str, *, ablation: str = "mean",
                  seed: int = 0) -> Ranking:
    n = _channels(model, source, images)
    order = np.random.default_rng(seed).permutation(n)
    return Ranking("random", source, [int(c) for c in order], [0.0] * n)


register_method("weights", weights_method)
register_method("patching", patching_method)
register_method("gradient_x_activation", gradient_x_activation_method)
register_method("random", random_method)


def score(ranking: Ranking | Sequence[Node], known: Sequence[Node],
          k: int | None = None) -> dict[str, float]:
    """Precision and recall of the top ``k`` (default: as many as ``known``, the matched size)
    of a ranking against the known nodes."""
    nodes = ranking.nodes() if isinstance(ranking, Ranking) else [tuple(v) for v in ranking]
    known = {tuple(v) for v in known}
    if not known:
        raise CircuitsError("no known nodes to score against")
    k = len(known) if k is None else k
    hits = len(set(nodes[:k]) & known)
    return {"k": k, "hits": hits, "precision": hits / k if k else float("nan"),
            "recall": hits / len(known)}
