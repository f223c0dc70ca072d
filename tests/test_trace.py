"""Circuit tracing: the planted car circuit is recovered exactly (inputs, signs, spatial layout),
the JSON round-trips, the diagrams are written, and the commands fail cleanly on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_clean_error, run
from PIL import Image
from planted_nets import (
    BODY,
    BODY_COLOUR,
    CAR,
    WHEEL_EDGE,
    WHEELS,
    WINDOW_EDGE,
    WINDOW_OFF,
    WINDOWS,
    planted_car_net,
)

from circuits_cli.errors import CircuitsError
from circuits_cli.trace import Circuit, previous_layer, trace
from circuits_cli.units import Unit

CAR_ID = f"mixed_b:{CAR}"


@pytest.fixture(scope="module")
def planted():
    return planted_car_net()


@pytest.fixture
def planted_cli(planted, monkeypatch, tmp_path):
    """The CLI sees the planted model whatever --model says; renders go to a fresh cache."""
    import circuits_cli.zoo as zoo

    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: planted.model)
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    return planted


# ---------------------------------------------------------------------------------------------
# the planted circuit


def test_trace_recovers_the_planted_car_circuit(planted):
    circuit = trace(planted.model, Unit("mixed_b", CAR), depth=2, top_k=3)
    assert [(h.source, h.target, h.method) for h in circuit.hops] == [
        ("mixed_a", "mixed_b", "exact"), ("pool1", "mixed_a", "exact")]
    first = circuit.inputs(CAR_ID)
    assert [e.source for e in first] == [f"mixed_a:{c}" for c in (WINDOWS, WHEELS, BODY)]
    assert [e.sign for e in first] == [1, 1, 1]
    for edge in first:  # exactly the planted kernels
        np.testing.assert_allclose(edge.kernel_array(),
                                   planted.car_inputs[int(edge.source.split(":")[1])], atol=1e-6)
    windows, wheels, body = (e.kernel_array() for e in first)
    assert windows[:2].min() > 0 and windows[3:].max() < 0   # top excites, bottom inhibits
    assert wheels[3:].min() > 0 and wheels[:2].max() < 0     # the reverse
    assert body[3:].min() > 0 and np.abs(body[:3]).max() == 0
    assert circuit.node(CAR_ID).branch == "5x5"
    assert circuit.node(f"mixed_a:{BODY}").branch == "pool"
    # the second hop: what builds windows, wheels and body
    assert [(e.source, e.sign) for e in circuit.inputs(f"mixed_a:{WINDOWS}")][:2] == [
        (f"pool1:{WINDOW_EDGE}", 1), (f"pool1:{WINDOW_OFF}", -1)]
    assert circuit.inputs(f"mixed_a:{WHEELS}")[0].source == f"pool1:{WHEEL_EDGE}"
    assert circuit.inputs(f"mixed_a:{BODY}")[0].source == f"pool1:{BODY_COLOUR}"
    # the distractors are weaker than every planted input
    assert all(e.relative < 0.1 for e in circuit.inputs(f"mixed_a:{WINDOWS}")[2:])


def test_distractors_rank_below_the_planted_inputs(planted):
    circuit = trace(planted.model, Unit("mixed_b", CAR), depth=1, top_k=8)
    edges = circuit.inputs(CAR_ID)
    assert len(edges) == 8 and [e.rank for e in edges] == list(range(1, 9))
    planted_ids = {f"mixed_a:{c}" for c in planted.car_inputs}
    assert {e.source for e in edges[:3]} == planted_ids
    weakest_planted = min(e.strength for e in edges[:3])
    assert all(e.strength < 0.5 * weakest_planted for e in edges[3:])
    assert all(int(e.source.split(":")[1]) in planted.distractors for e in edges[3:])


def test_from_layer_fixes_the_first_hop(planted):
    circuit = trace(planted.model, Unit("mixed_b", CAR), depth=2, top_k=2, source="pool1")
    assert [(h.source, h.method) for h in circuit.hops] == [("pool1", "linear"),
                                                           ("stem", "linear")]
    assert circuit.hops[0].kernel_size == (9, 9)
    # through mixed_a, the windows' edge unit and the wheels' unit are the car's strongest
    assert {e.source for e in circuit.inputs(CAR_ID)} == {f"pool1:{WINDOW_EDGE}",
                                                         f"pool1:{WHEEL_EDGE}"}
    with pytest.raises(CircuitsError, match="does not come before"):
        trace(planted.model, Unit("mixed_b", CAR), source="mixed_b")
    with pytest.raises(CircuitsError, match="no exact path"):
        trace(planted.model, Unit("mixed_b", CAR), source="pool1", method="exact")


def test_top_k_per_hop_is_the_same_circuit_cut_differently(planted, tmp_path):
    """``top_k=(3, 1)`` keeps the target's three planted inputs and only the strongest input of
    each: the same edges as ``top_k=3`` for the first hop, and each second-hop edge the first
    of the ``top_k=3`` circuit's edges into that unit."""
    wide = trace(planted.model, Unit("mixed_b", CAR), depth=2, top_k=3)
    cut = trace(planted.model, Unit("mixed_b", CAR), depth=2, top_k=(3, 1))
    assert cut.top_k == [3, 1] and wide.top_k == 3
    assert cut.inputs(CAR_ID) == wide.inputs(CAR_ID)
    for edge in cut.inputs(CAR_ID):
        assert cut.inputs(edge.source) == wide.inputs(edge.source)[:1]
    assert len(cut.nodes) == 1 + 3 + 3
    assert cut.breadth() == "top 3 inputs of the target, then 1 per unit"
    assert wide.breadth() == "top 3 inputs per unit"
    assert trace(planted.model, Unit("mixed_b", CAR), depth=2, top_k=(2, 2)).top_k == 2
    cut.save(tmp_path / "circuit.json")
    assert Circuit.load(tmp_path / "circuit.json") == cut
    for bad, msg in (((3, 1, 1), "at most one per hop"), ((3, 0), "at least 1"), ((), "at least")):
        with pytest.raises(CircuitsError, match=msg):
            trace(planted.model, Unit("mixed_b", CAR), depth=2, top_k=bad)


