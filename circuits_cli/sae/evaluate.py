"""How good an SAE is: reconstruction, sparsity, and what the model makes of the reconstruction.

- **Explained variance** ``1 − FVU``: one minus the summed squared reconstruction error over the
  summed squared deviation from the mean sample (per channel), over every position of the images.
- **L0**: mean number of active latents per sample.
- **Dead** / **dense** latents: fraction of latents that never fire on these samples / that fire
  on more than 10% of them.
- **Downstream fidelity** (Bricken et al. 2023, Gao et al. 2024): run the model with the layer's
  activation replaced, position by position, by the SAE's reconstruction (a hook that writes), and
  compare its class probabilities with the clean model's (mean KL(clean ‖ spliced)) and its top-1
  accuracy. The reference for "no information" is mean ablation: every image's activation replaced
  by the data set's mean activation map. Fraction of KL recovered
  ``= (KL_mean_ablation − KL_sae) / KL_mean_ablation`` (1: as good as the clean layer).
  Accuracy is against the labels when every image's file name starts with a class id of the model
  (``n01440764_tench.JPEG``, the toy world's ``00012_car.png``), else agreement with the clean
  model's top-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .model import SAE

DENSE_FREQUENCY = 0.1


@torch.no_grad()
def reconstruction_metrics(sae: SAE, maps, rows: Sequence[int] | np.ndarray,
                           chunk_rows: int = 64) -> dict:
    """Explained variance, MSE, L0, dead/dense fractions and per-latent firing frequency of
    ``sae`` on every position of ``maps[rows]`` (``(N, C, H, W)``)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    d = sae.d_in
    n = 0
    s1 = torch.zeros(d, dtype=torch.float64)
    s2 = torch.zeros(d, dtype=torch.float64)
    sq_err = 0.0
    l0 = 0.0
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    for i in range(0, len(rows), chunk_rows):
        block = torch.from_numpy(np.asarray(maps[rows[i:i + chunk_rows]], dtype=np.float32))
        x = block.flatten(2).transpose(1, 2).reshape(-1, d)
        f = sae.encode(x)
        x_hat = sae(x)  # TopK decodes its k active latents only
        active = f > 0
        n += len(x)
        s1 += x.sum(0, dtype=torch.float64)
        s2 += x.double().pow(2).sum(0)
        sq_err += float((x - x_hat).double().pow(2).sum())
        l0 += float(active.sum())
        fires += active.sum(0, dtype=torch.float64)
    if n == 0:
        return {}
    total_var = float((s2 - s1.pow(2) / n).sum())
    freq = fires / n
    return {"samples": n, "explained_variance": 1 - sq_err / max(total_var, 1e-12),
            "mse": sq_err / n, "l0": l0 / n,
            "dead_fraction": float((fires == 0).double().mean()),
            "dense_fraction": float((freq > DENSE_FREQUENCY).double().mean()),
            "frequency": freq.float()}


def labels_from_names(paths: Sequence[Path], class_ids: Sequence[str]) -> list[int] | None:
    """The class index of every image from its file name (``WNID_...`` or ``..._CLASS``), or
    None unless every image has one."""
    index = {c: i for i, c in enumerate(class_ids)}
    out = []
    for p in paths:
        parts = Path(p).stem.split("_")
        hit = next((index[t] for t in (parts[0], parts[-1]) if t in index), None)
        if hit is None:
            return None
        out.append(hit)
    return out


def mean_map(maps, rows: Sequence[int] | np.ndarray, chunk_rows: int = 64) -> torch.Tensor:
    """The data set's mean activation ``(C, H, W)`` over ``maps[rows]`` (for mean ablation)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    total = torch.zeros(maps.shape[1:], dtype=torch.float64)
    for i in range(0, len(rows), chunk_rows):
        total += torch.from_numpy(np.asarray(maps[rows[i:i + chunk_rows]],
                                             dtype=np.float32)).double().sum(0)
    return (total / max(1, len(rows))).float()


def _kl(clean_logp: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ other) per image, in nats."""
    other_logp = torch.log_softmax(other_logits.float(), dim=-1)
    return (clean_logp.exp() * (clean_logp - other_logp)).sum(-1)


@torch.no_grad()
def downstream_fidelity(model, layer: str, sae: SAE, paths: Sequence[Path], mean: torch.Tensor,
                        *, batch_size: int = 16, size: int | None = None,
                        resize: int | None = None, log=None) -> dict:
    """Top-1 and KL of the model with ``layer`` replaced by the SAE's reconstruction, and by
    the mean activation ``mean`` (``(C, H, W)``), against the clean model, over ``paths``."""
    from ..evidence.activations import default_resize
    from ..hooks import run_with_hooks
    from ..images import iter_batches

    layer = model.layer(layer).name
    size = int(size or model.input_size)
    resize = int(resize or default_resize(size))
    device = model.device
    sae = sae.to(device)
    mean = mean.to(device)

    def splice(act, hook):
        return sae.forward_map(act.float()).to(act.dtype)

    def ablate(act, hook):
        return mean.expand_as(act).to(act.dtype)

    read: list[Path] = []
    top = {"clean": [], "sae": [], "mean_ablation": []}
    kl = {"sae": [], "mean_ablation": []}
    done = 0
    for batch, ok, _bad in iter_batches(list(paths), batch=batch_size, size=size, resize=resize):
        if not ok:
            continue
        batch = batch.to(device)
        clean = run_with_hooks(model, batch).float()
        spliced = run_with_hooks(model, batch, fwd_hooks=[(layer, splice)]).float()
        ablated = run_with_hooks(model, batch, fwd_hooks=[(layer, ablate)]).float()
        clean_logp = torch.log_softmax(clean, -1)
        for name, logits in (("clean", clean), ("sae", spliced), ("mean_ablation", ablated)):
            top[name].append(logits.argmax(-1).cpu())
        kl["sae"].append(_kl(clean_logp, spliced).cpu())
        kl["mean_ablation"].append(_kl(clean_logp, ablated).cpu())
        read.extend(Path(p) for p in ok)
        done += len(ok)
        if log is not None:
            log(f"downstream fidelity: {done}/{len(paths)} images")
    if not read:
        return {}
    top = {k: torch.cat(v) for k, v in top.items()}
    kl = {k: torch.cat(v) for k, v in kl.items()}
    labels = labels_from_names(read, model.class_ids) if model.class_ids else None
    target = torch.tensor(labels) if labels is not None else top["clean"]
    kl_sae, kl_abl = float(kl["sae"].mean()), float(kl["mean_ablation"].mean())
    return {"images": len(read),
            "against": "labels from file names" if labels is not None
            else "the clean model's top-1",
            "top1_clean": float((top["clean"] == target).float().mean()),
            "top1_sae": float((top["sae"] == target).float().mean()),
            "top1_mean_ablation": float((top["mean_ablation"] == target).float().mean()),
            "agreement_sae_clean": float((top["sae"] == top["clean"]).float().mean()),
            "kl_sae": kl_sae, "kl_mean_ablation": kl_abl,
            "kl_fraction_recovered": (kl_abl - kl_sae) / kl_abl if kl_abl > 0 else None}
