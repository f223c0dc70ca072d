"""SAE features over a data set, and the features behind one (polysemantic) neuron.

:func:`feature_activations` encodes every position of every image once and keeps, per image and
feature, the spatial maximum and where it is (the dataset-example statistics of a neuron, for
features). :func:`neuron_features` answers "which features does this neuron carry?": the live
features with the largest decoder weight ``W_dec[f, neuron]`` onto it, each with its share of
what the SAE writes into the neuron over the data set and its top images — the picture of a
polysemantic neuron as a sum of several monosemantic features (Bricken et al. 2023).
:func:`polysemantic_neurons` ranks neurons by how many live features write strongly into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from .model import SAE

# per-image maxima of every feature are kept up to this size; beyond it (an activation cache of
# many images, a wide SAE) only each feature's strongest images are kept
PER_IMAGE_BYTES = 512 * 1024**2
TOP_IMAGES = 16


@dataclass
class FeatureActivations:
    """Per image and feature: spatial max and its flat position; per feature: mean activation
    and firing frequency over every position. When per-image values would not fit
    (:data:`PER_IMAGE_BYTES`), ``max`` and ``argmax`` are None and ``top_*`` keep each
    feature's :data:`TOP_IMAGES` strongest images instead (:meth:`strongest` reads either)."""

    max: torch.Tensor | None     # (N, d_sae) float32
    argmax: torch.Tensor | None  # (N, d_sae) int32, flat y * W + x
    mean: torch.Tensor      # (d_sae,)
    frequency: torch.Tensor  # (d_sae,)
    grid: tuple[int, int]    # (H, W)
    top_rows: torch.Tensor | None = None    # (T, d_sae) int64, strongest first
    top_values: torch.Tensor | None = None  # (T, d_sae) float32
    top_argmax: torch.Tensor | None = None  # (T, d_sae) int32

    def strongest(self, feature: int, top: int) -> list[tuple[int, float, int]]:
        """``(image row, spatial max, flat position)`` of the feature's ``top`` strongest
        images, strongest first (ties: the earlier image)."""
        if self.max is not None:
            values = self.max[:, feature]
            order = torch.sort(values, descending=True, stable=True).indices[:top]
            return [(int(i), float(values[i]), int(self.argmax[i, feature])) for i in order]
        if top > self.top_rows.shape[0]:
            raise ValueError(f"only the {self.top_rows.shape[0]} strongest images are kept")
        return [(int(self.top_rows[j, feature]), float(self.top_values[j, feature]),
                 int(self.top_argmax[j, feature])) for j in range(top)]


@torch.no_grad()
def feature_activations(sae: SAE, maps, chunk_rows: int = 32) -> FeatureActivations:
    """Encode every position of ``maps`` (``(N, C, H, W)``, memory-mapped or not)."""
    n, c, h, w = maps.shape
    if c != sae.d_in:
        raise CircuitsError(f"the SAE reads {sae.d_in} channels but the layer has {c}")
    every = torch.arange(h * w)

    def blocks():
        for i in range(0, n, chunk_rows):
            block = torch.from_numpy(np.asarray(maps[i:i + chunk_rows], dtype=np.float32))
            yield i, every.expand(len(block), -1), block.flatten(2).transpose(1, 2)

    return _accumulate(sae, blocks(), n, (h, w), per_image=True)


@torch.no_grad()
def layer_feature_activations(sae: SAE, acts, per_image_bytes: int = PER_IMAGE_BYTES,
                              keep: int = TOP_IMAGES) -> FeatureActivations:
    """:func:`feature_activations` over a layer's activations
    (:class:`~circuits_cli.evidence.activations.LayerActivations`): from its stored maps, or,
    when it was read from an activation cache without them (sampled positions, or maps too
    large to keep), from the cache's rows shard by shard. With sampled positions the spatial
    max is over the positions cached for each image, and the mean and firing frequency are
    over all cached positions. When N images x d_sae features of per-image maxima would take
    more than ``per_image_bytes``, only each feature's ``keep`` strongest images are kept
    (memory bounded by the SAE's width, not the data set's size)."""
    if acts.maps is not None:
        return feature_activations(sae, acts.maps)
    if acts.activation_cache is None:
        raise CircuitsError(f"the activation maps of {acts.layer!r} over {acts.n_images} images "
                            "are too large to keep on disk; use fewer images")
    from ..evidence.activations import cache_blocks

    n, (c, h, w) = acts.n_images, acts.shape
    if c != sae.d_in:
        raise CircuitsError(f"the SAE reads {sae.d_in} channels but the layer has {c}")

    def blocks():
        for first, pos, v in cache_blocks(acts):
            for i in range(0, len(v), 32):
                yield first + i, torch.from_numpy(pos[i:i + 32]), torch.from_numpy(v[i:i + 32])

    return _accumulate(sae, blocks(), n, (h, w),
                       per_image=n * sae.d_sae * 8 <= per_image_bytes, keep=keep)


