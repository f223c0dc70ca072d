"""Writing an activation cache: shards of sampled positions, resumable, spread over jobs.

:func:`write_cache` computes the shards of one job (``shard=(K, N)``: every N-th shard from the
K-th) that are not finished yet, and :func:`merge` records the shard list once every shard is
there (the last job to finish does it). Each shard's files are written to temporaries
(``.NAME.tmp-HOST-PID-*``) and renamed, the shard's JSON last: a job killed mid-shard leaves no
row behind, only temporaries of a dead process, which the next run removes before it redoes that
shard. Rows are computed by :func:`shard_rows` (no files) and written by :func:`_write_shard`.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from .sources import ImageDataset, Source, where_json
from .store import (
    DESCRIPTION_KEYS,
    DTYPE,
    FORMAT,
    INDEX_DTYPE,
    METADATA,
    ROW_INDEX,
    finished_shards,
    layer_folder,
    parts,
    read_json,
    shard_name,
)

DEFAULT_SHARD_IMAGES = 1024


def sample_positions(image_id: str, layer: str, hw: int, k: int | None, seed: int) -> np.ndarray:
    """The flat positions (sorted) sampled from one image's ``hw`` positions: all of them when
    ``k`` is None or at least ``hw``; else ``k`` without replacement, seeded by ``(seed, layer,
    image id)`` only, so that the rows of an image do not depend on the job or shard order."""
    if k is None or k >= hw:
        return np.arange(hw)
    h = int(hashlib.sha256(f"{layer}\0{image_id}".encode()).hexdigest()[:16], 16)
    return np.sort(np.random.default_rng([seed, h]).choice(hw, size=k, replace=False))


def shard_rows(acts: torch.Tensor, ids: Sequence[str], layer: str, k: int | None, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (R, C) float16, index (R, 2) int32)`` of a batch of activations ``(B, C, H, W)``
    of the images ``ids``: the sampled positions of each image, one row each."""
    b, c, h, w = acts.shape
    flat = acts.detach().float().reshape(b, c, h * w).transpose(1, 2)  # (B, HW, C)
    pos = np.stack([sample_positions(i, layer, h * w, k, seed) for i in ids])  # (B, K)
    pos_t = torch.from_numpy(pos).long()
    rows = torch.gather(flat, 1, pos_t[:, :, None].expand(-1, -1, c)).reshape(-1, c)
    f16 = float(np.finfo(np.float16).max)  # clip rather than overflow to inf
    rows = rows.clamp(-f16, f16).to(torch.float16).cpu().numpy()
    img = np.repeat(np.arange(b), pos.shape[1])
    return rows, np.stack([img, pos.reshape(-1)], axis=1)


def description(model, layers: Sequence[str], *, positions: int | None, seed: int,
                shard_images: int, size: int, resize: int) -> dict:
    infos = {}
    for name in layers:
        info = model.layer(name)
        if info.shape is None or len(info.shape) != 3:
            raise CircuitsError(f"layer {info.name!r} is not a convolutional (C, H, W) layer; the "
                                "cache stores channel vectors at spatial positions")
        infos[info.name] = {"shape": list(info.shape), "folder": layer_folder(info.name),
                            "positions_per_image": min(positions or math.prod(info.shape[1:]),
                                                       math.prod(info.shape[1:]))}
    return {"format": FORMAT, "model": model.name, "weights_id": str(model.weights_id),
            "preprocessing": {"size": size, "resize": resize,
                              "input": "RGB [0,1], model.preprocess"},
            "positions": positions, "seed": seed, "shard_images": shard_images,
            "dtype": np.dtype(DTYPE).name, "layers": infos, "row_index": ROW_INDEX}


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in DESCRIPTION_KEYS)


