"""Activations of an image set, computed once and kept on disk (memory-mapped).

Dataset examples, ablation baselines and class lookups all ask the same question again and again:
"what does layer L do on these images?". :func:`layer_activations` answers it once per
(model name, weights id, layer, image set, preprocessing) and stores the answer under
``$CIRCUITS_CACHE/activations`` (default ``~/.cache/circuits/activations``); a later query for any
unit of that layer memory-maps the stored arrays and returns in milliseconds.

What is stored per layer, one row per readable image (``N`` images, ``C`` channels):

- ``max.npy`` / ``min.npy`` / ``mean.npy`` (N, C) float32: each channel's spatial max, min and mean,
  computed from the float32 activations (exact);
- ``argmax.npy`` / ``argmin.npy`` (N, C) int32: flat position ``y * W + x`` of that max / min;
- ``maps.npy`` (N, C, H, W) **float16**: the full spatial maps, kept when they fit in
  ``max_map_bytes`` (2 GiB by default; mixed4c of GoogLeNet over 500 images is 100 MB). float16
  keeps about three significant digits, plenty for looking at where a unit fires; the statistics
  above are the exact ones;
- ``meta.json``: model, weights id, layer, shape, preprocessing, the image paths in row order and
  the files that could not be decoded.

The image set is identified by a hash of every file's resolved path, size and modification time,
so editing, adding or removing a photo gives a new entry instead of stale answers. An entry is
written into a temporary folder and renamed into place, so an interrupted run leaves nothing
half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from ..files import cache_dir
from ..zoo.base import LoadedModel

FORMAT_VERSION = 1
MAX_MAP_BYTES = 2 * 1024**3
STATS = ("max", "min", "mean", "argmax", "argmin")


def default_cache_dir() -> Path:
    """``$CIRCUITS_CACHE/activations`` or ``~/.cache/circuits/activations``."""
    return cache_dir("activations")


def default_resize(size: int) -> int:
    """Shorter side before the centre crop, in ImageNet's 256/224 proportion (224 -> 256)."""
    return int(round(size * 256 / 224))


@dataclass
class ImageSet:
    """Image files in a fixed order, with how many candidates were not images at all."""

    paths: list[Path]
    n_skipped: int = 0
    source: str = ""

    @property
    def fingerprint(self) -> str:
        """Hash of (resolved path, size, mtime) of every file: changes when any file changes."""
        h = hashlib.sha256()
        for p in self.paths:
            st = p.stat()
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def image_set(images: str | Path | Sequence[str | Path] | ImageSet) -> ImageSet:
    """Resolve a folder, a file or a list of them into an :class:`ImageSet` (sorted, deduplicated).

    Non-image files are counted in ``n_skipped``; a folder without any image is a
    :class:`~circuits_cli.errors.CircuitsError`.
    """
    if isinstance(images, ImageSet):
        return images
    from ..images import find_images

    if isinstance(images, (str, Path)):
        images = [images]
    images = [Path(p).expanduser() for p in images]
    for p in images:
        if not p.exists():
            raise CircuitsError(f"image path {str(p)!r} does not exist; pass a folder of images "
                                "(JPEG/PNG) to --images")
    paths, n_skipped = find_images(images)
    if not paths:
        raise CircuitsError(f"no images found in {', '.join(str(p) for p in images)}; "
                            "pass a folder containing JPEG or PNG photos to --images")
    return ImageSet([Path(p).resolve() for p in paths], int(n_skipped),
                    ", ".join(str(p) for p in images))


