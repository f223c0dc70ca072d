"""Circuit quality measures against values computed by hand on planted linear and ReLU networks
(faithfulness, completeness, minimality, the faithfulness curve, the three ablations)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from circuits_cli.errors import CircuitsError
from circuits_cli.quality import (
    Features,
    circuit_quality,
    completeness,
    evaluator,
    faithfulness,
    faithfulness_curve,
    logit,
    minimality,
    node_set,
    probability,
    unit_target,
)
from circuits_cli.units import Unit


class TwoPaths(nn.Module):
    """x (2 channels, 1x1) -> a = x (two equal paths) -> b = relu(w . a + bias) -> fc."""

    def __init__(self, w=(1.0, 1.0), bias=0.0, relu=False):
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1, bias=False)
        self.b = nn.Conv2d(2, 1, 1)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.a.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.b.weight.copy_(torch.tensor(w).view(1, 2, 1, 1))
            self.b.bias.fill_(bias)
            self.fc.weight.copy_(torch.tensor([[2.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.act(self.b(self.a(x))).mean(dim=(2, 3)))


def images(x0, x1):
    return torch.tensor([x0, x1], dtype=torch.float32).T.reshape(-1, 2, 1, 1)


B0 = unit_target(Unit("act", 0))  # b after its ReLU (or identity)
EQUAL = images([1, 2, 3, 4], [1, 2, 3, 4])


def test_whole_model_is_1_empty_is_0_one_of_two_equal_paths_is_half():
    net = TwoPaths()
    assert faithfulness(net, EQUAL, B0, {"a": torch.tensor([True, True])},
                        ablation="zero") == pytest.approx(1.0)
    assert faithfulness(net, EQUAL, B0, {"a": torch.tensor([False, False])},
                        ablation="zero") == pytest.approx(0.0)
    for keep in ([True, False], [False, True]):
        assert faithfulness(net, EQUAL, B0, {"a": torch.tensor(keep)},
                            ablation="zero") == pytest.approx(0.5)
    # the logit read through fc is linear in b too: the same 0.5
    assert faithfulness(net, EQUAL, logit(0), {"a": torch.tensor([True, False])},
                        ablation="zero") == pytest.approx(0.5)


def test_mean_and_zero_and_resample_as_computed_by_hand():
    """b = relu(a0 + a1 - 25) on x0 = 1..4, x1 = 10..40, the circuit keeps a0."""
    net = TwoPaths(bias=-25.0, relu=True)
    x = images([1, 2, 3, 4], [10, 20, 30, 40])
    x0, x1 = np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])
    keep0 = {"a": torch.tensor([True, False])}
    relu = lambda v: np.maximum(v, 0)  # noqa: E731

    zero = evaluator(net, x, B0, keep0, ablation="zero").values([keep0])[0]
    np.testing.assert_allclose(zero, relu(x0 - 25))  # all 0
    mean = evaluator(net, x, B0, keep0, ablation="mean").values([keep0])[0]
    np.testing.assert_allclose(mean, relu(x0 + 25 - 25))  # x1's mean is 25
    ev = evaluator(net, x, B0, keep0, ablation="resample", seed=3)
    perm = ev.perm
    assert sorted(perm) == [0, 1, 2, 3] and (perm != np.arange(4)).all()  # another image each
    np.testing.assert_allclose(ev.values([keep0])[0], relu(x0 + x1[perm] - 25))
    # a reference set of its own: drawn from it
    ref = images([0, 0, 0], [100, 200, 300])
    ev = evaluator(net, x, B0, keep0, ablation="resample", reference=ref, seed=1)
    np.testing.assert_allclose(ev.values([keep0])[0],
                               relu(x0 + np.array([100, 200, 300.0])[ev.perm] - 25))
    mean_ref = evaluator(net, x, B0, keep0, ablation="mean", reference=ref).values([keep0])[0]
    np.testing.assert_allclose(mean_ref, relu(x0 + 200 - 25))
    # the three differ here
    assert len({round(float(v.mean()), 6) for v in (zero, mean, mean_ref)}) == 3


def test_resample_of_everything_from_the_same_set_is_the_model_on_average():
    """Resampling a whole layer from the measured images runs the model on a permutation of
    them: F(empty) = F(model) exactly, so faithfulness is undefined (nan), not a number."""
    net = TwoPaths(bias=-25.0, relu=True)
    x = images([1, 2, 3, 4], [10, 20, 30, 40])
    circuit = {"a": torch.tensor([True, False])}
    ev = evaluator(net, x, B0, circuit, ablation="resample", seed=0)
    fm, fe = ev.F([None, {"a": torch.tensor([False, False])}])
    assert fe == pytest.approx(fm)
    assert math.isnan(faithfulness(net, x, B0, circuit, ablation="resample"))


def test_completeness_and_minimality_by_hand():
    """Linear b = 3 a0 + 1 a1, zero ablation, F(M) = 4 m, F(empty) = 0."""
    net = TwoPaths(w=(3.0, 1.0))
    x = EQUAL
    c0 = {"a": torch.tensor([True, False])}
    assert faithfulness(net, x, B0, c0, ablation="zero") == pytest.approx(0.75)
    comp = completeness(net, x, B0, c0, ablation="zero")
    # K = {a0}: F(C \ K) = 0, F(M \ K) = m -> gap 1/4; K = C the same set here
    assert comp.gaps == pytest.approx({"a:0": 0.25, "circuit": 0.25})
    full = completeness(net, x, B0, {"a": torch.tensor([True, True])}, ablation="zero")
    assert full.max_gap == pytest.approx(0.0)  # the whole model is complete
    mins = minimality(net, x, B0, {"a": torch.tensor([True, True])}, ablation="zero")
    assert mins == pytest.approx({"a:0": 0.75, "a:1": 0.25})


def test_curve_and_area_by_hand():
    net = TwoPaths(w=(3.0, 1.0))
    circuit = {"a": torch.tensor([True, True])}
    curve = faithfulness_curve(net, EQUAL, B0, circuit, [("a", 0), ("a", 1)], ablation="zero")
    assert curve.sizes == [0, 1, 2]
    assert curve.faithfulness == pytest.approx([0.0, 0.75, 1.0])
    assert curve.area == pytest.approx((0 + 0.75) / 4 + (0.75 + 1) / 4)
    worse = faithfulness_curve(net, EQUAL, B0, circuit, [("a", 1), ("a", 0)], ablation="zero")
    assert worse.area == pytest.approx((0 + 0.25) / 4 + (0.25 + 1) / 4)
    assert worse.area < curve.area


def test_positions_and_probability_targets():
    """A (C, H, W) mask keeps a unit at some positions; the probability target sums softmax."""
    net = TwoPaths()
    x = torch.ones(3, 2, 2, 2)  # 2x2 positions, every value 1: b = 2 at each position
    half = torch.zeros(2, 2, 2, dtype=torch.bool)
    half[0, 0, :] = True  # a0 at the top row only: b = 1 there, 0 below
    f = faithfulness(net, x, B0, {"a": half}, ablation="zero")
    assert f == pytest.approx(0.25)  # mean of b: (1 + 1 + 0 + 0) / 4 out of 2
    p = probability([0])
    q = circuit_quality(net, x, p, {"a": torch.tensor([True, True])}, ablation="zero")
    assert q.faithfulness == pytest.approx(1.0) and q.nodes == ["a:0", "a:1"]
    assert q.completeness.max_gap == pytest.approx(0.0)
    assert set(q.to_json()) >= {"faithfulness", "completeness", "minimality", "curve"}


def test_node_set_and_bad_input():
    assert node_set([("a", 1)], {"a": 3})["a"].tolist() == [False, True, False]
    with pytest.raises(CircuitsError, match="not on a layer"):
        node_set([("b", 0)], {"a": 3})
    with pytest.raises(CircuitsError, match="unknown ablation"):
        faithfulness(TwoPaths(), EQUAL, B0, {"a": torch.tensor([True, True])}, ablation="x")
    with pytest.raises(CircuitsError, match="3 channels"):
        faithfulness(TwoPaths(), EQUAL, B0, {"a": torch.tensor([True, True, True])})
    with pytest.raises(CircuitsError, match="at least two images"):
        faithfulness(TwoPaths(), EQUAL[:1], B0, {"a": torch.tensor([True, True])},
                     ablation="resample")


@pytest.mark.slow
def test_trace_with_images_reports_the_circuit_quality(planted_world, tmp_path, monkeypatch):
    """`circuits trace --images` on the planted network, from a working directory with the
    default outputs/: relu3:0 sums relu2's red, green and blue square detectors (weight 1 each)
    plus weak random inputs, so the three traced inputs alone keep most of it (zero ablation),
    and each of them is needed."""
    from cli_helpers import PLANTED_EVIDENCE, run

    monkeypatch.chdir(tmp_path)
    args = ["trace", "relu3:0", "-m", PLANTED_EVIDENCE, "--from", "relu2", "--depth", "1",
            "--top-k", "3", "--no-render", "--images", str(planted_world[0]), "--draws", "0",
            "--ablation", "zero", "--quality-images", "8"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "faithfulness" in r.stderr and "completeness gap" in r.stderr
    out = next((tmp_path / "outputs" / "trace").glob("*/*"))
    q = json.loads((out / "evidence.json").read_text())["quality"]
    assert q["ablation"] == "zero" and q["n_images"] == 8 and q["layers"] == ["relu2"]
    assert sorted(q["nodes"]) == ["relu2:0", "relu2:1", "relu2:2"]
    assert 0.8 < q["faithfulness"] <= 1.0 + 1e-6
    assert q["F_empty"] <= q["F_circuit"] <= q["F_model"] + 1e-6
    assert q["curve"]["sizes"] == [0, 1, 2, 3]
    assert q["curve"]["faithfulness"][-1] == pytest.approx(q["faithfulness"])
    assert q["curve"]["faithfulness"][0] == pytest.approx(0.0)
    page = (out / "report.html").read_text()
    assert "Circuit quality" in page and "faithfulness curve" in page
    # a second run into the same default folder works and gives the same numbers, also in
    # the --json output
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "evidence.json").read_text())["quality"] == q
    assert json.loads(r.stdout)["quality"]["faithfulness"] == pytest.approx(q["faithfulness"])


def test_ablate_resample_takes_another_images_activations(planted_evidence_model,
                                                          planted_world):
    """`ablate --ablation resample`: each image's inputs become their activations on another
    image of the set; recomputed here with a plain hook from the same seeded draw."""
    from circuits_cli.evidence import ablate
    from circuits_cli.evidence.activations import default_resize
    from circuits_cli.hooks import capture, run_with_cache
    from circuits_cli.images import find_images, load_images

    model = planted_evidence_model
    target, inputs = Unit("relu3", 0), [Unit("relu2", c) for c in (0, 1, 2)]
    res = {m: ablate(model, target, inputs, planted_world[0], mode=m, draws=0, seed=4)
           for m in ("zero", "mean", "resample")}
    r = res["resample"]
    assert r.mode == "resample" and r.to_json()["mode"] == "resample"
    paths = sorted(find_images([planted_world[0]])[0])
    assert [p.resolve() for p in r.images] == [p.resolve() for p in paths]
    n = len(paths)
    pick = np.random.default_rng(4).integers(0, n - 1, size=n)
    pick = pick + (pick >= np.arange(n))
    assert (pick != np.arange(n)).all()
    x, _, _ = load_images(paths, size=model.input_size,
                          resize=default_resize(model.input_size))
    donor = capture(model, x[pick], "relu2")["relu2"]

    def swap(a, _hook):
        a = a.clone()
        a[:, :3] = donor[:, :3]
        return a

    _, cache = run_with_cache(model, x, "relu3", fwd_hooks=[("relu2", swap)])
    expected = cache["relu3"][:, 0].mean(dim=(1, 2)).double().numpy()
    np.testing.assert_allclose(r.per_image["ablated"], expected, rtol=1e-4, atol=1e-6)
    assert len({round(v.ablated, 5) for v in res.values()}) == 3  # three different answers


def test_directions_as_nodes():
    """A layer seen as two directions, (1, 1) and (1, -1) over a0, a1. The target a0 + a1 reads
    only the first: keeping it alone is faithful (1), keeping the second alone is not (0). A
    dictionary of the layer's own neurons gives exactly what channel masks give."""
    from circuits_cli.units import direction

    net = TwoPaths()
    x = images([1, 2, 3, 4], [4, 3, 2, 1])
    plus, minus = direction("a", [1, 1]), direction("a", [1, -1])
    assert faithfulness(net, x, B0, {"a": Features([plus, minus], [True, False])},
                        ablation="zero") == pytest.approx(1.0)
    assert faithfulness(net, x, B0, {"a": Features([plus, minus], [False, True])},
                        ablation="zero") == pytest.approx(0.0, abs=1e-6)
    uneven = TwoPaths(w=(3.0, 1.0), bias=-8.0, relu=True)
    neurons = [Unit("a", 0), Unit("a", 1)]
    for ablation in ("zero", "mean", "resample"):
        as_units = circuit_quality(uneven, x, B0, {"a": Features(neurons, [True, False])},
                                   ablation=ablation, reference=x.flip(0) + 0.5)
        as_mask = circuit_quality(uneven, x, B0, {"a": torch.tensor([True, False])},
                                  ablation=ablation, reference=x.flip(0) + 0.5)
        assert as_units.to_json() == as_mask.to_json()


