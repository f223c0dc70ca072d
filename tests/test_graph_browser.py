"""The attribution-graph viewer (``graph.html``) in a real browser: Debian's chromium driven by
Playwright, as for the atlas (tests/test_atlas_browser.py); skipped with a reason where either is
missing. The page is opened from ``file://``, as a reader opens it, on the synthetic graph of
tests/graph_fixture.py, whose every link and recorded intervention is known.

Screenshots of each state go to the test's temporary folder (``graph-*.png``) for a person to
look at.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from graph_fixture import ATLAS_PAGE, CAR_NODE, INHIBITORY, INTERVENTIONS, make_graph

from circuits_cli.reports.graph_page import write_graph_page


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A graph folder: graph.html beside the image, thumbnail, examples and atlas page."""
    folder = tmp_path_factory.mktemp("graph-site")
    graph = make_graph(folder)
    write_graph_page(folder, graph)
    return folder, graph


@pytest.fixture
def tab(browser, site):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto((site[0] / "graph.html").resolve().as_uri())
    yield page
    page.close()
    assert not errors, errors  # no JavaScript error, no image that failed to load


def _node(nid: str) -> str:
    return f'g.node[data-id="{nid}"]'


def _click(tab, nid: str, **kw):
    tab.click(f"{_node(nid)} .shape, {_node(nid)} .frame", **kw)


def _weights(tab, table: str) -> dict[str, float]:
    rows = tab.locator(f"{table} tr[data-id]")
    return {rows.nth(i).get_attribute("data-id"): float(rows.nth(i).locator("td.w").inner_text())
            for i in range(rows.count())}


def test_page_draws_the_graph_and_a_node_shows_its_inputs_and_outputs(site, tab):
    folder, graph = site
    assert tab.locator("g.node").count() == len(graph["nodes"])
    assert tab.locator("path.edge").count() == len(graph["links"])
    assert tab.locator("path.edge[stroke='#2166ac']").count() == sum(
        lk["weight"] < 0 for lk in graph["links"])
    tab.screenshot(path=str(folder / "graph-open.png"))

    _click(tab, CAR_NODE)
    assert tab.locator("#node-title").inner_text() == "mixed4b:64 (1,2)"
    inputs = _weights(tab, "#node-inputs")
    expect = {lk["source"]: lk["weight"] for lk in graph["links"] if lk["target"] == CAR_NODE}
    assert inputs.keys() == expect.keys()
    for nid, w in expect.items():
        assert inputs[nid] == pytest.approx(w, abs=5e-4)
    order = list(inputs)  # listed by |weight|, strongest first
    assert order == sorted(expect, key=lambda n: -abs(expect[n]))
    assert inputs[INHIBITORY[0]] == pytest.approx(INHIBITORY[2])
    outputs = _weights(tab, "#node-outputs")
    assert outputs == {"target": pytest.approx(next(
        lk["weight"] for lk in graph["links"] if lk["source"] == CAR_NODE), abs=5e-4)}
    # its receptive field on the image, its feature visualization and examples, loaded
    box = next(n["box"] for n in graph["nodes"] if n["node_id"] == CAR_NODE)
    assert tab.locator(f"#rf rect[data-box='{','.join(map(str, box))}']").count() == 1
    for img in ("#node-thumbnail", "#node-examples"):
        assert tab.eval_on_selector(img, "i => i.complete && i.naturalWidth") > 0
    # only its links stay lit: inputs and outputs, or inputs alone (qParams.linkType)
    assert tab.locator("path.edge.on").count() == len(expect) + 1
    tab.select_option("#link-type", "input")
    lit = tab.eval_on_selector_all("path.edge.on", "es => es.map(e => e.dataset.target)")
    assert lit == [CAR_NODE] * len(expect)
    assert json.loads(unquote(urlparse(tab.url).fragment))["linkType"] == "input"
    tab.select_option("#link-type", "both")
    # clicking an input goes to that node
    tab.click(f"#node-inputs tr[data-id='{INHIBITORY[0]}']")
    assert tab.locator("#node-title").inner_text() == "mixed4a:136 (1,2)"
    assert CAR_NODE in _weights(tab, "#node-outputs")
    tab.screenshot(path=str(folder / "graph-node.png"), full_page=True)


