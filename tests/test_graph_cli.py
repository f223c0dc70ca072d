"""``circuits graph`` as people run it: from a working directory into the default ``outputs/``,
twice, with bad input refused in one line before any work; the files it writes open and agree
with each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_clean_error, run
from PIL import Image

from circuits_cli.toy import world

pytestmark = pytest.mark.slow  # a few small toy graphs (about 30 s on 2 cores)

FAST = ("--layers", "mixed4a,mixed4b", "--max-nodes", "40", "--batch-size", "40",
        "--interventions", "2")


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graph-scene")
    img, _ = world.make_scene(3, "car")
    Image.fromarray(img).save(folder / "car.png")
    img, _ = world.make_scene(4, "bus")
    Image.fromarray(img).save(folder / "bus.png")
    return folder


def test_default_folder_twice_and_the_files_agree(scene_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "car.png").write_bytes((scene_dir / "car.png").read_bytes())
    first = run("graph", "car.png", "-m", "toy", "--target", "car", *FAST,
                "--intervene", "mixed4a:37=0")
    assert first.exit_code == 0, first.output
    out = tmp_path / "outputs" / "graph" / "toy" / "car-car"
    data = json.loads((out / "graph.json").read_text())
    assert data["format"] == "circuits-graph/1"
    assert data["metadata"]["target"]["label"] == "car"
    assert data["metadata"]["layers"] == ["mixed4a", "mixed4b"]
    ids = {n["node_id"] for n in data["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in data["links"])
    for n in data["nodes"]:
        if n.get("thumbnail"):
            assert (out / n["thumbnail"]).is_file()
    assert (out / "image.png").is_file() and (out / "graph.png").stat().st_size > 10_000
    html = (out / "graph.html").read_text()
    assert "circuits-graph/1" in html
    user = data["user_interventions"][0]
    assert user["edits"] == ["mixed4a:37=0"] and user["frozen_change"] < 0 < -user["free_change"]
    assert "Intervention ['mixed4a:37=0']" in first.output
    # the second run into the same default folder replaces its own files, same numbers
    second = run("graph", "car.png", "-m", "toy", "--target", "car", *FAST,
                 "--intervene", "mixed4a:37=0")
    assert second.exit_code == 0, second.output
    again = json.loads((out / "graph.json").read_text())
    assert again["scores"] == data["scores"] and again["links"] == data["links"]
    # a user's own file in the folder is never replaced
    (out / "graph.png").write_bytes(b"my figure")
    third = run("graph", "car.png", "-m", "toy", "--target", "car", *FAST)
    assert_clean_error(third, "graph.png", "not written by circuits")
    assert (out / "graph.png").read_bytes() == b"my figure"


def test_relative_out_json_and_top_class_by_default(scene_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("graph", scene_dir / "bus.png", "-m", "toy", *FAST, "--out", "runs/g", "--json",
              "--merge-positions")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["metadata"]["target"]["label"] == "bus"  # the image's top class
    assert data["metadata"]["positions"] == "merged"
    assert all(n["ctx_idx"] is None for n in data["nodes"] if n["feature_type"] == "neuron")
    assert (tmp_path / "runs" / "g" / "graph.json").is_file()


@pytest.mark.parametrize("args,needles", [
    (("missing.png",), ("does not exist",)),
    ((".",), ("is a folder",)),
    (("car.png", "--target", "zebra"), ("class",)),
    (("car.png", "--target", "mixed4b:999"), ("channels",)),
    (("car.png", "--layers", "mixed4b,mixed4a"), ("forward order",)),
    (("car.png", "--layers", "mixed9z"), ("layer",)),
    (("car.png", "--target", "mixed4a:3", "--layers", "mixed4a,mixed4b"), ("before",)),
    (("car.png", "--sae", "mixed4a"), ("LAYER=FOLDER",)),
    (("car.png", "--sae", "mixed4c=nowhere", "--layers", "mixed4a,mixed4b"),
     ("not one of the graph's layers",)),
    (("car.png", "--layers", "mixed4a,mixed4b", "--intervene", "mixed4a:37"),
     ("NODE=VALUE",)),
    (("car.png", "--layers", "mixed4a,mixed4b", "--intervene", "mixed3a:1=0"),
     ("not one of the graph's layers",)),
    (("car.png", "--node-threshold", "1.5"), ("between 0 and 1",)),
    (("car.png", "--reference", "nowhere"), ("does not exist",)),
])
def test_bad_input_is_one_line_before_any_work(scene_dir, tmp_path, monkeypatch, args,
                                               needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "car.png").write_bytes((scene_dir / "car.png").read_bytes())
    res = run("graph", *args, "-m", "toy")
    assert_clean_error(res, *needles)
    assert not (tmp_path / "outputs").exists()


def test_intervening_on_a_node_the_graph_does_not_have(scene_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("graph", scene_dir / "car.png", "-m", "toy", *FAST, "--intervene",
              "mixed4a:500=0")
    assert_clean_error(res, "mixed4a", "160 units")


def test_class_graph_over_a_folder_and_atlas_links(scene_dir, tmp_path, monkeypatch):
    """--images: the unit graphs of several car scenes averaged; --atlas: nodes point at the
    atlas's unit pages and feature visualizations that exist."""
    monkeypatch.chdir(tmp_path)
    cars = tmp_path / "cars"
    cars.mkdir()
    for i in range(3):
        img, _ = world.make_scene(100 + i, "car")
        Image.fromarray(img).save(cars / f"car{i}.png")
    atlas = tmp_path / "atlas"
    (atlas / "units" / "mixed4a").mkdir(parents=True)
    (atlas / "img" / "mixed4a" / "37").mkdir(parents=True)
    (atlas / "index.html").write_text("<html></html>")
    (atlas / "units" / "mixed4a" / "37.html").write_text("<html>unit 37</html>")
    Image.new("RGB", (8, 8)).save(atlas / "img" / "mixed4a" / "37" / "fv.png")
    res = run("graph", "--images", "cars", "-m", "toy", "--target", "car", *FAST,
              "--max-nodes", "150", "--batch-size", "75", "--atlas", "atlas", "--out", "class")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "class" / "graph.json").read_text())
    assert data["metadata"]["images"] == 3
    assert len(data["scores"]["faithfulness_per_image"]) == 3
    by_id = {n["node_id"]: n for n in data["nodes"]}
    window = by_id["mixed4a:37"]
    assert window["atlas"] == "../atlas/units/mixed4a/37.html"
    assert (tmp_path / "class" / window["thumbnail"]).is_file()
    assert all(n["atlas"] is None for k, n in by_id.items() if k != "mixed4a:37")
    top = max((n for n in data["nodes"] if n["feature_type"] == "neuron"),
              key=lambda n: n["influence"])
    assert top["label"] in ("mixed4a:37", "mixed4a:63")
    # the same folder as IMAGE, and an intervention on a class graph, are refused
    assert_clean_error(run("graph", "cars", "-m", "toy"), "is a folder")
    assert_clean_error(run("graph", "--images", "cars", "-m", "toy", "--intervene",
                           "mixed4a:37=0"), "one IMAGE")
    assert_clean_error(run("graph", "-m", "toy"), "name one IMAGE")
    assert_clean_error(run("graph", "--images", "cars", "-m", "toy", "--atlas", "cars"),
                       "not an atlas")


