"""Models as people bring them: outputs in a tuple or dict (``--output``), class names from a
file (``--labels``), the label ``classify`` prints given back to ``find --class``, random weights
from the command line, and timm models (their own input size and normalisation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_clean_error, run

from circuits_cli.errors import CircuitsError
from circuits_cli.zoo import load_model

HERE = Path(__file__).resolve().parent
OUTPUTS = HERE / "planted_outputs_model.py"


def spec(factory: str) -> str:
    return f"{OUTPUTS}:{factory}"


@pytest.fixture(scope="module")
def world(planted_world):
    return planted_world[0]


@pytest.mark.parametrize("factory, key", [("as_tuple", None), ("features_first", "1"),
                                          ("as_dict", None), ("scores", "scores")])
def test_logits_are_picked_out_of_tuples_and_dicts(planted_evidence_model, factory, key):
    """Whatever holds the logits, every forward pass returns exactly the plain model's logits."""
    model = load_model(spec(factory), output=key)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.logits(x), planted_evidence_model.logits(x))
    assert model.output.startswith("output[")


@pytest.mark.parametrize("factory, key, needles", [
    ("as_dict", "nope", ("'nope'", "'logits'")),
    ("as_tuple", "5", ("INDEX from 0 to 1",)),
    ("backbone", "0", ("one tensor", "leave --output out")),
    ("features_first", "0", ("output[0]", "(1, 8, 32, 32)", "--output KEY|INDEX")),
])
def test_a_wrong_output_key_is_one_line(factory, key, needles):
    with pytest.raises(CircuitsError) as err:
        load_model(spec(factory), output=key)
    assert "\n" not in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize("factory, needles", [
    ("scores", ("'scores'", "--output KEY")),
    ("backbone", ("(1, 8, 32, 32)", "not (N, classes) logits")),
    ("features_first", ("output[0]", "--output")),
])
def test_a_model_without_logits_loads_and_what_needs_them_refuses(factory, needles, tmp_path,
                                                                   planted_world):
    """A backbone still has layers to look at (visualize, examples, trace need no logits);
    classify, find and steer refuse in one line naming what the model returns."""
    world = planted_world[0]
    model = load_model(spec(factory))
    for needle in needles:
        assert needle in model.no_logits
    with pytest.raises(CircuitsError, match="needs class logits"):
        model.logits(torch.zeros(1, 3, 64, 64))
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    assert_clean_error(run("classify", world, "-m", spec(factory), env=env),
                       "needs class logits", *needles)
    assert_clean_error(run("find", "--class", "0", "--layer", "relu3", "-m", spec(factory),
                           env=env), "needs class logits")
    assert_clean_error(run("steer", "relu3:1", "--images", world, "-m", spec(factory), env=env),
                       "needs class logits")
    r = run("examples", "relu3:1", "--images", world, "-k", "2", "-m", spec(factory), "--out",
            tmp_path / "ex", env=env)
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_commands_run_on_a_tuple_model_and_find_takes_what_classify_prints(world, tmp_path,
                                                                           monkeypatch):
    """classify, find, steer and sae train: the four commands that read logits, on a model
    returning (logits, features) with no class names; find --class takes 'class 0' as classify
    prints it."""
    monkeypatch.chdir(tmp_path)
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    m = spec("as_tuple")
    r = run("classify", world / "red_square", "-m", m, "--json", "-q", env=env)
    assert r.exit_code == 0, r.output
    top = json.loads(r.stdout)[0]["top"][0]
    assert top["label"] == "class 0" and top["index"] == 0  # the red square class, unnamed
    r = run("find", "--class", top["label"], "--layer", "relu3", "-m", m, "--json", env=env)
    assert r.exit_code == 0, r.output
    found = json.loads(r.stdout)
    assert found["class"] == 0 and found["units"][0]["unit"] == "relu3:1"  # the planted copy
    r = run("find", "--class", "[1]", "--layer", "relu3", "-m", m, "--json", env=env)
    assert json.loads(r.stdout)["units"][0]["unit"] == "relu3:2"
    assert_clean_error(run("find", "--class", "red square", "--layer", "relu3", "-m", m,
                           env=env), "no class labels", "class 3")
    r = run("steer", "relu3:1", "--images", world, "-m", m, "--strengths", "0,2", "--classes",
            "class 0", "--json", env=env)
    assert r.exit_code == 0, r.output
    levels = json.loads(r.stdout)["levels"]
    assert levels[0]["moved_into_supported"] == 0.0  # strength 0 moves nothing
    assert levels[1]["moved_into_supported"] > 0.5
    r = run("sae", "train", "relu3", "-m", m, "--images", world, "--steps", "20", "--expansion",
            "2", "--k", "4", "--threads", "1", env=env)
    assert r.exit_code == 0, r.output
    saved = next(Path("outputs/sae").rglob("cfg.json"))
    ds = json.loads(saved.read_text())["metrics"]["downstream"]
    assert ds["images"] > 0 and 0 <= ds["top1_sae"] <= 1


