"""Feature visualization: render what a unit responds to by activation maximization.

The recipe is Lucid's (Olah et al., "Feature Visualization", 2017; the Circuits thread): a 128 px
image in a decorrelated Fourier parameterization, random jitter/scale/rotation every step, bilinear
upsampling to the model's input size, Adam with learning rate 0.05. :func:`render_units` renders
many units in one batched optimisation, stops the forward pass at the target layer, keeps the
weights frozen, and caches every render on disk so that no command renders the same unit twice::

    from circuits_cli.render import render_units
    from circuits_cli.units import Unit
    renders = render_units(model, [Unit("inception_4c", c) for c in range(8)], steps=256)
    renders[0].image        # (H, W, 3) float32 in [0, 1]
    renders[0].activation   # the unit's mean activation on that image

Modules: :mod:`.param` (parameterizations), :mod:`.objectives` (channel, neuron, direction,
diversity; composable), :mod:`.transforms`, :mod:`.engine` (the loop), :mod:`.cache`.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from ..units import Unit
from ..zoo.base import LoadedModel
from . import objectives as obj
from .cache import RenderCache, read_png, to_uint8
from .engine import LEARNING_RATE, PRECISIONS, bf16_supported, optimize

__all__ = ["Render", "render_units", "render_settings", "check_unit", "resolve_precision",
           "OBJECTIVES", "DEFAULT_FACETS", "DIVERSITY_WEIGHT", "DEFAULT_PRECISION",
           "default_batch"]

OBJECTIVES = ("channel", "neuron", "direction", "diversity")
DEFAULT_FACETS = 4
# Weight of the diversity term, relative to the unit's own activation: each facet maximises
# act - DIVERSITY_WEIGHT * |act| * (summed Gram similarity to the other facets) / facets.
# (Lucid uses a fixed 1e2, which only suits activations of one particular scale.)
DIVERSITY_WEIGHT = 4.0
DEFAULT_PRECISION = "auto"


@dataclass
class Render:
    """One unit's feature visualization.

    ``image`` is (H, W, 3) float32 in [0, 1], exactly what the PNG at ``path`` holds (renders are
    quantised to 8 bits so that a fresh render and a cache hit are the same picture). For the
    ``diversity`` objective it is the facets side by side (H, facets * W, 3).
    ``activation`` is the unit's value on the final image without transforms (for ``channel``
    and ``diversity``: its mean over positions; ``neuron``: at the centre; ``direction``: the dot
    product with the unit-length direction), also for negative renders.
    """

    unit: Unit
    image: np.ndarray
    activation: float
    path: Path | None = None
    objective: str = "channel"
    negative: bool = False
    steps: int = 0
    size: int = 0
    seed: int = 0
    seconds: float = 0.0  # this unit's share of the optimisation time (0 for cache hits)
    cached: bool = False
    facet_activations: tuple[float, ...] = ()


def default_batch(device: torch.device) -> int:
    """Images optimised together when ``batch`` is not given."""
    return 64 if device.type == "cuda" else 16


def render_units(model: LoadedModel, units: list[Unit], *, steps: int = 512, size: int = 128,
                 seed: int = 0, objective: str = "channel", batch: int | None = None,
                 negative: bool = False, device=None, cache_dir: Path | None = None,
                 progress: bool = True, directions: np.ndarray | None = None,
                 facets: int = DEFAULT_FACETS, lr: float = LEARNING_RATE,
                 precision: str = DEFAULT_PRECISION, diversity_layer: str | None = None,
                 on_render: Callable[[Render], None] | None = None) -> list[Render]:
    """Render ``units`` of ``model``; returns one :class:`Render` per unit, in order.

    Units are grouped by layer and optimised ``batch`` images at a time (default 16 on CPU, 64
    on a GPU); a unit's picture depends only on its own settings, not on its batch. Each finished
    render is written to the cache at once (``cache_dir``: None = ``$CIRCUITS_CACHE/renders``,
    default ``~/.cache/circuits/renders``; False = no cache), so an interrupted call loses at most
    the batch in progress, and a later call with the same settings returns instantly.

    ``objective``: ``channel`` (mean over positions), ``neuron`` (centre position),
    ``direction`` (``directions`` is an array (K, C) over the layer's channels and
    ``Unit(layer, k)`` renders row k), ``diversity`` (``facets`` images per unit that maximise
    the channel while differing from each other: the facets of a polysemantic unit; the difference
    is measured by Gram matrices at ``diversity_layer``, the unit's own layer by default).
    ``negative=True`` minimises instead. ``precision``: ``fp32``, ``bf16`` (bfloat16 forward and
    backward through the network; images, Adam and reported activations stay float32) or
    ``auto`` (bf16 where the hardware has it natively). ``on_render(render)`` is called as each
    unit is done (cache hits first).
    """
    from ..zoo import resolve_device

    steps, size, seed, facets = _check_settings(steps, size, seed, batch, objective, facets, lr)
    units = [check_unit(model, u, objective, directions) for u in units]
    if diversity_layer is not None:
        diversity_layer = model.layer(diversity_layer).name
    if device is not None:
        model.to(resolve_device(device))
    dev = model.device
    precision = resolve_precision(precision, dev)
    per_batch = max(1, int(batch or default_batch(dev)))
    n_images = facets if objective == "diversity" else 1
    units_per_batch = max(1, per_batch // n_images)
    cache = None if cache_dir is False else RenderCache(cache_dir)
    settings = {u: render_settings(model, u, objective=objective, negative=negative,
                                   steps=steps, size=size, seed=seed, lr=lr, facets=facets,
                                   directions=directions, precision=precision,
                                   diversity_layer=diversity_layer)
                for u in dict.fromkeys(units)}

    done: dict[Unit, Render] = {}
    todo: list[Unit] = []
    for unit in settings:
        hit = cache.get(settings[unit]) if cache else None
        if hit is not None:
            image, record = hit
            done[unit] = _from_record(unit, image, record, cache.paths(settings[unit])[0])
            if on_render:
                on_render(done[unit])
        else:
            todo.append(unit)

    batches = [chunk for layer_units in _by_layer(todo)
               for chunk in _chunks(layer_units, units_per_batch)]
    bar = _progress(progress, len(batches) * steps, todo)
    tick = (lambda _step: bar.update(1)) if bar else None
    try:
        with _frozen(model):
            for chunk in batches:
                renders = _render_batch(model, chunk, objective, negative, steps, size, seed, lr,
                                        facets, directions, precision, diversity_layer,
                                        on_step=tick)
                for render in renders:
                    if cache:
                        record = {"activation": render.activation, "seconds": render.seconds,
                                  "facet_activations": list(render.facet_activations),
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                        render.path = cache.put(settings[render.unit], render.image, record)
                    done[render.unit] = render
                    if on_render:
                        on_render(render)
    finally:
        if bar:
            bar.close()
    return [done[u] for u in units]


# --- helpers -------------------------------------------------------------------------------

def _check_settings(steps, size, seed, batch, objective, facets, lr):
    if objective not in OBJECTIVES:
        raise CircuitsError(f"unknown objective {objective!r}; choose one of "
                            + ", ".join(OBJECTIVES))
    for name, value, low in (("steps", steps, 1), ("size", size, 16), ("facets", facets, 2)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise CircuitsError(f"{name} must be an integer >= {low}, got {value!r}")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise CircuitsError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CircuitsError(f"seed must be a non-negative integer, got {seed!r}")
    if not lr > 0:
        raise CircuitsError(f"learning rate must be positive, got {lr!r}")
    return int(steps), int(size), int(seed), int(facets)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device has native bfloat16, else ``fp32``."""
    if precision not in PRECISIONS:
        raise CircuitsError(f"unknown precision {precision!r}; choose one of "
                            + ", ".join(PRECISIONS))
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def check_unit(model: LoadedModel, unit, objective: str, directions=None) -> Unit:
    """The unit with its layer's canonical name, checked against the model (and, for the
    direction objective, against ``directions``); a one-line error otherwise."""
    if not isinstance(unit, Unit):
        raise CircuitsError(f"expected a Unit (layer, channel), got {unit!r}")
    info = model.layer(unit.layer)
    unit = Unit(info.name, int(unit.channel))
    if objective == "direction":
        if directions is None:
            raise CircuitsError("the direction objective needs directions: an array (K, C) "
                                f"over the {info.channels} channels of {info.name!r}")
        arr = np.asarray(directions)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != info.channels:
            raise CircuitsError(f"directions have shape {tuple(np.shape(directions))} but layer "
                                f"{info.name!r} has {info.channels} channels; give (K, "
                                f"{info.channels}) or ({info.channels},)")
        if not 0 <= unit.channel < arr.shape[0]:
            raise CircuitsError(f"direction {unit.channel} does not exist; there are "
                                f"{arr.shape[0]} (0-{arr.shape[0] - 1})")
        if not np.isfinite(arr).all() or (np.linalg.norm(arr, axis=1) == 0).any():
            raise CircuitsError("directions must be finite and non-zero")
    elif not 0 <= unit.channel < info.channels:
        raise CircuitsError(f"channel {unit.channel} is out of range for layer {info.name!r}, "
                            f"which has {info.channels} channels (0-{info.channels - 1})")
    return unit


def _array_hash(arr) -> str:
    a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:16]


