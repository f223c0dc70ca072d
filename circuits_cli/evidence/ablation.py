"""Ablation: does the circuit do what the weights say?

The weights claim that some input units build a target unit. Ablating them tests the claim on
real images: replace the input units' activations by zero (``zero``) or by their mean over the
image set (``mean``), run the rest of the network, and measure how much the target's activation
drops. A drop means little on its own (removing any units of a layer lowers most things a bit),
so the same number of *random* units of the same layer (never the ablated ones) are ablated in
many draws, giving the drop to expect by chance: its mean and spread, a z-score and an empirical
p-value (the share of random draws that drop the target at least as much, counted as
(k + 1) / (draws + 1)). Units named in ``exclude`` are never drawn: a target's other traced
inputs would measure the circuit itself, not chance.

Where to measure: over the images where the target is most active (``top_by="target"``), where
excitatory inputs do their work; or where the ablated inputs are (``"inputs"``), which is where
inhibitors can act: on the target's best images they are mostly silent, so zeroing them there
changes little whatever their weights.

``resample`` replaces each image's units by their activation on another image of the set (drawn
with the seed, never the image itself): the activations the units really take, where zero and
the mean may be values they never take on any one image.

The ablation is a forward hook on the input layer that replaces its output. All variants of an
image (no ablation, the given units, each random draw) share one forward pass: the hook stacks
them along the batch, so the layers before the input layer run once per image. Networks where
that stacking is impossible (a skip connection from before the input layer to after it) fall
back to one forward pass per variant.

The target's activation in an image is its spatial mean (``reduce="mean"``, the channel objective
of feature visualization), its spatial max (``max``, the dataset-example statistic), or its value
at the centre (``center``, the position expanded weights describe).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from ..units import Unit, is_neuron, parse_channels
from ..zoo.base import LoadedModel
from .activations import ImageSet, layers_activations, unit_activations

REDUCES = ("mean", "max", "center")
MODES = ("zero", "mean", "resample")
#: Which images ``top_images`` keeps: those where the target is most active, or those where the
#: ablated inputs are (where inhibitors act: on the target's top images they are mostly silent).
TOP_BY = ("target", "inputs")


@dataclass
class AblationResult:
    """The effect of ablating ``inputs`` on ``target``, against random units of the same layer.

    Activations are averaged over the images; drops are ``baseline - ablated`` (positive when the
    target falls). ``random_drops`` holds one drop per random draw.
    """

    target: Unit
    inputs: list[Unit]
    mode: str
    reduce: str
    n_images: int
    n_skipped: int
    baseline: float
    ablated: float
    random_drops: list[float]
    seed: int = 0
    top_by: str = "target"  # which images were kept: see TOP_BY
    excluded: list[Unit] = field(default_factory=list)  # never drawn as random units
    images: list[Path] = field(default_factory=list, repr=False)
    per_image: dict = field(default_factory=dict, repr=False)  # baseline/ablated arrays (N,)

    @property
    def drop(self) -> float:
        return self.baseline - self.ablated

    @property
    def relative_drop(self) -> float:
        """Drop as a fraction of the baseline (nan when the target is never active)."""
        return self.drop / self.baseline if self.baseline > 0 else float("nan")

    @property
    def draws(self) -> int:
        return len(self.random_drops)

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_drops)) if self.random_drops else float("nan")

    @property
    def random_std(self) -> float:
        return float(np.std(self.random_drops, ddof=1)) if self.draws > 1 else float("nan")

    @property
    def random_relative_mean(self) -> float:
        return self.random_mean / self.baseline if self.baseline > 0 else float("nan")

    @property
    def random_relative_std(self) -> float:
        """Spread of the random draws' drops as a fraction of the baseline."""
        return self.random_std / self.baseline if self.baseline > 0 else float("nan")

    @property
    def z_score(self) -> float:
        """(drop - mean random drop) / std of the random drops."""
        std = self.random_std
        if not np.isfinite(std):
            return float("nan")
        diff = self.drop - self.random_mean
        if std > 0:
            return diff / std
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)

    @property
    def p_value(self) -> float:
        """Share of random draws dropping the target at least as much (with the +1 rule)."""
        if not self.random_drops:
            return float("nan")
        k = int(np.sum(np.asarray(self.random_drops) >= self.drop))
        return (k + 1) / (self.draws + 1)

    @property
    def p_value_rise(self) -> float:
        """Share of random draws raising the target at least as much (with the +1 rule): the
        one-sided p-value when the weights predict a rise (inhibitory inputs)."""
        if not self.random_drops:
            return float("nan")
        k = int(np.sum(np.asarray(self.random_drops) <= self.drop))
        return (k + 1) / (self.draws + 1)

    def to_json(self) -> dict:
        def r(v):
            v = float(v)
            return round(v, 6) if np.isfinite(v) else None

        return {"target": str(self.target), "inputs": [str(u) for u in self.inputs],
                "mode": self.mode, "reduce": self.reduce, "n_images": self.n_images,
                "n_skipped": self.n_skipped, "top_by": self.top_by,
                "baseline": r(self.baseline),
                "ablated": r(self.ablated), "drop": r(self.drop),
                "relative_drop": r(self.relative_drop),
                "random": {"draws": self.draws, "units_per_draw": len(self.inputs),
                           "seed": self.seed, "excluded": [str(u) for u in self.excluded],
                           "mean_drop": r(self.random_mean),
                           "std_drop": r(self.random_std),
                           "mean_relative_drop": r(self.random_relative_mean),
                           "drops": [r(d) for d in self.random_drops]},
                "z_score": r(self.z_score), "p_value": r(self.p_value)}

    def summary(self) -> str:
        """A few lines for the terminal."""
        pct = 100 * self.relative_drop
        rpct = 100 * self.random_relative_mean
        rstd = 100 * self.random_relative_std
        names = ", ".join(str(u) for u in self.inputs[:8]) + (
            f", ... ({len(self.inputs)} units)" if len(self.inputs) > 8 else "")
        where = " where the inputs are most active" if self.top_by == "inputs" else ""
        return "\n".join([
            f"target {self.target}: {self.reduce} activation {self.baseline:.4g} over "
            f"{self.n_images} images{where}",
            f"{self.mode}-ablating {names}: {self.ablated:.4g}  (drop {self.drop:.4g}, "
            f"{pct:.1f}%)",
            f"{len(self.inputs)} random units of {self.inputs[0].layer}"
            + (f" (never {', '.join(str(u.channel) for u in self.excluded)})"
               if self.excluded else "") + f", {self.draws} draws: "
            f"drop {self.random_mean:.4g} +- {self.random_std:.4g}  ({rpct:.1f}% +- {rstd:.1f}%)",
            self._p_line(),
        ])

    def _p_line(self) -> str:
        """z and the one-sided p-value in the direction the target moved (a drop, or a rise
        as inhibitors predict)."""
        rise = self.drop < self.random_mean if self.random_drops else False
        p, verb = (self.p_value_rise, "raising") if rise else (self.p_value, "dropping")
        return (f"z = {self.z_score:.2f}, p = {p:.3g} (share of random draws {verb} the target "
                "at least as much, counted as (k+1)/(draws+1)"
                + (f"; none did, so this is the floor for {self.draws} draws)"
                   if p == 1 / (self.draws + 1) else ")"))


