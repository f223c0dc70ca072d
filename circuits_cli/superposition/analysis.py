"""Measurements of superposition on trained toy-model weights (numpy, ``W [..., m, n]``).

The paper's quantities, per feature ``i`` with column ``W_i`` (its direction in the hidden space)
and unit vector ``Ŵ_i = W_i / ‖W_i‖``:

- feature norm ``‖W_i‖``: about 1 when the feature is represented, about 0 when it is dropped;
- superposition ``Σ_{j≠i} (Ŵ_i·W_j)²``: how much the other features interfere with it;
- dimensionality ``D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²``: the fraction of a hidden dimension it gets
  (1: its own dimension; 1/2: an antipodal pair; 2/5: a pentagon; ...);
- dimensions per feature ``m / ‖W‖_F²`` for a whole model.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

# The fractions at which the paper finds feature dimensionalities sticking, and the geometry
# each corresponds to (Elhage et al. 2022, "Feature Dimensionality").
BANDS: dict[str, tuple[Fraction, str]] = {
    "1": (Fraction(1), "own dimension"),
    "3/4": (Fraction(3, 4), "tetrahedron"),
    "2/3": (Fraction(2, 3), "triangle"),
    "1/2": (Fraction(1, 2), "digon (antipodal pair)"),
    "2/5": (Fraction(2, 5), "pentagon"),
    "3/8": (Fraction(3, 8), "square antiprism"),
}

_EPS = 1e-12


def feature_norms(W: np.ndarray) -> np.ndarray:
    """``‖W_i‖`` for every feature: ``[..., m, n] -> [..., n]``."""
    return np.linalg.norm(np.asarray(W, dtype=np.float64), axis=-2)


def _overlaps(W: np.ndarray) -> np.ndarray:
    """``(Ŵ_i · W_j)`` for all pairs: ``[..., n, n]`` (row ``i``, column ``j``)."""
    W = np.asarray(W, dtype=np.float64)
    unit = W / np.maximum(feature_norms(W), _EPS)[..., None, :]
    return np.swapaxes(unit, -1, -2) @ W


def superposition(W: np.ndarray) -> np.ndarray:
    """``Σ_{j≠i} (Ŵ_i·W_j)²`` for every feature: ``[..., n]`` (0 for orthogonal features)."""
    sq = _overlaps(W) ** 2
    return sq.sum(-1) - np.diagonal(sq, axis1=-2, axis2=-1)


def dimensionality(W: np.ndarray) -> np.ndarray:
    """Feature dimensionality ``D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²``: ``[..., n]``, in ``[0, 1]``."""
    sq = _overlaps(W) ** 2
    return feature_norms(W) ** 2 / np.maximum(sq.sum(-1), _EPS)


def dimensions_per_feature(W: np.ndarray) -> np.ndarray:
    """``m / ‖W‖_F²`` for every model: ``[..., m, n] -> [...]``."""
    W = np.asarray(W, dtype=np.float64)
    return W.shape[-2] / np.maximum((W ** 2).sum(axis=(-2, -1)), _EPS)


def represented(W: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Which features the model stores: ``‖W_i‖ > threshold`` (``[..., n]``, bool)."""
    return feature_norms(W) > threshold


def nearest_band(values: np.ndarray, tol: float = 0.05) -> np.ndarray:
    """The name of the paper's band each value is within ``tol`` of, else ``""``."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, "", dtype=object)
    best = np.full(values.shape, np.inf)
    for name, (frac, _) in BANDS.items():
        d = np.abs(values - float(frac))
        take = (d <= tol) & (d < best)
        out[take] = name
        best = np.where(take, d, best)
    return out


def band_share(values: np.ndarray, tol: float = 0.05) -> dict:
    """Share of ``values`` within ``±tol`` of one of the paper's bands, overall and per band."""
    values = np.asarray(values, dtype=np.float64).ravel()
    names = nearest_band(values, tol)
    total = len(values)
    per_band = {name: int((names == name).sum()) for name in BANDS}
    within = int(sum(per_band.values()))
    return {"count": total, "within": within, "share": within / total if total else float("nan"),
            "per_band": per_band, "tol": tol}