def test_hovering_a_link_shows_its_weight(site, tab):
    src, dst, weight = INHIBITORY
    hit = f'path.edge-hit[data-source="{src}"][data-target="{dst}"]'
    # a point on the curve itself (a curve's bounding-box centre is not on it)
    x, y = tab.eval_on_selector(hit, """p => {
        const pt = p.getPointAtLength(p.getTotalLength() * 0.5);
        const m = p.getScreenCTM();
        return [pt.x * m.a + pt.y * m.c + m.e, pt.x * m.b + pt.y * m.d + m.f]; }""")
    tab.mouse.move(x, y)
    tip = tab.locator("#tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "mixed4a:136 (1,2)" in text and "mixed4b:64 (1,2)" in text
    assert float(text.rsplit("weight", 1)[1]) == pytest.approx(weight)
    tab.screenshot(path=str(site[0] / "graph-hover.png"))
    tab.mouse.move(5, 5)
    assert not tip.is_visible()


def test_pinned_nodes_are_highlighted_listed_and_kept_across_a_reload(site, tab):
    _click(tab, CAR_NODE)
    tab.click("#pin-btn")
    assert "pinned" in tab.locator(_node(CAR_NODE)).get_attribute("class")
    assert tab.locator(f"#pinned-list li[data-id='{CAR_NODE}']").count() == 1
    state = json.loads(unquote(urlparse(tab.url).fragment))  # qParams in the address
    assert state["pinnedIds"] == [CAR_NODE]
    tab.reload()
    assert "pinned" in tab.locator(_node(CAR_NODE)).get_attribute("class")
    tab.click(f"#pinned-list li[data-id='{CAR_NODE}']")
    tab.click("#pin-btn")  # unpin
    assert "pinned" not in tab.locator(_node(CAR_NODE)).get_attribute("class")
    assert tab.locator("#pinned-list li[data-id]").count() == 0


def test_grouping_nodes_into_a_supernode_sums_their_links_and_ungroups(site, tab):
    folder, graph = site
    a, b = "mixed4a:37@1,1", "mixed4a:37@1,2"
    _click(tab, a, modifiers=["Shift"])
    _click(tab, b, modifiers=["Shift"])
    assert tab.locator("#chosen-list li").count() == 2
    tab.fill("#group-name", "windows")
    tab.click("#group-btn")
    sup = "super:windows"
    assert tab.locator(_node(sup)).count() == 1
    assert tab.locator(_node(a)).count() == 0 and tab.locator(_node(b)).count() == 0
    assert tab.locator("g.node").count() == len(graph["nodes"]) - 1
    # the supernode is selected; its links are the sums of its members'
    assert tab.locator("#node-title").inner_text() == "supernode windows"
    sums: dict[str, float] = {}
    for lk in graph["links"]:
        if lk["source"] in (a, b):
            sums[lk["target"]] = sums.get(lk["target"], 0.0) + lk["weight"]
    outputs = _weights(tab, "#node-outputs")
    assert outputs.keys() == sums.keys()
    for nid, w in sums.items():
        assert outputs[nid] == pytest.approx(w, abs=5e-4)
    assert tab.locator(f'path.edge[data-source="{sup}"]').count() == len(sums)
    state = json.loads(unquote(urlparse(tab.url).fragment))
    assert state["supernodes"] == [["windows", a, b]]
    tab.screenshot(path=str(folder / "graph-supernode.png"))
    tab.reload()  # the grouping is kept in the address
    assert tab.locator(_node(sup)).count() == 1 and tab.locator(_node(a)).count() == 0
    _click(tab, sup)
    tab.click("#ungroup-btn")
    assert tab.locator(_node(sup)).count() == 0
    assert tab.locator("g.node").count() == len(graph["nodes"])
    assert tab.locator("path.edge").count() == len(graph["links"])


def test_interventions_panel_shows_the_recorded_changes_of_the_target(site, tab):
    rows = tab.locator("#interventions-table tr[data-id]")
    assert rows.count() == len(INTERVENTIONS)
    got = {rows.nth(i).get_attribute("data-id"):
           (float(rows.nth(i).locator("td.predicted").inner_text()),
            float(rows.nth(i).locator("td.actual").inner_text())) for i in range(rows.count())}
    assert got == {nid: (pytest.approx(p), pytest.approx(a)) for nid, p, a in INTERVENTIONS}
    tab.click(f"#interventions-table tr[data-id='{CAR_NODE}']")
    assert tab.locator("#node-title").inner_text() == "mixed4b:64 (1,2)"
    text = tab.locator("#node-intervention").inner_text()
    assert "-3.250" in text and "-2.875" in text


def test_a_node_links_to_its_atlas_page(site, tab):
    folder, _ = site
    _click(tab, CAR_NODE)
    tab.click("#atlas-link")
    tab.wait_for_url("**/" + ATLAS_PAGE)
    assert Path(unquote(urlparse(tab.url).path)) == (folder / ATLAS_PAGE).resolve()
    assert tab.locator("h1").inner_text() == "mixed4b:64"


def test_a_crowded_layer_wraps_onto_sub_rows_and_stays_on_screen(browser, tmp_path):
    """A pruned graph can hold ~100 nodes in one layer: none may fall off the right edge (the
    target with them) and none may overlap another."""
    graph = make_graph(tmp_path)
    row = [n for n in graph["nodes"] if n["layer"] == "mixed3b" and n["feature"] is not None]
    for i in range(90):
        extra = dict(row[i % len(row)], feature=1000 + i, label=f"mixed3b:{1000 + i}")
        extra["node_id"] = f"mixed3b:{1000 + i}@{extra['ctx_idx'][0]},{extra['ctx_idx'][1]}"
        graph["nodes"].append(extra)
        graph["links"].append({"source": extra["node_id"], "target": CAR_NODE, "weight": 0.01})
    write_graph_page(tmp_path, graph)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto((tmp_path / "graph.html").resolve().as_uri())
    boxes = page.eval_on_selector_all("g.node .shape, g.node .frame", """els => els.map(e => {
        const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""")
    visible = page.eval_on_selector("#graph-wrap", "w => w.getBoundingClientRect().right")
    assert len(boxes) >= len(graph["nodes"])
    assert max(b[2] for b in boxes) <= visible  # no horizontal scrolling needed
    shapes = page.eval_on_selector_all("g.node", """gs => gs.map(g => {
        const r = g.querySelector('.shape, .frame').getBoundingClientRect();
        return [r.left, r.top, r.right, r.bottom]; })""")
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    page.screenshot(path=str(tmp_path / "graph-crowded.png"))
    page.close()
    assert not errors, errors


@pytest.mark.slow  # builds a toy graph first (about 15 s on 2 cores)
def test_a_graph_the_tool_built_opens_and_its_nodes_answer(browser, tmp_path, monkeypatch):
    """``circuits graph`` on a toy car scene, opened from file://: the window unit's node lists
    exactly the inputs graph.json gives it, its recorded intervention is shown, and the
    pictures the page names (image, crops) load."""
    from cli_helpers import run
    from PIL import Image

    from circuits_cli.toy import world

    monkeypatch.chdir(tmp_path)
    img, _ = world.make_scene(3, "car")
    Image.fromarray(img).save("car.png")
    res = run("graph", "car.png", "-m", "toy", "--target", "car", "--layers",
              "mixed4a,mixed4b", "--merge-positions", "--max-nodes", "120", "--batch-size",
              "60", "--interventions", "3", "--out", "g")
    assert res.exit_code == 0, res.output
    graph = json.loads((tmp_path / "g" / "graph.json").read_text())
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto((tmp_path / "g" / "graph.html").resolve().as_uri())
    window = "mixed4a:37"
    _click(page, window)
    inputs = _weights(page, "#node-inputs")
    expect = {lk["source"]: lk["weight"] for lk in graph["links"] if lk["target"] == window}
    assert inputs.keys() == expect.keys() and expect
    for nid, w in expect.items():
        assert inputs[nid] == pytest.approx(w, rel=1e-3, abs=5e-4)
    rec = next(r for r in graph["interventions"] if r["node_id"] == window)
    said = page.locator("#node-intervention").inner_text()
    assert f"{rec['predicted']:+.3f}"[:5] in said and "(actual)" in said
    assert page.eval_on_selector("#node-crop", "i => i.complete && i.naturalWidth") > 0
    page.screenshot(path=str(tmp_path / "graph-real.png"), full_page=True)
    assert not errors, errors
    page.close()
