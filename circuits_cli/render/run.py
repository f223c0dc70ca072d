"""Rendering a layer into an output folder: resume, shards, manifest, contact sheet.

Folder layout (``SUFFIX`` is empty for positive channel renders, else e.g. ``-neuron``, ``-neg``,
``-diversity-neg``, so that variants of one layer share a folder without clashing)::

    units/LAYER_CHANNEL{SUFFIX}.png    one picture per unit
    units/LAYER_CHANNEL{SUFFIX}.json   its record: settings, final activation, seconds
    manifest{SUFFIX}.json               every finished unit with these settings
    sheet{SUFFIX}.png                   labelled contact sheet of the same units

Every file is written atomically, a unit's PNG before its record, as soon as its batch finishes.
A unit whose record holds the same settings is finished: a re-run skips it (resume), and shards
(``--shard K/N``) that write to the same folder merge, because the manifest and the sheet are
rebuilt from all matching records whenever a run ends (or is interrupted).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CircuitsError
from ..files import output_dir
from ..units import Unit
from ..zoo.base import LoadedModel
from . import Render, check_unit, render_settings, render_units, resolve_precision
from .cache import atomic_write_bytes, png_bytes
from .engine import BETAS, LEARNING_RATE

TOOL = "circuits visualize"


def variant_suffix(objective: str, negative: bool) -> str:
    parts = [] if objective == "channel" else [objective]
    if negative:
        parts.append("neg")
    return "".join(f"-{p}" for p in parts)


def default_out_dir(model: LoadedModel, layer: str) -> Path:
    return output_dir("visualize", model.name, layer)


def claim_out_dir(out: Path, layer: str, units: list[Unit], settings: dict, suffix: str,
                  cache_dir=None):
    """Claim ``out`` for these renders (:func:`circuits_cli.files.claim_output`), before any
    work: a user's file with the name of one of our outputs, an unwritable folder or cache is a
    one-line error. Renders of another layer, or of these units with other settings, are never
    replaced: such a folder is refused (same settings resume; another variant, e.g.
    ``--negative``, has its own file names and is kept beside them)."""
    from ..files import claim_output, release_claims
    from .cache import default_cache_dir

    names = [f"manifest{suffix}.json", f"sheet{suffix}.png"]
    for u in units:
        names += [f"units/{u.slug}{suffix}.png", f"units/{u.slug}{suffix}.json"]
    folder = claim_output(out, "visualize", names,
                          cache=cache_dir if cache_dir is not None else default_cache_dir())
    try:
        manifest = json.loads((out / f"manifest{suffix}.json").read_text())
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("layer") not in (None, layer):
        release_claims()
        raise CircuitsError(f"--out {str(out)!r} holds renders of layer "
                            f"{manifest.get('layer')!r}; rendering {layer!r} there would replace "
                            "its manifest and sheet: choose another --out for each layer")
    for u in units:
        rec = _read_record(out, u, suffix)
        if rec and rec.get("settings") != settings[u]:
            old = rec.get("settings") or {}
            diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings[u].items()
                    if old.get(k) != v and k != "directions"][:3]
            release_claims()
            raise CircuitsError(f"--out {str(out)!r} already holds {u} rendered with other "
                                f"settings ({', '.join(diff) or 'directions'}); they are kept: "
                                "choose another --out for these settings (the same settings "
                                "resume)")
    return folder


def visualize_layer(model: LoadedModel, layer: str, *, channels: list[int] | None = None,
                    objective: str = "channel", directions: np.ndarray | None = None,
                    facets: int = 4, negative: bool = False, steps: int = 512, size: int = 128,
                    batch: int | None = None, seed: int = 0, precision: str = "auto",
                    shard: tuple[int, int] | None = None, out_dir: Path | None = None,
                    cache_dir=None, progress: bool = True,
                    echo: Callable[[str], None] = print) -> dict:
    """Render ``channels`` of ``layer`` (all by default) into ``out_dir``; returns the manifest.

    Everything is checked before the first file is written. ``shard=(k, n)`` renders units
    ``k, k+n, k+2n, ...`` of the list.
    """
    info = model.layer(layer)
    n_units = directions.shape[0] if objective == "direction" and directions is not None \
        else info.channels
    if channels is None:
        channels = list(range(n_units))
    units = [check_unit(model, Unit(info.name, c), objective, directions) for c in channels]
    if not units:
        raise CircuitsError("no units to render")
    out = Path(out_dir) if out_dir is not None else default_out_dir(model, info.name)
    precision = resolve_precision(precision, model.device)
    mine = units if shard is None else units[shard[0]::shard[1]]
    suffix = variant_suffix(objective, negative)
    options = dict(objective=objective, negative=negative, steps=steps, size=size, seed=seed,
                   facets=facets, directions=directions, precision=precision)
    settings = {u: render_settings(model, u, **options) for u in units}
    claim_out_dir(out, info.name, units, settings, suffix, cache_dir)

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
        if render.facet_activations:
            record["facet_activations"] = list(render.facet_activations)
        atomic_write_bytes(png.with_suffix(".json"),
                           (json.dumps(record, indent=2) + "\n").encode())
        finished[render.unit] = record
        fresh.append(render)

    try:
        if todo:
            render_units(model, todo, steps=steps, size=size, seed=seed, objective=objective,
                         batch=batch, negative=negative, cache_dir=cache_dir, progress=progress,
                         directions=directions, facets=facets, precision=precision,
                         on_render=save)
    finally:
        manifest = write_summary(model, info.name, units, finished, settings, out, suffix,
                                 options, shard)
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
                  settings: dict, out: Path, suffix: str, options: dict, shard) -> dict:
    """Rebuild the manifest and the contact sheet from every finished unit of these settings
    found in ``out`` (also those written by other shards)."""
    from ..reports.sheets import SheetEntry, save_contact_sheet

    for u in units:  # pick up what other shards finished meanwhile
        if u not in finished:
            rec = _read_record(out, u, suffix)
            if rec and rec.get("settings") == settings[u]:
                finished[u] = rec
    done = [u for u in units if u in finished]
    common = {k: v for k, v in settings[units[0]].items() if k not in ("channel",)}
    manifest = {
        "tool": TOOL, "model": model.name, "weights_id": str(model.weights_id), "layer": layer,
        **{k: v for k, v in common.items() if k not in ("model", "weights_id", "layer")},
        "lr": options.get("lr", LEARNING_RATE), "adam_betas": list(BETAS),
        "transforms": "lucid standard (pad 12, jitter 8, scale 0.9-1.1, rotate -10..10, "
        "jitter 4)", "parameterization": "fourier, decorrelated colour",
        "input_size": model.input_size,
        "complete": len(done) == len(units), "requested": len(units),
        "shard": f"{shard[0]}/{shard[1]}" if shard else None,
        "manifest": f"manifest{suffix}.json", "sheet": f"sheet{suffix}.png",
        "units": [{"unit": finished[u]["unit"], "channel": u.channel,
                   "activation": finished[u]["activation"], "seconds": finished[u]["seconds"],
                   "png": finished[u]["png"], "finished": finished[u]["finished"],
                   **({"facet_activations": finished[u]["facet_activations"]}
                      if "facet_activations" in finished[u] else {})}
                  for u in done],
    }
    out.mkdir(parents=True, exist_ok=True)
    if done:
        what = options["objective"] + (" (negative)" if options["negative"] else "")
        title = (f"{model.name} · {layer} · {what} · {options['steps']} steps · "
                 f"{options['size']} px · seed {options['seed']} · {len(done)}/{len(units)} units")
        unit_word = "dir" if options["objective"] == "direction" else ""
        entries = [SheetEntry(out / finished[u]["png"], f"{layer}:{unit_word}{u.channel}",
                              f"act {finished[u]['activation']:.1f}") for u in done]
        save_contact_sheet(out / manifest["sheet"], entries, title)
    atomic_write_bytes(out / manifest["manifest"], (json.dumps(manifest, indent=2) + "\n")
                       .encode())
    return manifest
