"""Receptive fields: which input pixels lie under one position of a layer.

Computed generically from the network itself, with no knowledge of its architecture: the gradient
of the activations at one position (summed over channels) with respect to the input image, on a
few random images, is non-zero exactly on the pixels that can influence that position. Two boxes
come out of that gradient map:

- ``support``: every pixel with a non-zero gradient: the theoretical receptive field (clipped to
  the image). Deep layers see nearly the whole image this way (mixed4c of GoogLeNet: about
  300 px theoretical, more than the 224 px input);
- ``effective``: the central part holding ``mass`` (default 90 %) of the gradient magnitude along
  each axis: the effective receptive field, where a unit actually looks. Dataset-example crops use
  this one by default, because a crop of the whole image shows nothing.

Boxes move with the position: the stride (input pixels per step of the layer's grid) is measured
from the shift of the gradient's centre of mass between two neighbouring positions. Results are
cached in memory and on disk (``receptive_fields/`` beside the activation store) per model,
weights, layer and input size.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..zoo.base import LoadedModel
from .activations import _slug, default_cache_dir

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), pixels of the model's input, x1/y1 exclusive

RF_VERSION = 2  # bump when the computation changes: old cache files are then ignored


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer's positions, in pixels of the model's (size x size) input.

    ``support`` and ``effective`` are the boxes of the reference position ``ref`` (y, x) before
    clipping to the image; :meth:`box` shifts them to any position by ``stride`` and clips.
    """

    layer: str
    input_size: int
    grid: tuple[int, int]  # (H, W) of the layer
    ref: tuple[int, int]  # (y, x) of the position the boxes below belong to
    stride: tuple[float, float]  # (sy, sx) input pixels per grid step
    support: tuple[float, float, float, float]  # (x0, y0, x1, y1), unclipped
    effective: tuple[float, float, float, float]
    mass: float = 0.9

    def box(self, y: int, x: int, kind: str = "effective") -> Box:
        """Integer box (x0, y0, x1, y1) under position (y, x), clipped to the input image."""
        x0, y0, x1, y1 = self.support if kind == "support" else self.effective
        dy = (y - self.ref[0]) * self.stride[0]
        dx = (x - self.ref[1]) * self.stride[1]
        s = self.input_size
        bx0 = int(np.clip(np.floor(x0 + dx), 0, s - 1))
        by0 = int(np.clip(np.floor(y0 + dy), 0, s - 1))
        bx1 = int(np.clip(np.ceil(x1 + dx), bx0 + 1, s))
        by1 = int(np.clip(np.ceil(y1 + dy), by0 + 1, s))
        return bx0, by0, bx1, by1

    def size(self, kind: str = "effective") -> tuple[float, float]:
        """(height, width) of the unclipped box."""
        x0, y0, x1, y1 = self.support if kind == "support" else self.effective
        return y1 - y0, x1 - x0


def receptive_field(model: LoadedModel, layer: str, *, size: int | None = None,
                    mass: float = 0.9, n_images: int = 4, seed: int = 0,
                    cache_dir: str | Path | None = None) -> ReceptiveField:
    """The receptive field of ``layer`` at input size ``size`` (default the model's), cached."""
    info = model.layer(layer)
    size = int(size or model.input_size)
    memory = model.memo.setdefault("receptive_field", {})  # this model's, not a global
    key = (info.name, size, round(mass, 4))
    if key in memory:
        return memory[key]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = (root.parent / "receptive_fields" / _slug(f"{model.name}-{str(model.weights_id)[:16]}")
            / f"{_slug(info.name)}-{size}-m{round(mass * 1000)}-v{RF_VERSION}.json")
    rf = None
    if path.exists():
        try:
            d = json.loads(path.read_text())
            rf = ReceptiveField(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in d.items()})
        except (ValueError, TypeError):
            rf = None
    if rf is None:
        rf = _compute(model, info.name, size, mass, n_images, seed)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(rf)))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs a recomputation
    memory[key] = rf
    return rf


