"""The atlas's pages: data gathered per unit from the caches, written through Jinja2 templates.

Layout of a site (all links relative, so it works from ``file://`` and any static host)::

    index.html                     the model's layers: shapes, branch splits, units in the atlas
    layers/LAYER.html              a grid of every unit's feature visualization, with a search box
    units/LAYER/CHANNEL.html       one unit: renders, dataset examples, inputs, outputs, classes
    img/LAYER/CHANNEL/...          its pictures (fv.png full size, fv.jpg thumbnail, crops, ...)
    img/data/...                   the dataset images as the model saw them (shared by all units)
    atlas.css, atlas.js            style, and the search box (vanilla JS, no fetch: file:// works)
    atlas-units.js                 which unit pages exist (read by the search boxes)
    manifest*.json                 what the atlas wrote (see :mod:`.site`)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ..connections import rank_inputs
from ..files import slug as file_slug
from ..units import Unit
from .build import AtlasPlan, image_bytes, reader_of, slug, unit_img, unit_page

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = ("atlas.css", "atlas.js")

KIND_TITLES = {"channel": "Channel objective", "negative": "Negative (minimised)",
               "diversity": "Diversity facets"}


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html"]),
                             trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["num"] = _num
    return env


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    v = float(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{max(digits, 4)}g}"


def kernel_cells(kernel: np.ndarray, scale: float) -> list[list[dict]]:
    """A signed spatial kernel as rows of cells with a CSS colour: red = excitation, blue =
    inhibition, white = 0, divided by ``scale`` (the target's largest |weight|) — the colours of
    the trace report's kernels."""
    k = np.clip(np.asarray(kernel, dtype=np.float64) / (scale or 1.0), -1, 1)
    rows = []
    for y in range(k.shape[0]):
        row = []
        for x in range(k.shape[1]):
            v = float(k[y, x])
            pos, neg = max(v, 0.0), max(-v, 0.0)
            r, g, b = 1 - neg * 0.85, 1 - pos * 0.85 - neg * 0.6, 1 - pos * 0.85
            rgb = "".join(f"{int(round(255 * max(0.0, c))):02x}" for c in (r, g, b))
            row.append({"color": "#" + rgb,
                        "value": float(kernel[y, x])})
        rows.append(row)
    return rows


def _branch(model, unit: Unit) -> str | None:
    b = model.layer(unit.layer).branch_of(unit.channel)
    return f"{b[0]} #{b[1]}" if b else None


def _percent(share: float) -> str:
    """A share as a whole percentage; a small positive one as "<1%" rather than "0%"."""
    return "<1%" if 0 < share < 0.005 else f"{100 * share:.0f}%"


class PageWriter:
    """Writes unit pages (:meth:`unit`) and the index and layer pages (:meth:`indexes`)."""

    def __init__(self, plan: AtlasPlan, linkable: set[str], acts: dict, weights, echo):
        self.plan, self.model, self.site = plan, plan.model, plan.site
        self.linkable, self.acts, self.weights, self.echo = linkable, acts, weights, echo
        self.env = environment()
        self._data_written: set[str] = set()
        self._fa: dict = {}  # layer -> SAE feature activations over the images

    # -- helpers ---------------------------------------------------------------------------
    def _link(self, unit: Unit, root: str) -> dict:
        linked = str(unit) in self.linkable
        return {"id": str(unit), "layer": unit.layer, "channel": unit.channel,
                "branch": _branch(self.model, unit),
                "href": f"{root}/{unit_page(unit)}" if linked else None,
                "thumb": f"{root}/{unit_img(unit, 'fv.jpg')}" if linked else None}

    def _data_image(self, path: Path, image: np.ndarray, files: dict) -> str:
        """The dataset image as the model saw it, written once for the whole site."""
        h = hashlib.sha256(os.fsencode(path)).hexdigest()[:8]
        small = max(image.shape[:2]) <= 64
        rel = f"img/data/{file_slug(path.stem)[:40]}-{h}.{'png' if small else 'jpg'}"
        if rel not in self._data_written:
            if not (rel in self.site.files and (self.site.root / rel).is_file()):
                files[rel] = image_bytes(image, "png" if small else "jpeg", max_side=256)
            self._data_written.add(rel)
        return rel

    def _connections(self, kernels: np.ndarray, scales: np.ndarray | None, layer: str,
                     top: int, root: str, rank_scale: float | None) -> list[dict]:
        """``kernels`` [C, h, w] over the units of ``layer``; ``scales`` per unit (outputs) or
        None (inputs: the target's largest |weight| = ``rank_scale``)."""
        ranked = rank_inputs(kernels, top)
        best = ranked[0].strength if ranked and ranked[0].strength > 0 else 1.0
        items = []
        for rank, conn in enumerate(ranked, 1):
            scale = float(scales[conn.channel]) if scales is not None else rank_scale
            item = self._link(Unit(layer, conn.channel), root)
            item.update(rank=rank, sign=conn.sign, strength=conn.strength,
                        relative=conn.strength / best, kernel=kernel_cells(conn.kernel, scale),
                        ksum=float(np.sum(conn.kernel)))
            items.append(item)
        return items

    # -- one unit ---------------------------------------------------------------------------
    def unit(self, u: Unit, renders: dict, kinds: list[str], prev: str | None,
             reader: str | None) -> list[str]:
        """Write the page of ``u`` and its pictures; returns the paths written."""
        plan, model, st = self.plan, self.model, self.plan.settings
        root = "../.."
        files: dict[str, bytes] = {}
        info = model.layer(u.layer)

        pictures = []
        for kind in kinds:
            r = renders[kind]
            name = {"channel": "fv", "negative": "neg", "diversity": "div"}[kind]
            data = (Path(r.path).read_bytes() if r.path is not None and Path(r.path).is_file()
                    else image_bytes(r.image, "png"))
            files[unit_img(u, f"{name}.png")] = data
            if kind == "channel" or (kind == kinds[0] and "channel" not in kinds):
                # the thumbnail of grids and connection cards (a diversity render: its 1st facet)
                side = r.image.shape[0]
                files[unit_img(u, "fv.jpg")] = image_bytes(r.image[:, :side], "jpeg",
                                                           max_side=112, quality=88)
            pictures.append({"kind": kind, "title": KIND_TITLES[kind],
                             "src": f"{root}/{unit_img(u, name + '.png')}",
                             "activation": r.activation,
                             "facets": list(r.facet_activations), "wide": kind == "diversity"})
        notes = []
        if "negative" in st.kinds and "negative" not in kinds:
            notes.append(f"No negative render: {u.layer} never goes below 0 on the dataset "
                         "(it follows a ReLU), so minimising it only reaches 0.")

        examples = self._examples(u, root, files) if u.layer in self.acts else None

        inputs = outputs = None
        if prev is not None:
            w, method = self.weights.pair(prev, u.layer)
            row = w[u.channel]
            scale = float(np.abs(row).max())
            inputs = {"layer": prev, "method": method, "scale": scale,
                      "kernel_shape": list(row.shape[1:]),
                      "items": self._connections(row, None, prev, st.top_inputs, root, scale),
                      "linked_layer": prev in plan.units}
        if reader is not None:
            w, method = self.weights.pair(u.layer, reader)
            col = w[:, u.channel]
            scales = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
            outputs = {"layer": reader, "method": method, "kernel_shape": list(col.shape[1:]),
                       "items": self._connections(col, scales, reader, st.top_outputs, root,
                                                  None)}
        classes = None
        if u.layer in plan.class_layers:
            cw = self.weights.classes(u.layer)[:, u.channel]
            order = np.argsort(-cw, kind="stable")[:st.top_classes]
            top = float(np.abs(cw).max()) or 1.0
            classes = [{"index": int(i), "label": model.label(int(i)), "weight": float(cw[i]),
                        "relative": float(cw[i]) / top} for i in order]

        features = []
        if plan.features and str(u) in plan.features["units"]:
            section = {"source": plan.features["source"], "note": "", "items": []}
            for i, f in enumerate(plan.features["units"][str(u)]):
                item = dict(f)
                if f["image"]:
                    ext = Path(f["image"]).suffix.lower() or ".png"
                    rel = unit_img(u, f"feature-{i}{ext}")
                    files[rel] = Path(f["image"]).read_bytes()
                    item["image"] = f"{root}/{rel}"
                section["items"].append(item)
            features.append(section)
        if u.layer in plan.saes and u.layer in self.acts:
            features.append(self._sae_features(u, root, files))

        same = sorted(int(x.split(":")[1]) for x in self.linkable
                      if x.rsplit(":", 1)[0] == u.layer)
        i = same.index(u.channel) if u.channel in same else -1
        nav = {"prev": self._link(Unit(u.layer, same[i - 1]), root) if i > 0 else None,
               "next": self._link(Unit(u.layer, same[i + 1]), root)
               if 0 <= i < len(same) - 1 else None}

        page = unit_page(u)
        html = self.env.get_template("unit.html").render(
            root=root, title=f"{u} · {model.name}", model=self._model_info(), st=st,
            example=str(u),
            unit={"id": str(u), "layer": u.layer, "channel": u.channel,
                  "branch": _branch(model, u), "layer_href": f"{root}/layers/{slug(u.layer)}.html",
                  "shape": info.shape, "channels": info.channels},
            pictures=pictures, notes=notes, examples=examples, inputs=inputs, outputs=outputs,
            classes=classes, features=features, nav=nav, images=self._images_info())
        files[page] = html.encode("utf-8", "surrogateescape")
        self.site.claim(list(files))
        for rel, data in files.items():
            self.site.write_bytes(rel, data)
        return sorted(files)

    def _sae_features(self, u: Unit, root: str, files: dict) -> dict:
        """The SAE's live features that write most into the unit (largest ``W_dec[f, unit]``,
        :func:`circuits_cli.sae.features.neuron_features`), each shown by the crop of its
        strongest image (the unit's layer's effective receptive field at the feature's peak)."""
        from ..evidence.receptive_field import receptive_field
        from ..sae.features import layer_feature_activations, neuron_features

        sae, acts = self.plan.saes[u.layer], self.acts[u.layer]
        if u.layer not in self._fa:
            self._fa[u.layer] = layer_feature_activations(sae, acts)
        res = neuron_features(sae, acts, u.channel, top_features=6, top_images=1,
                              fa=self._fa[u.layer])
        size = int(acts.preprocessing.get("size", self.model.input_size))
        resize = acts.preprocessing.get("resize")
        rf = receptive_field(self.model, u.layer, size=size)
        where = ("the cached positions" if acts.sampled_positions else "positions")
        items = []
        for i, f in enumerate(res["features"]):
            item = {"id": f"feature {f['feature']}", "weight": f["weight"], "href": None,
                    "label": f"{_percent(f['share'])} of the unit's positive mean input; "
                             f"fires at {100 * f['frequency']:.2g}% of {where}", "image": None}
            top = f["top_images"][0] if f["top_images"] else None
            image = None if top is None else acts.picture(top["row"], size, resize)
            if top is not None and image is None:  # its file is gone: the label says so
                item["label"] += f"; strongest on {Path(top['path']).name} (picture missing)"
            elif top is not None:
                x0, y0, x1, y1 = rf.box(*top["position"])
                crop = image[y0:y1, x0:x1]
                small = max(crop.shape[:2]) <= 64
                rel = unit_img(u, f"sae-{i}.{'png' if small else 'jpg'}")
                files[rel] = image_bytes(crop, "png" if small else "jpeg", quality=90)
                item["image"] = f"{root}/{rel}"
                item["label"] += f"; strongest on {Path(top['path']).name}"
            items.append(item)
        cfg = sae.cfg
        return {"source": f"SAE {Path(sae.folder).name} ({cfg.get('architecture')}, "
                          f"{sae.d_sae} latents{', k ' + str(sae.k) if sae.k else ''})",
                "note": f"{res['strong_features']} live features write ≥ 0.3 of a unit "
                        "vector into this unit; the strongest writers, by decoder weight:",
                "items": items}

    def _examples(self, u: Unit, root: str, files: dict) -> dict:
        from ..evidence import dataset_examples

        acts = self.acts[u.layer]
        size = int(acts.preprocessing.get("size", self.model.input_size))
        resize = acts.preprocessing.get("resize")
        out = {}
        for key, negative in (("top", False), ("negative", True)):
            exset = dataset_examples(self.model, u, acts, top=self.plan.settings.top_examples,
                                     negative=negative, load=False)
            items = []
            for ex in exset.examples:
                ex.image = acts.picture(ex.row, size, resize)
                if ex.image is None:  # the file is gone: the value stays, the picture says so
                    items.append({"rank": ex.rank, "activation": ex.activation,
                                  "file": Path(ex.path).name, "crop": None, "context": None,
                                  "position": list(ex.position), "box": [0, 0, 0, 0]})
                    continue
                crop = ex.crop
                small = max(crop.shape[:2]) <= 64
                rel = unit_img(u, f"{key}-{ex.rank}.{'png' if small else 'jpg'}")
                files[rel] = image_bytes(crop, "png" if small else "jpeg", quality=90)
                ctx = self._data_image(Path(ex.path), ex.image, files)
                x0, y0, x1, y1 = ex.box
                s = ex.image.shape[0]
                items.append({"rank": ex.rank, "activation": ex.activation,
                              "file": Path(ex.path).name, "crop": f"{root}/{rel}",
                              "context": f"{root}/{ctx}", "position": list(ex.position),
                              "box": [100 * x0 / s, 100 * y0 / s, 100 * (x1 - x0) / s,
                                      100 * (y1 - y0) / s]})
            h, w = exset.receptive_field.size(exset.box_kind)
            title = "Strongest activations" if key == "top" else (
                "Most negative" if exset.ranking.startswith("lowest (most negative)")
                else "Weakest activations")
            out[key] = {"title": title, "ranking": exset.ranking, "items": items,
                        "n_images": exset.n_images,
                        "rf": f"~{h:.0f}×{w:.0f} px of {exset.receptive_field.input_size}"}
        out["summary"] = exset.summary
        return out

    def _model_info(self) -> dict:
        m = self.model
        return {"name": m.name, "description": m.description, "weights_id": str(m.weights_id),
                "input_size": m.input_size}

    def _images_info(self) -> dict | None:
        if self.plan.cache is not None:
            return {"source": f"the activation cache {self.plan.cache.folder}",
                    "n": self.plan.cache.n_images}
        if self.plan.images is None:
            return None
        return {"source": self.plan.images.source, "n": len(self.plan.images.paths)}

    # -- index and layers -----------------------------------------------------------------
    def static(self) -> None:
        """The style sheet and the script (first thing a run writes: pages written before the
        index, by an unfinished run or shard, already look right)."""
        for name in STATIC:
            data = (TEMPLATES / name).read_bytes()
            path = self.site.root / name
            if not (path.is_file() and self.site.owns(name) and path.read_bytes() == data):
                self.site.write_bytes(name, data)

    def indexes(self) -> None:
        """index.html, layers/*.html, atlas-units.js and the static files, for every unit page
        that exists in the folder (from this run, earlier runs and other shards)."""
        from ..trace import previous_layer

        model, site = self.model, self.site
        done: dict[str, list[int]] = {}
        for uid in site.units():
            layer, ch = uid.rsplit(":", 1)
            if layer in model.layers:
                done.setdefault(layer, []).append(int(ch))
        for chans in done.values():
            chans.sort()
        layers = [n for n in model.layers if n in done]
        self.static()
        units_js = {"layers": {n: {"slug": slug(n), "channels": done[n]} for n in layers},
                    "aliases": {**{a: t for a, t in model.aliases.items() if t in done}},
                    "model": model.name}
        site.write_text("atlas-units.js", "window.ATLAS_UNITS = "
                        + json.dumps(units_js, separators=(",", ":")) + ";\n")
        rows = []
        for n, info in model.layers.items():
            if info.kind == "branch" and n not in done:
                continue
            prev = previous_layer(model, n) if info.kind in ("conv", "block", "branch") else None
            reader = reader_of(model, n) if info.kind in ("conv", "block") else None
            rows.append({"name": n, "kind": info.kind, "shape": info.shape,
                         "branches": _branch_ranges(info),
                         "n_units": len(done.get(n, [])), "channels": info.channels,
                         "href": f"layers/{slug(n)}.html" if n in done else None,
                         "reads": prev, "read_by": reader,
                         "reads_href": f"layers/{slug(prev)}.html" if prev in done else None,
                         "read_by_href": f"layers/{slug(reader)}.html" if reader in done
                         else None})
        st = self.plan.settings
        total = sum(len(v) for v in done.values())
        site.write_text("index.html", self.env.get_template("index.html").render(
            root=".", title=f"Atlas of {model.name}", model=self._model_info(), st=st,
            example=f"{layers[0]}:{done[layers[0]][0]}" if layers else "LAYER:CHANNEL",
            rows=rows, n_units=total, n_layers=len(layers), images=self._images_info(),
            generated=time.strftime("%Y-%m-%d %H:%M"), class_layers=self.plan.class_layers))
        for n in layers:
            info = model.layer(n)
            groups = []
            for bname, lo, hi in _branch_ranges(info) or [(None, 0, info.channels - 1)]:
                cells = [{"channel": c, "href": f"../{unit_page(Unit(n, c))}",
                          "thumb": f"../{unit_img(Unit(n, c), 'fv.jpg')}"}
                         for c in done[n] if lo <= c <= hi]
                if cells:
                    groups.append({"branch": bname, "lo": lo, "hi": hi, "cells": cells})
            i = layers.index(n)
            site.write_text(f"layers/{slug(n)}.html", self.env.get_template("layer.html").render(
                root="..", title=f"{n} · {model.name}", model=self._model_info(), st=st,
                example=f"{n}:{done[n][0]}",
                layer={"name": n, "shape": info.shape, "channels": info.channels,
                       "kind": info.kind, "n_units": len(done[n])},
                groups=groups, thumb_px=_thumb_px(st.size),
                prev_layer=({"name": layers[i - 1], "href": f"{slug(layers[i - 1])}.html"}
                            if i > 0 else None),
                next_layer=({"name": layers[i + 1], "href": f"{slug(layers[i + 1])}.html"}
                            if i < len(layers) - 1 else None)))


def _thumb_px(size: int) -> int:
    return 96 if size <= 64 else 112


def _branch_ranges(info) -> list[tuple[str, int, int]]:
    out, start = [], 0
    for name, n in info.branches:
        out.append((name, start, start + n - 1))
        start += n
    return out
