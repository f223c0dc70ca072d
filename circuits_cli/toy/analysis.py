"""Which units detect which parts and classes: selectivity measured on generated images.

A unit's response to an image is its channel's *spatial maximum* (parts are small, so the mean
over positions would dilute them). For a part, the unit's responses on part-only images of that
part are compared with its responses on every other part-only image (the other parts, and
background with clutter alone). Selectivity is the standardised difference of means (d', in
pooled standard deviations); the selectivity index ``(a - b) / (a + b)`` of the two means (in
[-1, 1], since activations are post-ReLU) is reported beside it. The same holds for classes,
on scenes of one class against scenes of the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import capture
from ..units import Unit
from ..zoo.base import LoadedModel
from .world import CLASSES, NO_PART, PARTS, make_dataset, make_part_images

#: Seeds of the analysis images, apart from training (0) and held-out (1_000_003) scenes.
PART_SEED = 424_242
CLASS_SEED = 515_151


@dataclass(frozen=True)
class Selective:
    """A unit's selectivity for one part or class."""

    unit: Unit
    what: str              # the part or class
    dprime: float          # (mean_on - mean_off) / pooled std
    index: float           # (mean_on - mean_off) / (mean_on + mean_off)
    mean_on: float         # mean spatial-max activation on images of ``what``
    mean_off: float        # ... on the other images


@torch.no_grad()
def responses(model: LoadedModel, images01: torch.Tensor, layer: str,
              batch: int = 200) -> torch.Tensor:
    """Spatial-max activation of every channel of ``layer``: (N, C)."""
    out = []
    for i in range(0, len(images01), batch):
        act = capture(model, images01[i:i + batch].to(model.device), [layer])
        out.append(next(iter(act.values())).amax(dim=(2, 3)).float().cpu())
    return torch.cat(out)


def _stats(on: torch.Tensor, off: torch.Tensor) -> tuple[torch.Tensor, ...]:
    m_on, m_off = on.mean(0), off.mean(0)
    pooled = ((on.var(0) + off.var(0)) / 2).sqrt().clamp_min(1e-6)
    dprime = (m_on - m_off) / pooled
    index = (m_on - m_off) / (m_on + m_off).clamp_min(1e-6)
    return dprime, index, m_on, m_off


