"""Units as directions: a neuron is the one-hot case, a direction from a file is read, removed and
traced through the same code, checked on the planted network (tests/planted_evidence_model.py)
against its planted weights and against independent computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import PLANTED_EVIDENCE, assert_clean_error, run

from circuits_cli.units import Direction, Neuron, Unit, direction, parse_unit

HERE = Path(__file__).resolve().parent
SPEC = PLANTED_EVIDENCE


@pytest.fixture(scope="module")
def model(planted_evidence_model):
    return planted_evidence_model


@pytest.fixture(scope="module")
def world(planted_world):
    return planted_world


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """relu2 directions: row 0 = one-hot red-square detector, row 1 = (red + green) / sqrt 2;
    relu3 directions: row 0 = one-hot 'coloured square' unit."""
    d = tmp_path_factory.mktemp("dirs")
    r2 = np.zeros((2, 16), np.float32)
    r2[0, 0] = 1
    r2[1, :2] = 1
    np.save(d / "relu2.npy", r2)
    r3 = np.zeros(8, np.float32)
    r3[0] = 2.0  # not unit length: normalised on load
    np.save(d / "relu3.npy", r3)
    return d


def test_unit_of_layer_and_channel_is_a_neuron_and_reads_its_channel():
    u = Unit("a", 3)
    assert isinstance(u, Neuron) and u == Neuron("a", 3) and str(u) == "a:3"
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(u.read(x), x[:, 3])
    removed = u.remove(x)
    assert torch.equal(removed[:, 3], torch.zeros(2, 3, 3))
    assert torch.equal(removed[:, :3], x[:, :3])


def test_direction_reads_projects_out_and_clamps():
    x = torch.randn(4, 6, 2, 2, dtype=torch.float64)
    v = torch.randn(6, dtype=torch.float64)
    d = direction("a", v)
    unit_v = v / v.norm()
    expected = torch.einsum("nchw,c->nhw", x, unit_v)
    assert torch.allclose(d.read(x), expected, atol=1e-5)
    assert d.read(d.remove(x)).abs().max() < 1e-5  # nothing left along the direction
    orth = x - expected[:, None] * unit_v[None, :, None, None]
    assert torch.allclose(d.remove(x), orth, atol=1e-5)  # only that component is removed
    assert torch.allclose(d.read(d.clamp(x, 3.0)), torch.full((4, 2, 2), 3.0, dtype=x.dtype),
                          atol=1e-5)
    one_hot = direction("a", torch.eye(6)[2])
    assert torch.allclose(one_hot.read(x), Unit("a", 2).read(x), atol=1e-6)


def test_parse_unit_kinds_and_errors(model, dirs):
    from circuits_cli.errors import CircuitsError

    assert parse_unit("relu2:1", model) == Neuron("relu2", 1)
    d = parse_unit(f"relu2@{dirs / 'relu2.npy'}#1", model)
    assert isinstance(d, Direction) and d.layer == "relu2"
    np.testing.assert_allclose(d.encoder(16)[:2].numpy(), [2 ** -0.5] * 2, rtol=1e-6)
    assert parse_unit(str(d), model) == d  # the written form reads back
    for bad, needle in [(f"relu2@{dirs / 'relu2.npy'}#5", "does not exist"),
                        (f"relu3@{dirs / 'relu2.npy'}", "channels"),
                        ("relu2@/no/such.npy", "does not exist"), ("relu2", "malformed")]:
        with pytest.raises(CircuitsError, match=needle):
            parse_unit(bad, model)


def test_direction_examples_equal_an_independent_projection(model, world, dirs, tmp_path):
    """Dataset examples of (red + green)/sqrt 2 on relu2 rank images by the max of the projection
    computed here from a direct forward pass; the one-hot direction gives the neuron's examples."""
    from circuits_cli.evidence import dataset_examples, layer_activations
    from circuits_cli.hooks import capture
    from circuits_cli.images import load_image

    folder, _ = world
    cache = tmp_path / "cache"
    acts = layer_activations(model, "relu2", folder, cache_dir=cache)
    d = parse_unit(f"relu2@{dirs / 'relu2.npy'}#1", model)
    ex = dataset_examples(model, d, acts, top=5, load=False, cache_dir=cache)
    x = torch.stack([load_image(p, size=64, resize=acts.preprocessing["resize"])
                     for p in acts.paths])
    a = capture(model, x, "relu2")["relu2"].double()
    proj = ((a[:, 0] + a[:, 1]) / 2 ** 0.5).flatten(1).amax(1).numpy()
    want = np.argsort(-proj, kind="stable")[:5]
    assert [e.path for e in ex.examples] == [acts.paths[i] for i in want]
    np.testing.assert_allclose([e.activation for e in ex.examples], proj[want], rtol=2e-3)

    one_hot = parse_unit(f"relu2@{dirs / 'relu2.npy'}#0", model)
    neuron = dataset_examples(model, Unit("relu2", 0), acts, top=8, load=False, cache_dir=cache)
    as_dir = dataset_examples(model, one_hot, acts, top=8, load=False, cache_dir=cache)
    assert [e.path for e in as_dir.examples] == [e.path for e in neuron.examples]


