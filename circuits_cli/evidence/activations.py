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
so editing, adding or removing a photo gives a new entry instead of stale answers.

The pass runs in chunks of ``$CIRCUITS_ACTIVATION_CHUNK`` images (256 by default); each finished
chunk is written atomically to ``.ENTRY.partial/`` beside the entry, so an interrupted pass
(Ctrl-C, a crash, SIGKILL, a time limit) resumes from its last chunk instead of starting over on
an ImageNet-size folder. At the end the entry is assembled in a temporary folder
(``.ENTRY.tmp-HOST-PID-*``) and renamed into place; such folders left by a killed process are
removed by the next pass. ``meta.json`` records how many chunks were computed and resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from ..files import cache_dir, slug, temp_prefix
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
            # bytes of the name as on disk: a name that is not valid UTF-8 is a fine file name
            h.update(os.fsencode(p.resolve()) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
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
    result = ImageSet([Path(p).resolve() for p in paths], int(n_skipped),
                      ", ".join(str(p) for p in images))
    check_readable(result)
    return result


def check_readable(images: ImageSet) -> None:
    """Fail early (before any expensive work) when no file of the set can be opened as an image.

    Reads file headers only, and stops at the first readable one: a folder of real photos costs
    one header; a folder of files that only look like images is found out before rendering or
    tracing starts. Single unreadable files are skipped (with a warning) by the pass itself."""
    from ..images import open_image

    for path in images.paths:
        try:  # over the pixel limit counts as unreadable (a decompression bomb sorted first)
            with open_image(path) as im:
                im.size  # noqa: B018 - the header was parsed
            return
        except CircuitsError:
            continue
    raise CircuitsError(f"none of the {len(images.paths)} image file(s) in {images.source} can be "
                        "read as an image; pass a folder of valid JPEG or PNG photos")


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
    # read from an activation cache ('circuits cache'): where each image's picture is (a shard's
    # "where" entry, None when unknown) and, when the cache sampled positions, how many per image
    # (the statistics are then over those positions only)
    where: list | None = None
    sampled_positions: int | None = None
    activation_cache: str | None = None

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

    def picture(self, row: int, size: int | None = None, resize: int | None = None
                ) -> np.ndarray | None:
        """Image ``row`` as the model saw it, ``(S, S, 3)`` float32 in [0, 1]; None when its
        file is gone or unreadable (a page or sheet then says the picture is missing)."""
        size = int(size or self.preprocessing.get("size", 224))
        resize = resize or self.preprocessing.get("resize") or default_resize(size)
        try:
            if self.where is not None:
                from ..cache.sources import decode

                if self.where[row] is None:
                    return None
                img = decode(self.where[row], size, int(resize))
            else:
                from ..images import load_image

                img = load_image(self.paths[row], size=size, resize=resize)
        except CircuitsError:
            return None
        return img.permute(1, 2, 0).numpy()

    def skipped_message(self) -> str | None:
        """The warning to show when files were skipped, else None."""
        from ..images import skipped_note

        note = skipped_note(self.n_not_images, self.failed)
        return None if note is None else f"{note}; using {self.n_images} image(s)"


_slug = slug  # the one file-name rule (circuits_cli.files.slug)


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
        from_cache=from_cache, where=meta.get("where"),
        sampled_positions=meta.get("sampled_positions"),
        activation_cache=meta.get("activation_cache"))


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


CHUNK_ENV = "CIRCUITS_ACTIVATION_CHUNK"
DEFAULT_CHUNK = 256


def chunk_images() -> int:
    """Images per resumable chunk of an activation pass (``$CIRCUITS_ACTIVATION_CHUNK``)."""
    try:
        return max(1, int(os.environ.get(CHUNK_ENV, DEFAULT_CHUNK)))
    except ValueError:
        return DEFAULT_CHUNK


def partial_dir(entry: Path) -> Path:
    """Where the finished chunks of an unfinished pass wait (hidden, beside the entry)."""
    return entry.parent / f".{entry.name}.partial"


def clean_dead_temporaries(folder: Path) -> list[Path]:
    """Remove the assembly folders (``.ENTRY.tmp-HOST-PID-*``) and chunk temporaries that a run
    killed on this host left (SIGKILL, power loss): their process is gone. Finished chunks in
    ``.ENTRY.partial/`` are kept: the next pass resumes from them."""
    from ..files import clean_dead_temporaries as clean

    removed = clean(folder)
    for partial in Path(folder).glob(".*.partial"):
        removed += clean(partial)
    return removed


