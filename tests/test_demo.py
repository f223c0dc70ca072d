"""circuits demo: the whole story on the toy model, and on the papers' model from a local file."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_clean_error, run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_demo_on_toy_writes_every_output_and_finds_part_detectors(tmp_path, cache):
    out = tmp_path / "demo"
    result = run("demo", "-m", "toy", "--out", out, "--steps", "16", "-q")
    assert result.exit_code == 0, result.output
    circuit = json.loads((out / "trace" / "circuit.json").read_text())
    assert circuit["target"] == "mixed4b:64"  # the toy's car unit (d' 7.2, tests/test_toy.py)
    manifest = json.loads((out / "visualize" / "manifest.json").read_text())
    assert len(manifest["units"]) == 160  # the whole of mixed4a, the layer feeding the car unit
    for path in ("visualize/sheet.png", "trace/circuit.png", "trace/report.html",
                 "trace/evidence.json", "trace/examples/mixed4b_64.png"):
        assert (out / path).is_file(), path
    assert len(list((out / "scenes").glob("*.png"))) == 240
    # Zoom In's car circuit, whole (issue 14): the traced window detector mixed4a:37 excites the
    # top and inhibits the bottom, the wheel detector mixed4a:63 the reverse
    assert "as a car has its windows at the top" in result.stdout
    assert "as a car has its wheels at the bottom" in result.stdout
    assert "not as a car has" not in result.stdout
    # ablation agrees with the weights for both groups beyond 3 sd of the random draws (issue
    # 14; measured: the excitatory [37, 63] -99.9% against -0.5% +- 0.6%, z 162, over the car
    # unit's top 100 scenes; the inhibitory [136, 68, 89] +37% against +4.9% +- 5.4%, z -6.0,
    # over the 100 scenes where they are most active; the draws never take a traced input)
    assert circuit["top_k"] == [5, 2]
    ablation = {a["group"]: a for a in
                json.loads((out / "trace" / "evidence.json").read_text())["ablation"]}
    excitatory, inhibitory = ablation["excitatory"], ablation["inhibitory"]
    assert excitatory["inputs"] == ["mixed4a:37", "mixed4a:63"]
    assert excitatory["relative_drop"] > 0.9 and excitatory["z_score"] > 20
    assert inhibitory["inputs"] == ["mixed4a:136", "mixed4a:68", "mixed4a:89"]
    assert inhibitory["top_by"] == "inputs" and inhibitory["relative_drop"] < -0.2
    assert inhibitory["z_score"] < -4 and inhibitory["agrees"]
    assert sorted(inhibitory["random"]["excluded"]) == ["mixed4a:37", "mixed4a:63"]
    # the rest of the story: superposition, the car layer's SAE, steering its car feature
    for path in ("superposition/wtw_sweep.png", "sae/cfg.json", "sae/sae_weights.safetensors",
                 "steer/steer.png", "steer/steer.json", "report.html"):
        assert (out / path).is_file(), path
    page = (out / "report.html").read_text()
    for heading in ("The car circuit of", "superposition", "The features of the car unit",
                    "Steering the car feature", "Which units carried one car scene"):
        assert heading in page, heading
    # the attribution graph of one car scene: exact, led by the window and wheel units
    graph = json.loads((out / "graph" / "graph.json").read_text())
    assert graph["metadata"]["target"]["label"] == "car"
    assert graph["scores"]["max_residual"] < 1e-4
    top = sorted((n for n in graph["nodes"] if n["feature_type"] == "neuron"),
                 key=lambda n: -n["influence"])[:6]
    assert {"mixed4a:37", "mixed4a:63"} <= {n["label"] for n in top}
    assert "graph/graph.png" in page and "graph/graph.html" in page
    steer = json.loads((out / "steer" / "steer.json").read_text())
    assert steer["supported_classes"] == ["car"]
    level = {lv["strength"]: lv for lv in steer["levels"]}
    # boosting the car feature makes cars (measured 0.79 at strength 1 on the demo's SAE);
    # suppressing it lowers P(car) on car scenes (measured 0.82 -> 0.15 at strength -1)
    assert level[1.0]["moved_into_supported"] > 0.3
    assert level[-0.5]["supported_prob_on_supported"] < \
        level[0.0]["supported_prob_on_supported"] - 0.1


def test_demo_traces_the_papers_car_detector_on_inceptionv1(tmp_path, cache):
    from lucent.modelzoo.inceptionv1.InceptionV1 import InceptionV1 as Lucent

    weights = tmp_path / "inception5h.pth"
    torch.manual_seed(0)
    torch.save(Lucent(pretrained=False).state_dict(), weights)
    out = tmp_path / "demo"
    result = run("demo", "-m", "inceptionv1", "--weights", weights, "--out", out,
                 "--steps", "2", "-q")
    assert result.exit_code == 0, result.output
    circuit = json.loads((out / "trace" / "circuit.json").read_text())
    assert circuit["target"] == "mixed4c:447"
    assert [h["source"] for h in circuit["hops"]] == ["mixed4b", "mixed4a"]
    assert (out / "trace" / "circuit.png").is_file()
    assert "no images given" in result.stderr


def test_demo_bad_inputs_fail_before_writing(tmp_path, cache):
    out = tmp_path / "demo"
    assert_clean_error(run("demo", "-m", "toy", "--out", out, "--unit", "mixed9z:1"),
                       "unknown layer")
    assert_clean_error(run("demo", "-m", "toy", "--out", out, "--images", tmp_path / "none"),
                       "does not exist")
    assert not out.exists()
    assert_clean_error(run("demo", "-m", "torchvision:resnet18", "--weights", tmp_path / "x.pth",
                           "--out", out), "does not exist")
