"""Objectives: what feature visualization maximises (Lucid's ``optvis.objectives``).

An :class:`Objective` maps the captured activations ``{layer: Tensor (B, C, H, W)}`` to one value
**per batch item** (a tensor of shape (B,)); the engine maximises their sum. Because batch items
do not interact in an eval-mode network, item ``i``'s image only feels item ``i``'s objective,
so one optimisation renders many units at once. The unit-selecting objectives take either one
index for the whole batch or one index per item (``channel("mixed4c", [0, 1, 2])``: item 0 shows
channel 0, item 1 channel 1, ...), which is how the engine renders a layer in a single batch.

Objectives compose like Lucid's: ``channel(L, 3) - 100 * diversity(L)``, ``-channel(L, 3)``
(a negative visualization), ``0.5 * neuron(L, 3) + channel(L, 4)``; and strings parse into them
(:func:`parse`, Lucid's ``as_objective``): ``parse("4c:447 - 0.5*4c:12", model)`` is exactly
``channel("inception_4c", 447) - 0.5 * channel("inception_4c", 12)``. Two objectives built the
same way compare equal (``==`` compares their structure, :attr:`Objective.spec`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Acts = dict[str, torch.Tensor]
# Key prefix under which the engine passes the activations of the reference pictures (feature
# accentuation: the natural image, through the same transforms) to an objective.
REFERENCE = "reference/"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Objective:
    """A differentiable value per batch item, to be maximised. ``layers``: what it reads.
    ``spec``: a hashable description of how it was built (None: compared by identity)."""

    def __init__(self, fn: Callable[[Acts], torch.Tensor], layers: Sequence[str], name: str,
                 spec: tuple | None = None):
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name
        self.spec = spec

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __eq__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        if self.spec is None or other.spec is None:
            return self is other
        return self.spec == other.spec

    def __hash__(self):
        return hash(self.spec) if self.spec is not None else id(self)

    @staticmethod
    def _spec(*parts):
        return None if any(isinstance(p, Objective) and p.spec is None for p in parts) else \
            tuple(p.spec if isinstance(p, Objective) else p for p in parts)

    def __add__(self, other):
        if _number(other):
            return Objective(lambda a: self(a) + other, self.layers, f"{self.name} + {other}",
                             self._spec("add", self, float(other)))
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) + other(a), self.layers + other.layers,
                         f"{self.name} + {other.name}", self._spec("add", self, other))

    __radd__ = __add__

    def __neg__(self):
        return Objective(lambda a: -self(a), self.layers, f"-{self.name}",
                         self._spec("neg", self))

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if not _number(other):
            return NotImplemented
        name = f"({self.name})" if " " in self.name else self.name
        return Objective(lambda a: other * self(a), self.layers, f"{other} * {name}",
                         self._spec("mul", float(other), self))

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not isinstance(other, (int, float)):
            return NotImplemented
        return self * (1.0 / other)


def _index(n) -> int | tuple[int, ...]:
    return int(n) if isinstance(n, int) else tuple(int(i) for i in n)


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

    return Objective(fn, [layer], f"channel({layer}, {n})", ("channel", layer, _index(n)))


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

    return Objective(fn, [layer], f"neuron({layer}, {n})", ("neuron", layer, _index(n), x, y))


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


def read_out(units, centre_only: bool = False) -> Objective:
    """The read-out of units of any kind (:mod:`circuits_cli.units`: neuron, direction,
    dictionary feature), one per batch item (or one for the whole batch): its encoder, bias and
    ReLU applied at every position, averaged (or at the centre position, ``centre_only``)."""
    units = list(units) if isinstance(units, (list, tuple)) else [units]
    layer = units[0].layer
    if any(u.layer != layer for u in units):
        raise ValueError("units of one objective must share a layer")

    def fn(acts):
        t = acts[layer]
        n = t.shape[0]
        per = units if len(units) == n else units * n if len(units) == 1 else None
        if per is None:
            raise ValueError(f"{len(units)} units for a batch of {n}")
        enc = torch.stack([u.encoder(t.shape[1]) for u in per]).to(t.device, t.dtype)
        bias = torch.tensor([float(getattr(u, "bias", 0.0)) for u in per], device=t.device,
                            dtype=t.dtype)
        relu = torch.tensor([bool(getattr(u, "relu", False)) for u in per], device=t.device)
        if centre_only:
            t = t[..., centre(t.shape[-2]):centre(t.shape[-2]) + 1,
                  centre(t.shape[-1]):centre(t.shape[-1]) + 1]
        r = torch.einsum("bchw,bc->bhw", t, enc) + bias[:, None, None]
        r = torch.where(relu[:, None, None], torch.relu(r), r)
        return r.mean(dim=(-2, -1))

    names = ", ".join(str(u) for u in units[:3]) + (", ..." if len(units) > 3 else "")
    return Objective(fn, [layer], f"unit({names})",
                     ("unit", tuple(str(u) for u in units), centre_only))


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

    return Objective(fn, [layer], f"diversity({layer})", ("diversity", layer, group))


def relative_to(objective: Objective, reference: Objective) -> Objective:
    """``objective`` times the magnitude of ``reference`` (per item, no gradient through the
    magnitude): a penalty that stays in proportion to the unit's activation whatever the
    model's activation scale (used to weigh :func:`diversity` against the unit objective)."""

    def fn(acts):
        return objective(acts) * reference(acts).detach().abs()

    return Objective(fn, objective.layers + reference.layers,
                     f"{objective.name} * |{reference.name}|",
                     Objective._spec("relative_to", objective, reference))