def test_circuit_json_round_trip(planted, tmp_path):
    circuit = trace(planted.model, Unit("mixed_b", CAR), depth=2, top_k=3)
    circuit.save(tmp_path / "circuit.json")
    again = Circuit.load(tmp_path / "circuit.json")
    assert again == circuit
    assert json.loads((tmp_path / "circuit.json").read_text())["format"] == "circuits-circuit/1"
    with pytest.raises(CircuitsError, match="not a circuit file"):
        Circuit.from_json({"nodes": []})


def test_report_says_what_each_input_detects_and_where_it_acts(planted, tmp_path):
    """Labels (what a unit detects) round-trip through circuit.json and show in the report; the
    report's mean weight above / below the centre reads the planted layout: windows excite the
    top of the car's field and inhibit the bottom, wheels the reverse."""
    from circuits_cli.reports.html import build_report
    from circuits_cli.toy.analysis import car_layout_agrees, describe_layout, vertical_profile

    circuit = trace(planted.model, Unit("mixed_b", CAR), depth=1, top_k=3)
    circuit.node(f"mixed_a:{WINDOWS}").label = "windows (planted)"
    circuit.node(f"mixed_a:{WHEELS}").label = "wheels (planted)"
    circuit.save(tmp_path / "circuit.json")
    assert Circuit.load(tmp_path / "circuit.json") == circuit
    windows, wheels, _ = circuit.inputs(CAR_ID)
    wt, wb = vertical_profile(windows.kernel_array())
    ht, hb = vertical_profile(wheels.kernel_array())
    assert describe_layout(wt, wb) == "excites the top, inhibits the bottom"
    assert describe_layout(ht, hb) == "inhibits the top, excites the bottom"
    assert car_layout_agrees("windows", wt, wb) and car_layout_agrees("wheels", ht, hb)
    assert not car_layout_agrees("wheels", wt, wb) and not car_layout_agrees("windows", ht, hb)
    assert car_layout_agrees("roof", wt, wb) is None
    html = build_report(tmp_path)
    assert "<i>windows (planted)</i>" in html and "<td>wheels (planted)</td>" in html
    assert f"{wt:+.3g} / {wb:+.3g}" in html and f"{ht:+.3g} / {hb:+.3g}" in html


def test_previous_layer_stops_at_the_input(planted):
    model = planted.model
    assert previous_layer(model, "mixed_b") == "mixed_a"
    assert previous_layer(model, "mixed_a") == "pool1"
    assert previous_layer(model, "pool1") == "stem"
    assert previous_layer(model, "stem") is None
    circuit = trace(model, Unit("pool1", 0), depth=3, top_k=2)
    assert len(circuit.hops) == 1 and "stopped after 1 hop" in circuit.note


def test_previous_layer_in_googlenet(bvlc_model):
    expect = {"inception_4c": "inception_4b", "inception_4a": "inception_3b",
              "inception_3a": "conv2/3x3", "inception_4c/5x5": "inception_4b",
              "inception_5a": "inception_4e", "conv2/3x3": "conv2/3x3_reduce",
              "conv2/3x3_reduce": "conv1/7x7_s2", "conv1/7x7_s2": None}
    for layer, prev in expect.items():
        assert previous_layer(bvlc_model, layer) == prev, layer


# ---------------------------------------------------------------------------------------------
# commands


