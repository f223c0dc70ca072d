"""The attribution graph's writers on a synthetic graph whose every node and link is known
(tests/graph_fixture.py): the static figure (``graph.png``) and the viewer page (``graph.html``,
its HTML and embedded data; its behaviour in a browser is tests/test_graph_browser.py)."""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from graph_fixture import CAR_NODE, INHIBITORY, SKIP, make_graph
from matplotlib.colors import to_hex

from circuits_cli.errors import CircuitsError
from circuits_cli.reports.graph_figure import BLUE, RED, graph_figure, load_graph_images, spread
from circuits_cli.reports.graph_page import graph_page, write_graph_page


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("graph")
    make_graph(out)
    return out


@pytest.fixture
def graph(folder):
    return make_graph()


def _artists(fig, prefix):
    ax = fig.axes[0]
    return {a.get_gid()[len(prefix):]: a for a in ax.get_children()
            if isinstance(a.get_gid(), str) and a.get_gid().startswith(prefix)}


def _centre(artist):
    if hasattr(artist, "get_extent"):  # an image: (x0, x1, y0, y1)
        x0, x1, y0, y1 = artist.get_extent()
        return (x0 + x1) / 2, (y0 + y1) / 2
    box = artist.get_bbox() if hasattr(artist, "get_bbox") else None
    if hasattr(artist, "center"):
        return tuple(artist.center)
    if hasattr(artist, "xy") and box is None:
        return tuple(artist.xy)
    return (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2


def test_figure_draws_every_node_and_link_of_a_small_graph_with_signed_colours(folder, graph):
    image, thumbs = load_graph_images(graph, folder)
    fig = graph_figure(graph, image, thumbs)
    nodes = _artists(fig, "node:")
    edges = _artists(fig, "edge:")
    assert set(nodes) == {n["node_id"] for n in graph["nodes"]}
    assert len(edges) == len(graph["links"])  # 67 links, under the 70 drawn at most
    for link in graph["links"]:
        line = edges[f"{link['source']}->{link['target']}"]
        assert to_hex(line.get_color()) == (RED if link["weight"] > 0 else BLUE)
    src, dst, _ = INHIBITORY
    assert to_hex(edges[f"{src}->{dst}"].get_color()) == BLUE
    # width grows with |weight| among one node's inputs
    into_car = sorted((abs(lk["weight"]), edges[f"{lk['source']}->{CAR_NODE}"].get_linewidth())
                      for lk in graph["links"] if lk["target"] == CAR_NODE)
    widths = [w for _, w in into_car]
    assert widths == sorted(widths) and widths[-1] > 2 * widths[0]
    # the skip link is drawn from its mixed3b node to the car unit
    line = edges[f"{SKIP[0]}->{SKIP[1]}"]
    xs, ys = line.get_data()
    assert ys[0] < ys[1]
    # the car unit is drawn by its thumbnail; an input patch by its crop of the image
    assert hasattr(nodes[CAR_NODE], "get_array")
    np.testing.assert_allclose(nodes[CAR_NODE].get_array(), thumbs[CAR_NODE])
    patch = next(n for n in graph["nodes"] if n["feature_type"] == "input_patch")
    x0, y0, x1, y1 = patch["box"]
    np.testing.assert_allclose(nodes[patch["node_id"]].get_array(), image[y0:y1, x0:x1])


def test_rows_go_from_input_to_target_and_follow_the_image_left_to_right(graph):
    fig = graph_figure(graph)
    nodes = _artists(fig, "node:")
    by_id = {n["node_id"]: n for n in graph["nodes"]}
    ys = {}
    for nid, art in nodes.items():
        ys.setdefault(by_id[nid]["layer_index"], set()).add(round(_centre(art)[1], 6))
    assert all(len(v) == 1 for v in ys.values())  # one row per layer
    row_y = [ys[i].pop() for i in sorted(ys)]
    assert row_y == sorted(row_y) and len(set(row_y)) == len(row_y)  # input lowest, target top
    for li in ys:
        row = [n for n in graph["nodes"] if n["layer_index"] == li and n["box"]]
        centre_x = sorted(row, key=lambda n: ((n["box"][0] + n["box"][2]) / 2, n["node_id"]))
        drawn_x = sorted(row, key=lambda n: _centre(nodes[n["node_id"]])[0])
        assert [n["node_id"] for n in centre_x] == [n["node_id"] for n in drawn_x]


@pytest.mark.parametrize("long_names", [False, True])
def test_no_two_labels_or_nodes_overlap(folder, graph, long_names):
    if long_names:  # ImageNet's names are long
        graph["metadata"]["image_name"] = "n02814533_beach_wagon_photograph_000123.JPEG"
        graph["metadata"]["target"]["label"] = "beach wagon, station wagon, wagon, estate car"
        graph["nodes"][-1]["label"] = "logit: beach wagon, station wagon, wagon, estate car"
        for n in graph["nodes"]:
            if n["layer"] == "mixed4b":
                n["label"] = "a very long human label of a unit"
    image, thumbs = load_graph_images(graph, folder)
    fig = graph_figure(graph, image, thumbs)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the legend out
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text().strip()] + list(fig.legends[0].get_texts())
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert len(texts) > len(graph["nodes"])  # a label per node plus row names and title
    page = fig.bbox
    for t, b in zip(texts, boxes, strict=True):  # and all inside the figure
        assert page.x0 - 1 <= b.x0 and b.x1 <= page.x1 + 1, t.get_text()
    for (a, ta), (b, tb) in itertools.combinations(zip(boxes, texts, strict=True), 2):
        assert not a.overlaps(b), (ta.get_text(), tb.get_text())
    nodes = list(_artists(fig, "node:").values())
    nboxes = [n.get_window_extent(renderer) for n in nodes]
    for a, b in itertools.combinations(nboxes, 2):
        assert not a.overlaps(b)
    # and node labels do not run under another node
    for t, tb in zip(texts, boxes, strict=True):
        for nb in nboxes:
            if tb.overlaps(nb):
                assert abs((tb.x0 + tb.x1) / 2 - (nb.x0 + nb.x1) / 2) < 1, t.get_text()


