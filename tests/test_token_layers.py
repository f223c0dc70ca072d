"""Token layers of vision transformers: the residual stream read over the patch tokens as a map,
the class token as its own layer, and connections through attention with the pattern frozen:
a tiny planted ViT whose head copies a feature from one patch to another shows the edge with
its planted weight at the right tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import run
from planted_vit import COPY, DIM, GRID, KEY, QUERY

from circuits_cli.connections import expanded_weights, frozen, resolve_method
from circuits_cli.errors import CircuitsError
from circuits_cli.hooks import capture, run_with_hooks
from circuits_cli.trace import previous_layer, render_tree, trace
from circuits_cli.units import Unit
from circuits_cli.zoo import load_model

SPEC = f"{Path(__file__).resolve().parent / 'planted_vit.py'}:build"


@pytest.fixture(scope="module")
def vit():
    return load_model(SPEC)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_token_layers_are_maps_of_the_patch_tokens(vit, images):
    info = vit.layer("blocks.1")
    assert info.kind == "tokens" and info.shape == (DIM, GRID, GRID)
    assert info.tokens == ("patches", 1)
    assert vit.layer("blocks.1/cls").shape == (DIM, 1, 1)
    raw = {}
    acts = capture(vit, images, ["blocks.1", "blocks.1/cls"])
    x = vit.module.patch_embed(images).flatten(2).transpose(1, 2)
    x = torch.cat([vit.module.cls_token.expand(3, -1, -1), x], 1) + vit.module.pos_embed
    raw = vit.module.blocks(x)
    torch.testing.assert_close(acts["blocks.1"], raw[:, 1:].transpose(1, 2).reshape(3, DIM, 4, 4))
    torch.testing.assert_close(acts["blocks.1/cls"][:, :, 0, 0], raw[:, 0])


def test_writing_a_token_layer_changes_only_its_tokens(vit, images):
    """Steering writes the map view back: adding to the patch grid leaves the class token, and
    writing the class token leaves the patches."""
    clean = run_with_hooks(vit, images)
    # head: logit 0 = channel 1 of (cls + mean of patches); logit 1 = channel 0 of the same
    on_patches = run_with_hooks(vit, images, [("blocks.1", lambda a, h: a + 1.0)])
    torch.testing.assert_close(on_patches - clean, torch.ones_like(clean))
    on_cls = run_with_hooks(vit, images, [("blocks.1/cls", lambda a, h: a * 0 + 2.0)])
    acts = capture(vit, images, ["blocks.1/cls"])["blocks.1/cls"][:, :2, 0, 0]
    torch.testing.assert_close(on_cls - clean, 2.0 - acts.flip(1))


def test_the_copying_head_is_an_edge_with_its_planted_weight(vit, images):
    """Expanded weights blocks.0 -> blocks.1 into channel 1 at the query patch (the centre of
    the grid): from channel 0, COPY at the key patch and nothing elsewhere; from channel 1, the
    residual stream, 1 at the query patch itself."""
    assert resolve_method(vit, "blocks.0", "blocks.1") == "linear"
    with pytest.raises(CircuitsError, match="no exact path"):
        resolve_method(vit, "blocks.0", "blocks.1", "exact")
    assert QUERY == (GRID // 2, GRID // 2)  # the target's centre patch
    for operating_point in (None, images):
        e = expanded_weights(vit, "blocks.0", "blocks.1", [1], images=operating_point)[0]
        assert e.shape == (DIM, GRID, GRID)
        copy = torch.zeros(GRID, GRID)
        copy[KEY] = COPY
        torch.testing.assert_close(e[0], copy, atol=1e-6, rtol=1e-6)
        own = torch.zeros(GRID, GRID)
        own[QUERY] = 1.0
        torch.testing.assert_close(e[1], own, atol=1e-6, rtol=1e-6)
        assert e[2:].abs().max() < 1e-6
    assert previous_layer(vit, "blocks.1") == "blocks.0"
    assert previous_layer(vit, "blocks.1/cls") == "blocks.0"
    circuit = trace(vit, Unit("blocks.1", 1), depth=1, top_k=3)
    edges = {e.source: e for e in circuit.inputs("blocks.1:1")}
    assert list(edges) == ["blocks.0:1", "blocks.0:0"]  # nothing else reaches it
    assert edges["blocks.0:0"].strength == pytest.approx(COPY, abs=1e-6)
    kernel = torch.tensor(edges["blocks.0:0"].kernel)
    assert tuple(int(i) for i in (kernel == kernel.max()).nonzero()[0]) == KEY
    assert circuit.hops[0].method == "frozen"
    text = render_tree(circuit)
    assert "attention patterns" in text and "frozen on a mid-grey image" in text


def test_freezing_keeps_the_forward_values(vit, images):
    """The frozen network computes the same activations and logits: only gradients change."""
    pytest.importorskip("timm")
    timm_vit = load_model("timm:test_vit", weights="random")
    for model in (vit, timm_vit):
        x = torch.nn.functional.interpolate(images, size=model.input_size)
        clean = model.logits(x)
        with frozen(model), torch.no_grad():
            torch.testing.assert_close(model.logits(x), clean, rtol=1e-5, atol=1e-5)
    e = expanded_weights(timm_vit, "blocks.0", "blocks.1", [3, 5])
    assert e.shape == (2, timm_vit.layer("blocks.0").channels, 10, 10)
    assert torch.isfinite(e).all() and e.abs().sum() > 0


@pytest.mark.slow
def test_commands_on_token_layers(vit, tmp_path, planted_world):
    """visualize, examples, sae train and steer on a token layer of the planted ViT; trace with
    --images freezes attention on them and says so."""
    world = planted_world[0]
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    r = run("visualize", "blocks.1", "--units", "0-1", "--steps", "8", "--size", "32", "-m", SPEC,
            "--out", tmp_path / "vis", env=env)
    assert r.exit_code == 0, r.output
    r = run("examples", "blocks.1:0", "--images", world, "-k", "3", "-m", SPEC, "--out",
            tmp_path / "ex", "--json", env=env)
    assert r.exit_code == 0, r.output
    r = run("sae", "train", "blocks.1", "--images", world, "--steps", "10", "--expansion", "2",
            "--k", "2", "--threads", "1", "-m", SPEC, "--out", tmp_path / "sae", env=env)
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["layer_shape"][0] == DIM and cfg["hook_name"] == "blocks.1"
    r = run("steer", "blocks.1:1", "--images", world, "--strengths", "0,4", "-m", SPEC,
            "--classes", "red", "--out", tmp_path / "steer", "--json", env=env)
    assert r.exit_code == 0, r.output
    levels = json.loads(r.stdout)["levels"]
    assert levels[0]["changed_top1"] == 0
    r = run("trace", "blocks.1:1", "--depth", "1", "--no-render", "-m", SPEC, "--images", world,
            "--draws", "2", "--out", tmp_path / "trace", env=env)
    assert r.exit_code == 0, r.output
    circuit = json.loads((tmp_path / "trace" / "circuit.json").read_text())
    assert "frozen on 4 image(s)" in circuit["note"]