def render_settings(model: LoadedModel, unit: Unit, *, objective: str = "channel",
                    negative: bool = False, steps: int = 512, size: int = 128, seed: int = 0,
                    lr: float = LEARNING_RATE, facets: int = DEFAULT_FACETS, directions=None,
                    precision: str = "fp32", diversity_layer: str | None = None) -> dict:
    """Everything that determines a render (the cache key, and what a manifest records)."""
    s = {"model": model.name, "weights_id": str(model.weights_id), "layer": unit.layer,
         "channel": int(unit.channel), "objective": objective, "negative": bool(negative),
         "steps": int(steps), "size": int(size), "seed": int(seed), "precision": precision}
    if lr != LEARNING_RATE:
        s["lr"] = float(lr)
    if objective == "diversity":
        s["facets"] = int(facets)
        s["diversity_weight"] = DIVERSITY_WEIGHT
        s["diversity_layer"] = diversity_layer or unit.layer
    if objective == "direction":
        s["directions"] = _array_hash(directions)
    return s


def _from_record(unit, image, record, path) -> Render:
    s = record["settings"]
    return Render(unit=unit, image=image, activation=float(record["activation"]), path=path,
                  objective=s["objective"], negative=s["negative"], steps=s["steps"],
                  size=s["size"], seed=s["seed"], seconds=0.0, cached=True,
                  facet_activations=tuple(record.get("facet_activations") or ()))