def test_direction_weights_are_the_encoder_applied_to_the_planted_kernels(model, dirs):
    """relu3:0 sums relu2:0-2 through centre taps of weight 1: a one-hot direction on relu3 has
    exactly the neuron's kernels, and (e0 + e1)/sqrt 2 the mean of two planted neurons' kernels."""
    from circuits_cli.connections import expanded_weights, through_decoders, unit_weights

    d = parse_unit(f"relu3@{dirs / 'relu3.npy'}", model)
    k_dir = unit_weights(model, "relu2", d)
    k_neuron = expanded_weights(model, "relu2", "relu3", [0])[0]
    torch.testing.assert_close(k_dir, k_neuron, rtol=1e-5, atol=1e-7)
    # the planted centre taps of weight 1, spread by the 2 x 2 pool's average-pool equivalent
    torch.testing.assert_close(k_dir[:3].sum(dim=(1, 2)), torch.ones(3), rtol=1e-4, atol=1e-4)
    mix = direction("relu3", [1, 1, 0, 0, 0, 0, 0, 0])
    both = expanded_weights(model, "relu2", "relu3", [0, 1])
    torch.testing.assert_close(unit_weights(model, "relu2", mix), both.sum(0) / 2 ** 0.5,
                               rtol=1e-5, atol=1e-7)
    # from source directions through their decoders: the one-hot ones pick the kernels
    src = [direction("relu2", torch.eye(16)[c]) for c in (0, 2)]
    torch.testing.assert_close(through_decoders(k_neuron, src, 16), k_neuron[[0, 2]])


def test_ablating_a_direction_equals_ablating_its_neuron(model, world, dirs, tmp_path):
    """Removing the one-hot direction of relu2:0 is zeroing that channel; a target given as a
    direction reads exactly what the neuron reads; random directions give the baseline."""
    from circuits_cli.evidence import ablate

    folder, _ = world
    cache = tmp_path / "cache"
    e0 = parse_unit(f"relu2@{dirs / 'relu2.npy'}#0", model)
    target_dir = parse_unit(f"relu3@{dirs / 'relu3.npy'}", model)
    neuron = ablate(model, Unit("relu3", 0), [Unit("relu2", 0)], folder, draws=0,
                    cache_dir=cache)
    as_dir = ablate(model, target_dir, [e0], folder, draws=6, cache_dir=cache)
    assert as_dir.baseline == pytest.approx(neuron.baseline, rel=1e-5)
    assert as_dir.ablated == pytest.approx(neuron.ablated, rel=1e-5)
    assert neuron.drop > 0 and len(as_dir.random_drops) == 6


def test_direction_units_on_the_command_line(model, world, dirs, tmp_path):
    folder, _ = world
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    unit = f"relu2@{dirs / 'relu2.npy'}#1"
    out = tmp_path / "ex"
    r = run("examples", unit, "--images", folder, "-m", SPEC, "--top", "3", "--out", out,
            "--json", env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["unit"] == unit and len(data["examples"]) == 3
    r = run("weights", f"relu3@{dirs / 'relu3.npy'}", "--from", "relu2", "-m", SPEC,
            "--no-render", "--json", "--out", tmp_path / "w", env=env)
    assert r.exit_code == 0, r.output
    top3 = {e["unit"] for e in json.loads(r.stdout)["inputs"][:3]}
    assert top3 == {"relu2:0", "relu2:1", "relu2:2"}  # the planted inputs
    r = run("ablate", f"relu3@{dirs / 'relu3.npy'}", "--inputs", f"relu2@{dirs / 'relu2.npy'}#0",
            "--images", folder, "-m", SPEC, "--draws", "4", "--json", env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ablated"] < json.loads(r.stdout)["baseline"]
    assert_clean_error(run("examples", "relu2@nope.npy", "--images", folder, "-m", SPEC,
                           env=env), "does not exist")


def test_visualize_a_direction_file(tmp_path):
    """visualize LAYER@FILE renders each row by its own read-out (planted render network,
    tests/planted_render_model.py): the red-minus-blue colour direction comes out red, its
    negation blue; the manifest records the directions by name."""
    from PIL import Image

    spec = f"{HERE / 'planted_render_model.py'}:detectors"
    rows = np.zeros((2, 7), np.float32)
    rows[0, 4], rows[0, 6] = 1, -1  # red detector minus blue detector
    rows[1, 4], rows[1, 6] = -1, 1
    np.save(tmp_path / "colours.npy", rows)
    out = tmp_path / "vis"
    r = run("visualize", f"relu@{tmp_path / 'colours.npy'}", "-m", spec, "--steps", "64",
            "--size", "64", "--out", out, "--quiet",
            env={"CIRCUITS_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.output
    pngs = sorted((out / "units").glob("*.png"))
    assert len(pngs) == 2
    means = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
             for p in pngs]
    by_row = dict(zip((p.stem.rsplit("-", 1)[-1] for p in pngs), means, strict=True))
    assert by_row["0"][0] > by_row["0"][2] + 20, by_row
    assert by_row["1"][2] > by_row["1"][0] + 20, by_row
    manifest = json.loads(next(out.glob("manifest*.json")).read_text())
    assert sorted(u["unit"].rsplit("#", 1)[-1] for u in manifest["units"]) == ["0", "1"]
