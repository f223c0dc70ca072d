"""Rendering a layer into an output folder: resume, shards, manifest, contact sheet.

Folder layout (``SUFFIX`` is empty for positive Fourier channel renders, else e.g. ``-neuron``,
``-neg``, ``-diversity-neg``, ``-maco``, ``-accent``, so that variants of one layer share a folder
without clashing)::

    units/LAYER_CHANNEL{SUFFIX}.png        one picture per unit
    units/LAYER_CHANNEL{SUFFIX}.alpha.png  MACO: its transparency map (grey, 255 = opaque)
    units/LAYER_CHANNEL{SUFFIX}.json       its record: settings, final activation, seconds, quality
    manifest{SUFFIX}.json                   every finished unit with these settings
    sheet{SUFFIX}.png                       labelled contact sheet of the same units
    sheet{SUFFIX}-transparency.png          MACO: the pictures faded to white by transparency

Quality, in each record and the manifest and on the sheet: ``relative_to_best_example`` (the
activation reached divided by the unit's strongest activation over an image set, when one is
given: ``best=``, which ``circuits visualize --images`` computes from the activation store),
``facet_similarity`` (diversity: mean pairwise cosine similarity of the facets' activations,
1 = the same picture), ``distance`` (accentuation: relative squared distance
of the keep layer's activations from the photo's).

Every file is written atomically, a unit's PNG before its record, as soon as its batch finishes.
A unit whose record holds the same settings is finished: a re-run skips it (resume), and shards
(``--shard K/N``) that write to the same folder merge, because the manifest and the sheet are
rebuilt from all matching records whenever a run ends (or is interrupted).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CircuitsError
from ..files import output_dir
from ..units import Unit, is_neuron
from ..zoo.base import LoadedModel
from . import Accentuation, Render, check_unit, make_recipe, render_settings, render_units
from .cache import alpha_path, atomic_write_bytes, png_bytes
from .recipe import Recipe

TOOL = "circuits visualize"
# our files, and the hidden temporary files of an interrupted atomic write of them
_OURS = re.compile(r"^\.?(units|manifest.*\.json|sheet.*\.png)$")


def variant_suffix(objective: str, negative: bool, param: str = "fourier",
                   accentuated: bool = False) -> str:
    parts = [] if objective == "channel" else [objective]
    if negative:
        parts.append("neg")
    if param != "fourier":
        parts.append(param)
    if accentuated:
        parts.append("accent")
    return "".join(f"-{p}" for p in parts)


def default_out_dir(model: LoadedModel, layer: str) -> Path:
    return output_dir("visualize", model.name, layer)


def check_out_dir(out: Path) -> None:
    """Refuse a folder that holds anything but our own outputs (never clobber a user's files)."""
    if out.exists() and not out.is_dir():
        raise CircuitsError(f"--out {str(out)!r} is a file; give a folder")
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if not _OURS.match(p.name))
    for manifest in sorted(out.glob("manifest*.json")):
        try:
            ours = json.loads(manifest.read_text()).get("tool") == TOOL
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            foreign.append(manifest.name)
    if foreign:
        raise CircuitsError(f"--out {str(out)!r} already holds files that are not circuits "
                            f"visualize outputs ({', '.join(foreign[:3])}); choose an empty or "
                            "new folder")