def test_a_graph_through_an_sae_has_features_and_error_nodes(scene_dir, tmp_path, monkeypatch):
    """--sae LAYER=FOLDER: the layer's nodes are the SAE's features plus one error node per
    position; the decomposition stays exact (a random TopK dictionary: what it misses is
    carried by the error nodes)."""
    import torch

    from circuits_cli.sae.model import SAE

    monkeypatch.chdir(tmp_path)
    SAE(160, 320, arch="topk", k=8).init_weights(torch.Generator().manual_seed(0)).save("sae4a")
    res = run("graph", scene_dir / "car.png", "-m", "toy", "--target", "car", *FAST,
              "--sae", "mixed4a=sae4a", "--json", "--node-threshold", "0.95",
              "--intervene", "mixed4a:f3=0")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    types = {n["feature_type"] for n in data["nodes"]}
    assert {"sae_feature", "error"} & types and "neuron" in types
    assert all(":f" in n["node_id"] for n in data["nodes"]
               if n["layer"] == "mixed4a" and n["feature_type"] != "error")
    assert data["scores"]["max_residual"] < 1e-4
    assert 0.0 <= data["scores"]["replacement"] < 1.0  # the error nodes carry influence
    assert data["metadata"]["sae"] == {"mixed4a": "sae4a"}
    assert "SAE's active set" in " ".join(data["metadata"]["frozen"]) or \
        any("SAE" in f for f in data["metadata"]["frozen"])
    assert_clean_error(run("graph", scene_dir / "car.png", "-m", "toy", *FAST,
                           "--sae", "mixed4a=sae4a", "--intervene", "mixed4a:3=0"),
                       "SAE features")


