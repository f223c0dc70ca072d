"""The model registry is complete by construction; weights are found by one loader from data;
every model builds with random weights without reading or downloading anything."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import circuits_cli.zoo as zoo
from circuits_cli.errors import CircuitsError
from circuits_cli.zoo import load_model, registry
from circuits_cli.zoo.weights import WeightsSpec, find_beside, find_weights, sha256_file, weights_id

PACKAGE = Path(zoo.__file__).resolve().parent
#: Output classes of each registered model (from the papers / the checkpoints).
NUM_CLASSES = {"inceptionv1": 1008, "googlenet-bvlc": 1000, "toy": 8}
#: Modules that build families of models named by a pattern rather than one registered name.
FAMILIES = {"circuits_cli.zoo.torchvision_models", "circuits_cli.zoo.timm_models",
            "circuits_cli.zoo.user"}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Every default weights source points nowhere: a model that tried to read or download its
    weights would fail."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv("CIRCUITS_INCEPTIONV1_URL", (tmp_path / "nowhere.pth").as_uri())
    monkeypatch.setenv("CIRCUITS_BVLC_WEIGHTS", str(tmp_path / "missing.npz"))
    monkeypatch.chdir(tmp_path)


def test_every_zoo_module_with_a_builder_is_registered():
    modules = {f"circuits_cli.zoo.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)])}
    builders = {name for name in modules if hasattr(importlib.import_module(name), "build")}
    assert builders == set(registry.MODULES.values()) | FAMILIES
    entries = registry.registered()
    assert set(entries) == set(registry.MODULES) == set(NUM_CLASSES)
    for name, entry in entries.items():
        assert entry.build is importlib.import_module(registry.MODULES[name]).build
        assert isinstance(entry.weights, WeightsSpec) and entry.weights.file
        assert entry.weights.preprocessing, name


def test_the_decorator_refuses_a_name_the_table_does_not_list():
    spec = WeightsSpec(title="x", file="x.pt")
    with pytest.raises(RuntimeError, match="MODULES lists None"):
        registry.register_model("unlisted", weights=spec)(lambda weights: None)
    with pytest.raises(RuntimeError, match="registered in"):
        registry.register_model("toy", weights=spec)(lambda weights: None)


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_every_registered_model_builds_with_random_weights(name, offline):
    model = load_model(name, weights="random")
    assert model.weights_id == "random:seed0"
    x = torch.rand(1, 3, model.input_size, model.input_size)
    logits = model.logits(x)
    assert logits.shape == (1, NUM_CLASSES[name])
    assert torch.isfinite(logits).all() and logits.std() > 0
    # seeded: a second build is the same network (pretrained=False is the same request), and
    # building a model leaves the global random stream where it was
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    again = load_model(name, pretrained=False)
    assert torch.equal(torch.rand(3), expected)
    for (k, a), (_, b) in zip(model.module.state_dict().items(),
                              again.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_random_weights_differ_from_the_checkpoint():
    shipped = load_model("toy")
    random = load_model("toy", weights="random")
    assert shipped.weights_id == weights_id(registry.entry("toy").weights.folders()[0] / "toy.pt")
    assert not torch.equal(shipped.module.conv2d0_pre_relu_conv.weight,
                           random.module.conv2d0_pre_relu_conv.weight)


def test_torchvision_and_user_models_build_with_random_weights(offline, tmp_path):
    model = load_model("torchvision:resnet18", weights="random")
    assert model.logits(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    assert model.labels[0] == "tench"
    file = tmp_path / "net.py"
    file.write_text(textwrap.dedent("""
        from torch import nn
        def tiny():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 2))
    """))
    user = load_model(f"{file}:tiny", weights="random")
    assert user.logits(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    with pytest.raises(CircuitsError, match="both asked for"):
        load_model("toy", weights=file, pretrained=False)


def test_find_weights_order_and_messages(tmp_path, monkeypatch):
    spec = WeightsSpec(title="Planted", file="p.npz", env="PLANTED_WEIGHTS",
                       search=("{cwd}", "{cwd}/../shared/models"), labels="labels.txt")
    work, shared = tmp_path / "work", tmp_path / "shared" / "models"
    work.mkdir()
    shared.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("PLANTED_WEIGHTS", raising=False)
    with pytest.raises(CircuitsError, match=r"Planted weights not found \(p.npz in ., "
                                            r"../shared/models, or \$PLANTED_WEIGHTS\); "
                                            r"pass --weights FILE"):
        find_weights(spec)
    (shared / "p.npz").write_bytes(b"shared")
    (shared / "labels.txt").write_text("a\n")
    assert find_weights(spec) == shared / "p.npz"
    (work / "p.npz").write_bytes(b"local")
    assert find_weights(spec) == work / "p.npz"  # the current directory comes first
    assert find_beside(spec, "labels.txt", work / "p.npz") == shared / "labels.txt"
    own = tmp_path / "own.npz"
    own.write_bytes(b"own")
    monkeypatch.setenv("PLANTED_WEIGHTS", str(own))
    assert find_weights(spec) == own  # the variable comes before every folder
    monkeypatch.setenv("PLANTED_WEIGHTS", str(tmp_path / "gone.npz"))
    (work / "p.npz").unlink()
    (shared / "p.npz").unlink()
    with pytest.raises(CircuitsError, match=r"\$PLANTED_WEIGHTS is .*gone.npz"):
        find_weights(spec)


def test_one_hash_function(tmp_path):
    import hashlib

    blob = bytes(range(256)) * 9000  # over 2 MiB: several chunks
    (tmp_path / "w.bin").write_bytes(blob)
    assert sha256_file(tmp_path / "w.bin") == hashlib.sha256(blob).hexdigest()
    assert weights_id(tmp_path / "w.bin") == "sha256:" + hashlib.sha256(blob).hexdigest()[:16]
    # no other module of the zoo hashes files itself
    for path in PACKAGE.glob("*.py"):
        if path.name != "weights.py":
            assert "hashlib.sha256" not in path.read_text(), path.name


def test_help_imports_no_torch():
    code = ("import sys, runpy\nsys.argv = ['circuits', '--help']\n"
            "try:\n    runpy.run_module('circuits_cli.cli', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().splitlines()[-1] == "[]"