def visualize_layer(model: LoadedModel, layer: str, recipe: Recipe | None = None, *,
                    channels: list[int] | None = None, units: list[Unit] | None = None,
                    objective: str = "channel",
                    directions: np.ndarray | None = None, facets: int = 4,
                    negative: bool = False, from_image: Accentuation | None = None,
                    best: dict | None = None, batch: int | None = None,
                    shard: tuple[int, int] | None = None, out_dir: Path | None = None,
                    cache_dir=None, progress: bool = True,
                    echo: Callable[[str], None] = print, **recipe_fields) -> dict:
    """Render ``channels`` of ``layer`` (all by default) into ``out_dir``; returns the manifest.

    ``recipe`` or its fields (``steps``, ``size``, ``seed``, ``param``, ``precision``) say how
    (see :func:`circuits_cli.render.render_units`). ``best``: score each render against the
    unit's strongest activation over an image set: ``{"value": [per channel], "path": [per
    channel], ...}`` (the command builds it from the activation store; neuron units only).
    Everything is checked before the first file is written. ``shard=(k, n)`` renders units
    ``k, k+n, k+2n, ...`` of the list. ``units`` (directions, dictionary features of
    ``layer``) replaces ``channels``.
    """
    info = model.layer(layer)
    n_units = directions.shape[0] if objective == "direction" and directions is not None \
        else info.channels
    if units is not None:
        units = [check_unit(model, u, objective) for u in units]
    else:
        if channels is None:
            channels = list(range(n_units))
        units = [check_unit(model, Unit(info.name, c), objective, directions)
                 for c in channels]
    if not units:
        raise CircuitsError("no units to render")
    recipe = make_recipe(model, recipe, **recipe_fields)
    if from_image is not None:
        from_image = Accentuation(from_image.image, model.layer(from_image.keep_layer).name,
                                  from_image.keep_weight, from_image.name)
    out = Path(out_dir) if out_dir is not None else default_out_dir(model, info.name)
    check_out_dir(out)
    if best is not None and not all(is_neuron(u) for u in units):
        best = None  # the activation store holds channels, not directions or features
    mine = units if shard is None else units[shard[0]::shard[1]]
    suffix = variant_suffix(objective, negative, recipe.param, from_image is not None)
    what = dict(objective=objective, negative=negative, facets=facets, directions=directions,
                from_image=from_image)
    settings = {u: render_settings(model, u, recipe, **what) for u in units}

    finished = {u: rec for u in units
                if (rec := _read_record(out, u, suffix)) and rec.get("settings") == settings[u]}
    todo = [u for u in mine if u not in finished]
    skipped = len(mine) - len(todo)
    shard_note = f" (shard {shard[0]}/{shard[1]}: {len(mine)} of {len(units)})" if shard else ""
    echo(f"{model.name} {info.name}: {len(todo)} unit(s) to render, {skipped} already "
         f"finished{shard_note} -> {out}")

    started = time.perf_counter()
    fresh: list[Render] = []

    def save(render: Render) -> None:
        png = out / "units" / f"{render.unit.slug}{suffix}.png"
        atomic_write_bytes(png, png_bytes(render.image))
        record = {"tool": TOOL, "unit": str(render.unit), "settings": settings[render.unit],
                  "activation": render.activation, "seconds": round(render.seconds, 3),
                  "from_cache": render.cached, "png": str(png.relative_to(out)),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if render.transparency is not None:
            atomic_write_bytes(alpha_path(png), png_bytes(render.transparency))
            record["transparency_png"] = str(alpha_path(png).relative_to(out))
        if render.facet_activations:
            record["facet_activations"] = list(render.facet_activations)
        record.update(quality(render, best))
        atomic_write_bytes(png.with_suffix(".json"),
                           (json.dumps(record, indent=2) + "\n").encode())
        finished[render.unit] = record
        fresh.append(render)

    try:
        if todo:
            render_units(model, todo, recipe, batch=batch, cache_dir=cache_dir,
                         progress=progress, on_render=save, **what)
    finally:
        manifest = write_summary(model, info.name, units, finished, settings, out, suffix,
                                 recipe, what, shard)
    if negative and fresh and all(abs(r.activation) < 1e-6 for r in fresh):
        echo(f"note: every negative render of {info.name} reached exactly 0: the layer is "
             "probably after a ReLU, so 'least activating' is any image that silences it; "
             "negative visualizations say more on a pre-ReLU layer")
    n_cached = sum(r.cached for r in fresh)
    echo(f"rendered {len(fresh) - n_cached}, from cache {n_cached}, skipped {skipped} in "
         f"{time.perf_counter() - started:.1f} s; {len(manifest['units'])}/{len(units)} units "
         f"finished")
    echo(f"wrote {out / manifest['sheet']} and {out / manifest['manifest']}")
    return manifest


def _label(layer: str, unit_word: str, unit: Unit) -> str:
    """A sheet label: ``layer:447``, ``layer:dir3``, or ``feature 12`` / ``direction 3``."""
    if is_neuron(unit):
        return f"{layer}:{unit_word}{unit.channel}"
    return f"{unit.kind} {unit.index}"


def accentuation(model: LoadedModel, layer: str, image_file: Path, keep_layer: str | None,
                 keep_weight: float, size: int) -> Accentuation:
    """The accentuation settings of ``visualize --from-image``: the photo resized (shorter side)
    and centre-cropped to ``size``, and the keep layer (default: the layer halfway between the
    input and ``layer``, which must come before ``layer``)."""
    from ..images import load_image

    target = model.layer(layer).name
    names = model.layer_names()
    if keep_layer is None:
        keep = names[max(0, model.layer_index(target) // 2)]
    else:
        keep = model.layer(keep_layer).name
        if model.layer_index(keep) > model.layer_index(target):
            raise CircuitsError(f"--keep-layer {keep!r} comes after {target!r}; choose an "
                                "earlier layer (or the same one)")
    photo = load_image(image_file, size=size, resize=size)  # a CircuitsError if unreadable
    return Accentuation(photo.permute(1, 2, 0).numpy(), keep, float(keep_weight),
                        Path(image_file).name)


def quality(render: Render, best: dict | None) -> dict:
    """The quality scores of a render (see the module docstring), as record fields."""
    q = {}
    if best is not None:
        ref = best["value"][render.unit.channel]
        q["best_example_activation"] = ref
        q["best_example"] = best["path"][render.unit.channel]
        q["relative_to_best_example"] = render.activation / ref if ref > 0 else None
    if render.facet_similarity is not None:
        q["facet_similarity"] = render.facet_similarity
    if render.distance is not None:
        q["distance"] = render.distance
        q["start_activation"] = render.start_activation
    return q


def _read_record(out: Path, unit: Unit, suffix: str) -> dict | None:
    path = out / "units" / f"{unit.slug}{suffix}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not path.with_suffix(".png").is_file():
        return None
    return record


def write_summary(model: LoadedModel, layer: str, units: list[Unit], finished: dict,
                  settings: dict, out: Path, suffix: str, recipe: Recipe, what: dict,
                  shard) -> dict:
    """Rebuild the manifest and the contact sheet from every finished unit of these settings
    found in ``out`` (also those written by other shards). The manifest's settings are the
    render settings (the recipe's description among them), not a second account of them."""
    from .sheets import SheetEntry, save_contact_sheet

    for u in units:  # pick up what other shards finished meanwhile
        if u not in finished:
            rec = _read_record(out, u, suffix)
            if rec and rec.get("settings") == settings[u]:
                finished[u] = rec
    done = [u for u in units if u in finished]
    common = {k: v for k, v in settings[units[0]].items()
              if k not in ("channel", "model", "weights_id", "layer")}
    unit_keys = ("facet_activations", "transparency_png", "relative_to_best_example",
                 "best_example_activation", "best_example", "facet_similarity", "distance",
                 "start_activation")
    manifest = {
        "tool": TOOL, "model": model.name, "weights_id": str(model.weights_id), "layer": layer,
        **common, "input_size": model.input_size,
        "complete": len(done) == len(units), "requested": len(units),
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "manifest": f"manifest{suffix}.json", "sheet": f"sheet{suffix}.png",
        "units": [{"unit": finished[u]["unit"], "channel": getattr(u, "channel", None),
                   "activation": finished[u]["activation"], "seconds": finished[u]["seconds"],
                   "png": finished[u]["png"], "finished": finished[u]["finished"],
                   **{k: finished[u][k] for k in unit_keys if k in finished[u]}}
                  for u in done],
    }
    scores = [e["relative_to_best_example"] for e in manifest["units"]
              if e.get("relative_to_best_example") is not None]
    if scores:
        manifest["mean_relative_to_best_example"] = float(np.mean(scores))
    sims = [e["facet_similarity"] for e in manifest["units"] if "facet_similarity" in e]
    if sims:
        manifest["mean_facet_similarity"] = float(np.mean(sims))
    out.mkdir(parents=True, exist_ok=True)
    if done:
        kind = what["objective"] + (" (negative)" if what["negative"] else "")
        if what.get("from_image") is not None:
            kind += f" accentuated from {what['from_image'].name or 'an image'}"
        title = (f"{model.name} · {layer} · {kind} · {recipe.summary()} · "
                 f"{len(done)}/{len(units)} units")
        unit_word = "dir" if what["objective"] == "direction" else ""
        entries = [SheetEntry(out / finished[u]["png"], _label(layer, unit_word, u),
                              _caption(finished[u])) for u in done]
        save_contact_sheet(out / manifest["sheet"], entries, title)
        if all("transparency_png" in finished[u] for u in done):
            manifest["transparency_sheet"] = f"sheet{suffix}-transparency.png"
            faded = [SheetEntry(_faded(out, finished[u]), e.label, e.detail)
                     for u, e in zip(done, entries, strict=True)]
            save_contact_sheet(out / manifest["transparency_sheet"], faded,
                               title + " · faded by transparency")
    atomic_write_bytes(out / manifest["manifest"], (json.dumps(manifest, indent=2) + "\n")
                       .encode())
    return manifest


def _caption(record: dict) -> str:
    parts = [f"act {record['activation']:.1f}"]
    if record.get("relative_to_best_example") is not None:
        parts.append(f"{record['relative_to_best_example']:.1f}x best ex.")
    if record.get("facet_similarity") is not None:
        parts.append(f"sim {record['facet_similarity']:.2f}")
    if record.get("distance") is not None:
        parts.append(f"dist {record['distance']:.2f}")
    return " · ".join(parts)


def _faded(out: Path, record: dict) -> np.ndarray:
    """The picture blended towards white where its transparency map is low (MACO's display)."""
    from .cache import read_png

    image = read_png(out / record["png"])
    alpha = read_png(out / record["transparency_png"], grey=True)[..., None]
    return image * alpha + (1.0 - alpha)
