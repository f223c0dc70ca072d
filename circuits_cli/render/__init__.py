"""Feature visualization: render what a unit responds to by activation maximization.

Lucid's split (``lucid.optvis.render_vis``): an **objective** (a composable value, or a string
such as ``"inception_4c:447 - 0.5*inception_4c:12"``), a **parameterization**, **transforms** and
an **optimizer**, passed in as values; the last three, with the steps, size, seed and precision,
are one :class:`~.recipe.Recipe` whose description is the cache key and the manifest::

    from circuits_cli.render import render, render_units
    out = render(model, "inception_4c:447", param="maco", steps=256)
    out.images[0]         # (H, W, 3) float32 in [0, 1]; out.transparency[0]: (H, W)

    renders = render_units(model, [Unit("inception_4c", c) for c in range(8)], steps=256)
    renders[0].image        # (H, W, 3) float32 in [0, 1]
    renders[0].activation   # the unit's mean activation on that image

:func:`render` optimises any objective, uncached. :func:`render_units` renders many units in one
batched optimisation per layer and caches every render on disk so that no command renders the
same unit twice. The default recipe is Lucid's: a 128 px image in a decorrelated Fourier
parameterization, random jitter/scale/rotation every step, bilinear upsampling to the model's
input size, Adam; ``param="maco"`` is MACO (phase only, natural magnitude spectrum, crops and
noise, transparency map). Both stop the forward pass at the target layer and keep the weights
frozen. ``from_image=`` (feature accentuation, Hamblin et al. 2024) starts from a photo and keeps
an earlier layer's activations close to the photo's.

Modules: :mod:`.recipe` (the recipe as data), :mod:`.param` (parameterizations),
:mod:`.objectives` (channel, neuron, direction, diversity, stay_close; composable; ``parse``),
:mod:`.transforms`, :mod:`.spectrum` (MACO's magnitude spectrum), :mod:`.engine` (the loop),
:mod:`.cache`.
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
from ..units import Unit, is_neuron
from ..zoo.base import LoadedModel
from . import objectives as obj
from .cache import RenderCache, read_png, to_uint8
from .engine import PRECISIONS, Optimized, bf16_supported, optimize
from .recipe import PARAMS, Recipe

__all__ = ["Render", "render", "render_units", "render_settings", "check_unit",
           "resolve_precision", "make_recipe", "Accentuation", "Recipe", "Optimized",
           "OBJECTIVES", "PARAMS", "DEFAULT_FACETS", "DIVERSITY_WEIGHT", "DEFAULT_PRECISION",
           "default_batch"]

OBJECTIVES = ("channel", "neuron", "direction", "diversity")
DEFAULT_FACETS = 4
# Weight of the diversity term, relative to the unit's own activation: each facet maximises
# act - DIVERSITY_WEIGHT * |act| * (summed Gram similarity to the other facets) / facets.
# (Lucid uses a fixed 1e2, which only suits activations of one particular scale.)
DIVERSITY_WEIGHT = 4.0
DEFAULT_PRECISION = "auto"
DEFAULT_KEEP_WEIGHT = 1.0


@dataclass
class Render:
    """One unit's feature visualization.

    ``image`` is (H, W, 3) float32 in [0, 1], exactly what the PNG at ``path`` holds (renders are
    quantised to 8 bits so that a fresh render and a cache hit are the same picture). For the
    ``diversity`` objective it is the facets side by side (H, facets * W, 3).
    ``activation`` is the unit's value on the final image without transforms (for ``channel``
    and ``diversity``: its mean over positions; ``neuron``: at the centre; ``direction``: the dot
    product with the unit-length direction), also for negative renders.
    ``transparency`` (MACO): (H, W) in [0, 1], where the objective's gradient accumulated, 8-bit
    as its PNG holds it. ``facet_similarity`` (diversity): mean pairwise cosine similarity of the
    facets' activation vectors (spatial means) at the diversity layer (1 = the same picture).
    ``distance`` (accentuation): relative squared distance of the keep layer's activations from
    the photo's.
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
    param: str = "fourier"
    transparency: np.ndarray | None = None
    facet_similarity: float | None = None
    distance: float | None = None
    start_activation: float | None = None  # accentuation: the unit on the photo itself