def prepare(out: Path, desc: dict, source: Source) -> dict:
    """Write (or check) ``metadata.json`` and this source's part; returns the part. A folder
    holding a cache of other rows (another model, layer, positions, seed, shard size) is a
    one-line error: it is never mixed into."""
    from ..files import write_json

    meta = read_json(out / METADATA)
    if meta is not None:
        if meta.get("format") != FORMAT:
            raise CircuitsError(f"{str(out / METADATA)!r} is not an activation cache's; choose "
                                "another --out")
        if not _same(meta, desc):
            diff = [k for k in DESCRIPTION_KEYS if meta.get(k) != desc.get(k)]
            raise CircuitsError(f"{str(out)!r} holds a cache with other {', '.join(diff)}; "
                                "append only with the same model, layers, --positions, --seed "
                                "and --shard-images, or choose another --out")
    else:
        write_json(out / METADATA, desc)
    part_id = source.fingerprint[:12]
    path = out / "parts" / f"{part_id}.json"
    part = read_json(path)
    if part is None:
        existing = parts(out)
        # an image of this source already cached by another part would get rows twice
        known = {i for s in finished_shards(out) for i in s["images"]}
        twice = [i for i in source.ids if i in known]
        if twice:
            raise CircuitsError(f"{len(twice)} image(s) of --images are already in the cache "
                                f"{str(out)!r} (e.g. {twice[0]!r}); append only new images")
        part = {"part": part_id, "source": source.description, "kind": source.kind,
                "items": len(source), "shards": math.ceil(len(source) / desc["shard_images"]),
                "sequence": len(existing)}
        if meta is not None and meta.get("complete"):  # appending: complete again at the merge
            write_json(out / METADATA, desc)
        write_json(path, part)
    return part


def _write_shard(out: Path, name: str, part: dict, index: int, ids: list[str],
                 failed: list[str], rows: dict[str, list], indexes: dict[str, list],
                 where: list) -> dict:
    from ..files import atomic_write, write_json

    counts = {}
    for layer, chunks in rows.items():
        folder = out / layer_folder(layer)
        data = (np.concatenate(chunks) if chunks else np.zeros((0, 0), DTYPE))
        idx = (np.concatenate(indexes[layer]).astype(INDEX_DTYPE) if chunks
               else np.zeros((0, 2), INDEX_DTYPE))
        atomic_write(folder / f"{name}.bin", lambda tmp, d=data: d.tofile(tmp))
        atomic_write(folder / f"{name}.index.bin", lambda tmp, d=idx: d.tofile(tmp))
        counts[layer] = len(data)
    shard = {"shard": name, "part": part["part"], "index": index, "images": ids,
             "failed": failed, "rows": counts, "where": where}
    write_json(out / "shards" / f"{name}.json", shard, indent=0)
    return shard