def test_a_large_layer_shows_its_most_influential_and_pinned_nodes_and_says_so(graph):
    weakest = min((n for n in graph["nodes"] if n["layer"] == "mixed4a"),
                  key=lambda n: n["influence"])
    graph["qParams"]["pinnedIds"] = [weakest["node_id"]]
    fig = graph_figure(graph, max_nodes_per_layer=3, max_edges=5)
    nodes = _artists(fig, "node:")
    for layer in ("mixed3b", "mixed4a", "mixed4b", "input"):
        row = [n for n in graph["nodes"] if n["layer"] == layer]
        drawn = [n for n in row if n["node_id"] in nodes]
        assert len(drawn) == 3
        ranked = sorted(row, key=lambda n: -n["influence"])
        expect = {n["node_id"] for n in ranked[:3]}
        if layer == "mixed4a":
            expect = {weakest["node_id"]} | {n["node_id"] for n in ranked[:2]}
        assert {n["node_id"] for n in drawn} == expect
    assert to_hex(nodes[weakest["node_id"]].get_edgecolor()) == "#e6a100"  # highlighted
    others = [a for nid, a in nodes.items() if nid != weakest["node_id"] and
              hasattr(a, "get_edgecolor")]
    assert others and all(to_hex(a.get_edgecolor()) != "#e6a100" for a in others)
    edges = _artists(fig, "edge:")
    assert len(edges) == 5
    assert all(a.split("->")[0] in nodes and a.split("->")[1] in nodes for a in edges)
    captions = " ".join(t.get_text() for t in fig.texts)
    assert f"of {len(graph['nodes'])} nodes" in captions and "5 strongest" in captions
    assert "3 of 7 nodes" in " ".join(t.get_text() for t in fig.axes[0].texts)


