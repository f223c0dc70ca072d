"""Train, evaluate and save an SAE on one layer of a model over an image folder.

:func:`train_layer_sae` is what ``circuits sae train`` runs: activations from the activation store
(computed once, cached), a seeded split of the images into training and held-out images, the
resumable training loop of :mod:`.train` with its checkpoint in the output folder, the metrics of
:mod:`.evaluate`, and the output folder:

- ``cfg.json`` + ``sae_weights.safetensors``: the SAE in SAELens's layout, the cfg recording the
  model, weights id, layer (hook name), data set, architecture, normalisation and metrics;
- ``metrics.json``: the metrics, training history and latent firing frequencies;
- ``metrics.png``: training curves, the latent frequency histogram and downstream fidelity.

The folder belongs to one run (options + images): running the same command again resumes an
interrupted training (``checkpoint.pt``) or reports the finished SAE; files that are not this
run's are never overwritten.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CircuitsError
from .model import CFG_FILE, SAE, WEIGHTS_FILE, load_sae
from .train import CHECKPOINT, TrainConfig, train

METRICS_JSON = "metrics.json"
METRICS_PNG = "metrics.png"
OUR_FILES = (CFG_FILE, WEIGHTS_FILE, METRICS_JSON, METRICS_PNG, CHECKPOINT)
NORMALISATION = "scale so that the mean squared norm of a sample is d_in (folded into weights)"


@dataclass
class LayerSAE:
    """The outcome of :func:`train_layer_sae`."""

    sae: SAE
    folder: Path
    metrics: dict
    already_done: bool = False
    resumed_from: int = 0


def data_id(model, layer: str, fingerprint: str, holdout: float, size: int) -> str:
    return "\n".join([model.name, str(model.weights_id), layer, fingerprint, f"holdout={holdout}",
                      f"size={size}"])


def split_rows(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows), a seeded split; at least one of each when possible."""
    n_hold = int(round(holdout * n))
    if holdout > 0 and n > 1:
        n_hold = min(max(1, n_hold), n - 1)
    perm = np.random.default_rng([seed, 99]).permutation(n)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def run_key(cfg: TrainConfig, did: str) -> str:
    return cfg.key(did)


