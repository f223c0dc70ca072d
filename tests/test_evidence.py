"""Dataset examples, ablation, class lookup and the circuit report on a planted network whose
answers are known (tests/planted_evidence_model.py)."""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest
import torch
from cli_helpers import PLANTED_EVIDENCE, run

from circuits_cli.errors import CircuitsError
from circuits_cli.units import Unit

SPEC = PLANTED_EVIDENCE
SIZE = 64


@pytest.fixture(scope="module")
def model():
    """A model of this module's own: a test below checks what its memo holds."""
    from circuits_cli.zoo import load_model

    return load_model(SPEC)


@pytest.fixture(scope="module")
def world(planted_world):
    return planted_world


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "cache"


def _redness(img: np.ndarray) -> np.ndarray:
    return img[..., 0] - 0.5 * img[..., 1] - 0.5 * img[..., 2]


# ---------------------------------------------------------------------------------------------
# Activation store


def test_store_matches_a_direct_forward_pass_and_is_reused(model, world, cache):
    from circuits_cli.evidence import layer_activations
    from circuits_cli.hooks import capture
    from circuits_cli.images import load_image

    folder, _ = world
    acts = layer_activations(model, "relu2", folder, cache_dir=cache)
    assert not acts.from_cache and acts.n_images == 40 and acts.n_skipped == 0
    x = torch.stack([load_image(p, size=SIZE, resize=73) for p in acts.paths[:5]])
    with torch.no_grad():
        ref = capture(model, x, "relu2")["relu2"].float().numpy()
    flat = ref.reshape(5, 16, -1)
    np.testing.assert_allclose(acts.stats["max"][:5], flat.max(2), rtol=1e-6)
    np.testing.assert_allclose(acts.stats["mean"][:5], flat.mean(2), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(acts.stats["argmax"][:5], flat.argmax(2))
    np.testing.assert_allclose(acts.maps[:5], ref, atol=2e-3)  # float16 maps
    assert isinstance(acts.stats["max"], np.memmap) and isinstance(acts.maps, np.memmap)

    again = layer_activations(model, "relu2", folder, cache_dir=cache)
    assert again.from_cache and again.directory == acts.directory
    np.testing.assert_array_equal(again.stats["max"], acts.stats["max"])
    assert not list(acts.directory.parent.glob(".*tmp*"))  # no temporary folders left


def test_store_notices_a_changed_image_set(model, world, cache, tmp_path):
    import shutil

    from circuits_cli.evidence import layer_activations

    folder = tmp_path / "copy"
    shutil.copytree(world[0], folder)
    first = layer_activations(model, "relu2", folder, cache_dir=cache)
    victim = sorted(folder.rglob("*.png"))[0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = layer_activations(model, "relu2", folder, cache_dir=cache)
    assert not second.from_cache and second.directory != first.directory


# ---------------------------------------------------------------------------------------------
# Receptive fields


def test_receptive_field_follows_the_layer_geometry(model, cache):
    from circuits_cli.evidence.receptive_field import receptive_field

    # 3x3 conv; 7x7 after the 5x5 conv; +1 for the 2x2 pool, +2*2 for the 3x3 conv at stride 2
    for layer, size, stride in (("relu1", 3, 1), ("relu2", 7, 1), ("relu3", 12, 2)):
        rf = receptive_field(model, layer, cache_dir=cache)
        assert rf.size("support") == (size, size), layer
        assert rf.stride == (stride, stride), layer
        assert rf.size("effective")[0] <= size
        x0, y0, x1, y1 = rf.box(5, 5, "support")
        assert x1 - x0 == size and (x0 + x1) / 2 == pytest.approx(5 * stride + stride / 2, abs=1)
        assert rf.box(0, 0, "support")[:2] == (0, 0)  # clipped at the border
    # kept in the model's memo (no global cache); with it emptied, the same answer comes from
    # the JSON file on disk
    assert ("relu3", model.input_size, 0.9) in model.memo["receptive_field"]
    model.memo.clear()
    assert receptive_field(model, "relu3", cache_dir=cache).support == rf.support
    assert list((cache.parent / "receptive_fields").rglob("*.json"))


# ---------------------------------------------------------------------------------------------
# Dataset examples


def test_red_square_examples_are_exactly_the_red_square_images(model, world, cache):
    from circuits_cli.evidence import dataset_examples

    folder, boxes = world
    ex = dataset_examples(model, Unit("relu2", 0), folder, top=len(boxes), cache_dir=cache)
    assert {e.path.name for e in ex.examples} == set(boxes)
    assert all(e.path.parent.name == "red_square" for e in ex.examples)
    for e in ex.examples:
        crop = e.crop
        assert crop.shape[:2] == (e.box[3] - e.box[1], e.box[2] - e.box[0])
        # the crop under the receptive field at the strongest position is red square
        assert (_redness(crop) > 0.5).mean() > 0.8, e.path.name
    # the next image is not a red square image and activates the unit less (not at all)
    more = dataset_examples(model, Unit("relu2", 0), folder, top=len(boxes) + 1, cache_dir=cache)
    assert more.examples[-1].path.name not in boxes and more.examples[-1].activation == 0
    # negative examples of a ReLU layer: images where the unit stays quietest, none red
    neg = dataset_examples(model, Unit("relu2", 0), folder, top=10, negative=True,
                           cache_dir=cache)
    assert neg.kind == "negative" and "non-negative" in neg.ranking
    assert not {e.path.name for e in neg.examples} & set(boxes)


def test_examples_sheet_and_json(model, world, cache, tmp_path):
    from PIL import Image

    from circuits_cli.evidence import dataset_examples, examples_sheet

    ex = dataset_examples(model, Unit("relu2", 0), world[0], top=7, cache_dir=cache)
    png = examples_sheet(ex, tmp_path / "sheet.png")
    w, h = Image.open(png).size
    assert w > 600 and h > 300
    data = json.loads(json.dumps(ex.to_json()))
    assert [e["rank"] for e in data["examples"]] == list(range(1, 8))
    assert data["receptive_field"]["kind"] == "effective"


# ---------------------------------------------------------------------------------------------
# Ablation


def test_ablating_the_planted_inputs_drops_the_target_far_more_than_random(model, world, cache):
    from circuits_cli.evidence import ablate, layer_activations

    folder, _ = world
    planted = [Unit("relu2", c) for c in range(3)]
    res = ablate(model, Unit("relu3", 0), planted, folder, draws=60, cache_dir=cache)
    assert res.n_images == 40 and res.draws == 60
    # the baseline is the store's spatial mean, computed by an independent pass
    ref = layer_activations(model, "relu3", folder, cache_dir=cache).column("mean", 0)
    np.testing.assert_allclose(res.per_image["baseline"], ref, rtol=1e-5, atol=1e-7)
    assert res.relative_drop > 0.5
    assert res.drop > 5 * res.random_mean
    assert res.z_score > 4 and res.p_value == pytest.approx(1 / 61)
    # ablating random units never matters as much as the planted ones
    assert max(res.random_drops) < res.drop
    data = res.to_json()
    assert data["random"]["draws"] == 60 and len(data["random"]["drops"]) == 60

    mean = ablate(model, Unit("relu3", 0), planted, folder, mode="mean", draws=20,
                  reduce="max", top_images=10, cache_dir=cache)
    assert mean.n_images == 10 and mean.z_score > 3 and mean.relative_drop > 0.2


def test_ablation_without_batch_stacking_gives_the_same_numbers(model, world, cache):
    """The fallback (one forward per variant) and the stacked pass agree."""
    from circuits_cli.evidence import ablation

    folder, _ = world
    planted = [Unit("relu2", c) for c in range(3)]
    kwargs = dict(draws=5, seed=3, top_images=6, cache_dir=cache)
    stacked = ablation.ablate(model, Unit("relu3", 0), planted, folder, **kwargs)
    original = ablation._forward

    def unstacked(model_, x, t_layer, target, v0, v1, state, *rest):
        state["stack"] = False
        return original(model_, x, t_layer, target, v0, v1, state, *rest)

    ablation._forward = unstacked
    try:
        single = ablation.ablate(model, Unit("relu3", 0), planted, folder, **kwargs)
    finally:
        ablation._forward = original
    assert single.baseline == pytest.approx(stacked.baseline, rel=1e-5)
    assert single.ablated == pytest.approx(stacked.ablated, rel=1e-5)
    np.testing.assert_allclose(single.random_drops, stacked.random_drops, rtol=1e-4, atol=1e-8)


def test_ablation_measures_where_the_inputs_act_and_never_draws_excluded_units(model, world,
                                                                              cache):
    """``top_by="inputs"`` keeps the images where the ablated inputs are most active: for the
    red-square detector relu2:0, exactly the planted red-square scenes. ``exclude`` keeps units
    out of the random draws: with every unit but relu2:1 excluded, each draw ablates relu2:1,
    and its drop equals that of ablating relu2:1 by name (an independent run)."""
    from circuits_cli.evidence import ablate

    folder, boxes = world
    green = Unit("relu3", 2)  # the green-square detector: its best images hold green squares
    red = ablate(model, green, [Unit("relu2", 0)], folder, draws=0, top_images=len(boxes),
                 top_by="inputs", cache_dir=cache)
    assert {p.name for p in red.images} == set(boxes) and red.top_by == "inputs"
    by_target = ablate(model, green, [Unit("relu2", 0)], folder, draws=0,
                       top_images=len(boxes), cache_dir=cache)
    assert len({p.name for p in by_target.images} & set(boxes)) < len(boxes) // 2

    others = [Unit("relu2", c) for c in range(2, 16)]
    res = ablate(model, Unit("relu3", 0), [Unit("relu2", 0)], folder, draws=4, seed=1,
                 exclude=others + [Unit("relu2", 0)], cache_dir=cache)
    assert res.excluded == others  # the inputs themselves are not excluded twice
    alone = ablate(model, Unit("relu3", 0), [Unit("relu2", 1)], folder, draws=0,
                   cache_dir=cache)
    np.testing.assert_allclose(res.random_drops, [alone.drop] * 4, rtol=1e-6)
    assert res.to_json()["random"]["excluded"] == [str(u) for u in others]
    with pytest.raises(CircuitsError, match="not of the inputs' layer"):
        ablate(model, Unit("relu3", 0), [Unit("relu2", 0)], folder, exclude=[Unit("relu1", 1)],
               cache_dir=cache)
    with pytest.raises(CircuitsError, match="unknown image ranking"):
        ablate(model, Unit("relu3", 0), [Unit("relu2", 0)], folder, top_by="input",
               cache_dir=cache)


def test_ablation_input_errors(model, world, cache):
    from circuits_cli.evidence import ablate, parse_inputs

    assert parse_inputs("relu2:0,1,relu1:2", model) == [Unit("relu2", 0), Unit("relu2", 1),
                                                          Unit("relu1", 2)]
    assert parse_inputs("relu2:0-2", model) == [Unit("relu2", c) for c in range(3)]
    for spec, msg in (("0,1", "has no layer"), ("relu2:x", "malformed"),
                      ("relu2:99", "out of range"), ("relu9:1", "unknown layer")):
        with pytest.raises(CircuitsError, match=msg):
            parse_inputs(spec, model)
    folder = world[0]
    with pytest.raises(CircuitsError, match="several layers"):
        ablate(model, Unit("relu3", 0), [Unit("relu2", 0), Unit("relu1", 0)], folder,
               cache_dir=cache)
    with pytest.raises(CircuitsError, match="does not come before"):
        ablate(model, Unit("relu1", 0), [Unit("relu2", 0)], folder, cache_dir=cache)


# ---------------------------------------------------------------------------------------------
# Finding the units of a class


def test_lookup_class_by_name_wnid_index_with_suggestions(model):
    from circuits_cli.evidence import lookup_class

    assert lookup_class(model, "red square") == 0
    assert lookup_class(model, "Green_Square") == 1
    assert lookup_class(model, "clut") == 2  # a unique part of a name
    assert lookup_class(model, "2") == 2
    with pytest.raises(CircuitsError, match="ambiguous.*red square.*green square"):
        lookup_class(model, "square")
    with pytest.raises(CircuitsError, match="did you mean 'red square'"):
        lookup_class(model, "red sqare")
    with pytest.raises(CircuitsError, match="out of range"):
        lookup_class(model, "7")


def test_find_ranks_the_planted_detector_first(model, world, cache):
    from circuits_cli.evidence import find_units

    res = find_units(model, "red square", "relu2", top=3)
    assert res.units[0].unit == Unit("relu2", 0) and res.units[0].weight > 0
    assert "no images given" in res.ranking
    assert find_units(model, "green square", "relu2", top=1).units[0].unit == Unit("relu2", 1)
    # with images: the class's images are those in the folder named after it
    res = find_units(model, "red square", "relu2", top=3, images=world[0], cache_dir=cache)
    assert len(res.class_image_files) == 8
    top = res.units[0]
    assert top.unit == Unit("relu2", 0) and top.class_activation > top.mean_activation > 0


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_examples_ablate_find(world, tmp_path):
    folder, boxes = world
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    r = run("examples", "relu2:0", "-m", SPEC, "--images", str(folder), "--top", "8",
             "--out", str(out), env=env)
    assert r.exit_code == 0, r.output
    assert set(re.findall(r"scene\d+\.png", r.output)) == set(boxes)
    pngs = list(out.glob("*relu2_0.png"))
    assert len(pngs) == 1 and pngs[0].with_suffix(".json").exists()
    r = run("examples", "relu2:0", "-m", SPEC, "--images", str(folder), "--top", "3",
             "--json", "--out", str(out), env=env)
    data = json.loads(r.stdout)
    assert data["unit"] == "relu2:0" and len(data["examples"]) == 3

    r = run("ablate", "relu3:0", "--inputs", "relu2:0,1,2", "-m", SPEC, "--images", str(folder),
             "--draws", "20", "--json", env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["relative_drop"] > 0.5 and data["z_score"] > 3
    r = run("ablate", "relu3:0", "--inputs", "relu2:0", "--top-images", "8", "--top-by",
            "inputs", "--exclude", "relu2:1,2", "-m", SPEC, "--images", str(folder),
            "--draws", "20", "--json", env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["top_by"] == "inputs" and data["random"]["excluded"] == ["relu2:1", "relu2:2"]
    r = run("ablate", "relu3:0", "--inputs", "relu2:0,1,2", "-m", SPEC, "--images", str(folder),
             "--draws", "20", env={**env, "CIRCUITS_PROGRESS_SECONDS": "0"})
    # in a log: plain progress lines on stderr, not a tqdm bar's carriage returns
    assert re.search(r"^ablation: \d+/\d+ img", r.stderr, re.M) and "\r" not in r.stderr, r.stderr

    r = run("find", "--class", "red square", "--layer", "relu2", "-m", SPEC, "--images",
             str(folder), "--top", "3", env=env)
    assert r.exit_code == 0, r.output
    first = [ln for ln in r.output.splitlines() if ln.strip().startswith("1 ")][0]
    assert "relu2:0" in first and "scene" in first


def test_cli_skips_corrupt_files_with_a_warning(world, tmp_path):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(world[0] / "red_square", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    (folder / "notes.txt").write_text("not an image")
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    r = run("examples", "relu2:0", "-m", SPEC, "--images", str(folder), "--top", "3",
             "--out", str(tmp_path / "out"), env=env)
    assert r.exit_code == 0, r.output
    assert "Warning: skipped 3 file(s)" in r.stderr
    assert "2 unreadable" in r.stderr and "1 non-image" in r.stderr
    assert "from 8 images" in r.stdout

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from circuits_cli.evidence import layer_activations
        from circuits_cli.zoo import load_model

        acts = layer_activations(load_model(SPEC), "relu2", folder, cache_dir=tmp_path / "c2")
    assert acts.n_images == 8 and acts.n_skipped == 3
    assert any("skipped 3" in str(w.message) for w in caught)


def test_cli_bad_inputs_are_one_line_errors(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"nope")
    (junk / "b.jpg").write_bytes(b"nope")
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    folder = str(world[0])
    cases = [
        (("examples", "relu2:0", "--images", str(empty)), "no images found"),
        (("examples", "relu2:0", "--images", str(junk)), "none of the 2 image file(s)"),
        (("examples", "relu2:0", "--images", str(tmp_path / "missing")), "does not exist"),
        (("examples", "relu2:99", "--images", folder), "out of range"),
        (("examples", "relu7:0", "--images", folder), "unknown layer"),
        (("ablate", "relu3:0", "--inputs", "relu3:1", "--images", folder), "does not come before"),
        (("ablate", "relu3:0", "--inputs", "1,2", "--images", folder), "has no layer"),
        (("ablate", "relu3:0", "--inputs", "relu2:0", "--exclude", "relu1:1", "--images",
          folder), "not of the inputs' layer"),
        (("find", "--class", "blue square", "--layer", "relu2"), "unknown class"),
        (("find", "--class", "red square", "--layer", "relu5"), "unknown layer"),
    ]
    for args, msg in cases:
        r = run(*args, "-m", SPEC, env=env)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.stderr, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.npy"))


# ---------------------------------------------------------------------------------------------
# Circuit folder: examples per node, ablation of the traced inputs, HTML report


def test_add_evidence_to_a_traced_circuit(model, world, tmp_path):
    from circuits_cli.reports.evidence import add_evidence
    from circuits_cli.trace import trace

    circuit = trace(model, Unit("relu3", 0), depth=1, top_k=3, source="relu2")
    assert {e.source for e in circuit.edges} == {"relu2:0", "relu2:1", "relu2:2"}
    out = tmp_path / "circuit"
    out.mkdir()
    circuit.save(out / "circuit.json")
    ev = add_evidence(out, model, world[0], top=8, draws=30, top_images=None,
                      cache_dir=tmp_path / "cache")
    for node in circuit.nodes:
        slug = Unit(node.layer, node.channel).slug
        assert (out / "examples" / f"{slug}.png").exists()
        assert (out / "examples" / f"{slug}.json").exists()
    data = json.loads((out / "evidence.json").read_text())
    assert data["n_images"] == 40
    [abl] = data["ablation"]  # the three planted inputs all excite
    assert abl["group"] == "excitatory" and abl["agrees"] and abl["relative_drop"] > 0.5
    # the red square node's examples are the red square images
    top = {e["file"] for e in data["examples"]["relu2:0"]["top"]}
    assert top <= set(world[1])

    page = ev.html.read_text()
    assert ev.html == out / "report.html"
    srcs = re.findall(r"src='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)  # self-contained
    for node in circuit.nodes:
        assert node.id in page
    assert "agrees" in page and "Ablation" in page


def test_add_evidence_refuses_a_foreign_folder(model, world, tmp_path):
    from circuits_cli.reports.evidence import add_evidence

    with pytest.raises(CircuitsError, match="no circuit.json"):
        add_evidence(tmp_path, model, world[0])
    assert not list(tmp_path.iterdir())


def test_cli_trace_with_images_writes_the_evidence_and_report(world, tmp_path):
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "trace"
    args = ["trace", "relu3:0", "-m", SPEC, "--from", "relu2", "--depth", "1", "--top-k", "3",
            "--no-render", "--out", str(out)]
    r = run(*args, "--images", str(world[0]), "--draws", "20", env=env)
    assert r.exit_code == 0, r.output
    assert "agrees" in r.stderr and "report.html" in r.stderr
    for name in ("circuit.json", "circuit.png", "evidence.json", "report.html"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert page.count("dataset examples of relu2:") == 3 and "circuit.png" in page
    # without images: the report still comes, with diagram and weights only
    out2 = tmp_path / "trace2"
    r = run(*args[:-1], str(out2), env=env)
    assert r.exit_code == 0, r.output
    assert (out2 / "report.html").is_file() and not (out2 / "evidence.json").exists()
    # a report.html that circuits did not write is never overwritten
    (out2 / "report.html").write_text("<html>my notes</html>")
    r = run(*args[:-1], str(out2), env=env)
    assert r.exit_code == 2 and "was not written by circuits" in r.stderr
    assert (out2 / "report.html").read_text() == "<html>my notes</html>"
    # a bad image folder fails before anything is written
    out3 = tmp_path / "trace3"
    r = run(*args[:-1], str(out3), "--images", str(tmp_path / "nowhere"), env=env)
    assert r.exit_code == 2 and not out3.exists()


def test_p_value_follows_the_direction_the_weights_predict():
    """An inhibitory input whose ablation raises the target far beyond every random draw gets a
    small one-sided p for the predicted rise (not the drop's p of 1)."""
    from circuits_cli.evidence import CircuitAblation
    from circuits_cli.evidence.ablation import AblationResult

    random_drops = list(np.linspace(-0.01, 0.01, 49))
    rise = AblationResult(target=Unit("t", 0), inputs=[Unit("s", 1)], mode="zero", reduce="mean",
                          n_images=10, n_skipped=0, baseline=1.0, ablated=1.4,
                          random_drops=random_drops)
    assert rise.p_value == 1.0 and rise.p_value_rise == pytest.approx(1 / 50)
    inhibitory = CircuitAblation(node="t:0", group="inhibitory", expected="rise", result=rise)
    assert inhibitory.p_expected == pytest.approx(1 / 50) and inhibitory.agrees
    assert inhibitory.to_json()["p_expected"] == pytest.approx(1 / 50)
    excitatory = CircuitAblation(node="t:0", group="excitatory", expected="drop", result=rise)
    assert excitatory.p_expected == 1.0 and not excitatory.agrees


def test_evidence_is_gathered_in_memory_and_serialised_once(model, world, tmp_path):
    """gather_evidence writes nothing; writing it gives the evidence.json that add_evidence
    writes for the same circuit (one serialisation)."""
    from circuits_cli.evidence import gather_evidence
    from circuits_cli.reports.evidence import add_evidence, write_evidence
    from circuits_cli.trace import trace

    circuit = trace(model, Unit("relu3", 0), depth=1, top_k=3, source="relu2")
    ev = gather_evidence(model, circuit, world[0], top=4, draws=30, top_images=None,
                         cache_dir=tmp_path / "cache")
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".png", ".html")
                or p.name == "evidence.json"]  # only caches were written
    assert set(ev.examples) == {n.id for n in circuit.nodes}
    assert [a.group for a in ev.ablations] == ["excitatory"] and ev.ablations[0].agrees
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        circuit.save(d / "circuit.json")
    write_evidence(a, ev, html=False)
    add_evidence(b, model, world[0], top=4, draws=30, top_images=None, html=False,
                 cache_dir=tmp_path / "cache")
    ja, jb = (json.loads((d / "evidence.json").read_text()) for d in (a, b))
    assert ja == jb