@dataclass(frozen=True)
class Accentuation:
    """Feature accentuation (Hamblin et al., 2024): start from ``image`` (H, W, 3) in [0, 1]
    and keep the activations of ``keep_layer`` close to the image's, with a penalty of
    ``keep_weight`` times the unit's own activation per unit of relative squared distance."""

    image: np.ndarray
    keep_layer: str
    keep_weight: float = DEFAULT_KEEP_WEIGHT
    name: str = ""

    @property
    def sha256(self) -> str:
        arr = np.ascontiguousarray(to_uint8(self.image))
        return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {"sha256": self.sha256, "keep_layer": self.keep_layer,
                "keep_weight": float(self.keep_weight), "name": self.name}

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.image, np.float32)).permute(2, 0, 1)[None]


def make_recipe(model: LoadedModel | None = None, recipe: Recipe | None = None,
                **fields) -> Recipe:
    """The recipe to use: ``recipe`` as given, or the defaults of ``fields["param"]`` with the
    other ``fields`` (steps, size, seed, precision, lr, ...) overridden; ``precision="auto"``
    becomes bf16 where the model's device has native bfloat16, else fp32."""
    if recipe is not None:
        if fields:
            raise CircuitsError(f"give a recipe or its fields, not both ({', '.join(fields)})")
        return recipe
    precision = fields.pop("precision", DEFAULT_PRECISION)
    device = model.device if model is not None else torch.device("cpu")
    fields["precision"] = resolve_precision(precision, device)
    return Recipe.for_param(fields.pop("param", "fourier"), **fields)


def render(model: LoadedModel, objective, *, param: str = "fourier", transforms=None,
           optimizer=None, recipe: Recipe | None = None, seeds: Sequence[int] = (0,),
           from_image: Accentuation | None = None, measure_with=None,
           progress: bool = False, **fields) -> Optimized:
    """Optimise pictures for ``objective`` (Lucid's ``render_vis``), uncached.

    ``objective``: an :class:`~.objectives.Objective`, a string (:func:`.objectives.parse`,
    e.g. ``"4c:447 - 0.5*4c:12"``) or a list of them (item ``i`` of the batch for the ``i``-th).
    ``param``: ``fourier`` or ``maco``, with that parameterization's default transforms and
    optimizer unless ``transforms`` (a list of :func:`.recipe.step` values) or ``optimizer``
    (``"adam"``, ``"nadam"`` or a dict with ``name``, ``lr``, ``betas``) say otherwise; other
    recipe fields (``steps``, ``size``, ``seed``, ``precision``) as keywords, or a whole
    ``recipe``. ``seeds``: one picture per seed (one objective for all, or one per seed).
    ``from_image``: feature accentuation. Returns the engine's :class:`~.engine.Optimized`
    (images, activations of ``measure_with`` or the objective, transparency for MACO).
    """
    if recipe is None:
        if transforms is not None:
            fields["transforms"] = tuple(transforms)
        if isinstance(optimizer, str):
            fields["optimizer"] = optimizer
        elif isinstance(optimizer, dict):
            fields.update({"optimizer": optimizer["name"],
                           **{k: optimizer[k] for k in ("lr", "betas") if k in optimizer}})
        recipe = make_recipe(model, param=param, **fields)
    elif fields or transforms is not None or optimizer is not None:
        raise CircuitsError("give a recipe or its parts, not both")
    if isinstance(objective, (list, tuple)):
        parts = [obj.parse(o, model) for o in objective]
        if len(parts) != len(seeds):
            seeds = list(range(len(parts))) if tuple(seeds) == (0,) else seeds
        if len(parts) != len(seeds):
            raise CircuitsError(f"{len(parts)} objectives for {len(seeds)} seeds")
        target = obj.per_item(parts)
    else:
        target = obj.parse(objective, model)
    measure_with = obj.parse(measure_with, model) if measure_with is not None else target
    init = None
    if from_image is not None:
        keep = model.layer(from_image.keep_layer).name
        target = target + from_image.keep_weight * obj.relative_to(obj.stay_close(keep),
                                                                   measure_with)
        init = from_image.tensor().expand(len(seeds), -1, -1, -1)
    bar = _progress(progress, recipe.steps, f"rendering {target.name}")
    try:
        with _frozen(model):
            return optimize(model, target, list(seeds), recipe, measure_with=measure_with,
                            init_images=init, on_step=(lambda _s: bar.update(1)) if bar else None)
    finally:
        if bar:
            bar.close()