def test_labels_file_names_the_classes(world, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("red square\ngreen square\nclutter\n")
    r = run("classify", world / "red_square", "-m", spec("as_dict"), "--labels", labels,
            "--json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["top"][0]["label"] == "red square"
    r = run("find", "--class", "green square", "--layer", "relu3", "-m", spec("as_dict"),
            "--labels", labels, "--json")
    assert json.loads(r.stdout)["units"][0]["unit"] == "relu3:2"
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert_clean_error(run("classify", world, "-m", spec("as_dict"), "--labels",
                           tmp_path / "two.txt"), "2 names", "3 classes")
    assert_clean_error(run("classify", world, "-m", spec("as_dict"), "--labels",
                           tmp_path / "missing.txt"), "does not exist")
    assert_clean_error(run("classify", world, "-m", spec("scores")), "--output KEY",
                       "needs class logits")
    r = run("classify", world / "red_square", "-m", spec("scores"), "--output", "scores",
            "--json", "-q")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["top"][0]["index"] == 0


def test_a_model_that_fails_after_training_keeps_its_sae(world, tmp_path, monkeypatch):
    """sae train never loses finished training: downstream fidelity failing is a warning and a
    note in the metrics, the SAE is saved."""
    import circuits_cli.sae.evaluate as evaluate

    def broken(*_a, **_k):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(evaluate, "downstream_fidelity", broken)
    out = tmp_path / "sae"
    r = run("sae", "train", "relu3", "-m", spec("as_tuple"), "--images", world, "--steps", "10",
            "--expansion", "2", "--k", "4", "--threads", "1", "--out", out,
            env={"CIRCUITS_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.output
    assert "downstream fidelity was not measured" in r.stderr
    assert (out / "sae_weights.safetensors").is_file()
    cfg = json.loads((out / "cfg.json").read_text())
    assert "mat1" in cfg["metrics"]["downstream"]["skipped"]
    assert "not measured" in run("sae", "info", out).stdout


def test_random_weights_from_the_command_line():
    r = run("layers", "-m", "torchvision:resnet18", "--weights", "random", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["weights"] == "random:seed0"


def test_timm_models_bring_their_input_size_and_normalisation(tmp_path, world):
    """timm's tiny test ViT: 160 x 160 input and mean/std 0.5 from its data config, its blocks
    addressable as token layers (10 x 10 patches, the class token as its own layer), and
    classify feeds it 160 x 160 images."""
    pytest.importorskip("timm")
    model = load_model("timm:test_vit", weights="random")
    assert model.input_size == 160
    assert torch.allclose(model.preprocess(torch.full((1, 3, 8, 8), 0.5)), torch.zeros(1))
    assert torch.allclose(model.preprocess(torch.ones(1, 3, 8, 8)), torch.ones(1))
    info = model.layer("blocks.0")
    assert info.kind == "tokens" and info.shape == (model.module.embed_dim, 10, 10)
    assert model.layer("blocks.0/cls").shape == (model.module.embed_dim, 1, 1)
    r = run("classify", world / "red_square", "-m", "timm:test_vit", "--weights", "random",
            "--json", "-q")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)[0]["top"]) == 5
    r = run("layers", "-m", "timm:test_vit", "--weights", "random")
    assert "input 160x160" in r.stdout and "tokens" in r.stdout


def test_timm_offline_without_weights_is_one_line(monkeypatch):
    pytest.importorskip("timm")
    import circuits_cli.zoo.timm_models as tm

    monkeypatch.setattr(tm, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(tm, "_cached_file", lambda module: None)
    assert_clean_error(run("layers", "-m", "timm:test_resnet"), "Hugging Face hub",
                       "--weights FILE")
    assert_clean_error(run("layers", "-m", "timm:resnet5O", "--weights", "random"),
                       "timm model", "resnet50")


def test_timm_weights_file_round_trip(tmp_path):
    pytest.importorskip("timm")
    model = load_model("timm:test_resnet", weights="random")
    path = tmp_path / "w.pt"
    state = {k: v + 0.01 if v.is_floating_point() else v
             for k, v in model.module.state_dict().items()}
    torch.save(state, path)
    again = load_model("timm:test_resnet", weights=path)
    assert torch.equal(again.module.state_dict()["fc.weight"], state["fc.weight"])
    (tmp_path / "bad.pt").write_bytes(b"not a state dict")
    assert_clean_error(run("layers", "-m", "timm:test_resnet", "--weights", tmp_path / "bad.pt"),
                       "state dict")