def gradient_map(model: LoadedModel, layer: str, positions: list[tuple[int, int]],
                 size: int, n_images: int = 4, seed: int = 0
                 ) -> tuple[list[np.ndarray], tuple[int, int]]:
    """|d(sum over channels of layer[y, x]) / d input| summed over random images and colour
    channels, one (size, size) map per position; and the layer's (H, W)."""
    from ..hooks import capture

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_images, 3, size, size, generator=g).to(model.device).requires_grad_(True)
    with torch.enable_grad():
        act = capture(model, x, layer)[layer]
        grid = (int(act.shape[2]), int(act.shape[3]))
        maps = []
        for i, (py, px) in enumerate(positions):
            py, px = min(py, grid[0] - 1), min(px, grid[1] - 1)
            (grad,) = torch.autograd.grad(act[:, :, py, px].sum(), x,
                                          retain_graph=i < len(positions) - 1)
            maps.append(grad.abs().sum(dim=(0, 1)).double().cpu().numpy())
    return maps, grid


def _compute(model: LoadedModel, layer: str, size: int, mass: float, n_images: int,
             seed: int) -> ReceptiveField:
    from ..hooks import capture

    with torch.no_grad():
        probe = capture(model, torch.zeros(1, 3, size, size, device=model.device), layer)[layer]
    h, w = int(probe.shape[2]), int(probe.shape[3])
    ref = (h // 2, w // 2)
    # a neighbour inside the grid in each direction (back one step when the grid is tiny)
    ny = ref[0] + 1 if ref[0] + 1 < h else ref[0] - 1
    nx = ref[1] + 1 if ref[1] + 1 < w else ref[1] - 1
    positions = [ref, (ny, ref[1]), (ref[0], nx)]
    maps, _ = gradient_map(model, layer, positions, size, n_images, seed)
    center = _centroid(maps[0])
    sy = _snap((_centroid(maps[1])[0] - center[0]) / (ny - ref[0]), size / h) if h > 1 \
        else float(size)
    sx = _snap((_centroid(maps[2])[1] - center[1]) / (nx - ref[1]), size / w) if w > 1 \
        else float(size)
    return ReceptiveField(layer=layer, input_size=size, grid=(h, w), ref=ref,
                          stride=(float(sy), float(sx)), support=_support_box(maps[0]),
                          effective=_effective_box(maps[0], mass), mass=mass)


def _snap(measured: float, nominal: float) -> float:
    """The grid's nominal stride (input size / grid size) when the measured shift of the
    gradient's centre of mass agrees with it within 25 % (it is noisy for small kernels with
    random-looking weights), else the measurement."""
    return float(nominal) if abs(measured - nominal) <= 0.25 * nominal else float(measured)


def _centroid(m: np.ndarray) -> tuple[float, float]:
    total = m.sum()
    if total <= 0:
        return (m.shape[0] / 2, m.shape[1] / 2)
    ys = (m.sum(axis=1) * np.arange(m.shape[0])).sum() / total
    xs = (m.sum(axis=0) * np.arange(m.shape[1])).sum() / total
    return float(ys), float(xs)


def _support_box(m: np.ndarray) -> tuple[float, float, float, float]:
    nz = m > m.max() * 1e-9
    rows, cols = np.flatnonzero(nz.any(axis=1)), np.flatnonzero(nz.any(axis=0))
    if not len(rows):
        return (0.0, 0.0, float(m.shape[1]), float(m.shape[0]))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _effective_box(m: np.ndarray, mass: float) -> tuple[float, float, float, float]:
    """Trim (1 - mass) / 2 of the gradient magnitude from each side, per axis (measured at the
    central position, where the image border clips least)."""
    tail = (1 - mass) / 2

    def bounds(marginal: np.ndarray) -> tuple[float, float]:
        c = np.cumsum(marginal) / marginal.sum()
        lo = int(np.searchsorted(c, tail))
        hi = int(np.searchsorted(c, 1 - tail)) + 1
        return float(lo), float(min(hi, len(marginal)))

    if m.sum() <= 0:
        return (0.0, 0.0, float(m.shape[1]), float(m.shape[0]))
    y0, y1 = bounds(m.sum(axis=1))
    x0, x1 = bounds(m.sum(axis=0))
    return (x0, y0, x1, y1)
