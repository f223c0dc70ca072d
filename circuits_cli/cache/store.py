"""The on-disk format of an activation cache, and reading it back as one array of rows.

A cache is a folder::

    DIR/metadata.json                 what the rows are (below); after the merge also the shard
                                      list in reading order and the totals ("complete": true)
    DIR/parts/PART.json               one per source written into DIR (appending adds a part):
                                      the source, its item count, its shard count, its sequence
    DIR/shards/SHARD.json             a finished shard (written last: its presence is the mark):
                                      the image ids in shard order, those that failed to decode,
                                      rows per layer, and where each image is read from
                                      ("where": an absolute file path, [tar, offset, size,
                                      suffix] or ["toy", seed, index]: the pictures of dataset
                                      examples come from there)
    DIR/LAYER/SHARD.bin               raw float16, (rows, C) C-order: np.memmap-able
    DIR/LAYER/SHARD.index.bin         raw int32, (rows, 2): image number within the shard and
                                      flat position y * W + x of each row

A *row* is one sampled spatial position of one image: the layer's channel vector there (what an
SAE is trained on). ``SHARD`` is ``PART-NNNNNN``: shard ``NNNNNN`` of the part (``PART`` = the first
12 hex digits of the source's fingerprint), a fixed block of ``shard_images`` consecutive items of
the source. A shard's rows depend only on its images, the model and the seed (positions are drawn
per image, seeded by the image's id), so N jobs writing disjoint shards write the same bytes as
one job writing them all; rows are read in the order (part sequence, shard number).

``metadata.json``: ``format``, ``model``, ``weights_id``, ``preprocessing``, ``positions`` (per
image, ``null`` = every position), ``seed``, ``shard_images``, ``dtype``, ``layers``
(``{name: {"shape": [C, H, W], "folder": ...}}``), ``row_index`` (the index files' layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CircuitsError
from ..files import slug

FORMAT = "circuits-activation-cache/1"
METADATA = "metadata.json"
DTYPE = np.float16
INDEX_DTYPE = np.int32
DESCRIPTION_KEYS = ("format", "model", "weights_id", "preprocessing", "positions", "seed",
                    "shard_images", "dtype", "layers", "row_index")
ROW_INDEX = "int32 (rows, 2): image number within the shard, flat position y * W + x"


def layer_folder(layer: str) -> str:
    return slug(layer)


def shard_name(part: str, index: int) -> str:
    return f"{part}-{index:06d}"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_cache(folder: str | Path) -> bool:
    meta = read_json(Path(folder) / METADATA)
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def parts(folder: Path) -> list[dict]:
    """The parts of a cache in sequence order."""
    out = [p for p in (read_json(f) for f in sorted((folder / "parts").glob("*.json")))
           if isinstance(p, dict)]
    return sorted(out, key=lambda p: (p["sequence"], p["part"]))


def finished_shards(folder: Path) -> list[dict]:
    """Every finished shard in reading order (part sequence, shard number)."""
    order = {p["part"]: p["sequence"] for p in parts(folder)}
    out = []
    for f in (folder / "shards").glob("*.json"):
        if f.name.startswith("."):
            continue
        s = read_json(f)
        if isinstance(s, dict) and s.get("part") in order:
            out.append(s)
    return sorted(out, key=lambda s: (order[s["part"]], s["index"]))


class CacheRows:
    """One layer's rows over every shard of a cache as one read-only array of shape
    ``(rows, C, 1, 1)`` (a map of one position per row, so that code written for ``(N, C, H, W)``
    maps reads it unchanged). Indexing with an int array or a slice reads only those rows from the
    memory-mapped shard files (mapped for the read only)."""

    def __init__(self, folder: Path, layer: str, shards: list[dict], channels: int):
        self.folder, self.layer, self.channels = folder, layer, channels
        self.names = [s["shard"] for s in shards]
        counts = np.asarray([int(s["rows"][layer]) for s in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.shape = (int(self.offsets[-1]), channels, 1, 1)
        self.dtype = np.dtype(DTYPE)

    def __len__(self) -> int:
        return self.shape[0]

    def shard_array(self, i: int) -> np.ndarray:
        """Shard ``i``'s rows, ``(rows, C)`` float16, memory-mapped."""
        n = int(self.offsets[i + 1] - self.offsets[i])
        path = self.folder / layer_folder(self.layer) / f"{self.names[i]}.bin"
        return (np.memmap(path, dtype=DTYPE, mode="r", shape=(n, self.channels)) if n
                else np.zeros((0, self.channels), DTYPE))

    def index(self, i: int) -> np.ndarray:
        """Shard ``i``'s row index, ``(rows, 2)`` int32 (image in shard, flat position)."""
        n = int(self.offsets[i + 1] - self.offsets[i])
        path = self.folder / layer_folder(self.layer) / f"{self.names[i]}.index.bin"
        if not n:
            return np.zeros((0, 2), INDEX_DTYPE)
        return np.fromfile(path, dtype=INDEX_DTYPE).reshape(n, 2)

    def rows(self, idx) -> np.ndarray:
        """``(len(idx), C)`` float16 rows ``idx`` (any order)."""
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(len(self)))
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row out of range 0..{len(self) - 1}")
        out = np.empty((len(idx), self.channels), DTYPE)
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            # a fresh map per read, dropped after it: the pages read do not stay in this
            # process's resident set (they stay in the kernel's page cache, shared and
            # reclaimable), so memory stays bounded however large the cache
            mm = self.shard_array(int(s))
            out[sel] = mm[idx[sel] - self.offsets[s]]
            del mm
        return out

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            return self.rows([idx])[0][:, None, None]
        return self.rows(idx)[:, :, None, None]

    def __array__(self, dtype=None, copy=None):
        a = self.rows(slice(None))[:, :, None, None]
        return a.astype(dtype) if dtype is not None else a