def default_batch(device: torch.device) -> int:
    """Images optimised together when ``batch`` is not given."""
    return 64 if device.type == "cuda" else 16


def render_units(model: LoadedModel, units: list[Unit], recipe: Recipe | None = None, *,
                 objective: str = "channel", negative: bool = False,
                 directions: np.ndarray | None = None, facets: int = DEFAULT_FACETS,
                 diversity_layer: str | None = None, from_image: Accentuation | None = None,
                 batch: int | None = None, cache_dir: Path | None | bool = None,
                 progress: bool = True, on_render: Callable[[Render], None] | None = None,
                 **recipe_fields) -> list[Render]:
    """Render ``units`` of ``model``; returns one :class:`Render` per unit, in order.

    How: ``recipe`` (a :class:`~.recipe.Recipe`), or its fields as keywords (``steps=512``,
    ``size=128``, ``seed=0``, ``param="fourier"`` or ``"maco"``, ``precision="auto"``: bfloat16
    forward and backward where the hardware has it natively; images, optimizer state and the
    reported activations stay float32).

    What: ``objective`` ``channel`` (mean over positions), ``neuron`` (centre position),
    ``direction`` (``directions`` is an array (K, C) over the layer's channels and
    ``Unit(layer, k)`` renders row k), ``diversity`` (``facets`` images per unit that maximise
    the channel while differing from each other: the facets of a polysemantic unit; the difference
    is measured by Gram matrices at ``diversity_layer``, the unit's own layer by default).
    ``negative=True`` minimises instead. ``from_image``: feature accentuation from a photo.

    Units are grouped by layer and optimised ``batch`` images at a time (default 16 on CPU, 64
    on a GPU); a unit's picture depends only on its own settings, not on its batch. Each finished
    render is written to the cache at once (``cache_dir``: None = ``$CIRCUITS_CACHE/renders``,
    default ``~/.cache/circuits/renders``; False = no cache), so an interrupted call loses at most
    the batch in progress, and a later call with the same settings returns instantly.
    ``on_render(render)`` is called as each unit is done (cache hits first).
    """
    _check_settings(batch, objective, facets)
    recipe = make_recipe(model, recipe, **recipe_fields)
    units = [check_unit(model, u, objective, directions) for u in units]
    if diversity_layer is not None:
        diversity_layer = model.layer(diversity_layer).name
    if from_image is not None:
        from_image = Accentuation(from_image.image, model.layer(from_image.keep_layer).name,
                                  from_image.keep_weight, from_image.name)
    dev = model.device
    per_batch = max(1, int(batch or default_batch(dev)))
    n_images = facets if objective == "diversity" else 1
    units_per_batch = max(1, per_batch // n_images)
    cache = None if cache_dir is False else RenderCache(cache_dir)
    what = dict(objective=objective, negative=negative, facets=facets, directions=directions,
                diversity_layer=diversity_layer, from_image=from_image)
    settings = {u: render_settings(model, u, recipe, **what) for u in dict.fromkeys(units)}

    done: dict[Unit, Render] = {}
    todo: list[Unit] = []
    for unit in settings:
        hit = cache.get(settings[unit]) if cache else None
        if hit is not None:
            image, record, alpha = hit
            done[unit] = _from_record(unit, image, record, cache.paths(settings[unit])[0],
                                      alpha)
            if on_render:
                on_render(done[unit])
        else:
            todo.append(unit)

    batches = [chunk for layer_units in _by_layer(todo)
               for chunk in _chunks(layer_units, units_per_batch)]
    bar = _progress(progress, len(batches) * recipe.steps, _describe_todo(todo))
    tick = (lambda _step: bar.update(1)) if bar else None
    try:
        with _frozen(model):
            for chunk in batches:
                for render_ in _render_batch(model, chunk, recipe, on_step=tick, **what):
                    if cache:
                        record = {"activation": render_.activation, "seconds": render_.seconds,
                                  "facet_activations": list(render_.facet_activations),
                                  "facet_similarity": render_.facet_similarity,
                                  "distance": render_.distance,
                                  "start_activation": render_.start_activation,
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                        render_.path = cache.put(settings[render_.unit], render_.image, record,
                                                 alpha=render_.transparency)
                    done[render_.unit] = render_
                    if on_render:
                        on_render(render_)
    finally:
        if bar:
            bar.close()
    return [done[u] for u in units]


# --- helpers -------------------------------------------------------------------------------

def _check_settings(batch, objective, facets):
    if objective not in OBJECTIVES:
        raise CircuitsError(f"unknown objective {objective!r}; choose one of "
                            + ", ".join(OBJECTIVES))
    if isinstance(facets, bool) or not isinstance(facets, (int, np.integer)) or facets < 2:
        raise CircuitsError(f"facets must be an integer >= 2, got {facets!r}")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise CircuitsError(f"batch must be a positive integer, got {batch!r}")


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
    if not is_neuron(unit):  # a direction or feature carries its own read-out
        if objective not in ("channel", "neuron", "diversity"):
            raise CircuitsError(f"the {objective} objective renders channels; {unit} is a "
                                f"{unit.kind}: use channel, neuron or diversity")
        unit.encoder(info.channels)  # checks the width
        return unit
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


def render_settings(model: LoadedModel, unit: Unit, recipe: Recipe, *,
                    objective: str = "channel", negative: bool = False,
                    facets: int = DEFAULT_FACETS, directions=None,
                    diversity_layer: str | None = None,
                    from_image: Accentuation | None = None) -> dict:
    """Everything that determines a render: the model, the unit, what is maximised, and the
    recipe's description (flat). The cache key and what a manifest records."""
    s = {"model": model.name, "weights_id": str(model.weights_id), "layer": unit.layer,
         **({"channel": int(unit.channel)} if is_neuron(unit) else
            {"unit": str(unit), "unit_vectors": _unit_hash(unit)}),
         "objective": objective, "negative": bool(negative), **recipe.describe()}
    if objective == "diversity":
        s["facets"] = int(facets)
        s["diversity_weight"] = DIVERSITY_WEIGHT
        s["diversity_layer"] = diversity_layer or unit.layer
    if objective == "direction":
        s["directions"] = _array_hash(directions)
    if from_image is not None:
        s["from_image"] = from_image.describe()
    return s


def _unit_hash(unit) -> str:
    """A digest of what a non-neuron unit reads (encoder, bias, ReLU): its render's cache key."""
    enc = np.asarray(unit.encoder(len(unit.enc)), dtype=np.float32)
    extra = f"{float(getattr(unit, 'bias', 0.0)):.9g}:{bool(getattr(unit, 'relu', False))}"
    return hashlib.sha256(enc.tobytes() + extra.encode()).hexdigest()[:16]


def recipe_of(settings: dict) -> Recipe:
    """The recipe a settings dict (a cache record's, a manifest's) was made with."""
    return Recipe.from_description(settings)


def _from_record(unit, image, record, path, alpha=None) -> Render:
    s = record["settings"]
    return Render(unit=unit, image=image, activation=float(record["activation"]), path=path,
                  objective=s["objective"], negative=s["negative"], steps=s["steps"],
                  size=s["size"], seed=s["seed"], seconds=0.0, cached=True,
                  facet_activations=tuple(record.get("facet_activations") or ()),
                  param=s["param"], transparency=alpha,
                  facet_similarity=record.get("facet_similarity"),
                  distance=record.get("distance"),
                  start_activation=record.get("start_activation"))


def _by_layer(units: Sequence[Unit]) -> list[list[Unit]]:
    groups: dict[str, list[Unit]] = {}
    for u in units:
        groups.setdefault(u.layer, []).append(u)
    return list(groups.values())


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _describe_todo(todo: list[Unit]) -> str:
    layers = sorted({u.layer for u in todo})
    return f"rendering {len(todo)} unit{'s' * (len(todo) != 1)} of {', '.join(layers)}"


def _progress(enabled: bool, total: int, desc: str):
    """A bar on a terminal, plain lines with the time left in a log (see ..progress)."""
    if not enabled or total == 0:
        return None
    from ..progress import Progress

    return Progress(total, desc, unit="step")


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


def unit_objective(model: LoadedModel, layer: str, items: list[int], objective: str,
                   directions=None) -> obj.Objective:
    """The measured objective of a batch of units of one layer, item ``i`` for ``items[i]``."""
    if objective in ("channel", "diversity"):
        return obj.channel(layer, items)
    if objective == "neuron":
        return obj.neuron(layer, items)
    arr = np.asarray(directions, dtype=np.float32).reshape(-1, model.layer(layer).channels)
    return obj.direction(layer, torch.from_numpy(arr[items]))


def _render_batch(model, units: list[Unit], recipe: Recipe, *, objective: str, negative: bool,
                  facets: int, directions, diversity_layer: str | None = None,
                  from_image: Accentuation | None = None, on_step=None) -> list[Render]:
    """One optimisation for units of one layer; returns their renders (not yet cached)."""
    layer = units[0].layer
    k = facets if objective == "diversity" else 1
    seeds = [param_seed(recipe.seed, u, f) for u in units for f in range(k)]
    if all(is_neuron(u) for u in units):
        items = [u.channel for u in units for _ in range(k)]
        measure = unit_objective(model, layer, items, objective, directions)
    else:  # directions and features: their own read-out, one per item
        measure = obj.read_out([u for u in units for _ in range(k)],
                           centre_only=objective == "neuron")
    target = -measure if negative else measure
    if objective == "diversity":
        target = target + DIVERSITY_WEIGHT * obj.relative_to(
            obj.diversity(diversity_layer or layer, group=k), measure)
    init = start = None
    if from_image is not None:
        target = target + from_image.keep_weight * obj.relative_to(
            obj.stay_close(from_image.keep_layer), measure)
        init = from_image.tensor().expand(len(items), -1, -1, -1)
    result = optimize(model, target, seeds, recipe, measure_with=measure, init_images=init,
                      on_step=on_step)
    if from_image is not None:
        start = _measure_images(model, init, measure, recipe.size)
        distances = accentuation_distance(model, from_image, result.images)
    similarity = _facet_similarity(model, diversity_layer or layer, result.images, k) \
        if k > 1 else None
    share = result.seconds / len(units)
    renders = []
    for i, unit in enumerate(units):
        imgs = result.images[i * k:(i + 1) * k]
        acts = result.activations[i * k:(i + 1) * k]
        image = np.concatenate(list(imgs), axis=1) if k > 1 else imgs[0]
        alpha = None
        if result.transparency is not None:
            maps = [transparency_map(t) for t in result.transparency[i * k:(i + 1) * k]]
            alpha = np.concatenate(maps, axis=1) if k > 1 else maps[0]
        renders.append(Render(
            unit=unit, image=to_uint8(image).astype(np.float32) / 255.0,
            activation=float(np.mean(acts)), objective=objective, negative=negative,
            steps=recipe.steps, size=recipe.size, seed=recipe.seed, seconds=share,
            facet_activations=tuple(float(a) for a in acts) if k > 1 else (),
            param=recipe.param, transparency=alpha,
            facet_similarity=None if similarity is None else float(similarity[i]),
            distance=None if from_image is None else float(np.mean(distances[i * k:(i + 1) * k])),
            start_activation=None if start is None else float(np.mean(start[i * k:(i + 1) * k]))))
    return renders


def transparency_map(accumulated: np.ndarray) -> np.ndarray:
    """An accumulated gradient magnitude (H, W) as an 8-bit-exact map in [0, 1]: divided by its
    99th percentile and clipped (a few extreme pixels do not decide the scale)."""
    a = np.asarray(accumulated, dtype=np.float64)
    scale = np.percentile(a, 99) or a.max() or 1.0
    return np.rint(np.clip(a / scale, 0, 1) * 255).astype(np.float32) / 255.0


@torch.no_grad()
def _measure_images(model, images: torch.Tensor, objective: obj.Objective, size: int):
    from .engine import measure

    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=True)
    return measure(model, torch.round(x * 255) / 255, objective).numpy()


@torch.no_grad()
def _layer_vectors(model, layer: str, images_nhwc: np.ndarray) -> torch.Tensor:
    """(B, C) spatial means of ``layer`` on pictures as renders hold them (upsampled as in
    rendering)."""
    from ..hooks import hooked, run_until
    from .engine import to_model_input

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).float()
    with hooked(model, [layer]) as acts:
        run_until(model, to_model_input(model, x.to(model.device)))
    return acts[layer].float().flatten(2).mean(-1).cpu()