def parse_inputs(spec: str | Sequence[str], model: LoadedModel) -> list[Unit]:
    """``"mixed4b:237,373,491"``, ``"4b:237,4b:373"`` or ``"4b:0-7"`` -> units (one layer).

    A bare channel (or range) belongs to the layer named last.
    """
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    layer = None
    units: list[Unit] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if "@" in part:  # a direction or feature: LAYER@FILE#ROW
            from ..units import parse_unit

            unit = parse_unit(part, model)
            layer = model.layer(unit.layer)
            units.append(unit)
            continue
        m = re.fullmatch(r"(?:(?P<layer>[^:\s]+):)?(?P<ch>\d+(?:-\d+)?)", part)
        if not m:
            raise CircuitsError(f"malformed input unit {part!r} in {spec!r}; write "
                                "LAYER:C,C,... e.g. 'mixed4b:237,373'")
        if m["layer"]:
            layer = model.layer(m["layer"])
        elif layer is None:
            raise CircuitsError(f"input {part!r} has no layer; write LAYER:C first, e.g. "
                                f"'{list(model.layers)[0]}:{part}'")
        for ch in parse_channels(m["ch"], layer.channels, layer.name):
            units.append(Unit(layer.name, ch))
    units = list(dict.fromkeys(units))
    if not units:
        raise CircuitsError("no input units given; write LAYER:C,C,... e.g. 'mixed4b:237,373'")
    return units