def test_scores_and_target_are_in_the_title_and_the_input_is_not_changed(graph):
    before = copy.deepcopy(graph)
    fig = graph_figure(graph)
    assert graph == before
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "sports car" in text and "faithfulness 0.84" in text and "completeness 0.94" in text
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"excites", "inhibits", "SAE feature", "neuron"} <= set(legend)


def test_spread_keeps_order_and_gap_and_stays_inside():
    pos = spread([0.1, 0.1, 0.12, 0.9], 0.0, 1.0, 0.2)
    assert pos == sorted(pos)
    assert all(b - a >= 0.2 - 1e-12 for a, b in zip(pos, pos[1:], strict=False))
    assert pos[0] >= 0 and pos[-1] <= 1.0 and pos[-1] == pytest.approx(0.9)
    assert spread([0.95, 1.0], 0, 1, 0.3) == pytest.approx([0.7, 1.0])


def test_figure_saves_into_a_relative_folder(monkeypatch, tmp_path, graph):
    from PIL import Image

    from circuits_cli.files import save_figure

    monkeypatch.chdir(tmp_path)
    path = save_figure(graph_figure(graph), "out/graph.png", dpi=200)
    with Image.open(tmp_path / "out" / "graph.png") as im:  # about 8 x 7 inches
        assert 1500 <= im.width <= 1800 and 1200 <= im.height <= 1700, im.size
    assert path.name == "graph.png"


def test_not_a_graph_is_refused_with_a_reason(graph):
    with pytest.raises(CircuitsError, match="format"):
        graph_figure({"format": "something/else"})
    graph["links"].append({"source": "nowhere", "target": CAR_NODE, "weight": 1.0})
    with pytest.raises(CircuitsError, match="nowhere"):
        graph_figure(graph)


# ---- graph.html: the page and its embedded data (behaviour: tests/test_graph_browser.py) ----

def _embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html, re.S)
    assert m, "no embedded graph"
    return json.loads(m.group(1))


def test_page_embeds_the_graph_exactly_and_needs_nothing_from_the_network(graph):
    html = graph_page(graph)
    assert _embedded(html) == graph
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<script src" not in html and "<link" not in html
    assert "sports car" in html and "0.812" in html and "mean ablation" in html


def test_page_survives_hostile_labels_and_non_finite_scores(graph):
    evil = "</script><script>alert(1)</script> & <b>"
    graph["nodes"][3]["label"] = evil
    graph["metadata"]["image_name"] = "<img src=x onerror=alert(1)>.png"
    graph["scores"]["faithfulness"] = float("nan")
    html = graph_page(graph)
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    data = _embedded(html)
    assert data["nodes"][3]["label"] == evil  # the text itself is kept, as data
    assert data["scores"]["faithfulness"] is None


def test_page_takes_numpy_numbers_as_a_graph_built_in_python_may_hold(graph):
    graph["nodes"][0]["activation"] = np.float32(1.5)
    graph["nodes"][0]["box"] = np.array([0, 0, 32, 32])
    graph["scores"]["completeness"] = np.float64(np.inf)
    data = _embedded(graph_page(graph))
    assert data["nodes"][0]["activation"] == 1.5 and data["nodes"][0]["box"] == [0, 0, 32, 32]
    assert data["scores"]["completeness"] is None


def test_page_is_written_beside_the_graph_from_a_relative_folder(monkeypatch, tmp_path, graph):
    monkeypatch.chdir(tmp_path)
    path = write_graph_page("out", graph)
    assert path == Path("out") / "graph.html"
    assert _embedded((tmp_path / "out" / "graph.html").read_text()) == graph


def test_page_refuses_what_is_not_a_graph():
    with pytest.raises(CircuitsError, match="circuits-graph/1"):
        graph_page({"nodes": []})
