"""``circuits graph`` as people run it: from a working directory into the default ``outputs/``,
twice, with bad input refused in one line before any work; the files it writes open and agree
with each other."""

from __future__ import annotations

import json

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