@dataclass
class ActivationCache:
    """A cache folder opened for reading (:func:`open_cache`)."""

    folder: Path
    meta: dict
    shards: list[dict]

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def n_images(self) -> int:
        return sum(len(s["images"]) for s in self.shards)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def layer_name(self, layer: str) -> str:
        if layer in self.meta["layers"]:
            return layer
        for name, info in self.meta["layers"].items():
            if layer in info.get("aliases", ()):
                return name
        raise CircuitsError(f"the cache {str(self.folder)!r} holds layer(s) "
                            f"{', '.join(self.layers)}, not {layer!r}")

    def rows(self, layer: str) -> CacheRows:
        name = self.layer_name(layer)
        return CacheRows(self.folder, name, self.shards,
                         int(self.meta["layers"][name]["shape"][0]))

    def image_ids(self) -> list[str]:
        return [i for s in self.shards for i in s["images"]]

    def row_images(self, layer: str) -> np.ndarray:
        """``(rows,)`` int64: the image number (in :meth:`image_ids` order) of every row."""
        r = self.rows(layer)
        out = np.empty(len(r), np.int64)
        first = 0
        for i, s in enumerate(self.shards):
            a, b = r.offsets[i], r.offsets[i + 1]
            out[a:b] = r.index(i)[:, 0].astype(np.int64) + first
            first += len(s["images"])
        return out

    def image_where(self) -> list:
        """Where each image (in :meth:`image_ids` order) is read from, as its shard records it;
        None for an image of a cache written before shards recorded it and not found as
        ``SOURCE/ID`` of a folder source."""
        roots = {p["part"]: p.get("source") for p in parts(self.folder) if p.get("kind") ==
                 "folder"}
        out = []
        for s in self.shards:
            where = s.get("where")
            if where is not None and len(where) == len(s["images"]):
                out += where
            else:
                root = roots.get(s["part"])
                out += [str(Path(root).expanduser().resolve() / i) if root else None
                        for i in s["images"]]
        return out

    def failed_ids(self) -> list[str]:
        return [i for s in self.shards for i in s.get("failed", [])]

    def check_model(self, model, layers) -> list[str]:
        """The cache's names of ``layers`` once its model, weights and preprocessing are
        ``model``'s; else a one-line :class:`CircuitsError` naming what differs."""
        meta, where = self.meta, str(self.folder)
        if meta.get("model") != model.name:
            raise CircuitsError(f"the activation cache {where!r} is of model "
                                f"{meta.get('model')!r}, not {model.name!r}; pass -m "
                                f"{meta.get('model')} or a cache of {model.name}")
        if str(meta.get("weights_id")) != str(model.weights_id):
            raise CircuitsError(f"the activation cache {where!r} was written with other weights "
                                f"of {model.name} (weights id {str(meta.get('weights_id'))[:16]}"
                                f", the model's {str(model.weights_id)[:16]}); pass the same "
                                "--weights or write a cache with these")
        size = (meta.get("preprocessing") or {}).get("size")
        if size is not None and int(size) != int(model.input_size):
            raise CircuitsError(f"the activation cache {where!r} holds {size}-pixel inputs, the "
                                f"model takes {model.input_size}; write a cache at its size")
        return [self.layer_name(model.layer(n).name) for n in layers]

    @property
    def fingerprint(self) -> str:
        """Hash of the description and the shard list: the identity of the data a run reads."""
        import hashlib

        desc = {k: self.meta.get(k) for k in DESCRIPTION_KEYS}
        text = json.dumps({"desc": desc, "shards": [(s["shard"], s["rows"])
                                                    for s in self.shards]}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def open_cache(folder: str | Path) -> ActivationCache:
    """Open a cache written by :func:`circuits_cli.cache.write_cache` (every finished shard,
    merged or not); a one-line :class:`CircuitsError` for anything else."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CircuitsError(f"activation cache {str(folder)!r} does not exist; write one with "
                            "'circuits cache LAYER --images SOURCE --out DIR'")
    meta = read_json(folder / METADATA)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CircuitsError(f"{str(folder)!r} is not an activation cache (no {METADATA} of "
                            f"format {FORMAT}); write one with 'circuits cache'")
    shards = finished_shards(folder)
    if not shards:
        raise CircuitsError(f"the activation cache {str(folder)!r} has no finished shard yet; "
                            "run 'circuits cache' into it")
    return ActivationCache(folder, meta, shards)