def write_cache(model, layers: Sequence[str], source: Source, out: str | Path, *,
                positions: int | None = 16, seed: int = 0, shard: tuple[int, int] = (0, 1),
                shard_images: int = DEFAULT_SHARD_IMAGES, batch_size: int = 64,
                workers: int = 0, size: int | None = None, resize: int | None = None,
                progress: bool = False, stop_after: int | None = None) -> dict:
    """Compute and write this job's unfinished shards of ``source`` into ``out``; merge when
    every shard of the cache is finished. Returns ``{"written", "skipped", "shards", "merged",
    "rows", "seconds", "images_per_s"}``. ``stop_after`` (tests) raises ``KeyboardInterrupt``
    after that many images have been computed, as a Ctrl-C would."""
    from ..files import claim_output
    from ..hooks import capture
    from ..progress import Progress

    out = Path(out)
    if positions is not None and positions < 1:
        raise CircuitsError(f"--positions must be at least 1, got {positions}")
    if shard_images < 1:
        raise CircuitsError(f"--shard-images must be at least 1, got {shard_images}")
    k, n = shard
    if not 0 <= k < n:
        raise CircuitsError(f"--shard {k}/{n} is out of range; K must be 0..N-1")
    claim_output(out, "cache", [METADATA])
    size = int(size or model.input_size)
    resize = int(resize or round(size * 256 / 224))
    names = list(dict.fromkeys(model.layer(name).name for name in layers))
    desc = description(model, names, positions=positions, seed=seed, shard_images=shard_images,
                       size=size, resize=resize)
    part = prepare(out, desc, source)
    done = {s["index"] for s in finished_shards(out) if s["part"] == part["part"]}
    mine = [s for s in range(part["shards"]) if s % n == k]
    todo = [s for s in mine if s not in done]
    bounds = [(s, s * shard_images, min(len(source), (s + 1) * shard_images)) for s in todo]
    indices = [i for _, a, b in bounds for i in range(a, b)]
    started = time.perf_counter()
    if progress and len(mine) > len(todo):
        print(f"cache: {len(mine) - len(todo)} of this job's {len(mine)} shard(s) already "
              "written; resuming", file=sys.stderr, flush=True)
    # workers decode while this process runs the network; each worker runs torch on one thread
    # (DataLoader's own setting), so on a machine without spare cores a worker competes with the
    # forward pass (docs/guides/cluster.md measures it); pinned batches only help a copy to a GPU
    loader = torch.utils.data.DataLoader(
        ImageDataset(source, indices, size, resize), batch_size=batch_size, shuffle=False,
        num_workers=workers, persistent_workers=False, prefetch_factor=4 if workers else None,
        pin_memory=getattr(model.device, "type", str(model.device)) == "cuda")
    bar = Progress(len(indices), f"cache {', '.join(names)}", "img", enabled=progress)
    written, total_rows = [], 0
    pos = 0  # which of `bounds` is being filled
    buf_ids: list[str] = []
    buf_failed: list[str] = []
    buf_where: list = []
    buf_rows: dict[str, list] = {name: [] for name in names}
    buf_idx: dict[str, list] = {name: [] for name in names}
    seen = 0
    try:
        for idx, images, ok in loader:
            idx, ok = idx.tolist(), ok.tolist()
            good = [j for j, o in enumerate(ok) if o]
            acts = {}
            if good:
                with torch.no_grad():
                    acts = capture(model, images[good].to(model.device), names)
            per_layer = {name: shard_rows(acts[name], [source.ids[idx[j]] for j in good],
                                          name, positions, seed) for name in names} if good \
                else {}
            g = 0
            for j, i in enumerate(idx):
                s, a, b = bounds[pos]
                assert a <= i < b, "the loader must keep the order of the items"
                if ok[j]:
                    for name in names:
                        rows, ix = per_layer[name]
                        kk = len(rows) // len(good)
                        part_ix = ix[g * kk:(g + 1) * kk].copy()
                        part_ix[:, 0] = len(buf_ids)
                        buf_rows[name].append(rows[g * kk:(g + 1) * kk])
                        buf_idx[name].append(part_ix)
                    buf_ids.append(source.ids[i])
                    buf_where.append(where_json(source.where[i]))
                    g += 1
                else:
                    buf_failed.append(source.ids[i])
                seen += 1
                if stop_after is not None and seen >= stop_after:
                    raise KeyboardInterrupt
                if i == b - 1:
                    info = _write_shard(out, shard_name(part["part"], s), part, s, buf_ids,
                                        buf_failed, buf_rows, buf_idx, buf_where)
                    written.append(info["shard"])
                    total_rows += sum(info["rows"].values())
                    pos += 1
                    buf_ids, buf_failed, buf_where = [], [], []
                    buf_rows = {name: [] for name in names}
                    buf_idx = {name: [] for name in names}
            bar.update(len(idx))
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    merged = merge(out, missing_ok=True)
    return {"written": written, "skipped": len(mine) - len(todo), "shards": len(mine),
            "merged": merged is not None, "rows": total_rows, "seconds": seconds,
            "images_per_s": len(indices) / seconds if seconds > 0 else None}


def merge(out: str | Path, missing_ok: bool = False) -> dict | None:
    """Once every shard of every part is finished: ``metadata.json`` with the shard list in
    reading order and the totals (``"complete": true``). Missing shards: None with
    ``missing_ok``, else a one-line error saying how many and how to finish them."""
    from ..files import claim_output, write_json

    out = Path(out)
    meta = read_json(out / METADATA)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CircuitsError(f"{str(out)!r} is not an activation cache; nothing to merge")
    plan = parts(out)
    shards = finished_shards(out)
    have = {(s["part"], s["index"]) for s in shards}
    missing = [(p["part"], i) for p in plan for i in range(p["shards"]) if (p["part"], i)
               not in have]
    if missing:
        if missing_ok:
            return None
        raise CircuitsError(f"{len(missing)} shard(s) of {str(out)!r} are not written yet (e.g. "
                            f"{shard_name(*missing[0])}); re-run the jobs that write them")
    claim_output(out, "cache", [METADATA])
    layers = list(meta["layers"])
    merged = {k: meta[k] for k in DESCRIPTION_KEYS}
    merged.update({
        "complete": True, "images": sum(len(s["images"]) for s in shards),
        "failed": sum(len(s["failed"]) for s in shards),
        "rows": {name: sum(int(s["rows"][name]) for s in shards) for name in layers},
        "parts": [{k: p[k] for k in ("part", "source", "kind", "items", "shards")}
                  for p in plan],
        "shards": [{"shard": s["shard"], "images": len(s["images"]), "rows": s["rows"]}
                   for s in shards]})
    if read_json(out / METADATA) != merged:
        write_json(out / METADATA, merged)
    return merged
