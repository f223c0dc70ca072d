"""Figures of the toy-model experiments, drawn on :class:`matplotlib.figure.Figure` objects (the
library never switches matplotlib's backend; save with :func:`circuits_cli.files.save_figure`)."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from . import analysis as A

PHASE_COLOURS = {A.NOT_REPRESENTED: "#d9d9d9", A.DEDICATED: "#4c72b0", A.SUPERPOSED: "#dd8452"}


def _sparsity_label(s: float) -> str:
    return f"S = {s:g}"


def wtw_sweep_figure(sweep: dict) -> Figure:
    """``WᵀW`` (and the bias ``b`` as a strip beside it) for every sparsity, ReLU output model
    above, linear model below: the paper's introduction figure."""
    models = [k for k in ("relu", "linear") if k in sweep["models"]]
    cols = len(sweep["models"][models[0]])
    fig = Figure(figsize=(2.35 * cols + 1.2, 2.6 * len(models) + 0.9))
    axes = fig.subplots(len(models), cols, squeeze=False)
    image = None
    for r, kind in enumerate(models):
        for c, row in enumerate(sweep["models"][kind]):
            ax = axes[r, c]
            wtw = np.asarray(row["WtW"])
            n = wtw.shape[0]
            grid = np.full((n, n + 2), np.nan)
            grid[:, :n] = wtw
            grid[:, n + 1] = row["b"]
            image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-1, vmax=1,
                              interpolation="nearest")
            ax.set_xticks([0, n - 1, n + 1], ["0", str(n - 1), "b"], fontsize=8)
            ax.set_yticks([0, n - 1], ["0", str(n - 1)], fontsize=8)
            ax.tick_params(length=2)
            for side in ("top", "right", "bottom", "left"):
                ax.spines[side].set_visible(False)
            ax.set_title(f"{_sparsity_label(row['sparsity'])}\n{row['represented']} of {n} "
                         "represented", fontsize=9)
            if c == 0:
                ax.set_ylabel("ReLU output model" if kind == "relu" else "linear model",
                              fontsize=10)
    fig.suptitle(f"WᵀW and b over sparsity (n = {sweep['params']['n_features']}, "
                 f"m = {sweep['params']['n_hidden']}, importance "
                 f"{sweep['params']['importance_decay']}^i; features sorted by importance)",
                 fontsize=11)
    fig.subplots_adjust(left=0.06, right=0.9, top=0.84, bottom=0.07, wspace=0.25, hspace=0.45)
    cax = fig.add_axes([0.92, 0.15, 0.012, 0.6])
    fig.colorbar(image, cax=cax).set_label("weight", fontsize=9)
    return fig


