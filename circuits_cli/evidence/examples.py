"""Dataset examples: the images of a dataset that activate a unit most, cropped where it fires.

For every image the activation store (:mod:`.activations`) keeps each channel's spatial max and
where it is. Ranking images by that max gives a unit's dataset examples; the crop is the unit's
receptive field (:mod:`.receptive_field`) at the position of the max, cut from the image exactly
as the model saw it (shorter side resized, centre crop). Negative examples rank by the spatial
min instead; for a non-negative layer (after a ReLU) the min carries no information, so they are
the images whose max is lowest: where the unit stays quietest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CircuitsError
from ..files import save_figure
from ..units import Unit, is_neuron
from ..zoo.base import LoadedModel
from .activations import ImageSet, LayerActivations, layer_activations, unit_activations
from .receptive_field import Box, ReceptiveField, receptive_field


@dataclass
class Example:
    """One dataset example: an image, the unit's activation there and where it is strongest."""

    rank: int
    path: Path
    activation: float  # spatial max (min for negative examples) of the unit in this image
    position: tuple[int, int]  # (y, x) in the layer's grid
    box: Box  # (x0, y0, x1, y1) in pixels of the model's input crop
    image: np.ndarray | None = None  # (S, S, 3) float32 in [0, 1], the model's view of the image
    spatial_map: np.ndarray | None = None  # (H, W) the unit's activation map in this image
    row: int = -1  # the image's row in the activations it was ranked from
    missing: bool = False  # the picture was asked for (load) but its file is gone or unreadable

    @property
    def crop(self) -> np.ndarray | None:
        if self.image is None:
            return None
        x0, y0, x1, y1 = self.box
        return self.image[y0:y1, x0:x1]

    def to_json(self) -> dict:
        out = {"rank": self.rank, "file": self.path.name, "path": str(self.path),
               "activation": round(float(self.activation), 6),
               "position": list(self.position), "box": list(self.box)}
        if self.missing:
            out["picture"] = "missing"
        return out


@dataclass
class ExampleSet:
    """A unit's dataset examples (best first) and how they were chosen."""

    unit: Unit
    model: str
    kind: str  # "positive" or "negative"
    ranking: str  # how images were ranked, in words
    examples: list[Example]
    n_images: int
    n_skipped: int
    receptive_field: ReceptiveField
    box_kind: str = "effective"
    summary: dict = field(default_factory=dict)  # statistics of the unit over all images

    def to_json(self) -> dict:
        rf = self.receptive_field
        return {"unit": str(self.unit), "model": self.model, "kind": self.kind,
                "ranking": self.ranking, "n_images": self.n_images, "n_skipped": self.n_skipped,
                "receptive_field": {"kind": self.box_kind, "mass": rf.mass,
                                    "size": [round(v, 1) for v in rf.size(self.box_kind)],
                                    "stride": [round(v, 3) for v in rf.stride],
                                    "input_size": rf.input_size},
                "summary": self.summary,
                "examples": [e.to_json() for e in self.examples]}


def dataset_examples(model: LoadedModel, unit: Unit,
                     images: str | Path | Sequence[str | Path] | ImageSet | LayerActivations, *,
                     top: int = 9, negative: bool = False, box: str = "effective",
                     load: bool = True, cache_dir: str | Path | None = None,
                     batch_size: int = 16, progress: bool = False) -> ExampleSet:
    """The ``top`` images of ``images`` that activate ``unit`` most (or least, ``negative``).

    ``images`` is a folder / list of files (activations are computed or read from the cache) or
    an already opened :class:`LayerActivations` of the unit's layer. ``box`` is ``effective``
    (default) or ``support`` (the full theoretical receptive field). With ``load`` each example
    carries the image as the model saw it (for crops and sheets).
    """
    if top < 1:
        raise CircuitsError(f"--top must be at least 1, got {top}")
    if box not in ("effective", "support"):
        raise CircuitsError(f"unknown receptive-field box {box!r}; use effective or support")
    if isinstance(images, LayerActivations):
        acts = images
    else:
        acts = layer_activations(model, unit.layer, images, cache_dir=cache_dir,
                                 batch_size=batch_size, progress=progress)
    ua = unit_activations(model, unit, acts, batch_size=batch_size)
    mx, mn = ua.column("max"), ua.column("min")
    # a neuron of a layer that is never negative (after a ReLU) has no negative examples
    signed = bool((np.asarray(acts.stats["min"]) if is_neuron(unit) else mn).min() < 0)
    # a cache of sampled positions: the max (min) is over those positions only; say so
    k = acts.sampled_positions
    mx_text = (f"max over the {k} cached positions (of {acts.shape[1] * acts.shape[2]})" if k
               else "spatial max")
    mn_text = mx_text.replace("max", "min", 1)
    if not negative:
        order = np.argsort(-mx, kind="stable")
        values, which = mx, "max"
        ranking = f"highest {mx_text} of the unit in the image"
    elif signed:
        order = np.argsort(mn, kind="stable")
        values, which = mn, "min"
        ranking = f"lowest (most negative) {mn_text} of the unit in the image"
    else:
        order = np.argsort(mx, kind="stable")
        values, which = mx, "max"
        ranking = (f"lowest {mx_text}: the layer is non-negative (after a ReLU), so these are "
                   "the images where the unit stays quietest")
    size = int(acts.preprocessing.get("size", model.input_size))
    resize = acts.preprocessing.get("resize")
    rf = receptive_field(model, unit.layer, size=size, cache_dir=cache_dir)
    examples = []
    for rank, row in enumerate(order[:top], start=1):
        y, x = ua.position(int(row), which)
        ex = Example(rank=rank, path=acts.paths[row], activation=float(values[row]),
                     position=(int(y), int(x)), box=rf.box(int(y), int(x), box),
                     spatial_map=ua.spatial_map(int(row)), row=int(row))
        if load:
            ex.image = acts.picture(int(row), size, resize)
            ex.missing = ex.image is None
        examples.append(ex)
    summary = {"max_mean": round(float(mx.mean()), 6), "max_std": round(float(mx.std()), 6),
               "max_max": round(float(mx.max()), 6),
               "mean_mean": round(float(ua.column("mean").mean()), 6),
               "fraction_active": round(float((mx > 0).mean()), 4)}
    return ExampleSet(unit=unit, model=model.name, kind="negative" if negative else "positive",
                      ranking=ranking, examples=examples, n_images=acts.n_images,
                      n_skipped=acts.n_skipped, receptive_field=rf, box_kind=box,
                      summary=summary)