def test_trace_command_writes_json_and_diagram(planted_cli, tmp_path):
    out = tmp_path / "trace"
    result = run("trace", CAR_ID, "--no-render", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "circuit.json").read_text())
    first = [e["source"] for e in data["edges"] if e["target"] == CAR_ID]
    assert first == [f"mixed_a:{c}" for c in (WINDOWS, WHEELS, BODY)]
    with Image.open(out / "circuit.png") as im:
        assert im.size[0] > 800 and im.size[1] > 800
    assert f"<- mixed_a:{WINDOWS}" in result.output
    # one top-k per hop
    result = run("trace", CAR_ID, "--no-render", "--out", str(out), "--top-k", "3,1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "circuit.json").read_text())["top_k"] == [3, 1]
    assert "top 3 inputs of the target, then 1 per unit" in result.output
    # a re-run overwrites its own files
    assert run("trace", CAR_ID, "--no-render", "--out", str(out), "--depth", "1").exit_code == 0
    assert json.loads((out / "circuit.json").read_text())["depth"] == 1


def test_trace_command_with_renders_and_json(planted_cli, tmp_path):
    out = tmp_path / "trace"
    result = run("trace", CAR_ID, "--steps", "16", "--size", "48", "--top-k", "2", "--json",
                 "-q", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["render_settings"] == {"steps": 16, "size": 48, "seed": 0}
    assert all(n["render"] and n["render"].endswith(".png") for n in data["nodes"])
    assert (out / "circuit.png").is_file()


def test_weights_command(planted_cli, tmp_path):
    out = tmp_path / "w"
    result = run("weights", CAR_ID, "--top-k", "4", "--no-render", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "mixed_a" and data["method"] == "exact"
    assert [i["channel"] for i in data["inputs"]][:3] == [WINDOWS, WHEELS, BODY]
    assert data["inputs"][0]["kernel"][0][0] == pytest.approx(1.0)
    assert (out / "weights.png").is_file() and json.loads((out / "weights.json").read_text())
    result = run("weights", CAR_ID, "--from", "pool1", "--no-render", "--out", str(tmp_path / "x"))
    assert result.exit_code == 0 and "linear" in result.output


def test_commands_reject_bad_input_before_writing(planted_cli, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(run("trace", "mixed_b:99", "--out", str(out)), "out of range")
    assert_clean_error(run("trace", "mixd_b:1", "--out", str(out)), "mixed_b")
    assert_clean_error(run("trace", CAR_ID, "--from", "mixed_b", "--out", str(out)),
                       "does not come before")
    assert_clean_error(run("trace", CAR_ID, "--from", "pool1", "--method", "exact", "--out",
                           str(out)), "no exact path")
    assert_clean_error(run("weights", CAR_ID, "--from", "nope", "--out", str(out)), "nope")
    assert_clean_error(run("weights", "stem:0", "--out", str(out)), "input")
    assert not out.exists()
    assert run("trace", CAR_ID, "--depth", "0").exit_code == 2  # click's range check
    assert_clean_error(run("trace", CAR_ID, "--top-k", "3,1,1", "--out", str(out)),
                       "at most one per hop")
    assert_clean_error(run("trace", CAR_ID, "--top-k", "3,x", "--out", str(out)),
                       "malformed top-k")
    assert_clean_error(run("trace", CAR_ID, "--top-k", "3,40", "--out", str(out)),
                       "out of range")
    # never overwrite a user's file
    user = tmp_path / "mine"
    user.mkdir()
    (user / "circuit.json").write_text('{"my": "data"}')
    assert_clean_error(run("trace", CAR_ID, "--no-render", "--out", str(user)), "not written")
    assert json.loads((user / "circuit.json").read_text()) == {"my": "data"}
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_clean_error(run("weights", CAR_ID, "--no-render", "--out", str(afile)), "is a file")
    assert afile.read_text() == "x"


@pytest.mark.slow
def test_trace_googlenet_end_to_end(bvlc_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "g"
    result = run("trace", "inception_4c:447", "-m", "googlenet-bvlc", "--weights",
                 str(bvlc_weights), "--steps", "8", "--size", "48", "-q", "--out", str(out))
    assert result.exit_code == 0, result.output
    circuit = Circuit.load(out / "circuit.json")
    assert [h.source for h in circuit.hops] == ["inception_4b", "inception_4a"]
    assert [h.method for h in circuit.hops] == ["exact", "exact"]
    assert len(circuit.inputs("inception_4c:447")) == 3
    assert all(n.render for n in circuit.nodes)
    with Image.open(out / "circuit.png") as im:
        assert min(im.size) > 1000


def test_display_crop_keeps_the_centred_support():
    from circuits_cli.reports.diagrams import display_crop

    k = np.zeros((11, 11))
    k[4:7, 4:7] = 1.0 / 9          # a 1x1 projection read through a 3x3 pool
    other = np.zeros((11, 11))
    other[5, 7] = -0.5             # off-centre: the window must stay centred
    assert display_crop([k]) == (slice(4, 7), slice(4, 7))
    assert display_crop([k, other]) == (slice(4, 7), slice(3, 8))
    assert display_crop([np.zeros((5, 5))]) == (slice(None), slice(None))
