"""Planning and building an atlas: which units, from which caches, into which pages.

:func:`plan_atlas` checks every input (layers, units, images, the output folder, the features
file) before any work; :func:`build_atlas` then, layer by layer: runs (or reads from the cache)
the activation pass over the images, computes the expanded weights to the layer from the layer
it reads and from it to the layer that reads it (and, for late layers, to the class logits),
renders the feature visualizations that are not in the render cache, and writes one page per
unit; finally the index and the layer pages, for every unit page that exists in the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CircuitsError
from ..units import Unit, parse_channels, parse_unit
from ..zoo.base import LoadedModel
from .site import Site

ATLAS_VERSION = 1
KINDS = ("channel", "negative", "diversity")
BLOCKS = "blocks"  # --layers value: every Inception block of the model
# Renders of 64 px or less (the toy model) optimised together: measured 2x the image-steps per
# second of a batch of 32 on 2 CPU cores.
SMALL_BATCH = 64


@dataclass
class AtlasSettings:
    """What the pages show and how the pictures are made (renders as ``circuits visualize``)."""

    steps: int = 512
    size: int | None = None  # default: min(128, the model's input size)
    seed: int = 0
    precision: str = "auto"
    batch: int | None = None
    kinds: tuple[str, ...] = KINDS
    facets: int = 4
    top_inputs: int = 8
    top_outputs: int = 8
    top_examples: int = 9
    top_classes: int = 5

    def key(self) -> dict:
        d = dict(self.__dict__)
        d.pop("batch")  # a unit's picture does not depend on its batch
        d["kinds"] = list(self.kinds)
        return d


@dataclass
class AtlasPlan:
    model: LoadedModel
    out: Path
    layers: list[str]  # site layers, forward order
    units: dict[str, list[int]]  # every planned unit (all shards)
    mine: list[Unit]  # this run's units (its shard)
    images: object | None  # ImageSet
    settings: AtlasSettings
    shard: tuple[int, int] | None
    class_layers: list[str]
    features: dict | None
    site: Site
    saes: dict = field(default_factory=dict)  # layer -> loaded SAE (circuits_cli.sae.SAE)
    cache: object | None = None  # ActivationCache read instead of images (circuits_cli.cache)

    @property
    def data_fingerprint(self) -> str | None:
        """The identity of the images the pages' dataset examples come from."""
        if self.cache is not None:
            return "cache:" + self.cache.fingerprint
        return self.images.fingerprint if self.images is not None else None


@dataclass
class AtlasResult:
    out: Path
    written: int = 0  # unit pages written by this run
    skipped: int = 0  # unit pages already current
    in_site: int = 0  # unit pages in the folder (all runs and shards)
    missing: list[str] = field(default_factory=list)  # planned units without a page yet
    seconds: dict[str, float] = field(default_factory=dict)  # wall clock per phase
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's CPU per phase
    n_files: int = 0
    size_bytes: int = 0
    rendered: int = 0  # renders made by this run (not from the cache)

    @property
    def index(self) -> Path:
        return self.out / "index.html"


# ---------------------------------------------------------------------------------------------
# Planning (every check before any work)


def parse_layers(model: LoadedModel, spec: str | Sequence[str]) -> list[str]:
    """``"mixed4a,mixed4b"``, short names, or ``blocks`` (every Inception block); forward order."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    parts = [p.strip() for p in parts if p and p.strip()]
    if not parts:
        raise CircuitsError("--layers is empty; give e.g. 'mixed4a,mixed4b' or 'blocks'")
    names: list[str] = []
    for p in parts:
        if p == BLOCKS:
            if not model.blocks:
                raise CircuitsError(f"model {model.name!r} has no Inception blocks; list the "
                                    "layers ('circuits layers' shows them)")
            names.extend(model.blocks)
        else:
            names.append(model.layer(p).name)
    for n in names:
        info = model.layer(n)
        if info.shape is not None and len(info.shape) != 3:
            raise CircuitsError(f"layer {n!r} is not convolutional (C, H, W); the atlas shows "
                                "conv and block layers")
    return sorted(dict.fromkeys(names), key=model.layer_index)


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 0 <= K < N; None stays None; a one-line error otherwise."""
    import re

    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not m:
        raise CircuitsError(f"malformed --shard {value!r}; write K/N with 0 <= K < N, e.g. 0/4 "
                            "(Slurm: --shard $SLURM_ARRAY_TASK_ID/N with --array=0-(N-1))")
    k, n = int(m[1]), int(m[2])
    if n < 1 or not 0 <= k < n:
        raise CircuitsError(f"--shard {value!r} is out of range; K must be 0..N-1 and N >= 1")
    return k, n