def ablate(model: LoadedModel, target: Unit, inputs: Sequence[Unit],
           images: str | Path | Sequence[str | Path] | ImageSet, *, mode: str = "zero",
           draws: int = 100, seed: int = 0, reduce: str = "mean", top_images: int | None = None,
           top_by: str = "target", exclude: Sequence[Unit] = (),
           cache_dir: str | Path | None = None, batch_rows: int = 256, batch_size: int = 16,
           progress: bool = False) -> AblationResult:
    """Ablate ``inputs`` (units of one layer before ``target``'s) and measure ``target``.

    ``top_images`` restricts the measurement to the images where the target is most active
    (``top_by="target"``, by its spatial max: where the unit is doing its job) or where the
    ``inputs`` are (``"inputs"``, by the sum of their spatial maxima: where they act, which
    for inhibitors is not where the target fires). ``draws`` random sets of ``len(inputs)``
    units of the input layer, excluding ``inputs`` and the neurons of ``exclude`` (e.g. the
    target's other traced inputs, whose own effect would blur the chance baseline), give the
    baseline. ``batch_rows`` bounds how many image variants go through the network together.
    """
    inputs = list(dict.fromkeys(inputs))
    if not inputs:
        raise CircuitsError("no input units to ablate; pass --inputs LAYER:C,...")
    if mode not in MODES:
        raise CircuitsError(f"unknown ablation mode {mode!r}; use {', '.join(MODES)}")
    if reduce not in REDUCES:
        raise CircuitsError(f"unknown reduction {reduce!r}; use {', '.join(REDUCES)}")
    if top_by not in TOP_BY:
        raise CircuitsError(f"unknown image ranking {top_by!r}; use {', '.join(TOP_BY)}")
    if draws < 0:
        raise CircuitsError(f"--draws must be 0 or more, got {draws}")
    layers = {u.layer for u in inputs}
    if len(layers) != 1:
        raise CircuitsError(f"inputs come from several layers ({', '.join(sorted(layers))}); "
                            "ablate units of one layer at a time")
    in_info = model.layer(inputs[0].layer)
    t_info = model.layer(target.layer)
    if model.layer_index(in_info.name) >= model.layer_index(t_info.name):
        raise CircuitsError(f"input layer {in_info.name!r} does not come before the target's "
                            f"layer {t_info.name!r}; ablate units of an earlier layer")
    neurons = all(is_neuron(u) for u in inputs)
    k = len(inputs)
    foreign = [u for u in exclude if is_neuron(u) and model.layer(u.layer).name != in_info.name]
    if foreign:
        raise CircuitsError(f"--exclude names units of {foreign[0].layer!r}, not of the inputs' "
                            f"layer {in_info.name!r}; exclude units of the inputs' layer")
    excluded = list(dict.fromkeys(u for u in exclude if is_neuron(u) and u not in inputs))
    if neurons:
        banned = {u.channel for u in inputs} | {u.channel for u in excluded}
        pool = np.array([c for c in range(in_info.channels) if c not in banned])
        if draws and len(pool) < k:
            raise CircuitsError(f"layer {in_info.name!r} has only {len(pool)} other units, "
                                f"fewer than the {k} ablated; use --draws 0 or fewer inputs")

    # the input layer's activations are needed for its means (mean ablation) and to find the
    # images where the inputs act
    need_in = mode == "mean" or (top_images is not None and top_by == "inputs")
    wanted = [in_info.name, t_info.name] if need_in else [t_info.name]
    acts = layers_activations(model, wanted, images, cache_dir=cache_dir,
                              batch_size=batch_size, progress=progress)
    t_acts = acts[t_info.name]
    rows = np.arange(t_acts.n_images)
    if top_images is not None:
        if top_images < 1:
            raise CircuitsError(f"--top-images must be at least 1, got {top_images}")
        if top_by == "target":
            score = unit_activations(model, target, t_acts, batch_size=batch_size).column("max")
        else:
            score = sum(unit_activations(model, u, acts[in_info.name], batch_size=batch_size)
                        .column("max") for u in inputs)
        rows = np.sort(np.argsort(-score, kind="stable")[:top_images])
    paths = [t_acts.paths[i] for i in rows]

    rng = np.random.default_rng(seed)
    donor = None
    if mode == "resample":  # each measured image takes the inputs of another image of the set
        if t_acts.n_images < 2:
            raise CircuitsError("resample ablation needs at least two images")
        pick = rng.integers(0, t_acts.n_images - 1, size=len(rows))
        pick = pick + (pick >= rows)  # never the image itself
        donor = _donor_activations(model, in_info.name, [t_acts.paths[i] for i in pick],
                                   size=int(t_acts.preprocessing["size"]),
                                   resize=t_acts.preprocessing.get("resize"),
                                   batch_size=batch_size)
    if neurons:
        masks = np.ones((2 + draws, in_info.channels), dtype=np.float32)
        masks[1, [u.channel for u in inputs]] = 0
        for d in range(draws):
            masks[2 + d, rng.choice(pool, size=k, replace=False)] = 0
        fill = np.zeros(in_info.channels, dtype=np.float32)
        if mode == "mean":  # each channel's mean over the images and positions
            fill = np.asarray(acts[in_info.name].stats["mean"], dtype=np.float64).mean(0)
            fill = fill.astype(np.float32)
        variants = _MaskVariants(torch.from_numpy(masks), torch.from_numpy(fill), donor)
    else:
        sets = [[], inputs] + [random_directions(in_info.name, in_info.channels, k, rng)
                               for _ in range(draws)]
        in_acts = acts[in_info.name] if mode == "mean" else None
        variants = _UnitVariants(sets, in_info.channels, model, in_acts, batch_size, donor)

    values = _run_variants(model, in_info.name, t_info.name, target, paths, variants,
                           reduce=reduce, size=int(t_acts.preprocessing["size"]),
                           resize=t_acts.preprocessing.get("resize"), batch_rows=batch_rows,
                           progress=progress)  # (variants, images)
    base = values[0]
    means = values.mean(axis=1)
    return AblationResult(target=target, inputs=inputs, mode=mode, reduce=reduce,
                          n_images=len(paths), n_skipped=t_acts.n_skipped,
                          baseline=float(means[0]), ablated=float(means[1]),
                          random_drops=[float(means[0] - m) for m in means[2:]], seed=seed,
                          top_by=top_by, excluded=excluded, images=paths,
                          per_image={"baseline": base, "ablated": values[1]})


