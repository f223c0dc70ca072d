"""Every command on every kind of model people study, with random weights: the commands x
models matrix of benchmarks/models_matrix.py, run here on timm's tiny test models (a ResNet, a
ConvNeXt and a ViT, 160 x 160 inputs): each command runs, or refuses with one line saying why;
none crashes. The full matrix on torchvision resnet50, convnext_tiny, vit_b_16 and timm resnet50,
vit_small_patch16_224 is the script's (its results are in docs/guides/your-own-model.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "models_matrix.py"
_spec = importlib.util.spec_from_file_location("models_matrix", SCRIPT)
matrix = importlib.util.module_from_spec(_spec)
sys.modules["models_matrix"] = matrix  # (its dataclass looks its module up)
_spec.loader.exec_module(matrix)

#: tiny stand-ins for the matrix's models: (--model, layer, earlier layer, layer for find), and
#: the commands run on each: all of them on the ViT (token layers are the new case), on the
#: ResNet and the ConvNeXt those whose path differs for them (tracing through residual blocks
#: and BatchNorm/LayerNorm, logits, steering): the suite's time is shared
TINY = {
    "vit": ("timm:test_vit", "blocks.3", "blocks.2", "blocks.5"),
    "resnet": ("timm:test_resnet", "layer3", "layer2", "layer4"),
    "convnext": ("timm:test_convnext", "stages.2", "stages.1", "stages"),
}
SUBSET = {"vit": None, "resnet": ("layers", "trace", "ablate", "find"),
          "convnext": ("classify", "trace", "steer")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return matrix.noise_images(tmp_path_factory.mktemp("matrix_images"), n=4, side=180)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TINY))
def test_every_command_runs_or_refuses_in_one_line(kind, images, tmp_path):
    model, layer, earlier, last = TINY[kind]
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    outcomes = {}
    for command, args in matrix.commands(layer, earlier, last, images, tmp_path).items():
        if SUBSET[kind] is None or command in SUBSET[kind]:
            outcomes[command] = matrix.run_one(model, args, env)
    crashes = {c: m for c, (status, m) in outcomes.items() if status == "CRASH"}
    assert not crashes, crashes
    # on these models nothing needs refusing: every command applies
    assert {c for c, (status, _) in outcomes.items() if status == "ok"} == set(outcomes), \
        outcomes
    assert (tmp_path / "trace" / "circuit.json").is_file()
    if kind == "vit":
        assert (tmp_path / "sae" / "sae_weights.safetensors").is_file()
        assert (tmp_path / "atlas" / "index.html").is_file()


def test_the_matrix_reports_refusals_and_crashes_apart(images, tmp_path):
    """The script's classification itself: a bad unit is a refusal with its line."""
    status, message = matrix.run_one("timm:test_resnet", ["weights", "layer3:99999",
                                                          "--no-render"],
                                     {"CIRCUITS_CACHE": str(tmp_path)})
    assert status == "refused" and "out of range" in message
    text = matrix.markdown([matrix.Outcome("m", "weights", "refused", 0.1, message),
                            matrix.Outcome("m", "layers", "ok", 1.0)])
    assert "| weights | refused (0 s) |" in text and "out of range" in text
