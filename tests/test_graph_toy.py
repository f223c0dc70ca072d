"""The attribution graph of a car scene on the toy model, against the world's ground truth: the
scene generator knows where the windows and the wheels are, and the toy model's car circuit is
known (car unit mixed4b:64, window unit mixed4a:37, wheel unit mixed4a:63)."""

from __future__ import annotations

import pytest
import torch

from circuits_cli.graph import Target, build_graph
from circuits_cli.graph.build import _keep_masks
from circuits_cli.graph.interventions import faithfulness, reference_means
from circuits_cli.toy import world

pytestmark = pytest.mark.slow  # two graphs of the toy model (about 25 s on 2 cores)

WINDOW, WHEEL, CAR = "mixed4a:37", "mixed4a:63", "mixed4b:64"
LAYERS = ["mixed4a", "mixed4b"]


@pytest.fixture(scope="module")
def scene():
    img, meta = world.make_scene(3, "car")
    return torch.tensor(img).permute(2, 0, 1)[None].float() / 255, meta


@pytest.fixture(scope="module")
def per_position(toy, scene):
    return build_graph(toy, scene[0], Target("logit", 0, label="car"), LAYERS, max_nodes=200,
                       batch_size=64, interventions=4)


@pytest.fixture(scope="module")
def merged(toy, scene):
    return build_graph(toy, scene[0], Target("logit", 0, label="car"), LAYERS, max_nodes=300,
                       batch_size=64, merge=True, interventions=3, node_threshold=0.85)


def _rows(boxes, stride=8):
    """The map rows a list of (x0, y0, x1, y1) pixel boxes covers."""
    return {r for b in boxes for r in range(int(b[1] // stride), int((b[3] - 1e-6) // stride) + 1)}


def test_windows_above_wheels_where_the_scene_has_them(per_position, scene):
    full, pruned = per_position
    _, meta = scene
    feats = sorted((n for n in pruned.nodes if n["feature_type"] == "neuron"),
                   key=lambda n: -n["influence"])
    first_4a = [n for n in feats if n["layer"] == "mixed4a"][:2]
    # the two most influential units of mixed4a: the window unit and the wheel unit
    assert {n["label"] for n in feats[:6]} >= {WINDOW, WHEEL}
    assert {n["label"] for n in first_4a} <= {WINDOW, WHEEL}
    window = max((n for n in feats if n["label"] == WINDOW), key=lambda n: n["influence"])
    wheel = max((n for n in feats if n["label"] == WHEEL), key=lambda n: n["influence"])
    # where the generator drew them (mixed4a's map has a stride of 8 pixels)
    assert window["ctx_idx"][0] in _rows(meta["parts"]["windows"])
    assert wheel["ctx_idx"][0] in _rows(meta["parts"]["wheels"])
    assert window["ctx_idx"][0] < wheel["ctx_idx"][0]
    # and the linear decomposition is exact on the real toy model
    assert full.scores["max_residual"] < 1e-4
    assert full.scores["completeness"] == pytest.approx(1.0)


def test_the_car_unit_reads_the_window_and_wheel_units(per_position):
    """In the unpruned graph the car unit's strongest input at its best position is the
    window unit above it, exciting."""
    full, _ = per_position
    ids = full.node_ids()
    cars = [i for i, n in enumerate(full.nodes) if n["label"] == CAR]
    assert cars, "the car unit was not expanded"
    best = max(cars, key=lambda i: full.nodes[i]["activation"])
    row = full.adjacency[best]
    top = [ids[int(j)] for j in torch.argsort(row, descending=True)[:3]]
    assert any(t.startswith(WINDOW + "@") for t in top), top


def test_pruned_unit_graph_is_faithful_and_holds_the_car_circuit(merged):
    full, pruned = merged
    labels = {n["label"] for n in pruned.nodes}
    assert {CAR, WINDOW, WHEEL} <= labels
    att = full.attribution
    small = full.pruned(0.85, 0.98, max_nodes=50)
    n_units = sum(n["feature_type"] == "neuron" for n in small.nodes)
    assert n_units <= 50
    f = faithfulness(att, _keep_masks(att, small), reference_means(att, None))
    assert f["faithfulness"] >= 0.8, f


def test_zeroing_the_top_node_moves_the_logit_as_the_graph_predicts(merged):
    _, pruned = merged
    top = pruned.interventions[0]
    assert top["node_id"] == WINDOW
    assert top["predicted"] < 0 and top["actual"] < 0
    assert 1 / 3 < top["actual"] / top["predicted"] < 3
    # nodes one layer below the target re-gate little: prediction within 10%
    for rec in pruned.interventions[1:]:
        if rec["node_id"].startswith("mixed4b"):
            assert rec["actual"] == pytest.approx(rec["predicted"], rel=0.1)


def test_the_pruned_graph_as_a_quality_circuit_has_the_graph_s_own_faithfulness(
        toy, scene, per_position, merged):
    """Two independent implementations of faithfulness agree exactly: the graph's (its
    interventions, ablating the image's active nodes outside the pruned graph) and
    circuits_cli.quality's on the graph's node set (zero ablation: a silent unit is zero
    already), for the per-position and the unit-level graph. The node set then gives the
    graph the completeness gap that quality measures."""
    from circuits_cli.graph.circuit import node_set, quality_target
    from circuits_cli.quality import completeness
    from circuits_cli.quality import faithfulness as quality_faithfulness

    for _, pruned in (per_position, merged):
        assert pruned.scores["ablation"] == "zero"
        circuit = node_set(pruned, toy)
        target = quality_target(pruned, toy)
        kept = sum(int(m.sum()) for m in circuit.values())
        units = sum(1 for n in pruned.nodes if n["feature_type"] == "neuron")
        assert kept == units > 0
        f = quality_faithfulness(toy, scene[0], target, circuit, ablation="zero")
        assert f == pytest.approx(pruned.scores["faithfulness"], abs=1e-5)
        gap = completeness(toy, scene[0], target, circuit, ablation="zero").circuit_gap
        assert 0.0 <= gap < 10