@torch.no_grad()
def _donor_activations(model: LoadedModel, layer: str, paths: list[Path], *, size: int,
                       resize: int | None, batch_size: int) -> torch.Tensor:
    """(N, C, H, W) activations of ``layer`` on ``paths`` (the resample ablation's donors)."""
    from ..hooks import capture
    from ..images import iter_batches

    out = []
    for x, ok, _ in iter_batches(paths, batch=batch_size, size=size, resize=resize):
        if len(ok):
            out.append(capture(model, x.to(model.device), layer)[layer].float().cpu())
    acts = torch.cat(out)
    if len(acts) != len(paths):
        raise CircuitsError(f"{len(paths) - len(acts)} image(s) could not be read any more; "
                            "re-run to refresh the activation cache")
    return acts


def _reduce(t: torch.Tensor, how: str) -> torch.Tensor:
    """(B, H, W) -> (B,)"""
    if how == "mean":
        return t.mean(dim=(1, 2))
    if how == "max":
        return t.amax(dim=(1, 2))
    return t[:, t.shape[1] // 2, t.shape[2] // 2]


def random_directions(layer: str, channels: int, k: int, rng: np.random.Generator) -> list:
    """``k`` directions drawn uniformly on the unit sphere of the layer's channel space: the
    chance baseline for ablating directions."""
    from ..units import direction

    v = rng.standard_normal((k, channels))
    return [direction(layer, row, name=f"{layer}@random#{i}") for i, row in enumerate(v)]


class _MaskVariants:
    """Neuron ablation: variant ``v`` keeps the channels where ``masks[v]`` is 1 and replaces the
    others by ``fill`` (zero or their mean) or, with ``donor`` (resample), by the activations of
    each image's donor image (rows ``cols`` of ``donor`` for the current batch)."""

    def __init__(self, masks: torch.Tensor, fill: torch.Tensor,
                 donor: torch.Tensor | None = None):
        self.masks, self.fill, self.n = masks, fill, masks.shape[0]
        self.donor, self.cols = donor, slice(None)

    def apply(self, o: torch.Tensor, v0: int, v1: int) -> torch.Tensor:
        """(V * n, C, H, W): variants ``v0:v1`` of the batch ``o``, stacked variant-major."""
        keep = self.masks[v0:v1].to(o.device, o.dtype)[:, None, :, None, None]
        if self.donor is not None:
            f = self.donor[self.cols].to(o.device, o.dtype)[None]
        else:
            f = self.fill.to(o.device, o.dtype)[None, None, :, None, None]
        return (o[None] * keep + (1 - keep) * f).reshape(-1, *o.shape[1:])


class _UnitVariants:
    """Ablation of units of any kind: variant ``v`` removes the units of ``sets[v]``, each
    unit's activation (read from the clean layer) replaced by zero or its mean along its decoder
    direction: ``a - sum_u (read_u(a) - fill_u) * dec_u``. For neurons this is the mask above."""

    def __init__(self, sets: list[list], channels: int, model, in_acts, batch_size: int,
                 donor: torch.Tensor | None = None):
        self.sets, self.n = sets, len(sets)
        self.donor, self.cols = donor, slice(None)
        self.fill: list[list[float]] = []
        for units in sets:
            fills = []
            for u in units:
                if in_acts is None:
                    fills.append(0.0)
                else:
                    fills.append(float(unit_activations(model, u, in_acts, batch_size)
                                       .column("mean").mean()))
            self.fill.append(fills)

    def apply(self, o: torch.Tensor, v0: int, v1: int) -> torch.Tensor:
        out = []
        for v in range(v0, v1):
            x = o
            for u, f in zip(self.sets[v], self.fill[v], strict=True):
                if self.donor is not None:  # resample: the unit's map on the donor image
                    f = u.read(self.donor[self.cols].to(o.device, o.dtype))
                x = u.write(x, f - u.read(o))
            out.append(x)
        return torch.cat(out)


@torch.no_grad()
def _run_variants(model: LoadedModel, in_layer: str, t_layer: str, target: Unit,
                  paths: list[Path], variants, *, reduce: str, size: int, resize: int | None,
                  batch_rows: int, progress: bool) -> np.ndarray:
    """Target values (variants, images) with each variant applied to the input layer."""
    from ..hooks import hooks
    from ..images import iter_batches

    device = model.device
    n_var = variants.n
    var_chunk = max(1, min(n_var, batch_rows))
    img_batch = max(1, batch_rows // n_var)
    out = np.zeros((n_var, len(paths)), dtype=np.float64)
    state = {"range": None, "stack": True}

    def replace(o, _hook):
        if state["range"] is None:
            return None
        v0, v1 = state["range"]
        if state["stack"]:
            return variants.apply(o, v0, v1)
        return variants.apply(o, v0, v0 + 1)

    bar = None
    if progress:  # a bar on a terminal, plain lines with the time left in a log
        from ..progress import Progress

        bar = Progress(len(paths), "ablation", unit="img")
    try:
        with hooks(model, [(in_layer, replace)], stop_at=t_layer) as acts:
            col = 0
            for x, ok, _ in iter_batches(paths, batch=img_batch, size=size, resize=resize):
                if not ok:
                    continue
                x = model.preprocess(x.to(device))
                n = x.shape[0]
                variants.cols = slice(col, col + n)
                for v0 in range(0, n_var, var_chunk):
                    v1 = min(n_var, v0 + var_chunk)
                    out[v0:v1, col:col + n] = _forward(model, x, t_layer, target, v0, v1,
                                                       state, reduce, acts)
                col += n
                if bar is not None:
                    bar.update(n)
        if col != len(paths):  # an image became unreadable since its activations were stored
            raise CircuitsError(f"{len(paths) - col} image(s) could not be read any more; "
                                "re-run to refresh the activation cache")
    finally:
        if bar is not None:
            bar.close()
    return out


def _forward(model, x, t_layer, target, v0, v1, state, reduce, acts) -> np.ndarray:
    """Target values (v1 - v0, n) for one image batch ``x``; ``acts`` is filled by the
    enclosing :func:`~circuits_cli.hooks.hooks` block, whose hook applies ``state["range"]``."""
    from ..hooks import forward

    n, v = x.shape[0], v1 - v0
    if state["stack"]:
        state["range"] = (v0, v1)
        try:
            forward(model, x)
            t = acts[t_layer]
            if t.shape[0] == v * n:
                return _reduce(target.read(t.float()), reduce).reshape(v, n).cpu().numpy()
        except RuntimeError:
            pass
        finally:
            state["range"] = None
        state["stack"] = False  # a skip connection mixes batch sizes: one variant at a time
    res = np.zeros((v, n))
    for i in range(v):
        state["range"] = (v0 + i, v0 + i + 1)
        try:
            forward(model, x)
        finally:
            state["range"] = None
        res[i] = _reduce(target.read(acts[t_layer].float()), reduce).cpu().numpy()
    return res
