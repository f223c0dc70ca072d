"""A polysemantic neuron made visible (``circuits sae features``): the neuron's diversity facets
and dataset examples beside the SAE features that write into it, each with its feature
visualization and dataset examples, as one figure and one HTML page.

Ground truth: a planted ReLU SAE on the toy model's mixed4b (encoder = decoder rows, no biases)
whose features are known combinations of two units the toy world's labels identify, the car
unit and the tree unit: feature 0 = the car axis, 1 = 0.4 car + 0.92 tree, 2 = the tree axis,
3 = 0.3 car + 0.95 another channel. Into the car neuron the planted decoder weights are 1, 0.4,
0 and 0.3, so the page must list features 0 then 1 (then 3; never 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_clean_error, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small rendering steps
STEPS, SIZE = 24, 64  # tiny renders: the test checks the plumbing, not the pictures' quality


@pytest.fixture(scope="module")
def planted(toy, tmp_path_factory):
    """(SAE folder, car channel, tree channel, the planted decoder weights into the car)."""
    from circuits_cli.sae.model import SAE
    from circuits_cli.toy.analysis import best_class_unit

    car = best_class_unit(toy, "mixed4b", "car").unit.channel
    tree = best_class_unit(toy, "mixed4b", "tree").unit.channel
    other = next(c for c in range(toy.layer("mixed4b").channels) if c not in (car, tree))
    rows = [{car: 1.0}, {car: 0.4, tree: 0.917}, {tree: 1.0}, {car: 0.3, other: 0.954}]
    channels = toy.layer("mixed4b").channels
    w = torch.zeros(len(rows), channels)
    for i, r in enumerate(rows):
        for c, v in r.items():
            w[i, c] = v
    w = w / w.norm(dim=1, keepdim=True)
    sae = SAE(channels, len(rows), "relu", cfg={"hook_name": "mixed4b", "model_name": "toy"})
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    folder = tmp_path_factory.mktemp("poly") / "sae"
    sae.save(folder)
    return folder, car, tree, w[:, car].tolist()


def _img_sources(html: Path) -> list[str]:
    return re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", html.read_text())


def test_the_planted_features_behind_the_car_neuron(toy, toy_scenes_140, planted, tmp_path):
    """Library path: the two planted features writing into the car neuron come first, by their
    planted decoder weights; each has a render and dataset examples with crops; feature 0 (the
    car axis, no bias) has exactly the neuron's own top images; feature 1's are tree scenes."""
    from circuits_cli.evidence import layer_activations
    from circuits_cli.files import claim_output, release_claims
    from circuits_cli.reports.polysemantic import polysemantic_neuron
    from circuits_cli.sae import load_sae

    folder, car, _tree, planted_w = planted
    sae = load_sae(folder)
    cache = tmp_path / "cache"
    acts = layer_activations(toy, "mixed4b", toy_scenes_140, cache_dir=cache / "activations")
    out = tmp_path / "out"
    claim_output(out, "sae features")
    try:
        res = polysemantic_neuron(toy, sae, acts, car, out, top_images=5, steps=STEPS,
                                  size=SIZE, render_cache=cache / "renders",
                                  cache_dir=cache / "activations")
    finally:
        release_claims()
    feats = res["features"]
    assert [f["feature"] for f in feats[:2]] == [0, 1]
    assert [f["feature"] for f in feats] == [0, 1, 3]  # feature 2 writes 0 into the car
    for f in feats:
        assert f["weight"] == pytest.approx(planted_w[f["feature"]], abs=1e-6)
    assert planted_w[1] == pytest.approx(0.4, abs=1e-3)
    assert planted_w[3] == pytest.approx(0.3, abs=1e-3)
    # the examples: feature 0 reads exactly the car channel, so its top images are the neuron's
    own = [e["path"] for e in res["neuron_top_images"]]
    assert [e["path"] for e in feats[0]["top_images"]] == own
    assert all(Path(p).stem.endswith("_car") for p in own)
    trees = [Path(e["path"]).stem.endswith("_tree") for e in feats[1]["top_images"]]
    assert sum(trees) >= 4, feats[1]["top_images"]
    for item in res["neuron_top_images"] + [e for f in feats for e in f["top_images"]]:
        x0, y0, x1, y1 = item["box"]
        assert 0 <= x0 < x1 <= toy.input_size and 0 <= y0 < y1 <= toy.input_size
        assert (out / item["crop"]).is_file() and (out / item["image"]).is_file()
    # every feature has its render, the neuron its facets; the render drives its feature
    for f in feats:
        assert (out / f["render"]["png"]).is_file()
    assert feats[1]["render"]["activation"] > 3 * feats[1]["mean_activation"] > 0
    facets = res["neuron_render"]["facets"]
    assert len(facets) == 4 and all((out / p).is_file() for p in facets)
    assert res["render_settings"] == {"steps": STEPS, "size": SIZE, "seed": 0,
                                      "param": "fourier", "facets": 4}
    # the page: the neuron row on top, then the features in order; every picture is there
    html = Path(res["files"]["html"])
    text = html.read_text()
    order = [text.index(f'id="{k}"') for k in ("neuron", "feature0", "feature1", "feature3")]
    assert order == sorted(order) and 'id="feature2"' not in text
    srcs = _img_sources(html)
    assert len(srcs) == 4 + 2 * 5 * 4 + 3 + 1  # facets, crop + whole per example, renders, fig
    assert all((html.parent / s).is_file() for s in srcs), srcs
    assert Path(res["files"]["png"]).stat().st_size > 20_000
    assert json.loads(Path(res["files"]["json"]).read_text())["features"][1]["feature"] == 1


def test_cli_page_cache_no_render_and_user_files(toy, toy_scenes_140, planted, tmp_path):
    folder, car, _tree, _w = planted
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    args = ["sae", "features", folder, "-m", "toy", "--images", toy_scenes_140, "--neuron",
            str(car), "--top-images", "3", "--steps", str(STEPS), "--size", str(SIZE), "--json"]
    out = tmp_path / "out"
    r = run(*args, "--out", out, env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [f["feature"] for f in data["features"][:2]] == [0, 1]
    assert not data["neuron_render"]["cached"]
    html = out / f"neuron-{car}.html"
    assert data["files"]["html"] == str(html)
    assert all((out / s).is_file() for s in _img_sources(html))
    # the same command again: every render from the cache, the same numbers
    again = json.loads(run(*args, "--out", out, env=env).stdout)
    assert again["neuron_render"]["cached"] and all(f["render"]["cached"]
                                                    for f in again["features"])
    assert [f["render"]["activation"] for f in again["features"]] == \
        [f["render"]["activation"] for f in data["features"]]
    # --no-render: the page without pictures of the units, examples still there
    r = run(*args, "--no-render", "--out", tmp_path / "plain", env=env)
    assert r.exit_code == 0, r.output
    plain = json.loads(r.stdout)
    assert "neuron_render" not in plain and not any("render" in f for f in plain["features"])
    assert "no render" in (tmp_path / "plain" / f"neuron-{car}.html").read_text()
    # a user's file with the page's name is never overwritten: one line, exit 2, before work
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / f"neuron-{car}.html").write_text("my notes")
    assert_clean_error(run(*args, "--out", mine, env=env), "not written by circuits")
    assert (mine / f"neuron-{car}.html").read_text() == "my notes"
    assert_clean_error(run("sae", "features", folder, "-m", "toy", "--images", toy_scenes_140,
                           "--neuron", "9999", env=env), "out of range")


def test_the_page_in_a_browser(toy, toy_scenes_140, planted, tmp_path):
    """Every picture of the page loads in chromium (naturalWidth > 0)."""
    import os
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    exe = next((shutil.which(c) or c for c in (os.environ.get("CIRCUITS_CHROMIUM"), "chromium",
                                               "chromium-browser")
                if c and (shutil.which(c) or Path(c).is_file())), None)
    if exe is None:
        pytest.skip("no chromium browser installed (apt-get install chromium; .ci/run does)")
    folder, car, _tree, _w = planted
    out = tmp_path / "out"
    r = run("sae", "features", folder, "-m", "toy", "--images", toy_scenes_140, "--neuron",
            str(car), "--top-images", "3", "--steps", str(STEPS), "--size", str(SIZE), "--out", out,
            env={"CIRCUITS_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.output
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((out / f"neuron-{car}.html").resolve().as_uri())
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        browser.close()
    assert len(widths) > 20 and all(w > 0 for w in widths), widths
    assert np.min(widths) > 0
