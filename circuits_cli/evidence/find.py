"""Finding the units for a class: which units of a layer build a class logit?

This is how one finds the car detector of a model whose unit ids nobody has published. Each unit
``c`` of the layer gets

- ``weight``: its expanded weight to the class logit (linear approximation,
  :func:`circuits_cli.connections.expanded_weights` with target ``"logits"``) summed over
  positions: how much the logit rises per unit of activation spread evenly over the map;
- with an image folder, ``class_activation`` (the unit's mean activation on the images of that
  class: file names starting with the class's wnid, or a folder named after it) and
  ``mean_activation`` (over all images).

Units are ranked by ``score``: ``weight * (class_activation - mean_activation)`` when the folder
holds images of the class (the logit the unit adds on that class compared with an average image:
a unit must both feed the logit and be active on the class), else by ``weight`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CircuitsError, suggest
from ..units import Unit
from ..zoo.base import LoadedModel
from .activations import (
    ImageSet,
    LayerActivations,
    iter_units_spatial_means,
    layer_activations,
)

_WNID = re.compile(r"^n\d{8}$")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", text.lower()).split())


def lookup_class(model: LoadedModel, query: str | int) -> int:
    """A class index from an index (``817``, or ``class 817`` / ``[817]`` as ``classify``
    prints it), a wnid (``n04285008``) or a name (``sports car``,
    case, ``_`` and ``-`` ignored; a unique part of a name also works). A miss or an ambiguous
    name is a :class:`CircuitsError` with suggestions."""
    n = len(model.labels) or len(model.class_ids)
    q = str(query).strip()
    printed = re.fullmatch(r"class\s+(\d+)|\[(\d+)\]", q.lower())
    if printed and not any(_norm(lab) == _norm(q) for lab in model.labels):
        q = printed[1] or printed[2]  # what classify prints for a class: "class 3", "[3]"
    if n == 0 and not re.fullmatch(r"\d+", q):
        raise CircuitsError(f"model {model.name!r} has no class labels; give the class as an "
                            "index (or as classify prints it, 'class 3'), or pass --labels FILE")
    if re.fullmatch(r"\d+", q):
        idx = int(q)
        if n and not 0 <= idx < n:
            raise CircuitsError(f"class index {idx} is out of range; model {model.name!r} has "
                                f"{n} classes (0-{n - 1})")
        return idx
    if _WNID.match(q.lower()) and model.class_ids:
        if q.lower() in model.class_ids:
            return model.class_ids.index(q.lower())
        raise CircuitsError(f"wnid {q!r} is not one of model {model.name!r}'s classes; give a "
                            "class name or index")
    labels = [_norm(lab) for lab in model.labels]
    key = _norm(q)
    exact = [i for i, lab in enumerate(labels) if lab == key]
    if len(exact) == 1:
        return exact[0]
    part = exact or [i for i, lab in enumerate(labels) if key and key in lab]
    if len(part) == 1:
        return part[0]
    if part:
        shown = ", ".join(f"{model.labels[i]!r} ({i}{_wnid(model, i)})" for i in part[:8])
        more = f" and {len(part) - 8} more" if len(part) > 8 else ""
        raise CircuitsError(f"class {q!r} is ambiguous: {shown}{more}; give the full name, the "
                            "wnid or the index")
    raise CircuitsError(suggest(q, model.labels, "class") + " (or give a wnid or an index)")


def _wnid(model: LoadedModel, i: int) -> str:
    return f", {model.class_ids[i]}" if i < len(model.class_ids) else ""


def class_images(paths: Sequence[Path], wnid: str | None, label: str | None = None
                 ) -> list[int]:
    """Rows of ``paths`` that show the class: file name starting with the wnid, or a parent
    folder named after the wnid (ImageNet's layout) or the label."""
    from ..images import wnid_of

    label_key = _norm(label) if label else None
    rows = []
    for i, p in enumerate(paths):
        p = Path(p)
        if wnid and (wnid_of(p) == wnid or p.parent.name == wnid):
            rows.append(i)
        elif label_key and _norm(p.parent.name) == label_key:
            rows.append(i)
    return rows


@dataclass
class UnitScore:
    unit: Unit
    score: float
    weight: float
    class_activation: float | None = None
    mean_activation: float | None = None

    def to_json(self) -> dict:
        def r(v):
            return None if v is None else round(float(v), 6)

        return {"unit": str(self.unit), "score": r(self.score), "weight": r(self.weight),
                "class_activation": r(self.class_activation),
                "mean_activation": r(self.mean_activation)}


@dataclass
class FindResult:
    """Units of ``layer`` ranked by their contribution to class ``class_index``'s logit."""

    model: str
    layer: str
    class_index: int
    label: str
    wnid: str | None
    ranking: str  # how units were scored, in words
    units: list[UnitScore]  # best first, ``top`` of them
    n_images: int = 0
    class_image_files: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"model": self.model, "layer": self.layer, "class": self.class_index,
                "label": self.label, "wnid": self.wnid, "ranking": self.ranking,
                "n_images": self.n_images, "class_images": self.class_image_files,
                "units": [u.to_json() for u in self.units]}