@pytest.mark.slow
def test_class_graph_on_two_local_jobs_equals_one_process(tmp_path, monkeypatch):
    """--launcher local --jobs 2: submitit's LocalExecutor runs the per-image graphs (then the
    per-image scores) on two processes, which save their parts; the merge here gives the
    graph.json one process builds (nodes, links to 1e-6, scores)."""
    monkeypatch.chdir(tmp_path)
    Path("scenes").mkdir()
    for i in range(4):
        img, _ = world.make_scene(200 + i, "car")
        Image.fromarray(img).save(f"scenes/car{i}.png")
    args = ("graph", "--images", "scenes", "-m", "toy", "--target", "car", *FAST, "--quiet")
    one = run(*args, "--out", "one")
    assert one.exit_code == 0, one.output
    arr = run(*args, "--out", "arr", "--launcher", "local", "--jobs", "2")
    assert arr.exit_code == 0, arr.output
    logs = sorted(Path("arr/.submitit").rglob("*_log.out"))
    assert len(logs) == 4  # two jobs a round, two rounds: real processes
    a = json.loads(Path("one/graph.json").read_text())
    b = json.loads(Path("arr/graph.json").read_text())
    assert [n["node_id"] for n in a["nodes"]] == [n["node_id"] for n in b["nodes"]]
    for x, y in zip(a["nodes"], b["nodes"], strict=True):
        assert x["activation"] == pytest.approx(y["activation"], abs=1e-6)
        assert x["influence"] == pytest.approx(y["influence"], abs=1e-6)
    links = {(e["source"], e["target"]): e["weight"] for e in a["links"]}
    assert {(e["source"], e["target"]) for e in b["links"]} == set(links)
    for e in b["links"]:
        assert e["weight"] == pytest.approx(links[(e["source"], e["target"])], abs=1e-6)
    for key in ("faithfulness", "replacement", "completeness", "pruned_nodes"):
        assert b["scores"][key] == pytest.approx(a["scores"][key], abs=1e-6)
    assert len(b["scores"]["faithfulness_per_image"]) == 4 and b["metadata"]["images"] == 4
    assert not Path("arr/.graph-parts").exists()  # the parts only serve a resumed run
    assert_clean_error(run("graph", "scenes/car0.png", "-m", "toy", "--launcher", "local"),
                       "--images DIR")


def test_an_interrupted_class_graph_array_redoes_only_missing_images(tmp_path, monkeypatch):
    """The array's jobs run here in turn (run_array stood in for); the first run stops after
    job 0 of the graphs round (as a cancelled array would). The re-run computes only job 1's
    images, and the graph equals the one-process graph."""
    import circuits_cli.launch as launch

    monkeypatch.chdir(tmp_path)
    Path("scenes").mkdir()
    for i in range(3):
        img, _ = world.make_scene(300 + i, "car")
        Image.fromarray(img).save(f"scenes/car{i}.png")
    calls = []

    def in_turn(fn, args, *, stop_after=None, **kw):
        out = []
        for a in args:
            out.append(fn(*a))
            calls.append(out[-1])
            if stop_after is not None and len(calls) >= stop_after:
                raise KeyboardInterrupt
        return out

    args = ("graph", "--images", "scenes", "-m", "toy", "--target", "car", *FAST, "--quiet",
            "--out", "arr", "--launcher", "local", "--jobs", "2")
    monkeypatch.setattr(launch, "run_array", lambda fn, a, **kw: in_turn(fn, a, stop_after=1))
    assert run(*args).exit_code != 0  # interrupted
    assert calls == [{"phase": "graphs", "computed": 2}]  # images 0 and 2
    assert len(list(Path("arr/.graph-parts").rglob("graphs-*.pt"))) == 2
    calls.clear()
    monkeypatch.setattr(launch, "run_array", lambda fn, a, **kw: in_turn(fn, a))
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert calls == [{"phase": "graphs", "computed": 0}, {"phase": "graphs", "computed": 1},
                     {"phase": "scores", "computed": 2}, {"phase": "scores", "computed": 1}]
    one = run("graph", "--images", "scenes", "-m", "toy", "--target", "car", *FAST, "--quiet",
              "--out", "one")
    assert one.exit_code == 0, one.output
    a = json.loads(Path("one/graph.json").read_text())
    b = json.loads(Path("arr/graph.json").read_text())
    assert a["nodes"] == b["nodes"] and a["links"] == b["links"] and a["scores"] == b["scores"]