def per_item(objectives: Sequence[Objective]) -> Objective:
    """Item ``i`` of the batch maximises ``objectives[i]`` (any objectives, evaluated on that
    item's slice of the activations). The vectorised forms above are faster where they apply."""
    objectives = list(objectives)
    layers = [layer for obj in objectives for layer in obj.layers]

    def fn(acts):
        return torch.cat([obj({k: v[i:i + 1] for k, v in acts.items()})
                          for i, obj in enumerate(objectives)])

    return Objective(fn, layers, f"per_item({len(objectives)})")


def stay_close(layer: str) -> Objective:
    """Feature accentuation's penalty (Hamblin et al., 2024), per item: minus the squared distance
    between the item's activations at ``layer`` and those of its reference picture (the natural
    image, seen through the same transforms; the engine passes them under ``reference/LAYER``),
    relative to the reference's squared norm. 0 when the picture is the image."""

    def fn(acts):
        t, ref = acts[layer], acts[REFERENCE + layer]
        dims = tuple(range(1, t.dim()))
        return -((t - ref) ** 2).sum(dims) / (ref**2).sum(dims).clamp_min(1e-12)

    return Objective(fn, [layer], f"stay_close({layer})", ("stay_close", layer))


def unit(u) -> Objective:
    """The objective of a unit (a :class:`circuits_cli.units.Unit`): a neuron's channel mean, a
    direction's or dictionary feature's read-out averaged over positions."""
    from ..units import is_neuron

    if is_neuron(u):
        return channel(u.layer, int(u.channel))
    return read_out([u])


# --- strings -> objectives (Lucid's as_objective) ---------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"(?![\w:])|(?P<unit>[A-Za-z_][\w/.\-]*:\d+|\d+[A-Za-z][\w/.\-]*:\d+)"
                    r"|(?P<op>[-+*()]))")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {text[pos:].strip()!r} in objective {text!r}")
        kind = m.lastgroup
        out.append((kind, m[kind]))
        pos = m.end()
    return out


def parse(text: str, model=None) -> Objective:
    """An objective from a string: ``"inception_4c:447"`` (the channel's mean), ``"-4c:447"``,
    ``"4c:447 - 0.5*4c:12"``, ``"2 * (4c:1 + 4c:2)"``. With ``model`` short layer names are
    resolved and channels checked (errors are :class:`~circuits_cli.errors.CircuitsError`).
    The result equals the same objective composed by hand."""
    from ..errors import CircuitsError

    if isinstance(text, Objective):
        return text
    try:
        toks = _tokens(str(text))
        if not toks:
            raise ValueError(f"empty objective {text!r}")
        pos = 0

        def peek():
            return toks[pos] if pos < len(toks) else (None, None)

        def take():
            nonlocal pos
            if pos >= len(toks):
                raise ValueError(f"objective {text!r} ends too early")
            pos += 1
            return toks[pos - 1]

        def atom():
            kind, value = take() if pos < len(toks) else (None, None)
            if kind == "unit":
                layer, ch = value.rsplit(":", 1)
                return _channel_of(layer, int(ch), model)
            if (kind, value) == ("op", "("):
                inner = expr()
                if take() != ("op", ")"):
                    raise ValueError(f"missing ')' in {text!r}")
                return inner
            if (kind, value) == ("op", "-"):
                return -factor()
            raise ValueError(f"expected LAYER:CHANNEL, a number times one, or '(' in {text!r}")

        def factor():
            kind, value = peek()
            if kind == "num":
                take()
                if peek() != ("op", "*"):
                    raise ValueError(f"a number must multiply an objective ({value} * ...) "
                                     f"in {text!r}")
                take()
                return float(value) * factor()
            result = atom()
            while peek() == ("op", "*"):
                take()
                kind, value = take() if pos < len(toks) else (None, None)
                if kind != "num":
                    raise ValueError(f"an objective can only be multiplied by a number in "
                                     f"{text!r}")
                result = result * float(value)
            return result

        def expr():
            result = factor()
            while peek() in (("op", "+"), ("op", "-")):
                _, op = take()
                rhs = factor()
                result = result + rhs if op == "+" else result - rhs
            return result

        result = expr()
        if pos != len(toks):
            raise ValueError(f"unexpected {toks[pos][1]!r} in objective {text!r}")
        return result
    except ValueError as err:
        raise CircuitsError(f"{err}; write e.g. 'inception_4c:447', '-4c:447' or "
                            "'4c:447 - 0.5*4c:12'") from None


def _channel_of(layer: str, ch: int, model) -> Objective:
    if model is not None:
        from ..errors import CircuitsError

        info = model.layer(layer)
        if not 0 <= ch < info.channels:
            raise CircuitsError(f"channel {ch} is out of range for layer {info.name!r}, which "
                                f"has {info.channels} channels (0-{info.channels - 1})")
        layer = info.name
    return channel(layer, ch)