def _accumulate(sae: SAE, blocks, n: int, grid: tuple[int, int], *, per_image: bool,
                keep: int = TOP_IMAGES) -> FeatureActivations:
    """The :class:`FeatureActivations` of ``n`` images from ``blocks`` of them, each
    ``(first row, positions (b, K) flat y * W + x, activations (b, K, C))``: per image the
    spatial max and its position (``per_image``) or each feature's ``keep`` strongest images; per
    feature the mean and the firing frequency over every position given."""
    mx = torch.empty(n, sae.d_sae) if per_image else None
    amx = torch.empty(n, sae.d_sae, dtype=torch.int32) if per_image else None
    top = (torch.empty(0, sae.d_sae, dtype=torch.int64), torch.empty(0, sae.d_sae),
           torch.empty(0, sae.d_sae, dtype=torch.int32))
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    positions = 0
    for first, pos, x in blocks:
        f = sae.encode(x)  # (b, K, d_sae)
        val, a = f.max(dim=1)
        at = torch.gather(pos, 1, a).to(torch.int32)
        if per_image:
            mx[first:first + len(f)] = val
            amx[first:first + len(f)] = at
        else:
            top = _merge_top(top, first, val, at, keep)
        total += f.sum((0, 1), dtype=torch.float64)
        fires += (f > 0).sum((0, 1), dtype=torch.float64)
        positions += f.shape[0] * f.shape[1]
    positions = max(positions, 1)
    fa = FeatureActivations(mx, amx, (total / positions).float(), (fires / positions).float(),
                            grid)
    if not per_image:
        fa.top_rows, fa.top_values, fa.top_argmax = top
    return fa


def _merge_top(top, first: int, values: torch.Tensor, argmax: torch.Tensor, keep: int):
    """Each feature's ``keep`` strongest images so far, with a block of images
    (rows ``first``...) merged in; strongest first, ties to the earlier image."""
    rows_, vals_, args_ = top
    b, d = values.shape
    rows = torch.cat([rows_, torch.arange(first, first + b).unsqueeze(1).expand(b, d)])
    vals = torch.cat([vals_, values])
    args = torch.cat([args_, argmax])
    # sort by value, descending; a stable sort keeps the earlier image first among ties, since
    # the kept ones (earlier rows) come before the new block
    order = torch.sort(vals, dim=0, descending=True, stable=True).indices[:keep]
    return rows.gather(0, order), vals.gather(0, order), args.gather(0, order)


def polysemantic_neurons(sae: SAE, fa: FeatureActivations, top: int = 10,
                         min_weight: float = 0.3) -> list[dict]:
    """Neurons ranked by how many distinct live features write strongly into them: features
    ``f`` with ``W_dec[f, n] >= min_weight`` (a unit decoder row with at least ``min_weight²``
    of its squared norm on the neuron's axis) that fire on the data set. A monosemantic neuron
    has one such feature (or none); a polysemantic one several. Ties: the larger mean write
    ``Σ_f mean act_f · max(W_dec[f, n], 0)``."""
    w = sae.W_dec.detach()
    live = (fa.frequency > 0)[:, None]
    strong = ((w >= min_weight) & live).sum(0)
    write = (fa.mean[:, None] * w.clamp_min(0)).sum(0)
    order = sorted(range(sae.d_in), key=lambda n: (-int(strong[n]), -float(write[n])))[:top]
    return [{"neuron": n, "strong_features": int(strong[n]), "mean_write": float(write[n])}
            for n in order]


def _examples(strongest: list[tuple[int, float, int]], paths, w: int) -> list:
    """Example dicts of ``(row, value, flat position)`` triples, the positive ones."""
    return [{"path": str(paths[i]), "row": i, "activation": v, "position": list(divmod(a, w))}
            for i, v, a in strongest if v > 0]