@dataclass
class LayerActivations:
    """One layer's activations over an image set, as stored on disk (arrays are memory-mapped)."""

    model: str
    weights_id: str
    layer: str
    shape: tuple[int, int, int]  # (C, H, W)
    paths: list[Path]  # row order; only images that could be decoded
    failed: list[Path]  # files that looked like images but could not be decoded
    n_not_images: int  # candidates that were not image files at all
    stats: dict[str, np.ndarray]  # name -> (N, C) array, see module docstring
    maps: np.ndarray | None  # (N, C, H, W) float16 or None when too large to keep
    directory: Path
    preprocessing: dict = field(default_factory=dict)
    from_cache: bool = False

    @property
    def n_images(self) -> int:
        return len(self.paths)

    @property
    def n_skipped(self) -> int:
        """Files that were skipped: not images, or images that could not be decoded."""
        return self.n_not_images + len(self.failed)

    def column(self, stat: str, channel: int) -> np.ndarray:
        """(N,) float array of one statistic of one channel over the images."""
        return np.asarray(self.stats[stat][:, channel])

    def position(self, row: int, channel: int, which: str = "max") -> tuple[int, int]:
        """(y, x) of the channel's max (or min) in image ``row``."""
        flat = int(self.stats["arg" + which][row, channel])
        return divmod(flat, self.shape[2])

    def spatial_map(self, row: int, channel: int) -> np.ndarray | None:
        """(H, W) float32 activation map of one channel in one image (None if maps not kept)."""
        if self.maps is None:
            return None
        return np.asarray(self.maps[row, channel], dtype=np.float32)

    def skipped_message(self) -> str | None:
        """The warning to show when files were skipped, else None."""
        if not self.n_skipped:
            return None
        parts = []
        if self.n_not_images:
            parts.append(f"{self.n_not_images} non-image")
        if self.failed:
            names = ", ".join(p.name for p in self.failed[:3]) + (", ..." if len(self.failed) > 3
                                                                  else "")
            parts.append(f"{len(self.failed)} unreadable ({names})")
        return (f"skipped {self.n_skipped} file(s): {' and '.join(parts)}; "
                f"using {self.n_images} image(s)")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def entry_key(model: LoadedModel, layer: str, images: ImageSet, size: int, resize: int) -> str:
    """Hash of everything an entry depends on."""
    parts = [f"v{FORMAT_VERSION}", model.name, str(model.weights_id), layer, images.fingerprint,
             f"size={size}", f"resize={resize}", "range=01-rgb+model.preprocess"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def entry_dir(cache_dir: Path, model: LoadedModel, layer: str, key: str) -> Path:
    return (Path(cache_dir) / _slug(f"{model.name}-{str(model.weights_id)[:16]}")
            / f"{_slug(layer)}-{key}")


def _open(directory: Path, from_cache: bool) -> LayerActivations:
    meta = json.loads((directory / "meta.json").read_text())
    stats = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in STATS}
    maps_path = directory / "maps.npy"
    maps = np.load(maps_path, mmap_mode="r") if maps_path.exists() else None
    return LayerActivations(
        model=meta["model"], weights_id=meta["weights_id"], layer=meta["layer"],
        shape=tuple(meta["shape"]), paths=[Path(p) for p in meta["paths"]],
        failed=[Path(p) for p in meta["failed"]], n_not_images=meta["n_not_images"],
        stats=stats, maps=maps, directory=directory, preprocessing=meta["preprocessing"],
        from_cache=from_cache)


def layer_activations(model: LoadedModel, layer: str,
                      images: str | Path | Sequence[str | Path] | ImageSet, **kwargs
                      ) -> LayerActivations:
    """Activations of one layer over an image folder; see :func:`layers_activations`."""
    info = model.layer(layer)
    return layers_activations(model, [info.name], images, **kwargs)[info.name]


def layers_activations(model: LoadedModel, layers: Sequence[str],
                       images: str | Path | Sequence[str | Path] | ImageSet, *,
                       cache_dir: str | Path | None = None, batch_size: int = 16,
                       size: int | None = None, resize: int | None = None,
                       max_map_bytes: int = MAX_MAP_BYTES, progress: bool = False,
                       warn: bool = True) -> dict[str, LayerActivations]:
    """Activations of several layers over an image set, from the cache or in one forward pass.

    Images are loaded as the model expects them (shorter side ``resize``, centre crop ``size``,
    RGB in [0, 1], then ``model.preprocess``). Layers already on disk are memory-mapped; the
    others are computed together, batch by batch, and written atomically. Files that are not
    images or cannot be decoded are skipped and counted (a ``UserWarning`` when ``warn``);
    when no image at all can be read, a :class:`CircuitsError` is raised.
    """
    infos = [model.layer(name) for name in layers]
    names = list(dict.fromkeys(info.name for info in infos))
    imgs = image_set(images)
    size = int(size or model.input_size)
    resize = int(resize or default_resize(size))
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dirs = {n: entry_dir(cache_dir, model, n, entry_key(model, n, imgs, size, resize))
            for n in names}
    out = {n: _open(d, True) for n, d in dirs.items() if (d / "meta.json").exists()}
    missing = [n for n in names if n not in out]
    if missing:
        out.update(_compute(model, missing, imgs, dirs, size=size, resize=resize,
                            batch_size=batch_size, max_map_bytes=max_map_bytes,
                            progress=progress))
    first = out[names[0]]
    if first.n_images == 0:
        raise CircuitsError(f"none of the {len(imgs.paths)} image file(s) in {imgs.source} could "
                            "be read; pass a folder of valid JPEG or PNG photos")
    msg = first.skipped_message()
    if warn and msg:
        warnings.warn(msg, UserWarning, stacklevel=2)
    return {n: out[n] for n in names}


