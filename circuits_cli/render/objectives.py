"""Objectives: what feature visualization maximises (Lucid's ``optvis.objectives``).

An :class:`Objective` maps the captured activations ``{layer: Tensor (B, C, H, W)}`` to one value
**per batch item** (a tensor of shape (B,)); the engine maximises their sum. Because batch items
do not interact in an eval-mode network, item ``i``'s image only feels item ``i``'s objective,
so one optimisation renders many units at once. The unit-selecting objectives take either one
index for the whole batch or one index per item (``channel("mixed4c", [0, 1, 2])``: item 0 shows
channel 0, item 1 channel 1, ...), which is how the engine renders a layer in a single batch.

Objectives compose like Lucid's: ``channel(L, 3) - 100 * diversity(L)``, ``-channel(L, 3)``
(a negative visualization), ``0.5 * neuron(L, 3) + channel(L, 4)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Acts = dict[str, torch.Tensor]


class Objective:
    """A differentiable value per batch item, to be maximised. ``layers``: what it reads."""

    def __init__(self, fn: Callable[[Acts], torch.Tensor], layers: Sequence[str], name: str):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other):
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) + other, self.layers, f"{self.name} + {other}")
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) + other(a), self.layers + other.layers,
                         f"{self.name} + {other.name}")

    __radd__ = __add__

    def __neg__(self):
        return Objective(lambda a: -self(a), self.layers, f"-{self.name}")

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        return Objective(lambda a: other * self(a), self.layers, f"{other} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        return self * (1.0 / other)


def _per_item(index: int | Sequence[int], batch: int, device) -> torch.Tensor:
    """Channel index per batch item as a LongTensor (B,), checked against the batch size."""
    if isinstance(index, int):
        return torch.full((batch,), index, dtype=torch.long, device=device)
    idx = torch.as_tensor(list(index), dtype=torch.long, device=device)
    if idx.numel() != batch:
        raise ValueError(f"{idx.numel()} channel indices for a batch of {batch}")
    return idx


def channel(layer: str, n: int | Sequence[int]) -> Objective:
    """Mean activation of channel ``n`` over all positions (Lucid's default objective)."""

    def fn(acts):
        t = acts[layer]
        idx = _per_item(n, t.shape[0], t.device)
        return t[torch.arange(t.shape[0], device=t.device), idx].mean(dim=(-2, -1))

    return Objective(fn, [layer], f"channel({layer}, {n})")


def centre(size: int) -> int:
    """Lucid's centre position: the middle, or the lower/right one of the middle two."""
    return size // 2


def neuron(layer: str, n: int | Sequence[int], x: int | None = None,
           y: int | None = None) -> Objective:
    """Activation of channel ``n`` at one position, the centre by default: what one neuron of
    a convolutional layer sees, so the image is only shaped inside its receptive field."""

    def fn(acts):
        t = acts[layer]
        idx = _per_item(n, t.shape[0], t.device)
        yy = centre(t.shape[-2]) if y is None else y
        xx = centre(t.shape[-1]) if x is None else x
        return t[torch.arange(t.shape[0], device=t.device), idx, yy, xx]

    return Objective(fn, [layer], f"neuron({layer}, {n})")


def direction(layer: str, vectors: torch.Tensor) -> Objective:
    """Mean over positions of the dot product of the activation vector with a unit-length
    direction in the layer's channel space. ``vectors`` is (C,) for the whole batch or (B, C)
    for one direction per item. A one-hot direction gives exactly :func:`channel`."""
    v = torch.as_tensor(vectors, dtype=torch.float32)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def fn(acts):
        t = acts[layer]
        vv = v.to(t.device, t.dtype)
        vv = vv.expand(t.shape[0], -1) if vv.dim() == 1 else vv
        return torch.einsum("bchw,bc->b", t, vv) / (t.shape[-2] * t.shape[-1])

    return Objective(fn, [layer], f"direction({layer})")


def diversity(layer: str, group: int | None = None) -> Objective:
    """Lucid's diversity term, per item: minus the summed cosine similarity of the item's Gram
    matrix (channel x channel correlation of its activations at ``layer``) with those of the
    other items of its group, divided by the group size. Items are grouped consecutively in
    groups of ``group`` (all one group by default), so the facets of several units can share a
    batch. Subtract it (times a weight) from a unit objective to see the unit's facets."""

    def fn(acts):
        t = acts[layer]
        b, c = t.shape[:2]
        k = b if group is None else group
        if b % k:
            raise ValueError(f"batch of {b} does not split into groups of {k}")
        flat = t.reshape(b, c, -1)
        grams = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).reshape(b, -1), dim=1)
        grams = grams.reshape(b // k, k, -1)
        sims = torch.bmm(grams, grams.transpose(1, 2))  # (groups, k, k)
        off_diag = sims.sum(dim=2) - sims.diagonal(dim1=1, dim2=2)
        return -(off_diag / k).reshape(b)

    return Objective(fn, [layer], f"diversity({layer})")


def relative_to(objective: Objective, reference: Objective) -> Objective:
    """``objective`` times the magnitude of ``reference`` (per item, no gradient through the
    magnitude): a penalty that stays in proportion to the unit's activation whatever the
    model's activation scale (used to weigh :func:`diversity` against the unit objective)."""

    def fn(acts):
        return objective(acts) * reference(acts).detach().abs()

    return Objective(fn, objective.layers + reference.layers,
                     f"{objective.name} * |{reference.name}|")


def per_item(objectives: Sequence[Objective]) -> Objective:
    """Item ``i`` of the batch maximises ``objectives[i]`` (any objectives, evaluated on that
    item's slice of the activations). The vectorised forms above are faster where they apply."""
    objectives = list(objectives)
    layers = [layer for obj in objectives for layer in obj.layers]

    def fn(acts):
        return torch.cat([obj({k: v[i:i + 1] for k, v in acts.items()})
                          for i, obj in enumerate(objectives)])

    return Objective(fn, layers, f"per_item({len(objectives)})")