def _chunk_file(partial: Path, index: int) -> Path:
    return partial / f"chunk-{index:06d}.npz"


def _compute(model: LoadedModel, layers: list[str], imgs: ImageSet, dirs: dict[str, Path], *,
             size: int, resize: int, batch_size: int, max_map_bytes: int,
             progress: bool) -> dict[str, LayerActivations]:
    """One forward pass over the images, in chunks of :func:`chunk_images` images. Each chunk's
    rows are written (atomically) to ``.ENTRY.partial/`` as soon as it is done, so an interrupted
    pass (Ctrl-C, a crash, SIGKILL, a Slurm time limit) resumes from its last finished chunk;
    the entry is assembled from the chunks and renamed into place at the end."""
    from ..hooks import capture
    from ..images import iter_batches
    from ..progress import Progress

    device = model.device
    n_total = len(imgs.paths)
    per_chunk = chunk_images()
    n_chunks = max(1, -(-n_total // per_chunk))
    partials = {n: partial_dir(dirs[n]) for n in layers}
    for n in layers:
        dirs[n].parent.mkdir(parents=True, exist_ok=True)
        clean_dead_temporaries(dirs[n].parent)
        partials[n].mkdir(exist_ok=True)
    keep_maps: dict[str, bool] = {}
    shapes: dict[str, tuple] = {}
    done = [i for i in range(n_chunks)
            if all(_chunk_file(partials[n], i).is_file() for n in layers)]
    resumed = len(done)
    todo = [i for i in range(n_chunks) if i not in set(done)]
    already = sum(len(imgs.paths[i * per_chunk:(i + 1) * per_chunk]) for i in done)
    if progress and resumed:
        print(f"activations {', '.join(layers)}: resuming, {resumed} of {n_chunks} chunk(s) "
              "already computed", file=sys.stderr, flush=True)
    bar = Progress(n_total, f"activations {', '.join(layers)}", "img", enabled=progress,
                   initial=already)
    try:
        for i in todo:
            chunk_paths = imgs.paths[i * per_chunk:(i + 1) * per_chunk]
            rows: dict[str, list[dict]] = {n: [] for n in layers}
            ok_index: list[int] = []
            for batch, ok, n_bad in iter_batches(chunk_paths, batch=batch_size, size=size,
                                                 resize=resize):
                bar.update(len(ok) + n_bad)
                if not ok:
                    continue
                okset = {str(p) for p in ok}
                with torch.no_grad():
                    acts = capture(model, batch.to(device), layers)
                for n in layers:
                    a = acts[n].float()
                    if a.dim() != 4:
                        raise CircuitsError(f"layer {n!r} has a {a.dim()}-d activation; dataset "
                                            "examples need a convolutional (N, C, H, W) layer")
                    if n not in keep_maps:
                        shapes[n] = tuple(a.shape[1:])
                        keep_maps[n] = n_total * int(np.prod(shapes[n])) * 2 <= max_map_bytes
                    rows[n].append(_rows(a, keep_maps[n]))
                ok_index.extend(i * per_chunk + j for j, p in enumerate(chunk_paths)
                                if str(p) in okset)
            ok_index = sorted(set(ok_index))
            for n in layers:
                _save_chunk(_chunk_file(partials[n], i), rows[n], ok_index, shapes.get(n))
        bar.close()
    except BaseException:
        bar.close()
        raise
    result = {}
    for n in layers:
        result[n] = _assemble(model, n, imgs, dirs[n], partials[n], n_chunks, size=size,
                              resize=resize, max_map_bytes=max_map_bytes,
                              chunks={"total": n_chunks, "resumed": resumed,
                                      "computed": n_chunks - resumed, "images": per_chunk})
    return result


def _rows(a: torch.Tensor, keep_maps: bool) -> dict[str, np.ndarray]:
    b, c = a.shape[:2]
    flat = a.reshape(b, c, -1)
    mx, amx = flat.max(dim=2)
    mn, amn = flat.min(dim=2)
    out = {"max": mx.cpu().numpy(), "argmax": amx.cpu().numpy().astype(np.int32),
           "min": mn.cpu().numpy(), "argmin": amn.cpu().numpy().astype(np.int32),
           "mean": flat.mean(dim=2).cpu().numpy()}
    if keep_maps:
        f16 = np.finfo(np.float16).max  # clip rather than overflow to inf
        out["maps"] = np.clip(a.cpu().numpy(), -f16, f16).astype(np.float16)
    return out


def _save_chunk(path: Path, rows: list[dict], ok_index: list[int], shape) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # a concurrent pass may have finished
    arrays = {"rows": np.asarray(ok_index, dtype=np.int64),
              "shape": np.asarray(shape or (), dtype=np.int64)}
    if rows:
        for key in rows[0]:
            arrays[key] = np.concatenate([r[key] for r in rows])
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name))
    os.close(fd)
    tmp = Path(name)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _assemble(model: LoadedModel, layer: str, imgs: ImageSet, entry: Path, partial: Path,
              n_chunks: int, *, size: int, resize: int, max_map_bytes: int,
              chunks: dict, extra: dict | None = None) -> LayerActivations:
    """The entry from its chunks: arrays in row order, meta.json, then one rename."""
    files = [_chunk_file(partial, i) for i in range(n_chunks)]
    row_index: list[int] = []
    shape = None
    try:
        for f in files:
            with np.load(f) as z:
                row_index.extend(int(r) for r in z["rows"])
                if shape is None and len(z["shape"]):
                    shape = tuple(int(v) for v in z["shape"])
    except FileNotFoundError:
        if (entry / "meta.json").is_file():  # a concurrent pass assembled it first: use it
            return _open(entry, True)
        raise
    if not row_index:  # no image could be read: an empty entry, never cached
        shutil.rmtree(partial, ignore_errors=True)
        info = model.layer(layer)
        return LayerActivations(model.name, str(model.weights_id), layer,
                                tuple(info.shape or (info.channels, 1, 1)), [],
                                list(imgs.paths), imgs.n_skipped, {}, None, entry)
    n_rows = len(row_index)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=temp_prefix(entry.name)))
    try:
        arrays: dict[str, np.ndarray] = {}
        row = 0
        for f in files:
            with np.load(f) as z:
                k = len(z["rows"])
                if not k:
                    continue
                for key in z.files:
                    if key in ("rows", "shape"):
                        continue
                    if key not in arrays:
                        part = z[key]
                        arrays[key] = np.lib.format.open_memmap(
                            tmp / f"{key}.npy", mode="w+", dtype=part.dtype,
                            shape=(n_rows, *part.shape[1:]))
                    arrays[key][row:row + k] = z[key]
                row += k
        map_shape = shape
        for arr in arrays.values():
            arr.flush()
        has_maps = "maps" in arrays
        arrays.clear()
        ok_paths = [imgs.paths[i] for i in row_index]
        okset = set(row_index)
        failed = [p for i, p in enumerate(imgs.paths) if i not in okset]
        meta = {"format": FORMAT_VERSION, "model": model.name,
                "weights_id": str(model.weights_id), "layer": layer, "shape": list(map_shape),
                "preprocessing": {"size": size, "resize": resize,
                                  "input": "RGB [0,1], model.preprocess"},
                "maps_dtype": "float16" if has_maps else None,
                "paths": [str(p) for p in ok_paths], "failed": [str(p) for p in failed],
                "n_not_images": imgs.n_skipped, "source": imgs.source, "chunks": chunks,
                **(extra or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _open(entry, False)


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
    if acts.maps is None and acts.activation_cache is not None:
        return _unit_from_cache_rows(unit, acts)
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
    features need the maps, or the rows of the activation cache they were read from."""
    out = np.zeros((acts.n_images, len(units)))
    for first, block in iter_units_spatial_means(acts, units, chunk_rows):
        out[first:first + len(block)] = block
    return out


def iter_units_spatial_means(acts: LayerActivations, units, chunk_rows: int = 16):
    """:func:`units_spatial_means` a block of images at a time: ``(first row, (n, U) float64)``,
    so that a caller that only sums over images holds one block, not N x U values."""
    from ..units import is_neuron

    if all(is_neuron(u) for u in units):
        channels = [u.channel for u in units]
        for i in range(0, acts.n_images, 4096):
            yield i, np.asarray(acts.stats["mean"][i:i + 4096], dtype=np.float64)[:, channels]
        return
    if acts.maps is None and acts.activation_cache is None:
        raise CircuitsError(f"the activation maps of {acts.layer!r} were too large to keep; "
                            "use fewer images to rank directions or features")
    c = acts.shape[0]
    enc = torch.stack([u.encoder(c) for u in units])  # (U, C)
    bias = torch.tensor([float(getattr(u, "bias", 0.0)) for u in units])
    relu = torch.tensor([bool(getattr(u, "relu", False)) for u in units])
    if acts.maps is None:  # an activation cache: its rows, shard by shard
        for first, _pos, v in cache_blocks(acts):
            r = torch.einsum("nkc,uc->nuk", torch.from_numpy(v), enc) + bias[None, :, None]
            r = torch.where(relu[None, :, None], torch.relu(r), r)
            yield first, r.mean(dim=2, dtype=torch.float64).numpy()
        return
    for i in range(0, acts.n_images, chunk_rows):
        block = torch.from_numpy(np.asarray(acts.maps[i:i + chunk_rows], dtype=np.float32))
        r = torch.einsum("nchw,uc->nuhw", block, enc) + bias[None, :, None, None]
        r = torch.where(relu[None, :, None, None], torch.relu(r), r)
        yield i, r.mean(dim=(2, 3)).double().numpy()


# ----------------------------------------------------------- from an activation cache on disk


def cache_blocks(acts: LayerActivations):
    """The rows of the activation cache that ``acts`` was read from (:func:`cache_activations`),
    shard by shard: ``(first, positions, values)`` with ``first`` the row of the shard's first
    image in ``acts``, ``positions`` (n, K) int64 flat ``y * W + x`` and ``values`` (n, K, C)
    float32, the K cached positions of each of the shard's n images. One shard is in memory at
    a time: what directions and SAE features are read from when the cache holds sampled
    positions (or maps too large to keep)."""
    from ..cache import open_cache

    if acts.activation_cache is None:
        raise ValueError("these activations were not read from an activation cache")
    cache = open_cache(acts.activation_cache)
    if cache.n_images != acts.n_images:
        raise CircuitsError(f"the activation cache {acts.activation_cache!r} changed since its "
                            f"statistics were computed ({cache.n_images} images, not "
                            f"{acts.n_images}); re-run to read it again")
    rows = cache.rows(acts.layer)
    first = 0
    for i, shard in enumerate(cache.shards):
        n = len(shard["images"])
        if n:
            yield (first, *_shard_positions(np.asarray(rows.shard_array(i), dtype=np.float32),
                                            rows.index(i), n, acts.shape[0], cache))
        first += n


def _position_stats(v: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    """Over the K cached positions of ``v`` (n, K, ...) at flat positions ``pos`` (n, K): each
    image's max, min, mean (float64) and the flat positions of the max and min."""
    ix = np.arange(len(v)).reshape((-1,) + (1,) * (v.ndim - 2))
    return {"max": v.max(axis=1), "argmax": pos[ix, v.argmax(axis=1)],
            "min": v.min(axis=1), "argmin": pos[ix, v.argmin(axis=1)],
            "mean": v.mean(axis=1, dtype=np.float64)}


def _shard_positions(data: np.ndarray, index: np.ndarray, n: int, c: int, cache
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A shard's rows ``(R, C)`` as ``(positions (n, K) int64, values (n, K, C))``: the same K
    positions of each of its n images, image by image, as the cache writes them (a shard
    otherwise is a one-line error)."""
    k = len(data) // n
    if k * n != len(data) or not np.array_equal(index[:, 0], np.repeat(np.arange(n), k)):
        raise CircuitsError(f"the activation cache {str(cache.folder)!r} has a shard whose rows "
                            "are not K per image in image order; write it again")
    return index[:, 1].astype(np.int64).reshape(n, k), data.reshape(n, k, c)


def _unit_from_cache_rows(unit, acts: LayerActivations) -> UnitActivations:
    """A direction's or feature's statistics over the positions an activation cache holds,
    read row by row (``unit.read`` is position-wise). Every position cached: its maps too."""
    n, (c, h, w) = acts.n_images, acts.shape
    parts = []
    maps = None if acts.sampled_positions else np.zeros((n, h, w), np.float32)
    for first, pos, v in cache_blocks(acts):
        m, k = pos.shape
        r = unit.read(torch.from_numpy(v.reshape(m * k, c))).reshape(m, k).numpy()
        parts.append(_position_stats(r, pos))
        if maps is not None:
            maps[first:first + m].reshape(m, h * w)[np.arange(m)[:, None], pos] = r
    stats = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)
             for k in STATS}
    return UnitActivations(acts, stats, maps)


def cache_activations(model: LoadedModel, layers: Sequence[str], cache, *,
                      cache_dir: str | Path | None = None, max_map_bytes: int = MAX_MAP_BYTES,
                      progress: bool = False) -> dict[str, LayerActivations]:
    """The per-image statistics of ``layers`` read from an activation cache
    (:class:`circuits_cli.cache.ActivationCache`, written by ``circuits cache``) instead of a
    forward pass: what dataset examples, class lookups and the atlas read from an image folder.

    Each image's max, min, argmax, argmin and mean of a channel are taken over the positions the
    cache holds for it: every position (``--positions 0``: the same statistics as a folder's
    pass, to float16's precision) or a sample of K (then the max over those K positions, which
    ``sampled_positions`` records). With every position cached, the maps are kept too (float16)
    when they fit in ``max_map_bytes``. The statistics are stored once per cache (keyed by its
    fingerprint) under ``cache_dir``, one resumable chunk per shard, and memory-mapped.
    A cache of another model, weights or layer is a one-line :class:`CircuitsError`."""
    names = cache.check_model(model, layers)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ids, where = cache.image_ids(), cache.image_where()
    display = [Path(w) if isinstance(w, str) else Path(i) for i, w in zip(ids, where, strict=True)]
    imgs = ImageSet(display, 0, str(cache.folder))
    out = {}
    for n in names:
        key = hashlib.sha256("\n".join([f"v{FORMAT_VERSION}", "activation-cache", model.name,
                                        str(model.weights_id), n, cache.fingerprint]
                                       ).encode()).hexdigest()[:20]
        entry = entry_dir(cache_dir, model, n, key)
        if (entry / "meta.json").exists():
            out[n] = _open(entry, True)
        else:
            out[n] = _from_cache(model, n, cache, imgs, where, entry,
                                 max_map_bytes=max_map_bytes, progress=progress)
    first = out[names[0]]
    if first.n_images == 0:
        raise CircuitsError(f"the activation cache {str(cache.folder)!r} holds no image")
    return out


def _from_cache(model: LoadedModel, layer: str, cache, imgs: ImageSet, where: list, entry: Path,
                *, max_map_bytes: int, progress: bool) -> LayerActivations:
    from ..progress import Progress

    rows = cache.rows(layer)
    c, h, w = (int(v) for v in cache.meta["layers"][layer]["shape"])
    k = int(cache.meta["layers"][layer].get("positions_per_image") or h * w)
    n_total = len(imgs.paths)
    keep_maps = k >= h * w and n_total * c * h * w * 2 <= max_map_bytes
    entry.parent.mkdir(parents=True, exist_ok=True)
    clean_dead_temporaries(entry.parent)
    partial = partial_dir(entry)
    partial.mkdir(exist_ok=True)
    bar = Progress(n_total, f"activations {layer} from {cache.folder.name}", "img",
                   enabled=progress)
    first = resumed = 0
    try:
        for i, shard in enumerate(cache.shards):
            n = len(shard["images"])
            f = _chunk_file(partial, i)
            if f.is_file():
                resumed += 1
            else:
                data = np.asarray(rows.shard_array(i), dtype=np.float32)
                parts = [_cache_rows(data, rows.index(i), n, (c, h, w), keep_maps, cache)] \
                    if n else []
                _save_chunk(f, parts, list(range(first, first + n)), (c, h, w))
            first += n
            bar.update(n)
    finally:
        bar.close()
    prep = cache.meta.get("preprocessing") or {}
    size = int(prep.get("size", model.input_size))
    resize = int(prep.get("resize", default_resize(size)))
    n_chunks = len(cache.shards)
    extra = {"where": where, "failed": cache.failed_ids(), "activation_cache": str(cache.folder),
             "sampled_positions": k if k < h * w else None}
    return _assemble(model, layer, imgs, entry, partial, n_chunks, size=size, resize=resize,
                     max_map_bytes=max_map_bytes,
                     chunks={"total": n_chunks, "resumed": resumed,
                             "computed": n_chunks - resumed, "images": "one shard"},
                     extra=extra)


def _cache_rows(data: np.ndarray, index: np.ndarray, n: int, shape: tuple[int, int, int],
                keep_maps: bool, cache) -> dict[str, np.ndarray]:
    """The statistics of one shard's ``n`` images from its rows ``(R, C)`` (the same K
    positions of every image, image by image, as the cache writes them)."""
    c, h, w = shape
    pos, v = _shard_positions(data, index, n, c, cache)
    out = _position_stats(v, pos)
    out.update(argmax=out["argmax"].astype(np.int32), argmin=out["argmin"].astype(np.int32),
               mean=out["mean"].astype(np.float32))
    if keep_maps:
        maps = np.zeros((n, h * w, c), np.float16)
        maps[np.arange(n)[:, None], pos] = v.astype(np.float16)
        out["maps"] = np.ascontiguousarray(maps.transpose(0, 2, 1)).reshape(n, c, h, w)
    return out