def _compute(model: LoadedModel, layers: list[str], imgs: ImageSet, dirs: dict[str, Path], *,
             size: int, resize: int, batch_size: int, max_map_bytes: int,
             progress: bool) -> dict[str, LayerActivations]:
    from ..hooks import capture
    from ..images import iter_batches

    device = model.device
    tmp = {}
    writers: dict[str, dict] = {}
    ok_paths: list[Path] = []
    n_total = len(imgs.paths)
    try:
        for n in layers:
            dirs[n].parent.mkdir(parents=True, exist_ok=True)
            tmp[n] = Path(tempfile.mkdtemp(dir=dirs[n].parent, prefix=f".{dirs[n].name}.tmp-"))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_total, desc=f"activations {', '.join(layers)}", unit="img",
                       leave=False, disable=None)  # disable=None: only on a terminal
        row = 0
        for batch, ok, n_bad in iter_batches(imgs.paths, batch=batch_size, size=size,
                                             resize=resize):
            if bar is not None:
                bar.update(len(ok) + n_bad)
            if not ok:
                continue
            ok = [Path(p) for p in ok]
            with torch.no_grad():
                acts = capture(model, batch.to(device), layers)
            for n in layers:
                a = acts[n].float()
                if a.dim() != 4:
                    raise CircuitsError(f"layer {n!r} has a {a.dim()}-d activation; dataset "
                                        "examples need a convolutional (N, C, H, W) layer")
                w = writers.get(n)
                if w is None:
                    w = writers[n] = _writer(tmp[n], n_total, tuple(a.shape[1:]), max_map_bytes)
                _write_rows(w, row, a)
            ok_paths.extend(ok)
            row += len(ok)
        if bar is not None:
            bar.close()
        result = {}
        for n in layers:
            w = writers.get(n)
            if w is None:  # no image could be read: an empty entry, never cached
                info = model.layer(n)
                result[n] = LayerActivations(model.name, str(model.weights_id), n,
                                             tuple(info.shape or (info.channels, 1, 1)), [],
                                             list(imgs.paths), imgs.n_skipped, {}, None, dirs[n])
                continue
            _finish(w, row)
            okset = {str(p) for p in ok_paths}
            failed = [p for p in imgs.paths if str(p) not in okset]
            meta = {"format": FORMAT_VERSION, "model": model.name,
                    "weights_id": str(model.weights_id), "layer": n, "shape": list(w["shape"]),
                    "preprocessing": {"size": size, "resize": resize,
                                      "input": "RGB [0,1], model.preprocess"},
                    "maps_dtype": "float16" if w["maps"] is not None else None,
                    "paths": [str(p) for p in ok_paths], "failed": [str(p) for p in failed],
                    "n_not_images": imgs.n_skipped, "source": imgs.source}
            (tmp[n] / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.replace(tmp[n], dirs[n])
            except OSError:  # another process finished the same entry first: use theirs
                shutil.rmtree(tmp[n], ignore_errors=True)
            tmp.pop(n)
            result[n] = _open(dirs[n], False)
        return result
    finally:
        for d in tmp.values():
            shutil.rmtree(d, ignore_errors=True)


def _writer(directory: Path, n: int, shape: tuple[int, int, int], max_map_bytes: int) -> dict:
    c = shape[0]
    w = {"dir": directory, "shape": shape, "maps": None}
    w["stats"] = {s: np.lib.format.open_memmap(directory / f"{s}.npy.part", mode="w+",
                                               dtype=np.int32 if s.startswith("arg")
                                               else np.float32, shape=(n, c))
                  for s in STATS}
    if n * int(np.prod(shape)) * 2 <= max_map_bytes:
        w["maps"] = np.lib.format.open_memmap(directory / "maps.npy.part", mode="w+",
                                              dtype=np.float16, shape=(n, *shape))
    return w


def _write_rows(w: dict, row: int, a: torch.Tensor) -> None:
    b, c = a.shape[:2]
    flat = a.reshape(b, c, -1)
    mx, amx = flat.max(dim=2)
    mn, amn = flat.min(dim=2)
    rows = slice(row, row + b)
    w["stats"]["max"][rows] = mx.cpu().numpy()
    w["stats"]["argmax"][rows] = amx.cpu().numpy()
    w["stats"]["min"][rows] = mn.cpu().numpy()
    w["stats"]["argmin"][rows] = amn.cpu().numpy()
    w["stats"]["mean"][rows] = flat.mean(dim=2).cpu().numpy()
    if w["maps"] is not None:
        f16 = np.finfo(np.float16).max  # clip rather than overflow to inf
        w["maps"][rows] = np.clip(a.cpu().numpy(), -f16, f16).astype(np.float16)


def _finish(w: dict, n_rows: int) -> None:
    """Flush, trim to the rows actually written (unreadable images leave none) and rename."""
    arrays = dict(w["stats"])
    if w["maps"] is not None:
        arrays["maps"] = w["maps"]
    for name, arr in arrays.items():
        part = w["dir"] / f"{name}.npy.part"
        final = w["dir"] / f"{name}.npy"
        if arr.shape[0] == n_rows:
            arr.flush()
            del arr
            os.replace(part, final)
        else:
            np.save(final, np.asarray(arr[:n_rows]))
            del arr
            part.unlink()
    w["stats"].clear()
    w["maps"] = None


@dataclass
class UnitActivations:
    """One unit's activations over an image set: the same questions as
    :class:`LayerActivations` asks of a channel (``column``, ``position``, ``spatial_map``),
    answered for any kind of unit. A neuron is a view onto the stored statistics; a direction or
    dictionary feature is read from the stored maps (float16), or by a forward pass over the
    same images when the maps were too large to keep."""

    layer: LayerActivations
    stats: dict[str, np.ndarray]  # max, min, mean, argmax, argmin: (N,)
    maps: np.ndarray | None  # (N, H, W) float32

    def __getattr__(self, name):  # paths, n_images, preprocessing, ... of the layer
        if name in ("layer", "stats", "maps"):
            raise AttributeError(name)
        return getattr(self.layer, name)

    def column(self, stat: str) -> np.ndarray:
        return np.asarray(self.stats[stat])

    def position(self, row: int, which: str = "max") -> tuple[int, int]:
        return divmod(int(self.stats["arg" + which][row]), self.layer.shape[2])

    def spatial_map(self, row: int) -> np.ndarray | None:
        return None if self.maps is None else np.asarray(self.maps[row], dtype=np.float32)


def unit_activations(model: LoadedModel, unit, acts: LayerActivations,
                     batch_size: int = 16) -> UnitActivations:
    """The activations of ``unit`` (any kind) over the images of ``acts`` (its layer's)."""
    from ..units import Neuron

    if acts.layer != unit.layer:
        raise ValueError(f"activations are of layer {acts.layer}, unit is {unit}")
    if isinstance(unit, Neuron):
        c = unit.channel
        stats = {k: np.asarray(v[:, c]) for k, v in acts.stats.items()}
        maps = None if acts.maps is None else acts.maps[:, c]
        return UnitActivations(acts, stats, maps)
    n, (_, h, w) = acts.n_images, acts.shape
    maps = np.zeros((n, h, w), dtype=np.float32)
    if acts.maps is not None:
        for i in range(0, n, 64):
            chunk = torch.from_numpy(np.asarray(acts.maps[i:i + 64], dtype=np.float32))
            maps[i:i + 64] = unit.read(chunk).numpy()
    else:  # the maps were not kept: one forward pass over the same images
        from ..hooks import capture
        from ..images import iter_batches

        row = 0
        with torch.no_grad():
            for x, _ok, _ in iter_batches(acts.paths, batch=batch_size,
                                          size=int(acts.preprocessing.get("size", 224)),
                                          resize=acts.preprocessing.get("resize")):
                a = capture(model, x.to(model.device), unit.layer)[unit.layer].float()
                maps[row:row + a.shape[0]] = unit.read(a).cpu().numpy()
                row += a.shape[0]
        if row != n:
            raise CircuitsError(f"{n - row} image(s) could not be read any more; re-run to "
                                "refresh the activation cache")
    flat = maps.reshape(n, -1)
    stats = {"max": flat.max(1), "min": flat.min(1), "mean": flat.mean(1, dtype=np.float64),
             "argmax": flat.argmax(1), "argmin": flat.argmin(1)}
    return UnitActivations(acts, stats, maps)


def units_spatial_means(acts: LayerActivations, units, chunk_rows: int = 16) -> np.ndarray:
    """(N, U) each unit's read-out averaged over positions, for many units of ``acts``'s layer
    at once (one pass over the stored maps): neurons come from the statistics; directions and
    features need the maps."""
    from ..units import is_neuron

    if all(is_neuron(u) for u in units):
        return np.asarray(acts.stats["mean"], dtype=np.float64)[:, [u.channel for u in units]]
    if acts.maps is None:
        raise CircuitsError(f"the activation maps of {acts.layer!r} were too large to keep; "
                            "use fewer images to rank directions or features")
    c = acts.shape[0]
    enc = torch.stack([u.encoder(c) for u in units])  # (U, C)
    bias = torch.tensor([float(getattr(u, "bias", 0.0)) for u in units])
    relu = torch.tensor([bool(getattr(u, "relu", False)) for u in units])
    out = np.zeros((acts.n_images, len(units)))
    for i in range(0, acts.n_images, chunk_rows):
        block = torch.from_numpy(np.asarray(acts.maps[i:i + chunk_rows], dtype=np.float32))
        r = torch.einsum("nchw,uc->nuhw", block, enc) + bias[None, :, None, None]
        r = torch.where(relu[None, :, None, None], torch.relu(r), r)
        out[i:i + len(block)] = r.mean(dim=(2, 3)).double().numpy()
    return out
