"""The paper's three experiments, each one batched training run plus its measurements.

- :func:`sparsity_sweep`: ``n = 20`` features, ``m = 5`` dimensions, importance ``0.7^i``, one
  instance per sparsity; ReLU output model and, for contrast, the linear model.
- :func:`phase_diagram`: 2 features in 1 dimension over feature density (1 − S) × the extra
  feature's relative importance, several restarts per cell, each cell classified as
  *not represented* / *dedicated dimension* / *superposed* (antipodal pair), beside the analytic
  three-candidate theory.
- :func:`dimensionality_sweep`: uniform importance, many features in few dimensions, a sweep of
  sparsity; feature dimensionalities ``D_i`` and the share of them at the paper's fractions.

Each returns a JSON-ready dict: the parameters, the trained weights (``run``) and the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from . import analysis as A
from .model import ToyRun, expected_loss, train_toy_models

Log = Callable[[str], None] | None


@dataclass(frozen=True)
class SweepParams:
    n_features: int = 20
    n_hidden: int = 5
    importance_decay: float = 0.7
    sparsities: tuple[float, ...] = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997)
    steps: int = 5000
    batch: int = 1024
    lr: float = 1e-2
    seed: int = 0


@dataclass(frozen=True)
class PhaseParams:
    densities: tuple[float, ...] = tuple(np.round(np.logspace(-2, 0, 11), 6).tolist())
    relative_importances: tuple[float, ...] = tuple(np.round(np.logspace(-1, 1, 11), 6).tolist())
    restarts: int = 3
    steps: int = 2000
    batch: int = 1024
    lr: float = 1e-2
    seed: int = 0


@dataclass(frozen=True)
class DimensionalityParams:
    n_features: int = 50
    n_hidden: int = 10
    # 1/(1 − S), log-spaced: the range of the paper's plot where its bands sit
    inverse_densities: tuple[float, ...] = tuple(np.round(np.logspace(0, np.log10(8), 16),
                                                          6).tolist())
    steps: int = 2500
    batch: int = 1024
    lr: float = 1e-2
    seed: int = 0
    norm_threshold: float = 0.5
    tolerances: tuple[float, ...] = field(default=(0.05, 0.02))


def _params_json(params) -> dict:
    d = asdict(params)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def sparsity_sweep(params: SweepParams = SweepParams(), log: Log = None,
                   runs: dict | None = None) -> dict:
    """Train the ReLU output and linear models over ``params.sparsities`` and measure them.

    ``runs`` may hold already trained ``{"relu": ToyRun, "linear": ToyRun}`` (resuming)."""
    p = params
    importance = p.importance_decay ** np.arange(p.n_features)
    density = 1.0 - np.asarray(p.sparsities)
    if not runs:
        k = len(density)
        if log:
            log(f"sparsity sweep: {k} ReLU output + {k} linear models in one run, "
                f"n={p.n_features}, m={p.n_hidden}, {p.steps} steps")
        both = train_toy_models(p.n_features, p.n_hidden,
                                np.tile(density, 2)[:, None] * np.ones(p.n_features),
                                importance[None, :] * np.ones((2 * k, 1)),
                                relu=np.repeat([True, False], k), steps=p.steps, batch=p.batch,
                                lr=p.lr, seed=p.seed, decay=True, log=log)
        runs = {"relu": both.select(slice(0, k)), "linear": both.select(slice(k, 2 * k))}
    models = {}
    for kind, run in runs.items():
        W = run.W
        norms = A.feature_norms(W)
        sup = A.superposition(W)
        rows = []
        for k, s in enumerate(p.sparsities):
            rep = norms[k] > 0.5
            wtw = W[k].T @ W[k]
            off = wtw[np.ix_(rep, rep)] - np.diag(np.diag(wtw[np.ix_(rep, rep)]))
            rows.append({
                "sparsity": s, "density": 1 - s,
                "represented": int(rep.sum()),
                "represented_features": np.flatnonzero(rep).tolist(),
                "norms": norms[k].tolist(), "superposition": sup[k].tolist(),
                "max_norm_dropped": float(norms[k][~rep].max()) if (~rep).any() else None,
                "max_overlap_represented": float(np.abs(off).max()) if rep.sum() > 1 else 0.0,
                "dimensions_per_feature": float(A.dimensions_per_feature(W[k])),
                "loss": float(run.loss[k]),
                "WtW": wtw.tolist(), "b": run.b[k].tolist(),
            })
        models[kind] = rows
    return {"params": _params_json(p), "models": models, "runs": runs}


def phase_diagram(params: PhaseParams = PhaseParams(), log: Log = None,
                  run: ToyRun | None = None) -> dict:
    """2 features in 1 dimension: train ``restarts`` models per (density, importance) cell, keep
    the one with the lowest exact expected loss, classify it; compare with the theory."""
    p = params
    dens = np.asarray(p.densities, dtype=np.float64)
    rel = np.asarray(p.relative_importances, dtype=np.float64)
    P, R = np.meshgrid(dens, rel, indexing="ij")                    # [n_density, n_importance]
    cells = P.size
    pp = np.repeat(P.ravel(), p.restarts)
    rr = np.repeat(R.ravel(), p.restarts)
    if run is None:
        if log:
            log(f"phase diagram: {len(dens)} densities x {len(rel)} importances x {p.restarts} "
                f"restarts = {cells * p.restarts} models of 2 features in 1 dimension, "
                f"{p.steps} steps")
        run = train_toy_models(2, 1, np.stack([pp, pp], 1),
                               np.stack([np.ones_like(rr), rr], 1), steps=p.steps,
                               batch=p.batch, lr=p.lr, seed=p.seed, decay=True, log=log)
    exact = expected_loss(run.W, run.b, run.density, run.importance).reshape(cells, p.restarts)
    best = exact.argmin(1)
    W = run.W.reshape(cells, p.restarts, 1, 2)[np.arange(cells), best]
    labels = A.classify_two_in_one(W).reshape(P.shape)
    theory = A.two_in_one_theory(P, R)
    clear = A.theory_margin(P, R) > 0.1
    all_labels = A.classify_two_in_one(run.W).reshape(cells, p.restarts)
    return {
        "params": _params_json(p),
        "axes": {"rows": "density (1 - S)", "columns": "relative importance of the extra feature"},
        "labels": labels.tolist(), "theory": theory.tolist(),
        "W": W.reshape(P.shape + (2,)).tolist(),
        "expected_loss": exact.min(1).reshape(P.shape).tolist(),
        "agreement_with_theory": float((labels == theory).mean()),
        # cells where the theory's winner is at least 10% better than the runner-up
        "clear_cells": int(clear.sum()),
        "agreement_with_theory_clear_cells": float((labels == theory)[clear].mean()),
        "single_restart_agreement": float((all_labels == np.repeat(
            theory.ravel(), p.restarts).reshape(cells, p.restarts)).mean()),
        "counts": {ph: int((labels == ph).sum()) for ph in A.PHASES},
        "runs": {"relu": run},
    }


def dimensionality_sweep(params: DimensionalityParams = DimensionalityParams(), log: Log = None,
                         run: ToyRun | None = None) -> dict:
    """Uniform importance, ``n`` features in ``m`` dimensions over a sweep of ``1/(1 − S)``:
    every feature's dimensionality ``D_i``, each model's ``m / ‖W‖_F²``, and the share of the
    represented features of the sparse models (S > 0) whose ``D_i`` is within each tolerance of
    one of the paper's bands (with the share that values spread uniformly would get)."""
    p = params
    inv = np.asarray(p.inverse_densities, dtype=np.float64)
    if run is None:
        if log:
            log(f"feature dimensionality: {len(inv)} instances, n={p.n_features}, "
                f"m={p.n_hidden}, uniform importance, {p.steps} steps")
        run = train_toy_models(p.n_features, p.n_hidden, (1 / inv)[:, None]
                               * np.ones(p.n_features), 1.0, steps=p.steps, batch=p.batch,
                               lr=p.lr, seed=p.seed, decay=True, log=log)
    D = A.dimensionality(run.W)
    norms = A.feature_norms(run.W)
    dpf = A.dimensions_per_feature(run.W)
    rep = norms > p.norm_threshold
    sparse = rep & (inv[:, None] > 1)
    in_bands_regime = sparse & (dpf[:, None] >= 0.375 - 1e-9)
    shares = {}
    for tol in p.tolerances:
        shares[str(tol)] = {
            "sparse_models": A.band_share(D[sparse], tol),
            "models_with_dims_per_feature_at_least_3/8": A.band_share(D[in_bands_regime], tol),
            "uniform_chance": A.uniform_band_share(tol),
        }
    return {
        "params": _params_json(p),
        "inverse_density": inv.tolist(),
        "dimensions_per_feature": dpf.tolist(),
        "represented": rep.sum(1).tolist(),
        "D": D.tolist(), "norms": norms.tolist(),
        "band_share": shares,
        "runs": {"relu": run},
    }


EXPERIMENTS = {
    "sweep": (SweepParams, sparsity_sweep),
    "phase": (PhaseParams, phase_diagram),
    "dimensionality": (DimensionalityParams, dimensionality_sweep),
}
