"""Train an SAE from an activation cache (``circuits cache``) instead of an image folder.

The cache's rows (one sampled position of one image each, over every shard) are read as one
memory-mapped array (:class:`~circuits_cli.cache.CacheRows`, shape ``(rows, C, 1, 1)``) by the
same streamed loop as a folder (:func:`.train.train`): each chunk of ``chunk_samples`` rows is a
seeded random draw from *all* shards (shuffling across shards), read from the shard files, so
memory is one chunk however large the cache. Batch ``t`` depends only on ``(seed, t)``, so a
resumed run equals an uninterrupted one to the bit, and a cache written by N jobs (the same rows
in the same order) trains the same SAE as one written by one job.

Images, not rows, are held out (``holdout``, seeded): the metrics are measured on the rows of
images the SAE never saw. There is no downstream fidelity here (the images may live in tar shards
on another machine); ``circuits sae train --images`` measures it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import CircuitsError
from .layer import (
    NORMALISATION,
    OUR_FILES,
    LayerSAE,
    check_out_folder,
    run_key,
    save_trained,
    split_rows,
)
from .model import load_sae
from .train import CHECKPOINT, TrainConfig, train


def cache_data_id(cache, layer: str, holdout: float) -> str:
    return "\n".join(["cache", cache.fingerprint, layer, f"holdout={holdout}"])


def train_cache_sae(cache_dir: str | Path, layer: str, out: str | Path,
                    cfg: TrainConfig | None = None, *, holdout: float = 0.1,
                    threads: int | None = None, log: Callable[[str], None] | None = print,
                    bar: bool | None = None, callback: Callable[[dict], None] | None = None,
                    checkpoint_every: int = 50) -> LayerSAE:
    """Train (or resume, or reload) the SAE of ``layer`` over the rows of a cache into ``out``."""
    from ..cache import open_cache
    from ..files import claim_output
    from .evaluate import reconstruction_metrics

    cfg = cfg or TrainConfig()
    cfg.check()
    if not 0 <= holdout < 1:
        raise CircuitsError(f"--holdout must be in [0, 1), got {holdout}")
    cache = open_cache(cache_dir)
    name = cache.layer_name(layer)
    channels = int(cache.meta["layers"][name]["shape"][0])
    if cfg.arch == "topk" and cfg.k > cfg.expansion * channels:
        raise CircuitsError(f"--k {cfg.k} is more than the SAE's {cfg.expansion * channels} "
                            f"latents ({cfg.expansion} x {channels} channels); lower --k or "
                            "raise --expansion")
    out = Path(out)
    claim_output(out, "sae train", OUR_FILES)
    did = cache_data_id(cache, name, holdout)
    key = run_key(cfg, did)
    if check_out_folder(out, key) == "done":
        sae = load_sae(out)
        return LayerSAE(sae, out, dict(sae.cfg.get("metrics", {})), already_done=True)
    rows = cache.rows(name)
    image_of_row = cache.row_images(name)
    n_images = cache.n_images
    _, hold_images = split_rows(n_images, holdout, cfg.seed)
    held = np.zeros(n_images, bool)
    held[hold_images] = True
    train_rows = np.nonzero(~held[image_of_row])[0]
    hold_rows = np.nonzero(held[image_of_row])[0]
    del image_of_row
    if log is not None:
        log(f"cache {cache.folder}: {len(rows)} rows of {name} from {n_images} images in "
            f"{len(cache.shards)} shards ({len(train_rows)} rows to train on)")
    out.mkdir(parents=True, exist_ok=True)
    sae, tinfo = train(rows, train_rows, cfg, checkpoint=out / CHECKPOINT, data_id=did,
                       checkpoint_every=checkpoint_every, log=log, bar=bar, callback=callback,
                       threads=threads)
    eval_rows = hold_rows if len(hold_rows) else train_rows
    # the metrics on at most ~1M rows of each split (a seeded sample): enough digits, bounded time
    pick = np.random.default_rng([cfg.seed, 7])

    def sample(r):
        return np.sort(pick.choice(r, 1 << 20, replace=False)) if len(r) > 1 << 20 else r

    metrics = {"split": "held-out images" if len(hold_rows) else "training images"}
    rec = reconstruction_metrics(sae, rows, sample(eval_rows), chunk_rows=8192)
    rec_train = reconstruction_metrics(sae, rows, sample(train_rows), chunk_rows=8192)
    n_all = rec["samples"] + (rec_train["samples"] if len(hold_rows) else 0)
    freq = rec["frequency"] * rec["samples"] / n_all
    if len(hold_rows):
        freq = freq + rec_train["frequency"] * rec_train["samples"] / n_all
    metrics.update({k: v for k, v in rec.items() if k != "frequency"})
    metrics["explained_variance_train"] = rec_train["explained_variance"]
    metrics["dead_fraction"] = float((freq == 0).float().mean())
    metrics["dense_fraction"] = float((freq > 0.1).float().mean())
    metrics["dead_window_fraction_at_end"] = (tinfo["history"][-1]["dead"]
                                              if tinfo["history"] else None)
    metrics["training"] = {"steps": tinfo["steps"],
                           "samples_seen": tinfo["steps"] * cfg.batch_size,
                           "epochs": tinfo["steps"] * cfg.batch_size / max(1, len(train_rows)),
                           "seconds_this_run": round(tinfo["seconds"], 1),
                           "samples_per_s": tinfo["samples_per_s"],
                           "resumed_from_step": tinfo["resumed_from"]}
    meta = cache.meta
    source = ", ".join(p["source"] for p in meta.get("parts", [])) or str(cache.folder)
    per_image = meta["layers"][name].get("positions_per_image")
    sae.cfg = {
        "model_name": meta["model"], "weights_id": meta["weights_id"], "hook_name": name,
        "layer_shape": list(meta["layers"][name]["shape"]), "dataset_path": str(cache.folder),
        "dataset": {"source": f"activation cache {cache.folder} ({source})",
                    "images": n_images, "train_images": n_images - len(hold_images),
                    "held_out_images": len(hold_images), "positions_per_image": per_image,
                    "fingerprint": cache.fingerprint[:16], "rows": len(rows),
                    "preprocessing": meta.get("preprocessing")},
        "normalisation": {"method": NORMALISATION, "scale": tinfo["scale"],
                          "folded_into_weights": True},
        "training": {**asdict(cfg), "aux_k": cfg.aux_k or sae.d_in // 2},
        "metrics": metrics,
        "metadata": {"model_name": meta["model"], "hook_name": name,
                     "dataset_path": str(cache.folder), "sae_lens_training_version": None},
        "circuits": {"run_key": key, "format": 1},
    }
    save_trained(sae, out, metrics, tinfo, freq)
    if log is not None:
        log(f"trained {tinfo['steps']} steps ({tinfo['samples_per_s'] or 0:.0f} samples/s)")
    return LayerSAE(sae, out, metrics, resumed_from=tinfo["resumed_from"])