@dataclass
class SelectivityTable:
    """Selectivity of every unit of ``layer`` for every item of ``names`` (rows)."""

    layer: str
    names: tuple[str, ...]
    dprime: torch.Tensor    # (len(names), C)
    index: torch.Tensor     # (len(names), C)
    mean_on: torch.Tensor   # (len(names), C)
    mean_off: torch.Tensor  # (len(names), C)

    def row(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown {name!r}; choose one of {', '.join(self.names)}")
        return self.names.index(name)

    def entry(self, name: str, channel: int) -> Selective:
        r = self.row(name)
        return Selective(Unit(self.layer, channel), name, float(self.dprime[r, channel]),
                         float(self.index[r, channel]), float(self.mean_on[r, channel]),
                         float(self.mean_off[r, channel]))

    def top(self, name: str, k: int = 5) -> list[Selective]:
        """The ``k`` units most selective for ``name`` (by d'), best first."""
        order = torch.argsort(self.dprime[self.row(name)], descending=True)[:k]
        return [self.entry(name, int(c)) for c in order]


def _table(layer: str, names, groups: list[torch.Tensor]) -> SelectivityTable:
    rows = []
    for i in range(len(names)):
        on = groups[i]
        off = torch.cat([g for j, g in enumerate(groups) if j != i])
        rows.append(_stats(on, off))
    return SelectivityTable(layer, tuple(names), *(torch.stack(t) for t in zip(*rows,
                                                                                strict=True)))


def part_selectivity(model: LoadedModel, layer: str, n: int = 150,
                     seed: int = PART_SEED) -> SelectivityTable:
    """Selectivity of every unit of ``layer`` for every part, on ``n`` part-only images per
    part and ``n`` background-only images (which count among the "other" images only)."""
    layer = model.layer(layer).name
    size = model.input_size
    groups = [responses(model, make_part_images(p, n, seed, size), layer) for p in PARTS]
    background = responses(model, make_part_images(NO_PART, n, seed, size), layer)
    table = _table(layer, PARTS, groups + [background])
    # _table made a row for the background too; keep the parts' rows only
    k = len(PARTS)
    return SelectivityTable(layer, PARTS, table.dprime[:k], table.index[:k], table.mean_on[:k],
                            table.mean_off[:k])


def class_selectivity(model: LoadedModel, layer: str, n: int = 600,
                      seed: int = CLASS_SEED) -> SelectivityTable:
    """Selectivity of every unit of ``layer`` for every class, on ``n`` scenes (balanced)."""
    layer = model.layer(layer).name
    images, labels = make_dataset(n, seed, model.input_size)
    resp = responses(model, images, layer)
    return _table(layer, CLASSES, [resp[labels == c] for c in range(len(CLASSES))])


def part_detectors(model: LoadedModel, layer: str, part: str, top_k: int = 5,
                   n: int = 150, seed: int = PART_SEED) -> list[Selective]:
    """The ``top_k`` units of ``layer`` most selective for ``part`` (by d'), best first."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    return part_selectivity(model, layer, n, seed).top(part, top_k)


def best_class_unit(model: LoadedModel, layer: str, cls: str, n: int = 600,
                    seed: int = CLASS_SEED, branches: tuple[str, ...] | None = None
                    ) -> Selective:
    """The unit of ``layer`` that best detects class ``cls`` (highest d'); ``branches``
    restricts the search to units of those branches of a mixed block (e.g. ``("3x3", "5x5")``,
    the branches whose weights have a spatial extent)."""
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; choose one of {', '.join(CLASSES)}")
    info = model.layer(layer)
    table = class_selectivity(model, info.name, n, seed)
    scores = table.dprime[table.row(cls)].clone()
    if branches:
        allowed = torch.tensor([(info.branch_of(c) or ("",))[0] in branches
                                for c in range(info.channels)])
        scores[~allowed] = float("-inf")
    return table.entry(cls, int(scores.argmax()))


@dataclass(frozen=True)
class CircuitInput:
    """One input of a traced unit, with what it detects and where it acts."""

    rank: int               # 0 = strongest input by expanded-weight L2 norm
    channel: int
    strength: float         # L2 norm of the expanded-weight kernel
    sign: int               # +1 / -1: sign of the kernel's sum
    part: str               # the part this input is most selective for
    dprime: float           # its selectivity (d') for that part
    top: float              # mean kernel weight in the rows above the centre
    bottom: float           # mean kernel weight in the rows below the centre
    #: the same two means in the network at its initialisation (:func:`at_initialisation`),
    #: before any training; None when it cannot be rebuilt
    init_top: float | None = None
    init_bottom: float | None = None

    @property
    def vertical(self) -> float:
        """``top - bottom``: positive when the input excites the top of the unit more than its
        bottom (windows over a car), negative for the reverse (wheels)."""
        return self.top - self.bottom

    @property
    def layout(self) -> str:
        """Where the kernel excites and inhibits, in words (see :func:`describe_layout`)."""
        return describe_layout(self.top, self.bottom)

    @property
    def inherited(self) -> bool | None:
        """True when both halves of the kernel have the signs they had at initialisation, so
        training did not set the layout; None when the initialisation is unknown."""
        if self.init_top is None or self.init_bottom is None:
            return None
        return same_signs((self.top, self.bottom), (self.init_top, self.init_bottom))

    @property
    def as_on_a_car(self) -> bool | None:
        """Whether the kernel puts its part where a car has it (:func:`car_layout_agrees`)."""
        return car_layout_agrees(self.part, self.top, self.bottom)


#: Where a car has each of its parts in its receptive field, as "Zoom In" shows for 4c:447:
#: windows excite the top and inhibit the bottom, wheels excite the bottom and inhibit the top.
CAR_LAYOUT = {"windows": "top", "wheels": "bottom"}


def same_signs(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two (top, bottom) profiles have the same signs in both halves."""
    def sign(v: float) -> int:
        return (v > 0) - (v < 0)

    return all(sign(x) == sign(y) for x, y in zip(a, b, strict=True))


def at_initialisation(model: LoadedModel) -> LoadedModel | None:
    """``model`` with the weights it started training from (rebuilt from the recipe its
    checkpoint records: same seed, same initialisation), or None when there is no recipe.

    A trained kernel is its initial random values plus what training changed. Where training
    changed little, a layout (windows exciting the top, say) may be the random start, not
    something the network learned; comparing with this model tells which."""
    from dataclasses import replace

    from .train import initial_module, recipe_from

    if model.recipe is None:
        return None
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        module = initial_module(recipe_from(model.recipe)).eval().to(model.device)
    return replace(model, module=module, weights_id=f"{model.weights_id}@init",
                   description=f"{model.description}, at initialisation")


def describe_layout(top: float, bottom: float) -> str:
    """``"excites the top, inhibits the bottom"`` and the like, from the signs of the mean
    weights above and below the centre."""
    def verb(v: float) -> str:
        return "excites" if v > 0 else "inhibits" if v < 0 else "ignores"

    return f"{verb(top)} the top, {verb(bottom)} the bottom"


def car_layout_agrees(part: str, top: float, bottom: float) -> bool | None:
    """True when an input detecting ``part`` excites the half of the field where a car has
    that part and inhibits the other half (:data:`CAR_LAYOUT`); None for the other parts."""
    where = CAR_LAYOUT.get(part)
    if where is None:
        return None
    on, off = (top, bottom) if where == "top" else (bottom, top)
    return on > 0 > off


def vertical_profile(kernel: torch.Tensor) -> tuple[float, float]:
    """Mean weight of the rows above and below the centre of an odd-sized kernel (h, w)."""
    h = kernel.shape[0]
    if h < 3:
        return 0.0, 0.0
    return float(kernel[: h // 2].mean()), float(kernel[(h + 1) // 2:].mean())


def trace_parts(model: LoadedModel, unit: Unit, source: str, top_k: int = 10,
                parts: SelectivityTable | None = None, method: str = "auto",
                at_init: LoadedModel | None = None) -> list[CircuitInput]:
    """The ``top_k`` strongest inputs of ``unit`` in layer ``source`` (expanded weights, as
    ``circuits trace`` ranks them), each labelled with the part it detects best and the vertical
    profile of its kernel. ``parts`` is :func:`part_selectivity` of ``source`` (computed if None).
    ``at_init`` (:func:`at_initialisation`) adds each kernel's profile before training.
    """
    from ..connections import expanded_weights, rank_inputs

    source = model.layer(source).name
    parts = parts if parts is not None else part_selectivity(model, source)
    kernels = expanded_weights(model, source, unit.layer, [unit.channel], method=method)[0]
    initial = (expanded_weights(at_init, source, unit.layer, [unit.channel], method=method)[0]
               .cpu() if at_init is not None else None)
    out = []
    for rank, conn in enumerate(rank_inputs(kernels.cpu(), top_k)):
        col = parts.dprime[:, conn.channel]
        best = int(col.argmax())
        top, bottom = vertical_profile(torch.as_tensor(conn.kernel))
        init = vertical_profile(initial[conn.channel]) if initial is not None else (None, None)
        out.append(CircuitInput(rank, conn.channel, conn.strength, conn.sign, parts.names[best],
                                float(col[best]), top, bottom, *init))
    return out