def test_a_traced_circuit_of_directions_is_a_dictionary_node_set(planted_evidence_model,
                                                                  tmp_path):
    """Direction nodes of a circuit become a Features layer over every row of their file, the
    traced rows kept; measured, keeping the rows that hold relu3:0's inputs is faithful."""
    from circuits_cli.trace import Circuit, Node, circuit_node_set

    model = planted_evidence_model
    rows = np.zeros((3, 16), dtype=np.float32)
    rows[0, [0, 1, 2]] = 1  # the red, green and blue square detectors together
    rows[1, 5] = 1
    rows[2, 9] = 1
    np.save(tmp_path / "dirs.npy", rows)
    f = str(tmp_path / "dirs.npy")
    circuit = Circuit(model=model.name, weights_id=model.weights_id, target="relu3:0", depth=1,
                      top_k=2, method="auto",
                      nodes=[Node("relu3:0", "relu3", 0, 0),
                             Node(f"relu2@{f}#0", "relu2", None, 1),
                             Node(f"relu2@{f}#2", "relu2", None, 1)])
    nodes, order = circuit_node_set(model, circuit)
    assert order == [("relu2", 0), ("relu2", 2)]
    assert isinstance(nodes["relu2"], Features) and nodes["relu2"].keep.tolist() == [
        True, False, True]
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x[:, 0, 20:34, 20:34] = 1.0  # a red square in each image
    x[:, 1:, 20:34, 20:34] = 0.0
    q = circuit_quality(model, x, unit_target(Unit("relu3", 0)), nodes, order, ablation="zero")
    assert q.faithfulness > 0.8
    assert q.minimality["relu2:0"] > 0.5  # the row holding the square detectors is needed