def neuron_features(sae: SAE, acts, neuron: int, *, top_features: int = 6, top_images: int = 6,
                    fa: FeatureActivations | None = None) -> dict:
    """The live features that write most into channel ``neuron`` (largest ``W_dec[f, neuron]``)
    with their top images, and the neuron's own top images; ``acts`` is the layer's
    :class:`~circuits_cli.evidence.activations.LayerActivations` over the data set."""
    if not 0 <= neuron < sae.d_in:
        raise CircuitsError(f"neuron {neuron} is out of range; the layer has {sae.d_in} "
                            f"channels (0-{sae.d_in - 1})")
    fa = fa or layer_feature_activations(sae, acts, keep=max(top_images, TOP_IMAGES))
    h, w = fa.grid
    weights = sae.W_dec.detach()[:, neuron]
    contrib = fa.mean * weights
    positive = float(contrib.clamp_min(0).sum())
    live = fa.frequency > 0
    order = torch.argsort(torch.where(live, weights, torch.full_like(weights, -np.inf)),
                          descending=True)[:top_features]
    feats = []
    for f in order:
        f = int(f)
        if not live[f] or weights[f] <= 0:
            continue
        dec = sae.W_dec.detach()[f]
        feats.append({"feature": f, "weight": float(weights[f]),
                      "cosine_with_neuron_axis": float(dec[neuron] / dec.norm()),
                      "share": float(contrib[f]) / positive if positive > 0 else 0.0,
                      "frequency": float(fa.frequency[f]), "mean_activation": float(fa.mean[f]),
                      "top_images": _examples(fa.strongest(f, top_images), acts.paths, w)})
    own_max = torch.from_numpy(np.array(acts.stats["max"][:, neuron], dtype=np.float32))
    own_arg = torch.from_numpy(np.array(acts.stats["argmax"][:, neuron]))
    own = [(int(i), float(own_max[i]), int(own_arg[i]))
           for i in torch.argsort(own_max, descending=True)[:top_images]]
    ranking = polysemantic_neurons(sae, fa, top=sae.d_in)
    rank = next(i for i, r in enumerate(ranking) if r["neuron"] == neuron)
    return {"layer": acts.layer, "neuron": neuron, "grid": [h, w],
            "model": acts.model, "images": acts.n_images,
            "sampled_positions": getattr(acts, "sampled_positions", None),
            "strong_features": ranking[rank]["strong_features"],
            "polysemanticity_rank": rank + 1,
            "features": feats,
            "neuron_top_images": _examples(own, acts.paths, w)}


def save_neuron_features(result: dict, out_stem: str | Path, size: int = 224,
                         resize: int = 256) -> dict[str, Path]:
    """Write ``STEM.json`` and ``STEM.png`` (the figure) for a :func:`neuron_features` result."""
    from ..files import write_json
    from ..images import load_image
    from .figures import neuron_features_figure

    out_stem = Path(out_stem)

    def loader(path):
        return load_image(path, size=size, resize=resize).permute(1, 2, 0).numpy()

    js = write_json(out_stem.with_suffix(".json"), result)
    png = neuron_features_figure(result, loader, out_stem.with_suffix(".png"))
    return {"json": js, "png": png}


def add_receptive_fields(result: dict, model, *, size: int | None = None,
                         cache_dir: str | Path | None = None) -> dict:
    """Give every example of a :func:`neuron_features` result its ``box``: the layer's
    (effective) receptive field at the example's position, ``[x0, y0, x1, y1]`` in pixels of the
    model's ``size`` x ``size`` input crop (the crop ``circuits examples`` shows)."""
    from ..evidence.receptive_field import receptive_field

    rf = receptive_field(model, result["layer"], size=size, cache_dir=cache_dir)
    for ex in result["neuron_top_images"] + [e for f in result["features"]
                                             for e in f["top_images"]]:
        ex["box"] = [int(v) for v in rf.box(*ex["position"])]
    result["input_size"] = int(rf.input_size)
    return result


def render_neuron_features(model, sae: SAE, result: dict, *, steps: int = 128, size: int = 128,
                           seed: int = 0, facets: int = 4, param: str = "fourier",
                           cache_dir: str | Path | None = None,
                           progress: bool = False) -> dict:
    """The feature visualizations of a :func:`neuron_features` result, through the render
    cache: ``{"neuron": Render}`` with the neuron's ``facets`` diversity facets (the render of
    ``visualize --objective diversity``; its image is the facets side by side) and
    ``{feature index: Render}`` for each listed feature (objective: the feature's activation,
    its encoder read-out with bias and ReLU, as for any dictionary-feature unit)."""
    from ..render import render_units
    from ..units import Unit, feature

    layer = model.layer(result["layer"]).name
    how = dict(steps=steps, size=size, seed=seed, param=param, progress=progress,
               cache_dir=cache_dir)
    out: dict = {"neuron": render_units(model, [Unit(layer, int(result["neuron"]))],
                                        objective="diversity", facets=facets, **how)[0]}
    units = [feature(layer, sae, f["feature"]) for f in result["features"]]
    if units:
        for f, r in zip(result["features"], render_units(model, units, objective="channel",
                                                         **how), strict=True):
            out[f["feature"]] = r
    return out
