"""Dictionary features as units: an SAE folder's latent is read, removed, steered and traced
through the same code as a neuron. Planted SAEs with known rows on the planted network
(tests/planted_evidence_model.py) give exact answers: a feature whose encoder and decoder are
one channel behaves exactly as that neuron, and the SAE's own encoder agrees with the unit's
read-out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import PLANTED_EVIDENCE, assert_clean_error, run

from circuits_cli.units import Direction, Unit, parse_unit

SPEC = PLANTED_EVIDENCE


@pytest.fixture(scope="module")
def model(planted_evidence_model):
    return planted_evidence_model


@pytest.fixture(scope="module")
def world(planted_world):
    return planted_world[0]


def _planted_sae(folder: Path, layer: str, channels: int, rows: list[list[float]],
                 b_dec: float = 0.0, b_enc: float = 0.05, model_name: str = SPEC):
    """A ReLU SAE whose encoder and decoder rows are ``rows`` (unit-normalised)."""
    from circuits_cli.sae.model import SAE

    w = torch.zeros(len(rows), channels)
    for i, r in enumerate(rows):
        w[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    w = w / w.norm(dim=1, keepdim=True)
    sae = SAE(channels, len(rows), "relu", cfg={"hook_name": layer, "model_name": model_name})
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_dec.fill_(b_dec)
        sae.b_enc.fill_(b_enc)
    sae.save(folder)
    return sae


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    root = tmp_path_factory.mktemp("saes")
    # relu2: feature 0 = the red-square channel, 1 = red + green, 2 = blue
    s2 = _planted_sae(root / "relu2", "relu2", 16, [[1], [1, 1], [0, 0, 1]], b_dec=0.02,
                      b_enc=0.02)
    # relu3: feature 0 = the 'coloured square' channel, 1 = the red copy
    s3 = _planted_sae(root / "relu3", "relu3", 8, [[1], [0, 1]], b_dec=0.01)
    return root, s2, s3


def test_feature_read_is_the_sae_encoder(model, world, saes):
    from circuits_cli.hooks import capture
    from circuits_cli.images import load_image

    root, s2, s3 = saes
    f = parse_unit(f"relu2@{root / 'relu2'}#1", model)
    assert isinstance(f, Direction) and f.kind == "feature" and f.relu
    paths = sorted(world.rglob("*.png"))[:6]
    x = torch.stack([load_image(p, size=64, resize=73) for p in paths])
    a = capture(model, x, "relu2")["relu2"]
    torch.testing.assert_close(f.read(a), s2.encode_map(a)[:, 1], rtol=1e-5, atol=1e-6)
    assert parse_unit(str(f), model) == f
    g = parse_unit(f"relu3@{root / 'relu3'}#1", model)  # bias 0.05 - 0.01 (b_dec . e1)
    assert g.bias == pytest.approx(0.04, rel=1e-5)
    a3 = capture(model, x, "relu3")["relu3"]
    torch.testing.assert_close(g.read(a3), s3.encode_map(a3)[:, 1], rtol=1e-5, atol=1e-6)


def test_a_one_channel_feature_is_its_neuron_everywhere(model, world, saes, tmp_path):
    """Examples, ablation and weights of feature relu2#0 (encoder = decoder = channel 0, bias
    b_enc - b_dec . e0 = 0, ReLU on a non-negative layer: it reads exactly channel 0) equal the
    neuron relu2:0's."""
    from circuits_cli.connections import through_decoders, unit_weights
    from circuits_cli.evidence import ablate, dataset_examples, layer_activations

    root, _, _ = saes
    cache = tmp_path / "cache"
    f0 = parse_unit(f"relu2@{root / 'relu2'}#0", model)
    assert f0.bias == pytest.approx(0.0, abs=1e-7)
    acts = layer_activations(model, "relu2", world, cache_dir=cache)
    ex_f = dataset_examples(model, f0, acts, top=8, load=False, cache_dir=cache)
    ex_n = dataset_examples(model, Unit("relu2", 0), acts, top=8, load=False, cache_dir=cache)
    assert [e.path for e in ex_f.examples] == [e.path for e in ex_n.examples]
    np.testing.assert_allclose([e.activation for e in ex_f.examples],
                               [e.activation for e in ex_n.examples], rtol=2e-3, atol=1e-4)
    # removing the feature, x - ReLU(x0) e0, is zeroing channel 0
    by_neuron = ablate(model, Unit("relu3", 0), [Unit("relu2", 0)], world, draws=0,
                       cache_dir=cache)
    by_feature = ablate(model, Unit("relu3", 0), [f0], world, draws=3, cache_dir=cache)
    assert by_feature.baseline == pytest.approx(by_neuron.baseline, rel=1e-6)
    assert by_feature.ablated == pytest.approx(by_neuron.ablated, rel=1e-5)
    # a feature circuit: relu3 feature 0 ('coloured square') from the relu2 SAE's features:
    # the red and blue features carry the planted centre taps (weight 1 each, spread by the
    # pool), red + green carries sqrt 2 of them
    f3 = parse_unit(f"relu3@{root / 'relu3'}#0", model)
    kernels = unit_weights(model, "relu2", f3)
    sources = [parse_unit(f"relu2@{root / 'relu2'}#{i}", model) for i in range(3)]
    ff = through_decoders(kernels, sources, 16).sum(dim=(1, 2))
    torch.testing.assert_close(ff, torch.tensor([1.0, 2 ** 0.5, 1.0]), rtol=2e-3, atol=2e-3)