def class_weights(model: LoadedModel, layer: str, class_index: int) -> np.ndarray:
    """(C,) expanded weight of each unit of ``layer`` to the class logit, summed over positions."""
    from ..connections import expanded_weights

    e = expanded_weights(model, model.layer(layer).name, "logits", [class_index])
    return e[0].double().sum(dim=(1, 2)).cpu().numpy()


def find_units(model: LoadedModel, query: str | int, layer: str, *, top: int = 10,
               images: str | Path | Sequence[str | Path] | ImageSet | LayerActivations
               | None = None,
               cache_dir: str | Path | None = None, batch_size: int = 16,
               progress: bool = False, units: Sequence[Unit] | None = None) -> FindResult:
    """The ``top`` units of ``layer`` that contribute most to the logit of class ``query``.

    ``units``: the candidates (default: every neuron of the layer), e.g. the dictionary
    features of an SAE on it; a unit's weight is its decoder direction applied to the layer's
    expanded weights to the logit, its activation its read-out."""
    model.require_logits()
    if top < 1:
        raise CircuitsError(f"--top must be at least 1, got {top}")
    info = model.layer(layer)
    idx = lookup_class(model, query)
    label = model.label(idx)
    wnid = model.class_ids[idx] if idx < len(model.class_ids) else None
    channel_w = class_weights(model, info.name, idx)
    candidates = list(units) if units is not None else \
        [Unit(info.name, c) for c in range(info.channels)]
    w = np.array([float(u.decoder(info.channels).double().numpy() @ channel_w)
                  for u in candidates])
    score = w.copy()
    ranking = ("expanded weight to the class logit (linear approximation, summed over "
               "positions); no images given")
    cls_act = mean_act = None
    n_images, files = 0, []
    if images is not None:
        if isinstance(images, LayerActivations):  # e.g. read from an activation cache
            if images.layer != info.name:
                raise ValueError(f"activations are of layer {images.layer}, not {info.name}")
            acts = images
        else:
            acts = layer_activations(model, info.name, images, cache_dir=cache_dir,
                                     batch_size=batch_size, progress=progress)
        n_images = acts.n_images
        rows = class_images(acts.paths, wnid, label)
        files = [acts.paths[i].name for i in rows]
        # sums over images a block at a time: N x U means are never held (an activation cache
        # of ImageNet and an SAE of 16k features would be 160 GB)
        in_class = np.zeros(n_images, bool)
        in_class[rows] = True
        total, cls_total = np.zeros(len(candidates)), np.zeros(len(candidates))
        for first, block in iter_units_spatial_means(acts, candidates):
            total += block.sum(axis=0)
            cls_total += block[in_class[first:first + len(block)]].sum(axis=0)
        mean_act = total / max(n_images, 1)
        if rows:
            cls_act = cls_total / len(rows)
            score = w * (cls_act - mean_act)
            ranking = (f"expanded weight to the logit x (mean activation on the {len(rows)} "
                       f"image(s) of the class - mean over all {n_images} images)")
        else:
            ranking = (f"expanded weight to the class logit (none of the {n_images} images is of "
                       f"class {label!r}{' (' + wnid + ')' if wnid else ''}; ranked by weights "
                       "only)")
    order = np.argsort(-score, kind="stable")[:top]
    found = [UnitScore(candidates[c], float(score[c]), float(w[c]),
                       None if cls_act is None else float(cls_act[c]),
                       None if mean_act is None else float(mean_act[c])) for c in order]
    return FindResult(model=model.name, layer=info.name, class_index=idx, label=label,
                      wnid=wnid, ranking=ranking, units=found, n_images=n_images,
                      class_image_files=files)
