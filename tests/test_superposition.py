"""Toy models of superposition (Elhage et al., 2022) against the paper's results.

Ground truth here is of three kinds: exact geometry (regular polytopes have known
dimensionalities), an independent computation (the closed-form candidate losses of the
2-in-1 theory against the exact expected loss by enumeration), and the paper's published
findings reproduced by training (dense → PCA-like; sparse → superposition; dimensionalities at
the paper's fractions; the three regions of the phase diagram). Training settings are small
(seconds each) and stated in each test with the numbers measured on them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from circuits_cli.superposition import analysis as A
from circuits_cli.superposition import experiments as E
from circuits_cli.superposition.model import expected_loss, train_toy_models
from tests.cli_helpers import assert_clean_error, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def polygon(k: int) -> np.ndarray:
    """``k`` unit vectors evenly around a circle: ``W [2, k]``."""
    a = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)])


# ---- the measures on exact geometry ------------------------------------------------------

def test_dimensionality_of_regular_geometries_is_the_papers_fractions():
    """D_i is exactly 1 for orthogonal features, 1/2 for an antipodal pair, 2/3 for a triangle,
    2/5 for a pentagon, 3/4 for a tetrahedron and 3/8 for a square antiprism (the paper's bands;
    for k unit vectors spanning d dimensions as a tight frame, D = d/k)."""
    tetra = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float).T / math.sqrt(3)
    top = [(np.cos(a), np.sin(a)) for a in np.pi / 2 * np.arange(4)]
    bottom = [(np.cos(a), np.sin(a)) for a in np.pi / 2 * np.arange(4) + np.pi / 4]
    h = 1 / math.sqrt(3)  # the height at which the 8 vertices form a tight frame (Σ vvᵀ = 8/3 I)
    r = math.sqrt(1 - h ** 2)
    antiprism = np.array([(r * x, r * y, h) for x, y in top]
                         + [(r * x, r * y, -h) for x, y in bottom]).T
    cases = {"1": np.eye(4), "1/2": np.array([[1.0, -1.0]]), "2/3": polygon(3),
             "2/5": polygon(5), "3/4": tetra, "3/8": antiprism}
    for band, W in cases.items():
        want = float(A.BANDS[band][0])
        np.testing.assert_allclose(A.dimensionality(W), want, atol=1e-12, err_msg=band)
        np.testing.assert_allclose(A.dimensions_per_feature(W), want, atol=1e-12)
        assert set(A.nearest_band(A.dimensionality(W))) == {band}
    # orthogonal features carry no superposition; a pentagon's features do
    assert np.allclose(A.superposition(np.eye(3)), 0)
    assert np.allclose(A.superposition(polygon(5)), 1.5)   # 2cos²72° + 2cos²144° = 1.5
    # a dropped feature (zero column) has norm 0 and is not represented
    W = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert A.represented(W).tolist() == [True, False]


def test_band_share_counts_values_at_the_bands_and_its_chance_level():
    share = A.band_share([0.5, 0.51, 0.4, 0.3, 0.9, 0.2], tol=0.05)
    assert share["within"] == 3 and share["per_band"]["1/2"] == 2
    # bands at ±0.05 cover [0.325, 0.55] ∪ [0.617, 0.8] ∪ [0.95, 1]: 45.8% of [0, 1]
    assert A.uniform_band_share(0.05) == pytest.approx(0.225 + 0.1833 + 0.05, abs=2e-3)


def test_two_in_one_theory_losses_match_the_exact_expected_loss():
    """The closed forms of the three candidate solutions equal the expected loss computed
    independently by enumerating the feature patterns (midpoint rule, 256 points a feature)."""
    p = np.array([0.01, 0.1, 0.5, 1.0])
    r = np.array([0.3, 1.0, 3.0, 0.5])
    one = np.ones_like(p)
    dens = np.stack([p, p], 1)
    imp = np.stack([one, r], 1)
    theory = A.two_in_one_losses(p, r)
    cases = [
        (np.array([[1.0, 0.0]]), lambda: np.stack([0 * p, p / 2], 1)),    # extra dropped
        (np.array([[0.0, 1.0]]), lambda: np.stack([p / 2, 0 * p], 1)),    # extra dedicated
        (np.array([[1.0, -1.0]]), lambda: np.zeros((len(p), 2))),          # antipodal pair
    ]
    for k, (w, bias) in enumerate(cases):
        W = np.broadcast_to(w, (len(p), 1, 2))
        got = expected_loss(W, bias(), dens, imp, grid=256)
        np.testing.assert_allclose(got, theory[k], rtol=2e-3, atol=1e-7)


def test_expected_loss_agrees_with_sampled_loss_of_a_trained_model():
    """The exact expected loss and the sampled loss of the same weights agree (1 M samples)."""
    run_ = train_toy_models(2, 1, [[0.5, 0.5], [1.0, 1.0]], [[1.0, 0.7], [1.0, 2.0]],
                            steps=200, lr=1e-2, seed=1, eval_batch=1_000_000)
    exact = expected_loss(run_.W, run_.b, run_.density, run_.importance, grid=256)
    np.testing.assert_allclose(exact, run_.loss, rtol=0.01)


def test_training_is_seeded_and_instances_are_independent():
    """Same seed, same weights bit for bit; another seed, other weights. The instances of a
    batched run follow their own settings: a ReLU and a linear instance side by side."""
    kw = dict(density=[[0.1] * 6, [0.1] * 6], importance=1.0, steps=50, relu=[True, False])
    a = train_toy_models(6, 2, **kw, seed=3)
    b = train_toy_models(6, 2, **kw, seed=3)
    c = train_toy_models(6, 2, **kw, seed=4)
    assert np.array_equal(a.W, b.W) and np.array_equal(a.b, b.b)
    assert not np.allclose(a.W, c.W)
    assert a.relu.tolist() == [True, False] and a.W.shape == (2, 2, 6)


# ---- the paper's findings, by training -------------------------------------------------

@pytest.fixture(scope="module")
def sweep(one_torch_thread):
    """n=20 features, m=5, importance 0.7^i, S ∈ {0, 0.9, 0.99}; ReLU output and linear
    models in one run, 2000 steps of 1024 (lr 1e-2, cosine decay), seed 0."""
    return E.sparsity_sweep(E.SweepParams(sparsities=(0.0, 0.9, 0.99), steps=2000))


def test_dense_features_give_the_m_most_important_orthogonal_features(sweep):
    """S = 0 (paper: the model behaves like PCA): exactly the 5 most important features are
    stored, with ‖W_i‖ ≈ 1 and orthogonal; the other 15 are dropped (‖W_i‖ ≈ 0), in both the
    ReLU and the linear model. Measured (2000 steps): stored norms 0.999-1.0001, largest dropped
    norm 0.004 (ReLU) and 0.010 (linear), largest |W_iᵀW_j| among the stored 0.0007."""
    for kind in ("relu", "linear"):
        row = sweep["models"][kind][0]
        assert row["sparsity"] == 0.0
        norms = np.asarray(row["norms"])
        assert row["represented_features"] == [0, 1, 2, 3, 4], kind
        np.testing.assert_allclose(norms[:5], 1.0, atol=0.03)
        assert norms[5:].max() < 0.05, kind
        assert row["max_overlap_represented"] < 0.05, kind
        assert np.asarray(row["superposition"])[:5].max() < 0.01


def test_sparse_features_are_stored_in_superposition_by_the_relu_model_only(sweep):
    """S = 0.9 / 0.99: the ReLU model stores more features than dimensions (measured 9 and 12
    of 20 in m = 5: 1.8× and 2.4× m; dimensions per feature 0.56 and 0.36), with interference
    Σ_{j≠i}(Ŵ_i·W_j)² > 0.1 on 89% and 100% of the stored features; the linear model still
    stores exactly 5, orthogonal (the paper: only the nonlinearity makes superposition pay)."""
    relu = {r["sparsity"]: r for r in sweep["models"]["relu"]}
    linear = {r["sparsity"]: r for r in sweep["models"]["linear"]}
    assert relu[0.9]["represented"] >= 8
    assert relu[0.99]["represented"] >= 10            # at least twice m
    for s in (0.9, 0.99):
        assert linear[s]["represented"] == 5
        assert linear[s]["max_overlap_represented"] < 0.05
        stored = np.asarray(relu[s]["norms"]) > 0.5
        sup = np.asarray(relu[s]["superposition"])[stored]
        assert (sup > 0.1).mean() > 0.6, s
        assert relu[s]["dimensions_per_feature"] < 0.6


def test_dimensionalities_cluster_at_the_papers_fractions(one_torch_thread):
    """Uniform importance, n = 30 features in m = 6 dimensions, six models at 1/(1−S) from 1.25
    to 5 (log-spaced: the range where the paper's bands sit), 1000 steps of 1024. Measured: 87% of
    the 75 stored features of these models within ±0.05 of one of the bands 1, 3/4, 2/3, 1/2,
    2/5, 3/8 (values spread uniformly over [0, 1] would score 46%); 63% within ±0.02 (chance
    21%); 46 of the 75 at 1/2 (antipodal pairs: dimensions per feature 0.51, 0.49, 0.49 at
    1/(1−S) = 2.0, 2.5, 3.2), 15 at 3/8, 2 at 2/3, 1 at 3/4, 1 at 2/5."""
    inv = tuple(np.logspace(np.log10(1.25), np.log10(5), 6).tolist())
    res = E.dimensionality_sweep(E.DimensionalityParams(
        n_features=30, n_hidden=6, inverse_densities=inv, steps=1000))
    s05 = res["band_share"]["0.05"]["sparse_models"]
    s02 = res["band_share"]["0.02"]["sparse_models"]
    assert s05["count"] >= 50
    assert s05["share"] >= 0.75, s05
    assert s05["share"] > res["band_share"]["0.05"]["uniform_chance"] + 0.25
    assert s02["share"] >= 0.45, s02
    assert s05["per_band"]["1/2"] >= 24
    # dimensions per feature falls from ~1 (dense-ish) through the 1/2 plateau
    dpf = np.asarray(res["dimensions_per_feature"])
    assert dpf[0] > 0.8 and dpf[-1] < 0.45
    assert (np.abs(dpf - 0.5) < 0.03).sum() >= 2


def test_five_features_in_two_dimensions_form_a_regular_pentagon(one_torch_thread):
    """The paper: 5 features of equal importance in a 2-dimensional bottleneck at S = 0.9 form a
    regular pentagon. 8 restarts, 1500 steps. Measured: 6 of 8 are pentagons (neighbouring
    features 72.0° ± 0.3° apart, every D_i = 0.400 ± 0.002, ‖W_i‖ = 1.10); the other 2 are stuck
    in a square of 4 with the 5th feature at norm 0.34, with a higher loss (0.035-0.037 against
    0.025-0.027), so the best restart is a pentagon."""
    run_ = train_toy_models(5, 2, np.full((8, 5), 0.1), 1.0, steps=1500, lr=1e-2, decay=True)
    D = A.dimensionality(run_.W)
    pentagons = []
    for k in range(8):
        angles = np.sort(np.degrees(np.arctan2(run_.W[k, 1], run_.W[k, 0])) % 360)
        gaps = np.diff(np.r_[angles, angles[0] + 360])
        pentagons.append(bool(np.abs(gaps - 72).max() < 2 and np.abs(D[k] - 0.4).max() < 0.01))
    assert sum(pentagons) >= 5, pentagons
    assert pentagons[int(run_.loss.argmin())]


def test_phase_diagram_has_the_papers_three_regions(one_torch_thread):
    """2 features in 1 dimension, 3 restarts per cell (best by exact expected loss), 1500
    steps. The paper's regions: dense + a less important extra feature → not represented;
    a much more important extra feature → it gets the dimension; sparse features of comparable
    importance → both stored as an antipodal pair. Measured: the 5 cells off the theory's tie
    line all as the paper and the theory say (antipodal W ≈ [1.00, −1.00] at 1−S = 0.03,
    importance 1); the dense cell at importance 1 is a tie (either feature may take the
    dimension) and is not asserted."""
    res = E.phase_diagram(E.PhaseParams(densities=(0.03, 1.0),
                                        relative_importances=(0.3, 1.0, 5.0), steps=1500))
    lab = np.asarray(res["labels"], dtype=object)       # rows: density, columns: importance
    assert lab[1, 0] == A.NOT_REPRESENTED               # dense, importance 0.3
    assert lab[1, 2] == A.DEDICATED                     # dense, importance 5
    assert lab[0, 0] == A.SUPERPOSED                    # sparse (1−S = 0.03), importance 0.3
    assert lab[0, 1] == A.SUPERPOSED                    # sparse, importance 1
    W = np.asarray(res["W"])[0, 1]
    assert W[0] * W[1] < 0 and min(abs(W)) > 0.7        # antipodal: opposite signs, both stored
    assert res["agreement_with_theory_clear_cells"] == 1.0


# ---- the command -------------------------------------------------------------------------

def test_cli_writes_figures_and_numbers_and_resumes(tmp_path):
    out = tmp_path / "sup"
    result = run("superposition", "--out", out, "--only", "phase", "--steps", "30", "--json",
                 "--quiet")
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert set(numbers) == {"phase"} and numbers["phase"]["resumed"] is False
    for name in ("phase_diagram.png", "results.json", "runs/phase.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert (out / "phase_diagram.png").stat().st_size > 10_000
    full = json.loads((out / "results.json").read_text())
    assert len(full["phase"]["labels"]) == len(E.PhaseParams().densities)
    again = run("superposition", "--out", out, "--only", "phase", "--steps", "30")
    assert again.exit_code == 0, again.output
    assert "reusing the trained models" in again.stderr
    assert json.loads((out / "results.json").read_text())["phase"]["resumed"] is True


@pytest.mark.parametrize("args, needle", [
    (["--steps", "0"], "--steps"),
    (["--only", "nonsense"], "--only"),
    (["--threads", "-1"], "--threads"),
])
def test_cli_bad_options_are_one_line_exit_2(tmp_path, args, needle):
    result = run("superposition", "--out", tmp_path / "o", *args)
    assert_clean_error(result, needle)
    assert not (tmp_path / "o").exists()


def test_cli_never_overwrites_a_users_file(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text("my own results\n")
    result = run("superposition", "--out", out, "--only", "phase", "--steps", "5")
    assert_clean_error(result, "results.json", "not written by")
    assert (out / "results.json").read_text() == "my own results\n"
    assert not (out / "runs").exists() and not (out / "manifest.json").exists()
    # a manifest.json that is not ours is a user's file too
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"something": "else"}')
    assert_clean_error(run("superposition", "--out", other, "--only", "phase"), "manifest.json")
    assert (other / "manifest.json").read_text() == '{"something": "else"}'
    # --out naming a file
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_clean_error(run("superposition", "--out", afile), "is a file")


def test_api_rejects_bad_settings_before_writing(tmp_path):
    from circuits_cli.errors import CircuitsError
    from circuits_cli.superposition.run import run_superposition

    with pytest.raises(CircuitsError, match="unknown experiment 'phse'"):
        run_superposition(tmp_path / "a", experiments=["phse"])
    with pytest.raises(CircuitsError, match="steps"):
        run_superposition(tmp_path / "b", experiments=["phase"], steps=0)
    with pytest.raises(CircuitsError, match="density"):
        train_toy_models(3, 2, [0.5, 0.0, 1.5], steps=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
