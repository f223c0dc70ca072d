"""Figures of an SAE: its metrics, and the features behind one neuron (drawn on plain
``matplotlib.figure.Figure`` objects, saved atomically; the backend is never switched)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..files import save_figure


def _title(sae) -> str:
    cfg = sae.cfg
    arch = f"TopK k={sae.k}" if sae.arch == "topk" else "ReLU + L1"
    return (f"SAE on {cfg.get('model_name', '?')} {cfg.get('hook_name', '?')}: {arch}, "
            f"{sae.d_sae} latents on {sae.d_in} channels")


def metrics_figure(sae, metrics: dict, history: list[dict], frequency: torch.Tensor,
                   path: str | Path) -> Path:
    """Training curves (explained variance, L0, dead fraction), the latent firing-frequency
    histogram and downstream fidelity, on one PNG."""
    fig = Figure(figsize=(13, 3.9))
    axes = fig.subplots(1, 3)
    steps = [h["step"] for h in history]
    ax = axes[0]
    if history:
        ax.plot(steps, [1 - h["fvu"] for h in history], color="C0", label="1 − FVU (batch)")
        ax.plot(steps, [h["dead"] for h in history], color="C3", label="dead fraction")
        ax.set_ylim(0, 1)
        ax2 = ax.twinx()
        ax2.plot(steps, [h["l0"] for h in history], color="C2", label="L0")
        ax2.set_ylim(0, 1.15 * max(h["l0"] for h in history) + 1)
        ax2.set_ylabel("L0 (active latents per sample)", color="C2")
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
    ax.set_xlabel("training step")
    ax.set_title("training", fontsize=10)

    ax = axes[1]
    freq = np.asarray(frequency, dtype=np.float64)
    live = freq[freq > 0]
    if len(live):
        bins = np.linspace(np.log10(live.min()) - 0.1, 0.0, 40)
        ax.hist(np.log10(live), bins=bins, color="C0")
    ax.axvline(np.log10(0.1), color="C3", ls="--", lw=1, label="dense (> 10%)")
    ax.set_xlabel("log10 firing frequency (fraction of positions)")
    ax.set_ylabel("latents")
    n_dead = int((freq == 0).sum())
    ax.set_title(f"latent frequencies ({n_dead} of {len(freq)} dead: never fire)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[2]
    ds = metrics.get("downstream") or {}
    if ds and not ds.get("skipped"):
        names = ["clean", "SAE spliced", "mean-ablated"]
        vals = [ds["top1_clean"], ds["top1_sae"], ds["top1_mean_ablation"]]
        bars = ax.bar(names, vals, color=["0.6", "C0", "C3"])
        for b, v in zip(bars, vals, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center",
                    fontsize=9)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel(f"top-1 ({ds['against']})", fontsize=9)
        rec = ds.get("kl_fraction_recovered")
        ax.set_title(f"{ds['images']} images: KL sae {ds['kl_sae']:.3f}, mean-abl "
                     f"{ds['kl_mean_ablation']:.3f} nats\nfraction of KL recovered "
                     + (f"{rec:.3f}" if rec is not None else "n/a"), fontsize=9)
    else:
        ax.text(0.5, 0.5, "downstream fidelity not measured", ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle(f"{_title(sae)} | explained variance {metrics['explained_variance']:.3f} "
                 f"({metrics['split']}), L0 {metrics['l0']:.1f}, dead "
                 f"{100 * metrics['dead_fraction']:.1f}%", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def neuron_features_figure(result: dict, image_loader, path: str | Path,
                           renders: dict | None = None) -> Path:
    """Rows: the neuron, then each feature that writes to it most (largest ``W_dec[f, n]``).
    With ``renders`` (:func:`circuits_cli.sae.features.render_neuron_features`) a column of
    feature visualizations: the neuron's diversity facets (2 x 2 for four), each feature's
    render. Dataset examples: the receptive-field crop where the unit is strongest when the
    examples carry a ``box``, else the whole image with that position marked."""
    rows = [("neuron", result["neuron_top_images"])] + [
        ("feature", f["top_images"]) for f in result["features"]]
    n_ex = max(1, max(len(r[1]) for r in rows))
    lead = [1.35] + ([1.2] if renders else [])
    fig = Figure(figsize=(1.45 * (n_ex + sum(lead)), 1.75 * len(rows) + 0.7))
    grid = fig.add_gridspec(len(rows), len(lead) + n_ex, width_ratios=lead + [1] * n_ex)
    for r, (kind, images) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        ax.set_axis_off()
        render = None
        if kind == "neuron":
            text = f"neuron {result['layer']}:{result['neuron']}\n(its own top images)"
            if renders and renders.get("neuron") is not None:
                render = renders["neuron"]
                if render.facet_similarity is not None:
                    text += f"\nfacet similarity {render.facet_similarity:.2f}"
        else:
            f = result["features"][r - 1]
            text = (f"feature {f['feature']}\nW_dec[f, n] = {f['weight']:.3f}\n"
                    f"share of the write: {f['share']:.2f}\n"
                    f"fires on {100 * f['frequency']:.2f}%")
            render = (renders or {}).get(f["feature"])
        ax.text(0.0, 0.5, text, va="center", ha="left", fontsize=8.5,
                fontweight="bold" if kind == "neuron" else "normal")
        if renders:
            ax = fig.add_subplot(grid[r, 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if render is not None:
                ax.imshow(_mosaic(render.image, len(render.facet_activations) or 1))
                what = "facets" if kind == "neuron" else "render"
                ax.set_title(f"{what}, act {render.activation:.3g}", fontsize=7)
            else:
                ax.text(0.5, 0.5, "no render", ha="center", va="center", fontsize=7)
        for c, ex in enumerate(images):
            ax = fig.add_subplot(grid[r, len(lead) + c])
            img = image_loader(ex["path"])
            if ex.get("box"):
                x0, y0, x1, y1 = ex["box"]
                ax.imshow(img[y0:y1, x0:x1], interpolation="nearest")
            else:
                ax.imshow(img)
                h, w = result["grid"]
                y, x = ex["position"]
                sy, sx = img.shape[0] / h, img.shape[1] / w
                ax.add_patch(_rect((x * sx, y * sy), sx, sy))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{Path(ex['path']).stem[:18]}\n{ex['activation']:.3g}", fontsize=7)
    crops = any(e.get("box") for _k, im in rows for e in im)
    what = ("feature visualizations, " if renders else "") + (
        "dataset examples: receptive-field crops where each is strongest" if crops
        else "dataset examples (the strongest position boxed)")
    fig.suptitle(f"{result['layer']}:{result['neuron']} and the SAE features that write most "
                 f"into it\n{what}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _mosaic(image: np.ndarray, k: int) -> np.ndarray:
    """``k`` facets side by side (H, k*W, 3) as a near-square grid (2 x 2 for four)."""
    if k <= 2:
        return image
    h, w = image.shape[0], image.shape[1] // k
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    out = np.ones((rows * h, cols * w, 3), dtype=image.dtype)
    for i in range(k):
        r, c = divmod(i, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = image[:, i * w:(i + 1) * w]
    return out


def _rect(xy, w, h):
    from matplotlib.patches import Rectangle

    return Rectangle((xy[0] - 0.5, xy[1] - 0.5), w, h, fill=False, ec="yellow", lw=1.5)