def _facet_similarity(model, layer: str, images_nhwc: np.ndarray, k: int) -> np.ndarray:
    """Per unit: the mean pairwise cosine similarity of its ``k`` facets' activation vectors
    (spatial means over all channels of ``layer``, the diversity layer): 1 = identical facets."""
    v = torch.nn.functional.normalize(_layer_vectors(model, layer, images_nhwc), dim=1)
    v = v.reshape(-1, k, v.shape[1])
    sims = torch.bmm(v, v.transpose(1, 2))
    off = (sims.sum((1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1))
    return off.numpy()


@torch.no_grad()
def accentuation_distance(model, accent: Accentuation, images_nhwc: np.ndarray) -> np.ndarray:
    """Per picture: the relative squared distance ``|A(x) - A(photo)|^2 / |A(photo)|^2`` of the
    keep layer's activations (the penalty's own measure, without transforms)."""
    from ..hooks import hooked, run_until
    from .engine import to_model_input

    size = images_nhwc.shape[1]
    photo = torch.nn.functional.interpolate(accent.tensor(), size=(size, size), mode="bilinear",
                                            align_corners=False, antialias=True)
    photo = torch.round(photo.clamp(0, 1) * 255) / 255
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).float()
    with hooked(model, [accent.keep_layer]) as acts:
        run_until(model, to_model_input(model, torch.cat([x, photo]).to(model.device)))
    a = acts[accent.keep_layer].float().cpu()
    diff = ((a[:-1] - a[-1:]) ** 2).flatten(1).sum(1)
    return (diff / (a[-1:] ** 2).sum().clamp_min(1e-12)).numpy()


def param_seed(seed: int, unit: Unit, facet: int = 0) -> int:
    """The seed of a unit's initial image: a function of (seed, unit, facet) only. A direction
    or feature counts by what it reads (:func:`_unit_hash`), not by its name, which holds the
    folder of its dictionary: the same feature renders the same wherever its SAE lies."""
    from .param import item_seed

    return item_seed(seed, unit.layer, unit.channel if is_neuron(unit) else _unit_hash(unit),
                     facet)


# re-exported for callers that read renders back from disk
read_render_png = read_png