def feature_norms_figure(sweep: dict) -> Figure:
    """``‖W_i‖`` per feature for every sparsity, each bar coloured by the feature's
    superposition ``Σ_{j≠i}(Ŵ_i·W_j)²`` (dark: orthogonal to the others; bright: superposed)."""
    models = [k for k in ("relu", "linear") if k in sweep["models"]]
    cols = len(sweep["models"][models[0]])
    fig = Figure(figsize=(2.35 * cols + 1.2, 2.3 * len(models) + 1.0))
    axes = fig.subplots(len(models), cols, squeeze=False, sharey=True)
    from matplotlib import colormaps
    cmap = colormaps["plasma"]
    m = sweep["params"]["n_hidden"]
    for r, kind in enumerate(models):
        for c, row in enumerate(sweep["models"][kind]):
            ax = axes[r, c]
            norms = np.asarray(row["norms"])
            sup = np.clip(np.asarray(row["superposition"]), 0, 1)
            ax.bar(np.arange(len(norms)), norms, color=cmap(sup), width=0.85,
                   edgecolor="black", linewidth=0.3)
            ax.axvline(m - 0.5, color="grey", linestyle=":", linewidth=1)
            ax.axhline(1.0, color="grey", linewidth=0.5)
            ax.set_ylim(0, 1.35)
            ax.set_xticks([0, m, len(norms) - 1])
            ax.tick_params(labelsize=8)
            ax.set_title(f"{_sparsity_label(row['sparsity'])}: {row['represented']} stored",
                         fontsize=9)
            if c == 0:
                ax.set_ylabel(("ReLU" if kind == "relu" else "linear") + "  ‖W_i‖", fontsize=10)
            if r == len(models) - 1:
                ax.set_xlabel("feature i (by importance)", fontsize=8)
    fig.suptitle("Feature norms ‖W_i‖, coloured by superposition Σ_{j≠i}(Ŵ_i·W_j)² "
                 f"(dotted line: m = {m} dimensions)", fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.9, top=0.83, bottom=0.12, wspace=0.12, hspace=0.45)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    cax = fig.add_axes([0.92, 0.15, 0.012, 0.6])
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=cax).set_label(
        "superposition (clipped at 1)", fontsize=9)
    return fig


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, extended half a step at both ends."""
    lv = np.log10(values)
    mid = (lv[1:] + lv[:-1]) / 2
    return 10 ** np.concatenate([[lv[0] - (mid[0] - lv[0])], mid, [lv[-1] + (lv[-1] - mid[-1])]])


def phase_diagram_figure(phase: dict) -> Figure:
    """The 2-features-in-1-dimension phase diagram: trained models (left) beside the analytic
    three-candidate theory (right); crosses mark cells where they disagree."""
    dens = np.asarray(phase["params"]["densities"])
    rel = np.asarray(phase["params"]["relative_importances"])
    code = {ph: i for i, ph in enumerate(A.PHASES)}
    cmap = ListedColormap([PHASE_COLOURS[ph] for ph in A.PHASES])
    fig = Figure(figsize=(11, 6.2))
    axes = fig.subplots(1, 2, sharey=True)
    labels = np.asarray(phase["labels"], dtype=object)
    theory = np.asarray(phase["theory"], dtype=object)
    for ax, grid, title in ((axes[0], labels, "trained ReLU models (best of "
                             f"{phase['params']['restarts']} restarts)"),
                            (axes[1], theory, "theory: lowest loss of the three solutions")):
        z = np.vectorize(code.get)(grid).astype(float).T       # rows: importance
        ax.pcolormesh(_edges(dens), _edges(rel), z, cmap=cmap, vmin=-0.5, vmax=2.5,
                      edgecolors="white", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("feature density 1 − S (log; sparser to the left)")
        ax.set_title(title, fontsize=11)
    tie = np.argwhere(A.theory_margin(*np.meshgrid(dens, rel, indexing="ij")) <= 0.1)
    if len(tie):
        axes[1].scatter(dens[tie[:, 0]], rel[tie[:, 1]], marker="$=$", color="black", s=40,
                        linewidths=0.5)
    axes[0].set_ylabel("relative importance of the extra feature (log)")
    bad = np.argwhere(labels != theory)
    if len(bad):
        axes[0].scatter(dens[bad[:, 0]], rel[bad[:, 1]], marker="x", color="black", s=25,
                        linewidths=1, label="differs from theory")
    words = {A.NOT_REPRESENTED: "extra feature not represented",
             A.DEDICATED: "extra feature gets the dimension (the other is dropped)",
             A.SUPERPOSED: "both stored: antipodal pair (superposition)"}
    handles = [Patch(color=PHASE_COLOURS[ph], label=words[ph]) for ph in A.PHASES]
    if len(bad):
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], marker="x", color="black", linestyle="none",
                              label="trained ≠ theory"))
    if len(tie):
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], marker="$=$", color="black", linestyle="none",
                              label="near a tie in theory (best two within 10%)"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle("Two features in one dimension: is the extra feature stored?\nTrained agrees "
                 f"with theory on {phase['agreement_with_theory']:.0%} of cells, "
                 f"{phase['agreement_with_theory_clear_cells']:.0%} of those off the ties",
                 fontsize=12)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.84, bottom=0.25, wspace=0.08)
    return fig


def dimensionality_figure(dim: dict, seed: int = 0) -> Figure:
    """Feature dimensionality ``D_i`` of every represented feature against ``1/(1 − S)``, the
    paper's bands as horizontal lines, and each model's dimensions per feature ``m / ‖W‖_F²``."""
    inv = np.asarray(dim["inverse_density"])
    D = np.asarray(dim["D"])
    norms = np.asarray(dim["norms"])
    thr = dim["params"]["norm_threshold"]
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(9.5, 6))
    ax = fig.subplots()
    from matplotlib import colormaps
    band_colours = colormaps["tab10"]
    for k, (name, (frac, geometry)) in enumerate(A.BANDS.items()):
        ax.axhline(float(frac), color=band_colours(k), linewidth=6, alpha=0.25, zorder=0)
        ax.text(1.005, float(frac), f"{name}  {geometry}", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8.5, color=band_colours(k))
    xs, ys = [], []
    for k in range(len(inv)):
        rep = norms[k] > thr
        jitter = 10 ** rng.uniform(-0.012, 0.012, rep.sum())
        xs.append(inv[k] * jitter)
        ys.append(D[k][rep])
    ax.scatter(np.concatenate(xs), np.concatenate(ys), s=9, color="black", alpha=0.6,
               linewidths=0, label=f"D_i of a feature with ‖W_i‖ > {thr}")
    ax.plot(inv, dim["dimensions_per_feature"], color="tab:red", marker="o", markersize=3.5,
            linewidth=1.5, label="dimensions per feature m / ‖W‖_F²")
    ax.set_xscale("log")
    ticks = [t for t in (1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)
             if inv.min() * 0.97 <= t <= inv.max() * 1.03]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("1 / (1 − S)   (log; sparser to the right)")
    ax.set_ylabel("feature dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²")
    ax.set_ylim(0, 1.08)
    bs = dim["band_share"]["0.05"]
    share, regime = bs["sparse_models"], bs["models_with_dims_per_feature_at_least_3/8"]
    p = dim["params"]
    fig.suptitle(f"Feature dimensionality: n = {p['n_features']} features in m = "
                 f"{p['n_hidden']} dimensions, uniform importance", fontsize=12, x=0.43)
    ax.set_title(f"within ±0.05 of a band: {share['share']:.0%} of the stored features of all "
                 f"S > 0 models, {regime['share']:.0%} of those of models with "
                 f"m/‖W‖²_F ≥ 3/8\n(values spread uniformly over [0, 1] would score "
                 f"{bs['uniform_chance']:.0%})", fontsize=9.5)
    ax.legend(loc="lower left", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.78, top=0.86, bottom=0.1)
    return fig