def test_steering_a_feature_and_the_cli(model, world, saes, tmp_path):
    root, _, _ = saes
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    unit = f"relu3@{root / 'relu3'}#1"  # the red copy, as a feature
    # the supported class is given: steer's default (the top 3 by weights) would be all three
    # of the planted network's classes, and "moved into supported" could not fail
    r = run("steer", unit, "--images", world, "-m", SPEC, "--strengths", "0,2", "--json",
            "--classes", "red square", "--out", tmp_path / "s", env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["supported_classes"] == ["red square"]
    still, boost = data["levels"]
    print({k: (still[k], boost[k]) for k in ("moved_into_supported", "changed_top1")},
          boost["class_shift"][:2])
    # strength 0 adds nothing; strength 2 moves most of the 32 scenes without a red square to
    # the red-square class, and that class's probability is the one that moves most, upwards
    assert still["moved_into_supported"] == 0.0 and still["changed_top1"] == 0
    assert boost["moved_into_supported"] > 0.5
    assert boost["class_shift"][0]["class"] == "red square"
    assert boost["class_shift"][0]["shift"] > 0.3
    assert boost["top5_share_others"] is None  # 3 classes: the top-5 is every class
    r = run("examples", f"relu2@{root / 'relu2'}#2", "--images", world, "-m", SPEC, "--json",
            "--top", "3", "--out", tmp_path / "e", env=env)
    assert r.exit_code == 0, r.output
    r = run("weights", unit, "--from", "relu2", "-m", SPEC, "--no-render", "--json",
            "--out", tmp_path / "w", env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["inputs"][0]["unit"] == "relu2:0"  # the red channel
    assert_clean_error(run("examples", f"relu3@{root / 'relu2'}#0", "--images", world, "-m",
                           SPEC, env=env), "trained on layer")
    assert_clean_error(run("examples", f"relu2@{root / 'relu2'}#9", "--images", world, "-m",
                           SPEC, env=env), "out of range")


def test_trace_a_feature_circuit(model, saes, tmp_path):
    """trace from a relu3 feature with the relu2 SAE ranks relu2's features: red + green
    (sqrt 2 of the planted taps) first, then red and blue (1 each), all exciting; the circuit
    reads back and the command draws it."""
    from circuits_cli.trace import trace
    from circuits_cli.units import sae_features

    root, _, _ = saes
    target = parse_unit(f"relu3@{root / 'relu3'}#0", model)
    layer, feats = sae_features(model, root / "relu2")
    assert layer == "relu2" and len(feats) == 3
    circuit = trace(model, target, depth=1, top_k=3, source="relu2", features={layer: feats})
    edges = sorted(circuit.inputs(str(target)), key=lambda e: e.rank)
    assert [e.source for e in edges][0] == str(feats[1])
    assert {e.source for e in edges} == {str(f) for f in feats}
    assert all(e.sign > 0 for e in edges)
    assert edges[0].strength > 1.3 * edges[1].strength
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    r = run("trace", str(target), "--from", "relu2", "--depth", "1", "--sae", root / "relu2",
            "-m", SPEC, "--steps", "4", "--size", "32", "--out", tmp_path / "t", "--json",
            env=env)
    assert r.exit_code == 0, r.output
    assert {e["source"] for e in json.loads(r.stdout)["edges"]} == {str(f) for f in feats}
    assert (tmp_path / "t" / "circuit.png").is_file()


def test_find_ranks_features_by_their_contribution_to_a_class(model, world, saes, tmp_path):
    """The red-square logit is 5 x mean(relu3:1): among the relu3 SAE's features the red copy
    (feature 1) contributes, the 'coloured square' feature 0 does not (weight 0 to that
    logit), by weights and by images alike; neurons are unchanged by the generalisation."""
    from circuits_cli.evidence import find_units
    from circuits_cli.units import sae_features

    root, _, _ = saes
    _, feats = sae_features(model, root / "relu3")
    by_weight = find_units(model, "red square", "relu3", top=2, units=feats)
    assert str(by_weight.units[0].unit) == str(feats[1])
    assert by_weight.units[0].weight == pytest.approx(5.0, rel=1e-3)
    assert abs(by_weight.units[1].weight) < 1e-3
    with_images = find_units(model, "red square", "relu3", top=2, units=feats, images=world,
                             cache_dir=tmp_path / "c")
    assert str(with_images.units[0].unit) == str(feats[1])
    neurons = find_units(model, "red square", "relu3", top=1, images=world,
                         cache_dir=tmp_path / "c")
    assert str(neurons.units[0].unit) == "relu3:1"
    r = run("find", "--class", "red square", "--layer", "relu3", "--sae", root / "relu3",
            "--images", world, "-m", SPEC, "--json", env={"CIRCUITS_CACHE": str(tmp_path)})
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["units"][0]["unit"] == str(feats[1]) and len(data["units"][0]["top_examples"])
    assert_clean_error(run("find", "--class", "red square", "--layer", "relu2", "--sae",
                           root / "relu3", "-m", SPEC, env={"CIRCUITS_CACHE": str(tmp_path)}),
                       "trained on")