def examples_sheet(exset: ExampleSet, path: str | Path | None = None, *, columns: int = 5,
                   title: str | None = None, context: bool = True, dpi: int = 100):
    """A PNG sheet of dataset examples: for each, the crop under the receptive field (large)
    with rank and activation, and below it the whole image with the box drawn (``context``).
    Returns the :class:`matplotlib.figure.Figure` when ``path`` is None, else writes the PNG
    atomically."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    exs = exset.examples
    if any(e.image is None and not e.missing for e in exs):
        raise ValueError("examples_sheet needs examples loaded with load=True")
    cols = max(1, min(columns, len(exs)))
    rows = max(1, -(-len(exs) // cols))
    # layout in inches: per example a title line, the crop, the context thumbnail, the file name
    cw, crop, thumb, gap, head = 2.15, 1.95, 0.95, 0.06, 0.62
    ch = 0.26 + crop + (gap + thumb if context else 0) + 0.22
    fw, fh = cols * cw + 0.1, rows * ch + head
    fig = Figure(figsize=(fw, fh), dpi=dpi)

    def axes(x_in, y_top_in, w_in, h_in):
        return fig.add_axes([x_in / fw, 1 - (y_top_in + h_in) / fh, w_in / fw, h_in / fh])

    for i, ex in enumerate(exs):
        r, c = divmod(i, cols)
        x_left = 0.05 + c * cw + (cw - crop) / 2
        y = head + r * ch + 0.26
        ax = axes(x_left, y, crop, crop)
        if ex.image is None:  # the file is gone: say so where the picture would be
            ax.set_facecolor("#e6e6e6")
            ax.text(0.5, 0.5, "picture missing\n(file gone or\nunreadable)", ha="center",
                    va="center", fontsize=9, color="#555555", transform=ax.transAxes)
        else:
            ax.imshow(np.clip(ex.crop, 0, 1), interpolation="lanczos")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{ex.rank}   {ex.activation:.4g}", fontsize=10, pad=3)
        y += crop
        if context and ex.image is not None:
            axc = axes(x_left + (crop - thumb) / 2, y + gap, thumb, thumb)
            axc.imshow(np.clip(ex.image, 0, 1))
            x0, y0, x1, y1 = ex.box
            for color, lw in (("black", 2.6), ("#ffe600", 1.3)):
                axc.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                        edgecolor=color, linewidth=lw))
            axc.set_xticks([])
            axc.set_yticks([])
            for spine in axc.spines.values():
                spine.set_visible(False)
            y += gap + thumb
        elif context:
            y += gap + thumb
        name = ex.path.stem
        name = name if len(name) <= 30 else name[:28] + "…"
        fig.text((x_left + crop / 2) / fw, 1 - (y + 0.04) / fh, name, ha="center", va="top",
                 fontsize=7.5)
    kind = "negative dataset examples" if exset.kind == "negative" else "dataset examples"
    title_text = title or f"{exset.unit} ({exset.model}): {kind}"
    rf = exset.receptive_field
    h, w = rf.size(exset.box_kind)
    ranked = f"ranked by {exset.ranking.split(':')[0]} over {exset.n_images} images"
    crop_text = (f"crop = {exset.box_kind} receptive field (~{h:.0f}x{w:.0f} px of "
                 f"{rf.input_size}) at the unit's strongest position")
    # a long ranking (a cache's sampled positions) gets a line of its own on a narrow sheet
    sep = "\n" if len(ranked) + len(crop_text) > 16 * fw else "; "
    fig.text(0.5, 1 - 0.08 / fh, f"{title_text}\n{ranked}{sep}{crop_text}",
             ha="center", va="top", fontsize=9)
    if path is None:
        return fig
    save_figure(fig, path, dpi=dpi)
    return Path(path)
