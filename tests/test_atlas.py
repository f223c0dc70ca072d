"""``circuits atlas``: pages against ground truth (the trace, the evidence API, the class
weights), links that resolve, resumability, shards, and the user contract."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from atlas_site import CAR, TOP_INPUTS, cache_env, toy_atlas_fixture
from cli_helpers import assert_clean_error, run

toy_atlas = toy_atlas_fixture()


class _Elements(HTMLParser):
    """Every start tag with its attributes, in document order, with the ids of open sections."""

    def __init__(self):
        super().__init__()
        self.items: list[tuple[str, dict, str | None]] = []
        self._section: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section.append(a.get("id"))
        self.items.append((tag, a, self._section[-1] if self._section else None))

    def handle_endtag(self, tag):
        if tag == "section" and self._section:
            self._section.pop()


def elements(path: Path) -> list[tuple[str, dict, str | None]]:
    p = _Elements()
    p.feed(path.read_text(encoding="utf-8"))
    return p.items


def page(site: Path, unit: str) -> Path:
    layer, ch = unit.split(":")
    return site / "units" / layer / f"{ch}.html"


def test_car_page_lists_its_inputs_in_the_order_circuits_trace_gives(toy_atlas):
    from circuits_cli.trace import trace
    from circuits_cli.units import Unit

    circuit = trace(toy_atlas.model, Unit("mixed4b", 64), depth=1, top_k=TOP_INPUTS)
    want = [(e.source, e.sign, e.strength) for e in circuit.inputs(CAR)]
    got = [(a["data-unit"], 1 if "exc" in a["class"] else -1, float(a["data-strength"]))
           for tag, a, sec in elements(page(toy_atlas.out, CAR))
           if tag == "li" and sec == "inputs"]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == [w[1] for w in want]
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-6)
    # the toy car circuit (README): mixed4a:136 is the strongest traced inhibitory input
    assert ("mixed4a:136", -1) in [(g[0], g[1]) for g in got]


def test_dataset_examples_on_a_page_are_those_of_the_evidence_api(toy_atlas):
    from circuits_cli.evidence import dataset_examples
    from circuits_cli.units import Unit

    items = [a for tag, a, sec in elements(page(toy_atlas.out, CAR))
             if tag == "figure" and sec == "examples"]
    with cache_env(toy_atlas.cache):
        for kind, negative in (("top", False), ("negative", True)):
            ref = dataset_examples(toy_atlas.model, Unit("mixed4b", 64), toy_atlas.images,
                                   top=4, negative=negative, load=False)
            got = [a for a in items if a["data-kind"] == kind]
            assert [a["data-file"] for a in got] == [e.path.name for e in ref.examples]
            np.testing.assert_allclose([float(a["data-activation"]) for a in got],
                                       [e.activation for e in ref.examples], rtol=1e-6)
    # ground truth of the toy world: the car unit's strongest scenes are cars (chance: 1 in 7)
    top = [a["data-file"] for a in items if a["data-kind"] == "top"]
    assert sum(f.endswith("_car.png") for f in top) >= 3, top


def test_classes_of_the_car_unit_are_its_weights_to_the_logits(toy_atlas):
    from circuits_cli.evidence.find import class_weights

    rows = [int(a["data-class"]) for tag, a, sec in elements(page(toy_atlas.out, CAR))
            if tag == "tr" and sec == "classes"]
    labels = toy_atlas.model.labels
    w = np.array([class_weights(toy_atlas.model, "mixed4b", i)[64] for i in range(len(labels))])
    assert rows == list(np.argsort(-w, kind="stable")[:5])
    assert labels[rows[0]] == "car"
    # mixed4a is not a late layer: its pages list no classes
    assert not [1 for _t, _a, sec in elements(page(toy_atlas.out, "mixed4a:136"))
                if sec == "classes"]


def test_links_resolve_and_units_outside_the_site_are_not_links(toy_atlas):
    site = toy_atlas.out
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 1 + 2 + TOP_INPUTS + 3  # index, two layers, the units
    for p in pages:
        for tag, a, _sec in elements(p):
            ref = a.get("href") if tag in ("a", "link") else a.get("src") if tag in (
                "img", "script") else None
            if ref is None:
                continue
            assert not re.match(r"^[a-z]+:", ref), (p, ref)  # relative: file:// and any host
            assert (p.parent / ref).resolve().is_file(), (p, ref)
    # the car unit's outputs live in mixed4c, outside the site: named, never linked
    outs = [a for tag, a, sec in elements(page(site, CAR)) if tag == "li" and sec == "outputs"]
    assert outs and all(a["data-unit"].startswith("mixed4c:") for a in outs)
    text = page(site, CAR).read_text()
    for a in outs:
        assert 'href="../../units/mixed4c/' not in text
        assert a["data-unit"] in text


def test_layer_grid_and_search_data_cover_every_unit_page(toy_atlas):
    site = toy_atlas.out
    data = (site / "atlas-units.js").read_text()
    units = json.loads(data[data.index("=") + 1:].strip().rstrip(";"))
    for layer, spec in toy_atlas.units.items():
        want = sorted(int(c) for c in re.findall(r"\d+", spec)) if "-" not in spec else [63, 64,
                                                                                          65]
        assert units["layers"][layer]["channels"] == want
        cells = [int(a["data-channel"]) for tag, a, _s in elements(site / "layers" /
                                                                   f"{layer}.html")
                 if tag == "a" and "cell" in a.get("class", "")]
        assert sorted(cells) == want
        imgs = [a for tag, a, _s in elements(site / "layers" / f"{layer}.html") if tag == "img"]
        assert all(a.get("loading") == "lazy" and a["src"].endswith(".jpg") for a in imgs)
    assert units["aliases"]["4b"] == "mixed4b"


def test_thumbnails_are_jpegs_beside_full_pngs_and_negative_is_left_out_after_relu(toy_atlas):
    from PIL import Image

    d = toy_atlas.out / "img" / "mixed4b" / "64"
    with Image.open(d / "fv.png") as full, Image.open(d / "fv.jpg") as thumb:
        assert full.format == "PNG" and thumb.format == "JPEG"
        assert full.size == (64, 64)
    with Image.open(d / "div.png") as div:
        assert div.size == (128, 64)  # two facets side by side
    # every toy block follows a ReLU: a negative render would only reach 0, so none is made
    assert not (d / "neg.png").exists()
    assert "never goes below 0" in page(toy_atlas.out, CAR).read_text()


def test_rerun_skips_every_page_and_renders_nothing(toy_atlas):
    pages = sorted(toy_atlas.out.rglob("*.html"))
    before = {p: p.stat().st_mtime_ns for p in pages if "units" in p.parts}
    t = time.perf_counter()
    again = toy_atlas.build()
    took = time.perf_counter() - t
    assert again.written == 0 and again.skipped == TOP_INPUTS + 3 and again.rendered == 0
    assert again.seconds["rendering"] == 0 and again.seconds["activations"] == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert took < 30  # loose: no work is done, only the model and the manifest are read


def test_shards_write_their_units_and_any_run_writes_the_index(toy_atlas, tmp_path):
    out = tmp_path / "sharded"
    first = toy_atlas.build(out, shard=(0, 2))
    assert first.written == 6 and len(first.missing) == 5  # the other shard's units
    assert (out / "manifest-shard-0-of-2.json").is_file()
    second = toy_atlas.build(out, shard=(1, 2))
    assert second.written == 5 and not second.missing and second.in_site == 11
    assert second.rendered == 0  # every picture was in the render cache
    idx = (out / "layers" / "mixed4a.html").read_text()
    assert idx.count('class="cell"') == TOP_INPUTS
    # the site is the same as an unsharded one, page for page
    a = (out / "units" / "mixed4b" / "64.html").read_text()
    b = page(toy_atlas.out, CAR).read_text()
    assert a == b


def test_features_slot_appears_only_with_data(toy_atlas, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "f.png")
    assert 'id="features"' not in page(toy_atlas.out, CAR).read_text()
    feats = {"source": "toy SAE (test)", "units": {CAR: [
        {"id": "sae:12", "label": "car cabin", "weight": 0.5, "href": None,
         "image": str(tmp_path / "f.png")}]}}
    out = tmp_path / "with-features"
    res = toy_atlas.build(out, features=feats)
    assert res.written == TOP_INPUTS + 3
    items = [a for tag, a, sec in elements(page(out, CAR)) if tag == "li" and sec == "features"]
    assert [a["data-feature"] for a in items] == ["sae:12"]
    assert (out / "img" / "mixed4b" / "64" / "feature-0.png").is_file()


def test_bad_inputs_fail_in_one_line_before_any_work(toy_atlas, tmp_path):
    env = {"CIRCUITS_CACHE": str(toy_atlas.cache)}
    base = ["atlas", "-m", "toy", "--images", toy_atlas.images, "--steps", 4]
    assert_clean_error(run(*base, "--layers", "mixed9z", "--out", tmp_path / "a", env=env),
                       "mixed9z")
    assert_clean_error(run(*base, "--layers", "4b", "--units", "0-999", "--out", tmp_path / "a",
                           env=env), "out of range")
    assert_clean_error(run(*base, "--layers", "4b", "--shard", "2/2", "--out", tmp_path / "a",
                           env=env), "shard")
    assert_clean_error(run(*base, "--layers", "4b", "--kinds", "channel,nope",
                           "--out", tmp_path / "a", env=env), "nope")
    assert_clean_error(run("atlas", "-m", "toy", "--layers", "4b", "--images",
                           tmp_path / "missing", "--out", tmp_path / "a", env=env), "missing")
    assert not (tmp_path / "a").exists()
    # a folder the atlas did not make is refused, and its files are untouched
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "index.html").write_text("my page")
    assert_clean_error(run(*base, "--layers", "4b", "--out", foreign, env=env), "not empty")
    assert (foreign / "index.html").read_text() == "my page"
    # inside an atlas, a file the atlas did not write is never overwritten
    site = tmp_path / "site"
    site.mkdir()
    res = toy_atlas.build(site, units={"mixed4a": "136", "mixed4b": "64"})
    assert res.written == 2
    intruder = site / "units" / "mixed4b" / "63.html"
    intruder.write_text("not the atlas's")
    assert_clean_error(run(*base, "--layers", "4a,4b", "--units", "136,63,64", "--out", site,
                           env=env), "was not written by the atlas")
    assert intruder.read_text() == "not the atlas's"
    # an atlas of another model is not mixed into this one
    manifest = json.loads((site / "manifest.json").read_text())
    manifest["weights_id"] = "other"
    (site / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(run(*base, "--layers", "4b", "--out", site, env=env), "another --out")


def test_cli_prints_time_split_and_size(toy_atlas, tmp_path):
    env = {"CIRCUITS_CACHE": str(toy_atlas.cache)}
    out = tmp_path / "cli"
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture's renders were made with 1 thread (in the render key)
    try:
        r = run("atlas", "-m", "toy", "--layers", "4b", "--units", "64", "--images",
                toy_atlas.images, "--steps", 4, "--kinds", "channel,negative,diversity",
                "--facets", 2, "--top-examples", 4, "--top-inputs", TOP_INPUTS,
                "--top-outputs", 6, "--out", out, "-q", env=env)
    finally:
        torch.set_num_threads(before)
    assert r.exit_code == 0, r.output
    assert re.search(r"rendering [\d.]+, activation pass [\d.]+, weights [\d.]+, pages", r.output)
    m = re.search(r"size on disk: ([\d.]+) MB in (\d+) files", r.output)
    site_files = [p for p in out.rglob("*") if p.is_file() and p.name != "circuits-outputs.jsonl"]
    assert m and int(m[2]) == len(site_files)  # (circuits-outputs.jsonl: the output rule's)
    assert "rendered 0 picture(s)" in r.output  # the car unit's renders are in the cache


def test_an_interrupted_run_resumes_where_it_stopped(toy_atlas, tmp_path, monkeypatch):
    from circuits_cli.atlas import pages

    out = tmp_path / "interrupted"
    original, calls = pages.PageWriter.unit, []

    def unit_then_ctrl_c(self, *args, **kwargs):
        if len(calls) == 4:
            # files of the 5th unit claimed and half written, as a kill would leave them
            self.site.claim(["units/mixed4b/63.html"])
            (self.site.root / "units" / "mixed4b").mkdir(parents=True, exist_ok=True)
            (self.site.root / "units" / "mixed4b" / "63.html").write_text("half")
            raise KeyboardInterrupt
        calls.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pages.PageWriter, "unit", unit_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        toy_atlas.build(out)
    monkeypatch.setattr(pages.PageWriter, "unit", original)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["units"]) == 4  # finished pages are recorded
    again = toy_atlas.build(out)  # the half-written file is the atlas's own: no refusal
    assert again.skipped == 4 and again.written == TOP_INPUTS + 3 - 4 and not again.missing
    assert (out / "units" / "mixed4b" / "63.html").read_text() != "half"


def test_shards_running_at_once_share_the_dataset_images(tmp_path):
    from circuits_cli.atlas.site import Site
    from circuits_cli.errors import CircuitsError

    a = Site(tmp_path, model="toy", weights_id="w", shard=(0, 2))
    b = Site(tmp_path, model="toy", weights_id="w", shard=(1, 2))  # started before a wrote
    a.write_bytes("img/data/scene.png", b"png")
    b.check_writable(["img/data/scene.png"])  # a's journal says it is the atlas's
    a.flush()  # a's journal folded into its manifest
    c = Site(tmp_path, model="toy", weights_id="w", shard=(1, 2))
    c.check_writable(["img/data/scene.png"])
    (tmp_path / "img" / "data" / "user.png").write_bytes(b"mine")
    with pytest.raises(CircuitsError, match="not written by the atlas"):
        b.check_writable(["img/data/user.png"])


def test_progress_is_plain_text_with_an_eta_when_not_a_terminal():
    import io

    from circuits_cli.atlas.build import Progress

    stream = io.StringIO()
    bar = Progress(10, "atlas: unit pages", every=0.0, stream=stream)
    for _ in range(10):
        time.sleep(0.6)  # each update starts a burst
        bar.update(1, note="mixed4b:99")
    lines = stream.getvalue().splitlines()
    assert lines and "\r" not in stream.getvalue()  # no bar redrawing into a log file
    assert re.fullmatch(r"atlas: unit pages: 10/10 \(100%\), 0:0\d elapsed, ETA 0:00  "
                        r"\[mixed4b:99\]", lines[-1]), lines[-1]
    assert re.search(r"ETA 0:0\d", lines[0])


def test_sae_features_of_a_unit_are_those_writing_most_into_it(toy_atlas, tmp_path):
    """A planted SAE on mixed4b: feature 5 writes 0.8 of its unit vector into the car unit, 3
    writes 0.6, 1 writes nothing into it; the car unit's page lists 5 then 3, and not 1."""
    import torch

    from circuits_cli.sae import SAE

    d = 192
    sae = SAE(d, 8, arch="topk", k=2, cfg={"model_name": "toy", "hook_name": "mixed4b",
                                          "weights_id": toy_atlas.model.weights_id})
    g = torch.Generator().manual_seed(0)
    sae.init_weights(g)
    with torch.no_grad():
        dec = sae.W_dec.clone()
        dec[:, 64] = 0
        dec[5] = 0
        dec[5, 64], dec[5, 65] = 0.8, 0.6
        dec[3] = 0
        dec[3, 64], dec[3, 63] = 0.6, 0.8
        sae.W_dec.copy_(dec / dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)  # a feature fires where its direction is active
    sae.save(tmp_path / "sae")
    out = tmp_path / "with-sae"
    res = toy_atlas.build(out, saes=[tmp_path / "sae"])
    assert res.written == TOP_INPUTS + 3
    items = [a["data-feature"] for tag, a, sec in elements(page(out, CAR))
             if tag == "li" and sec == "features"]
    assert items[:2] == ["feature 5", "feature 3"] and "feature 1" not in items
    assert (out / "img" / "mixed4b" / "64" / "sae-0.png").is_file()
    assert not [1 for _t, _a, sec in elements(page(out, "mixed4a:136")) if sec == "features"]
    # an SAE of a layer outside the site is refused before any work
    from circuits_cli.errors import CircuitsError

    sae.cfg["hook_name"] = "mixed4c"
    sae.save(tmp_path / "sae4c")
    with pytest.raises(CircuitsError, match="not in --layers"):
        toy_atlas.plan(tmp_path / "nowhere", saes=[tmp_path / "sae4c"])


def test_shards_started_together_run_the_activation_pass_once(toy_atlas, tmp_path):
    """The pass is guarded by a lock in the activation cache: a second shard waits for the
    first and then reads the cache instead of computing the same pass again."""
    import threading

    from circuits_cli.atlas.build import _pass_lock

    plan = toy_atlas.plan(tmp_path / "lock")
    spans = []

    def shard():
        with _pass_lock(plan):
            start = time.perf_counter()
            time.sleep(0.5)
            spans.append((start, time.perf_counter()))

    with cache_env(toy_atlas.cache):
        threads = [threading.Thread(target=shard) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1  # never both inside at once