def check_out_folder(out: Path, key: str) -> str:
    """``"new"``, ``"resume"`` (our checkpoint) or ``"done"`` (our finished SAE); a
    :class:`CircuitsError` when ``out`` holds anything of another run or not ours."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CircuitsError(f"--out {str(out)!r} is a file; give a folder for the SAE")
    if not out.exists():
        return "new"
    cfg_path = out / CFG_FILE
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            cfg = {}
        if (cfg.get("circuits") or {}).get("run_key") == key and (out / WEIGHTS_FILE).is_file():
            return "done"
        raise CircuitsError(f"{str(out)!r} already holds another SAE (other options or images); "
                            "choose another --out folder")
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        try:
            blob = torch.load(ckpt, map_location="cpu", weights_only=True)
            same = isinstance(blob, dict) and blob.get("key") == key
        except Exception:  # noqa: BLE001 - not a checkpoint of ours
            same = False
        if not same:
            raise CircuitsError(f"{str(ckpt)!r} is not a checkpoint of this training run (other "
                                "options or images); choose another --out folder")
        return "resume"
    clash = [n for n in OUR_FILES if (out / n).exists()]
    if clash:
        raise CircuitsError(f"{str(out)!r} already has {', '.join(clash)} not written by this "
                            "run; choose another --out folder (nothing was overwritten)")
    return "new"


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, torch.Tensor)}


def train_layer_sae(model, layer: str, images, out: str | Path, cfg: TrainConfig | None = None,
                    *, holdout: float = 0.1, cache_dir: str | Path | None = None,
                    batch_size: int = 16, fidelity: bool = True, threads: int | None = None,
                    log: Callable[[str], None] | None = print, bar: bool | None = None,
                    callback: Callable[[dict], None] | None = None,
                    checkpoint_every: int = 50) -> LayerSAE:
    """Train (or resume, or reload) the SAE of ``layer`` over ``images`` into ``out``."""
    from ..evidence.activations import image_set, layer_activations
    from .evaluate import downstream_fidelity, mean_map, reconstruction_metrics

    cfg = cfg or TrainConfig()
    cfg.check()
    if not 0 <= holdout < 1:
        raise CircuitsError(f"--holdout must be in [0, 1), got {holdout}")
    info = model.layer(layer)
    if info.shape is not None and len(info.shape) != 3:
        raise CircuitsError(f"layer {info.name!r} is not a convolutional (C, H, W) layer; an SAE "
                            "here is trained on the channel vector at every spatial position")
    if cfg.arch == "topk" and cfg.k > cfg.expansion * info.channels:
        raise CircuitsError(f"--k {cfg.k} is more than the SAE's {cfg.expansion * info.channels} "
                            f"latents ({cfg.expansion} x {info.channels} channels); lower --k "
                            "or raise --expansion")
    cfg.check_memory(info.channels)
    imgs = image_set(images)
    out = Path(out)
    from ..files import claim_output

    claim_output(out, "sae train", OUR_FILES)  # the output rule; our writes are recorded
    size = int(model.input_size)
    did = data_id(model, info.name, imgs.fingerprint, holdout, size)
    key = run_key(cfg, did)
    status = check_out_folder(out, key)
    if status == "done":
        sae = load_sae(out)
        return LayerSAE(sae, out, dict(sae.cfg.get("metrics", {})), already_done=True)

    acts = layer_activations(model, info.name, imgs, cache_dir=cache_dir, batch_size=batch_size,
                             progress=log is not None)
    if acts.maps is None:
        raise CircuitsError(f"the activation maps of {info.name!r} over {acts.n_images} images "
                            "are too large to keep on disk; use fewer images")
    train_rows, hold_rows = split_rows(acts.n_images, holdout, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    sae, tinfo = train(acts.maps, train_rows, cfg, checkpoint=out / CHECKPOINT, data_id=did,
                       checkpoint_every=checkpoint_every, log=log, bar=bar, callback=callback,
                       threads=threads)
    if log is not None:
        log(f"trained {tinfo['steps']} steps ({tinfo['samples_per_s']:.0f} samples/s); "
            "evaluating")
    eval_rows = hold_rows if len(hold_rows) else train_rows
    metrics = {"split": "held-out images" if len(hold_rows) else "training images"}
    rec = reconstruction_metrics(sae, acts.maps, eval_rows)
    rec_train = reconstruction_metrics(sae, acts.maps, train_rows)
    n_all = rec["samples"] + (rec_train["samples"] if len(hold_rows) else 0)
    freq = rec["frequency"] * rec["samples"] / n_all
    if len(hold_rows):
        freq = freq + rec_train["frequency"] * rec_train["samples"] / n_all
    metrics.update({k: v for k, v in _plain(rec).items()})
    metrics["explained_variance_train"] = rec_train["explained_variance"]
    metrics["dead_fraction"] = float((freq == 0).float().mean())  # over every image
    metrics["dense_fraction"] = float((freq > 0.1).float().mean())
    metrics["dead_window_fraction_at_end"] = (tinfo["history"][-1]["dead"]
                                              if tinfo["history"] else None)
    if fidelity:
        paths = [acts.paths[i] for i in eval_rows]
        mean = mean_map(acts.maps, train_rows)
        try:  # the SAE is trained: a model whose logits cannot be read must not lose it
            metrics["downstream"] = downstream_fidelity(
                model, info.name, sae, paths, mean, batch_size=batch_size,
                size=acts.preprocessing.get("size"), resize=acts.preprocessing.get("resize"))
        except (CircuitsError, RuntimeError, TypeError, IndexError) as err:
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            metrics["downstream"] = {"skipped": reason}
            warnings.warn(f"downstream fidelity was not measured ({reason}); the SAE is "
                          "saved without it", stacklevel=2)
    metrics["training"] = {"steps": tinfo["steps"], "samples_seen": tinfo["steps"]
                           * cfg.batch_size, "epochs": tinfo["steps"] * cfg.batch_size
                           / (len(train_rows) * math.prod(acts.shape[1:])),
                           "seconds_this_run": round(tinfo["seconds"], 1),
                           "samples_per_s": tinfo["samples_per_s"],
                           "resumed_from_step": tinfo["resumed_from"]}
    sae.cfg = {
        "model_name": model.name, "weights_id": str(model.weights_id),
        "hook_name": info.name, "layer_shape": list(acts.shape),
        "dataset_path": imgs.source, "dataset": {
            "source": imgs.source, "images": acts.n_images, "train_images": len(train_rows),
            "held_out_images": len(hold_rows), "positions_per_image":
            math.prod(acts.shape[1:]), "fingerprint": imgs.fingerprint[:16],
            "preprocessing": acts.preprocessing},
        "normalisation": {"method": NORMALISATION, "scale": tinfo["scale"],
                          "folded_into_weights": True},
        "training": {**asdict(cfg), "aux_k": cfg.aux_k or sae.d_in // 2},
        "metrics": {k: v for k, v in metrics.items()},
        "metadata": {"model_name": model.name, "hook_name": info.name,
                     "dataset_path": imgs.source, "sae_lens_training_version": None},
        "circuits": {"run_key": key, "format": 1},
    }
    save_trained(sae, out, metrics, tinfo, freq)
    return LayerSAE(sae, out, metrics, resumed_from=tinfo["resumed_from"])


def save_trained(sae: SAE, out: Path, metrics: dict, tinfo: dict, freq) -> None:
    """Save a trained SAE into ``out`` (SAELens layout), its metrics file and figure, and drop
    the training checkpoint: the end of every training run, from images or from a cache."""
    from ..files import write_json
    from .figures import metrics_figure

    sae.save(out)
    sae.folder = out
    write_json(out / METRICS_JSON, {"metrics": metrics, "history": tinfo["history"],
                                    "frequency": freq.tolist()})
    metrics_figure(sae, metrics, tinfo["history"], freq, out / METRICS_PNG)
    (out / CHECKPOINT).unlink(missing_ok=True)