@functools.lru_cache(maxsize=8)
def uniform_band_share(tol: float = 0.05) -> float:
    """Share of ``[0, 1]`` covered by the bands at ``±tol``: what values spread uniformly over
    ``[0, 1]`` would score (the chance level a clustering claim has to beat)."""
    grid = np.linspace(0, 1, 100_001)
    return float((nearest_band(grid, tol) != "").mean())


# ---- two features in one dimension ---------------------------------------------------------

NOT_REPRESENTED, DEDICATED, SUPERPOSED = "not represented", "dedicated dimension", "superposed"
PHASES = (NOT_REPRESENTED, DEDICATED, SUPERPOSED)


def classify_two_in_one(W: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The paper's three phases for the *extra* feature (index 1) of models with ``n = 2``
    features in ``m = 1`` dimension (``W [..., 1, 2]``):

    - ``not represented``: ``‖W_extra‖ ≤ threshold``;
    - ``dedicated dimension``: the extra feature is stored and the other one is not;
    - ``superposed``: both are stored, with opposite signs (an antipodal pair).

    Both stored with the same sign (not a solution the paper finds) counts as superposed only if
    antipodal; otherwise it is reported as ``dedicated dimension`` when the extra feature is the
    larger, else ``not represented``, so that every cell gets one of the three labels.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.shape[-2:] != (1, 2):
        raise ValueError(f"expected W of shape [..., 1, 2], got {W.shape}")
    w_main, w_extra = W[..., 0, 0], W[..., 0, 1]
    extra_on = np.abs(w_extra) > threshold
    main_on = np.abs(w_main) > threshold
    antipodal = (w_main * w_extra) < 0
    out = np.full(w_main.shape, NOT_REPRESENTED, dtype=object)
    out[extra_on & ~main_on] = DEDICATED
    out[extra_on & main_on & antipodal] = SUPERPOSED
    out[extra_on & main_on & ~antipodal & (np.abs(w_extra) >= np.abs(w_main))] = DEDICATED
    return out


def two_in_one_theory(density: np.ndarray, relative_importance: np.ndarray) -> np.ndarray:
    """The phase with the lowest expected loss among the paper's three candidate solutions,
    for 2 features (importance 1 and ``r``) in 1 dimension, both with density ``p = 1 − S``:

    - extra feature not represented (``W = [1, 0]``, its bias its mean): ``r (p/3 − p²/4)``;
    - extra feature given the dimension (``W = [0, 1]``): ``p/3 − p²/4``;
    - antipodal pair (``W = [1, −1]``, ``b = 0``): errors only when both are present,
      ``p² (1 + r) E[min(x₁, x₂)²] = p² (1 + r) / 6``.

    Closed forms for uniform [0, 1] features (``Var x = p/3 − p²/4``); the antipodal loss is for
    unit weights and zero bias, an upper bound on that family's optimum.
    """
    losses = two_in_one_losses(density, relative_importance)
    return np.asarray(PHASES, dtype=object)[losses.argmin(0)]


def two_in_one_losses(density: np.ndarray, relative_importance: np.ndarray) -> np.ndarray:
    """The three candidate losses of :func:`two_in_one_theory`, stacked in :data:`PHASES`
    order: ``[3, ...]``."""
    p, r = np.broadcast_arrays(np.asarray(density, dtype=np.float64),
                               np.asarray(relative_importance, dtype=np.float64))
    var = p / 3 - p ** 2 / 4
    return np.stack([r * var, var, p ** 2 * (1 + r) / 6])


def theory_margin(density: np.ndarray, relative_importance: np.ndarray) -> np.ndarray:
    """How clearly the theory's winner wins: (runner-up loss − best loss) / best loss. Near 0 on
    the phase boundaries (and on the line r = 1 of dense features, where dropping either
    feature costs the same)."""
    losses = np.sort(two_in_one_losses(density, relative_importance), axis=0)
    return (losses[1] - losses[0]) / np.maximum(losses[0], _EPS)