def _by_layer(units: Sequence[Unit]) -> list[list[Unit]]:
    groups: dict[str, list[Unit]] = {}
    for u in units:
        groups.setdefault(u.layer, []).append(u)
    return list(groups.values())


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _progress(enabled: bool, total: int, todo: list[Unit]):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    layers = sorted({u.layer for u in todo})
    desc = f"rendering {len(todo)} unit{'s' * (len(todo) != 1)} of {', '.join(layers)}"
    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, smoothing=0.05)


@contextlib.contextmanager
def _frozen(model: LoadedModel):
    """Weights need no gradients while rendering; restore what the caller had afterwards."""
    params = [p for p in model.module.parameters() if p.requires_grad]
    was_training = model.module.training
    for p in params:
        p.requires_grad_(False)
    model.module.eval()
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        model.module.train(was_training)


def _render_batch(model, units: list[Unit], objective: str, negative: bool, steps: int,
                  size: int, seed: int, lr: float, facets: int, directions, precision: str,
                  diversity_layer: str | None = None, on_step=None) -> list[Render]:
    """One optimisation for units of one layer; returns their renders (not yet cached)."""
    layer = units[0].layer
    channels = [u.channel for u in units]
    k = facets if objective == "diversity" else 1
    items = [c for c in channels for _ in range(k)]
    seeds = [param_seed(seed, u, f) for u in units for f in range(k)]
    if objective in ("channel", "diversity"):
        measure = obj.channel(layer, items)
    elif objective == "neuron":
        measure = obj.neuron(layer, items)
    else:
        arr = np.asarray(directions, dtype=np.float32).reshape(-1, model.layer(layer).channels)
        measure = obj.direction(layer, torch.from_numpy(arr[items]))
    target = -measure if negative else measure
    if objective == "diversity":
        target = target + DIVERSITY_WEIGHT * obj.relative_to(
            obj.diversity(diversity_layer or layer, group=k), measure)
    result = optimize(model, target, seeds, steps=steps, size=size, seed=seed, lr=lr,
                      measure_with=measure, precision=precision, on_step=on_step)
    share = result.seconds / len(units)
    renders = []
    for i, unit in enumerate(units):
        imgs = result.images[i * k:(i + 1) * k]
        acts = result.activations[i * k:(i + 1) * k]
        image = np.concatenate(list(imgs), axis=1) if k > 1 else imgs[0]
        renders.append(Render(
            unit=unit, image=to_uint8(image).astype(np.float32) / 255.0,
            activation=float(np.mean(acts)), objective=objective, negative=negative,
            steps=steps, size=size, seed=seed, seconds=share,
            facet_activations=tuple(float(a) for a in acts) if k > 1 else ()))
    return renders


def param_seed(seed: int, unit: Unit, facet: int = 0) -> int:
    """The seed of a unit's initial image: a function of (seed, unit, facet) only."""
    from .param import item_seed

    return item_seed(seed, unit.layer, unit.channel, facet)


# re-exported for callers that read renders back from disk
read_render_png = read_png