def load_features(path: str | Path, model: LoadedModel) -> dict:
    """Read a features file (see :data:`FEATURES_FORMAT`): ``{unit id: [feature, ...]}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CircuitsError(f"cannot read features file {str(path)!r} ({err.strerror})") from None
    except ValueError:
        raise CircuitsError(f"features file {str(path)!r} is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != FEATURES_FORMAT \
            or not isinstance(data.get("units"), dict):
        raise CircuitsError(f"features file {str(path)!r} must be a JSON object with format "
                            f"{FEATURES_FORMAT!r} and 'units': {{'LAYER:CHANNEL': [...]}}")
    units = {}
    for key, items in data["units"].items():
        unit = parse_unit(key, model)
        if not isinstance(items, list) or not all(isinstance(i, dict) and "id" in i
                                                  for i in items):
            raise CircuitsError(f"features of {key!r} in {str(path)!r} must be a list of "
                                "objects with at least an 'id'")
        clean = []
        for item in items:
            entry = {"id": str(item["id"]), "label": str(item.get("label", "")),
                     "weight": None if item.get("weight") is None else float(item["weight"]),
                     "href": item.get("href"), "image": None}
            if item.get("image"):
                img = Path(item["image"])
                img = img if img.is_absolute() else path.parent / img
                if not img.is_file():
                    raise CircuitsError(f"feature image {str(img)!r} of {key!r} does not exist")
                entry["image"] = str(img)
            clean.append(entry)
        units[str(unit)] = clean
    return {"source": str(data.get("source", path.name)), "units": units}


FEATURES_FORMAT = "circuits-atlas-features/1"


def default_class_layers(model: LoadedModel) -> list[str]:
    """Late layers (whose classes a page lists): the model's last two Inception blocks, or its
    last conv/block layer when it has no blocks."""
    if model.blocks:
        return list(model.blocks)[-2:]
    convs = [n for n, i in model.layers.items() if i.kind in ("conv", "block")
             and not i.alias_of]
    return convs[-1:]


def plan_atlas(model: LoadedModel, out: str | Path, layers: str | Sequence[str], *,
               units: str | dict[str, str] | None = None, images=None,
               settings: AtlasSettings | None = None,
               shard: tuple[int, int] | None = None, class_layers: Sequence[str] | None = None,
               features: str | Path | dict | None = None,
               saes: Sequence[str | Path] = (), cache=None) -> AtlasPlan:
    """Check everything and decide the work; nothing is computed or written yet.

    ``units``: ``"all"``/None, a channel list for every layer (``"0-63,447"``), or a dict
    ``{layer: list}`` (layers left out get all their units)."""
    from ..render import resolve_precision

    settings = settings or AtlasSettings()
    bad = [k for k in settings.kinds if k not in KINDS]
    if bad or not settings.kinds:
        raise CircuitsError(f"unknown kind of feature visualization {bad[0] if bad else ''!r}; "
                            f"choose from {', '.join(KINDS)}")
    for name in ("steps", "top_inputs", "top_outputs", "top_examples", "top_classes"):
        if int(getattr(settings, name)) < 1:
            raise CircuitsError(f"{name.replace('_', '-')} must be at least 1")
    if settings.size is None:
        settings.size = min(128, int(model.input_size))
    if settings.size < 16:
        raise CircuitsError(f"size must be at least 16, got {settings.size}")
    settings.precision = resolve_precision(settings.precision, model.device)
    if settings.batch is None and settings.size <= 64:
        settings.batch = SMALL_BATCH
    names = parse_layers(model, layers)
    if isinstance(units, dict):
        specs = {model.layer(k).name: v for k, v in units.items()}
        unknown = [k for k in specs if k not in names]
        if unknown:
            raise CircuitsError(f"units are given for {unknown[0]!r}, which is not in --layers")
    else:
        specs = {n: units or "all" for n in names}
    planned: dict[str, list[int]] = {}
    for n in names:
        planned[n] = parse_channels(specs.get(n, "all"), model.layer(n).channels, n)
    flat = [Unit(n, c) for n in names for c in planned[n]]
    mine = flat if shard is None else [u for i, u in enumerate(flat) if i % shard[1] == shard[0]]
    imgs = None
    if images is not None and cache is not None:
        raise CircuitsError("give images or an activation cache, not both")
    if images is not None:
        from ..evidence import image_set

        imgs = image_set(images)
    if cache is not None:
        cache.check_model(model, names)
    if class_layers is None:
        class_layers = [n for n in default_class_layers(model) if n in names]
    else:
        class_layers = [model.layer(n).name for n in class_layers]
    feats = None
    if features is not None:
        feats = features if isinstance(features, dict) else load_features(features, model)
    loaded = {}
    for path in saes:
        sae = _check_sae(model, path, names)
        if imgs is None and cache is None:
            raise CircuitsError("--sae needs --images or --cache: a unit's features are ranked "
                                "and shown with the layer's activations over a data set")
        loaded[model.layer(sae.cfg["hook_name"]).name] = sae
    site = Site(out, model=model.name, weights_id=model.weights_id, shard=shard)
    site.check_writable(["index.html", "atlas.css", "atlas.js"]
                        + [f"layers/{slug(n)}.html" for n in names]
                        + [unit_page(u) for u in mine])
    return AtlasPlan(model=model, out=Path(out), layers=names, units=planned, mine=mine,
                     images=imgs, settings=settings, shard=shard, class_layers=class_layers,
                     features=feats, site=site, saes=loaded, cache=cache)


def _check_sae(model: LoadedModel, path, layers: list[str]):
    from ..sae import load_sae

    sae = load_sae(path)
    layer = sae.cfg.get("hook_name")
    if not layer:
        raise CircuitsError(f"SAE {str(path)!r} does not record its layer (cfg.json hook_name)")
    if sae.cfg.get("model_name") not in (None, model.name) or sae.cfg.get(
            "weights_id", model.weights_id) != model.weights_id:
        raise CircuitsError(f"SAE {str(path)!r} was trained on {sae.cfg.get('model_name')!r} "
                            f"({sae.cfg.get('weights_id')}), not on this {model.name!r}")
    info = model.layer(layer)
    if info.name not in layers:
        raise CircuitsError(f"SAE {str(path)!r} is of layer {info.name!r}, which is not in "
                            "--layers")
    if info.channels != sae.d_in:
        raise CircuitsError(f"SAE {str(path)!r} reads {sae.d_in} channels but {info.name!r} "
                            f"has {info.channels}")
    return sae


def sae_identity(sae) -> dict:
    """What identifies an SAE in a page's signature: its folder and weights file."""
    from ..sae.model import WEIGHTS_FILE

    w = Path(sae.folder) / WEIGHTS_FILE
    st = w.stat()
    return {"folder": str(Path(sae.folder).resolve()), "size": st.st_size,
            "mtime": st.st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# Paths inside the site


def slug(layer: str) -> str:
    return layer.replace("/", "-")


def unit_page(u: Unit) -> str:
    return f"units/{slug(u.layer)}/{u.channel}.html"


def unit_img(u: Unit, name: str) -> str:
    return f"img/{slug(u.layer)}/{u.channel}/{name}"


# ---------------------------------------------------------------------------------------------
# Progress


class Progress:
    """Progress with an ETA: a tqdm bar on a terminal, else a plain line every ``every`` s."""

    def __init__(self, total: float, desc: str, enabled: bool = True, every: float = 10.0,
                 stream=None, after: Progress | None = None):
        self.total, self.desc, self.done = float(total), desc, 0.0
        self.after = after  # work that must finish first (its ETA is the one that counts)
        self.stream = stream or sys.stderr
        self.start = self.last = self._prev = time.perf_counter()
        self.every = every
        self.bar = None
        self.enabled = enabled and total > 0
        if self.enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True,
                            smoothing=0.1, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} "
                            "[{elapsed}<{remaining}]")

    def update(self, n: float = 1.0, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            return
        now = time.perf_counter()
        # Work arrives in bursts (a finished batch reports all its units at once): print at the
        # first update of a burst, which sees the whole previous batch, or at the end.
        burst_start = now - self._prev > 0.5 and self.done > n  # (not the very first)
        self._prev = now
        if (now - self.last >= self.every and burst_start) or self.done >= self.total:
            self.last = now
            print(self.line(note), file=self.stream, flush=True)

    def line(self, note: str = "") -> str:
        el = time.perf_counter() - self.start
        frac = self.done / self.total if self.total else 1.0
        eta = el * (1 - frac) / frac if frac > 0 else float("nan")
        eta_s = _hms(eta) if frac > 0 else "?"
        if self.after is not None and self.after.done < self.after.total:
            eta_s = f"when {self.after.desc.split(': ', 1)[-1]} is done"
        return (f"{self.desc}: {self.done:.0f}/{self.total:.0f} ({100 * frac:.0f}%), "
                f"{_hms(el)} elapsed, ETA {eta_s}" + (f"  [{note}]" if note else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


# ---------------------------------------------------------------------------------------------
# Building


class _Timer:
    """Wall-clock and CPU seconds per phase (``with timer.phase("rendering"): ...``). CPU time
    is this process's, all threads: on a busy shared machine it says what the work costs."""

    PHASES = ("rendering", "activations", "weights", "pages")

    def __init__(self):
        self.wall = dict.fromkeys(self.PHASES, 0.0)
        self.cpu = dict.fromkeys(self.PHASES, 0.0)
        self._depth = 0

    @contextlib.contextmanager
    def phase(self, name: str):
        if self._depth:  # nested (weights computed while writing a page): count once
            yield
            return
        self._depth += 1
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self._depth -= 1
            self.wall[name] += time.perf_counter() - w
            self.cpu[name] += time.process_time() - c


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def reader_of(model: LoadedModel, layer: str) -> str | None:
    """The layer that reads ``layer`` (the first conv or block layer whose hop goes to it)."""
    from ..trace import previous_layer

    names = list(model.layers)
    for cand in names[names.index(layer) + 1:]:
        if model.layers[cand].kind in ("conv", "block") and previous_layer(model, cand) == layer:
            return cand
    return None


class _Weights:
    """Expanded weights between adjacent layers and to the logits, each computed once."""

    def __init__(self, model: LoadedModel, timer: _Timer):
        self.model, self.timer = model, timer
        self._pairs: dict[tuple[str, str], tuple[np.ndarray, str]] = {}
        self._classes: dict[str, np.ndarray] = {}

    def pair(self, source: str, target: str) -> tuple[np.ndarray, str]:
        """([C_target, C_source, h, w] float64, method)."""
        import torch

        from ..connections import expanded_weights, resolve_method

        key = (source, target)
        if key not in self._pairs:
            with self.timer.phase("weights"):
                method = resolve_method(self.model, source, target, "auto")
                with torch.no_grad():
                    w = expanded_weights(self.model, source, target, None, method=method)
                self._pairs[key] = (w.detach().cpu().double().numpy(), method)
        return self._pairs[key]

    def classes(self, layer: str) -> np.ndarray:
        """(n_classes, C): expanded weight of each unit to each class logit, summed over
        positions (what ``circuits find`` ranks by), in chunks of classes."""
        from ..connections import _n_logits, expanded_weights

        if layer not in self._classes:
            with self.timer.phase("weights"):
                n = _n_logits(self.model)
                rows = []
                for start in range(0, n, 64):
                    chans = list(range(start, min(n, start + 64)))
                    e = expanded_weights(self.model, layer, "logits", chans)
                    rows.append(e.double().sum(dim=(2, 3)).cpu().numpy())
                self._classes[layer] = np.concatenate(rows)
        return self._classes[layer]


def build_atlas(plan: AtlasPlan, *, progress: bool = True,
                echo: Callable[[str], None] = print) -> AtlasResult:
    """Write the atlas of ``plan`` (see the module docstring); resumable at every unit."""
    from ..trace import previous_layer
    from .pages import PageWriter

    t0, c0 = time.perf_counter(), time.process_time()
    model, site, st = plan.model, plan.site, plan.settings
    timer = _Timer()
    result = AtlasResult(out=plan.out)
    # What a page may link to: planned units (all shards) and units already in the folder.
    linkable = {str(Unit(n, c)) for n, cs in plan.units.items() for c in cs} | set(site.units())
    base_sig = {"v": ATLAS_VERSION, "settings": st.key(), "linkable": _digest(sorted(linkable)),
                "images": plan.data_fingerprint,
                "class_layers": plan.class_layers,
                "features_source": plan.features["source"] if plan.features else None}

    def signature(u: Unit) -> str:
        feats = plan.features["units"].get(str(u)) if plan.features else None
        sae = sae_identity(plan.saes[u.layer]) if u.layer in plan.saes else None
        return _digest({**base_sig, "unit": str(u), "features": feats, "sae": sae})

    todo = [u for u in plan.mine if not site.unit_current(str(u), signature(u))]
    result.skipped = len(plan.mine) - len(todo)
    if result.skipped:
        echo(f"atlas: {result.skipped} of {len(plan.mine)} unit pages are current; "
             f"{len(todo)} to write")

    acts = {}
    if todo and (plan.images is not None or plan.cache is not None):
        from ..evidence import cache_activations, layers_activations

        with timer.phase("activations"), _pass_lock(plan):
            if plan.cache is not None:  # the activation cache's rows: no forward pass
                acts = cache_activations(model, plan.layers, plan.cache, progress=progress)
            else:
                acts = layers_activations(model, plan.layers, plan.images, progress=progress,
                                          warn=False)
        msg = next(iter(acts.values())).skipped_message()
        if msg:
            echo(f"atlas: {msg}")

    weights = _Weights(model, timer)
    writer = PageWriter(plan, linkable, acts, weights, echo)
    if todo:
        writer.static()
    by_layer: dict[str, list[Unit]] = {}
    for u in todo:
        by_layer.setdefault(u.layer, []).append(u)

    kinds_of = {n: _kinds_for(plan, n, acts.get(n)) for n in by_layer}
    misses = _count_misses(plan, by_layer, kinds_of)
    total = sum(misses.values())
    bar = Progress(total, "atlas: rendering (image-steps)", enabled=progress and total > 0)
    pages_bar = Progress(len(todo), "atlas: unit pages", enabled=progress and bool(todo),
                         every=15.0, after=bar)
    try:
        for layer, units in by_layer.items():
            prev = previous_layer(model, layer)
            reader = reader_of(model, layer)
            if model.layer(layer).tokens is not None:
                # every unit's inputs and outputs through attention would take one frozen
                # forward pass per few units of two whole layers: 'circuits trace' does it for
                # the units one asks about
                if progress:
                    echo(f"atlas: {layer} is a token layer: its pages list no inputs, outputs "
                         "or classes (connections through attention: circuits trace UNIT)")
                prev = reader = None
            elif progress and (prev is not None or reader is not None):
                echo(f"atlas: expanded weights around {layer} "
                     f"({' and '.join(x for x in (prev, reader) if x)})...")
            if prev is not None:
                weights.pair(prev, layer)
            if reader is not None:
                weights.pair(layer, reader)
            if layer in plan.class_layers and model.layer(layer).tokens is None:
                weights.classes(layer)
            with timer.phase("rendering"):
                renders = _render_layer(plan, units, kinds_of[layer], bar)
            result.rendered += sum(1 for r in renders.values() for x in r.values()
                                   if not x.cached)
            for u in units:
                with timer.phase("pages"):
                    files = writer.unit(u, renders[u], kinds_of[layer], prev, reader)
                    site.finish_unit(str(u), {"signature": signature(u), "page": unit_page(u),
                                              "files": files})
                result.written += 1
                pages_bar.update(1, note=str(u))
            site.flush()
    finally:
        bar.close()
        pages_bar.close()
        site.flush()
    with timer.phase("pages"):
        writer.indexes()
        site.flush()
    done = site.units()
    result.in_site = len(done)
    result.missing = [str(Unit(n, c)) for n, cs in plan.units.items() for c in cs
                      if str(Unit(n, c)) not in done]
    result.n_files, result.size_bytes = site.size_on_disk()
    result.seconds = {**{k: round(v, 2) for k, v in timer.wall.items()},
                      "total": round(time.perf_counter() - t0, 2)}
    result.cpu_seconds = {**{k: round(v, 2) for k, v in timer.cpu.items()},
                          "total": round(time.process_time() - c0, 2)}
    return result


@contextlib.contextmanager
def _pass_lock(plan: AtlasPlan):
    """Shards started together (an array job on one machine) would each run the same activation
    pass: the first takes a lock in the activation cache, the others wait and then read its
    result from the cache. Where file locks do not work (some network file systems), each shard
    runs the pass itself, which is only slower."""
    from ..evidence.activations import default_cache_dir

    key = _digest([plan.model.name, str(plan.model.weights_id), plan.layers,
                   plan.data_fingerprint])
    try:
        import fcntl

        root = default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        fh = open(root / f".atlas-pass-{key}.lock", "w")  # noqa: SIM115 - held while yielding
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        fh.close()


def _kinds_for(plan: AtlasPlan, layer: str, acts) -> list[str]:
    """The kinds of render for a layer: no negative render where the layer never goes below 0
    on the images (after a ReLU a negative render only reaches 0: it shows nothing)."""
    kinds = list(plan.settings.kinds)
    if "negative" in kinds and acts is not None and float(np.min(acts.stats["min"])) >= 0:
        kinds.remove("negative")
    return kinds


def _render_args(kind: str, st: AtlasSettings) -> dict:
    return {"objective": "diversity" if kind == "diversity" else "channel",
            "negative": kind == "negative"}


def _count_misses(plan: AtlasPlan, by_layer: dict, kinds_of: dict) -> dict:
    """Image-steps still to render per layer (cache misses only): the ETA's total."""
    from ..render import make_recipe, render_settings
    from ..render.cache import RenderCache

    st, cache = plan.settings, RenderCache()
    recipe = make_recipe(plan.model, steps=st.steps, size=st.size, seed=st.seed,
                         precision=st.precision)
    out = {}
    for layer, units in by_layer.items():
        n = 0
        for kind in kinds_of[layer]:
            args = _render_args(kind, st)
            per = st.facets if kind == "diversity" else 1
            for u in units:
                s = render_settings(plan.model, u, recipe, facets=st.facets, **args)
                if not cache.paths(s)[1].exists():
                    n += per * st.steps
        out[layer] = n
    return out


def _render_layer(plan: AtlasPlan, units: list[Unit], kinds: list[str], bar: Progress) -> dict:
    from ..render import make_recipe, render_units

    st = plan.settings
    recipe = make_recipe(plan.model, steps=st.steps, size=st.size, seed=st.seed,
                         precision=st.precision)
    out: dict[Unit, dict] = {u: {} for u in units}
    for kind in kinds:
        per = (st.facets if kind == "diversity" else 1) * st.steps

        def tick(r, per=per, kind=kind):
            if not r.cached:
                bar.update(per, note=f"{r.unit} {kind}")

        renders = render_units(plan.model, units, recipe, batch=st.batch, facets=st.facets,
                               progress=False, on_render=tick, **_render_args(kind, st))
        for u, r in zip(units, renders, strict=True):
            out[u][kind] = r
    return out


def image_bytes(image: np.ndarray, fmt: str, max_side: int | None = None,
                quality: int = 85) -> bytes:
    """An (H, W, 3) float [0, 1] or uint8 image as PNG/JPEG bytes, shrunk to ``max_side``."""
    from PIL import Image

    from ..render.cache import to_uint8

    arr = image if image.dtype == np.uint8 else to_uint8(image)
    im = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                       Image.LANCZOS)
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
