"""Layers of any model, traced: aliases collapse to one layer, BatchNorm folds into conv-to-conv
weights (equal to a hand computation), a residual network's skip path is an edge found with its
planted weight, inputs of strength 0 are never listed, and resnets trace block to block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import run

from circuits_cli.connections import expanded_weights, rank_inputs
from circuits_cli.trace import previous_layer, render_tree, trace
from circuits_cli.units import Unit
from circuits_cli.zoo import load_model

PLANTED = Path(__file__).resolve().parent / "planted_residual.py"


@pytest.fixture(scope="module")
def bn_stack():
    return load_model(f"{PLANTED}:bn_stack")


@pytest.fixture(scope="module")
def residual():
    return load_model(f"{PLANTED}:residual")


@pytest.fixture(scope="module")
def resnet18():
    return load_model("torchvision:resnet18", weights="random")


def test_conv_batchnorm_relu_is_one_layer(bn_stack):
    layers = bn_stack.layers
    assert layers["features.conv2"].alias_of == "features.relu2"
    assert layers["features.bn2"].alias_of == "features.relu2"
    assert layers["features"].alias_of == "features.relu2"  # a Sequential ending in them
    assert layers["features.relu2"].alias_of is None
    assert previous_layer(bn_stack, "features.relu2") == "features.relu1"
    assert previous_layer(bn_stack, "features.conv2") == "features.relu1"  # the same layer


def test_batchnorm_is_folded_into_the_exact_weights(bn_stack):
    """relu1 -> relu2 is conv2 then bn2 (then a ReLU): the exact weights are conv2's kernels
    times bn2's gamma / sqrt(var + eps), per output channel: by hand, and by the linear method
    (an independent computation: gradients through the eval-mode network)."""
    f = bn_stack.module.features
    scale = f.bn2.weight / torch.sqrt(f.bn2.running_var + f.bn2.eps)
    hand = f.conv2.weight * scale.view(-1, 1, 1, 1)
    exact = expanded_weights(bn_stack, "features.relu1", "features.relu2", method="exact")
    torch.testing.assert_close(exact, hand, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(exact, f.conv2.weight, rtol=0.05)  # folding changed them
    linear = expanded_weights(bn_stack, "features.relu1", "features.relu2", method="linear")
    torch.testing.assert_close(linear, hand, rtol=1e-4, atol=1e-6)
    circuit = trace(bn_stack, Unit("features.relu2", 3), depth=1, top_k=2)
    assert circuit.hops[0].method == "exact"
    best = circuit.inputs("features.relu2:3")[0]
    strengths = hand[3].flatten(1).norm(dim=1)
    assert best.source == f"features.relu1:{int(strengths.argmax())}"
    assert best.strength == pytest.approx(float(strengths.max()), rel=1e-5)


def test_the_skip_path_is_found_with_its_planted_weight(residual):
    circuit = trace(residual, Unit("block2", 0), depth=2, top_k=3)
    assert [(h.source, h.target) for h in circuit.hops] == [("block1", "block2"),
                                                           ("stem.1", "block1")]
    into2 = circuit.inputs("block2:0")
    assert [e.source for e in into2] == ["block1:0"]  # the skip path alone: others are 0
    assert into2[0].strength == pytest.approx(1.0, abs=1e-6) and into2[0].sign == 1
    into1 = {e.source: e.strength for e in circuit.inputs("block1:0")}
    assert list(into1) == ["stem.1:2", "stem.1:0"]  # convs 2 x 0.75, then the skip path
    assert into1["stem.1:2"] == pytest.approx(1.5, abs=1e-6)
    assert into1["stem.1:0"] == pytest.approx(1.0, abs=1e-6)
    text = render_tree(circuit)
    assert "linear approximation" in text and "skip path" in text
    # the kernel of the skip path is the identity: 1 at the centre, 0 around it
    k = torch.tensor(into2[0].kernel)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6) and k.abs().max().item() == k.max()


def test_inputs_of_strength_zero_are_never_listed():
    kernels = torch.zeros(5, 3, 3)
    kernels[2, 1, 1] = 0.5
    kernels[4, 0, 0] = -0.1
    assert [c.channel for c in rank_inputs(kernels, 5)] == [2, 4]
    assert rank_inputs(torch.zeros(4, 1, 1), 3) == []


def test_resnet_traces_block_to_block(resnet18):
    assert resnet18.layers["layer4.1"].alias_of == "layer4"
    assert previous_layer(resnet18, "layer4") == "layer4.0"
    assert previous_layer(resnet18, "layer4.0") == "layer3"
    assert previous_layer(resnet18, "layer4.1.conv2") == "layer4.1.conv1"  # inside a block
    circuit = trace(resnet18, Unit("layer4", 5), depth=1, top_k=3)
    assert circuit.hops[0].source == "layer4.0"
    # the skip path makes layer4.0:5 the strongest input of layer4:5 (random weights are weak)
    assert circuit.inputs("layer4:5")[0].source == "layer4.0:5"
    # BatchNorm between two convs of a block folds into the exact weights
    e = expanded_weights(resnet18, "layer4.1.conv1", "layer4.1.conv2", [5], method="exact")
    m = resnet18.module.layer4[1]
    s = m.bn1.weight / torch.sqrt(m.bn1.running_var + m.bn1.eps)
    torch.testing.assert_close(e[0], m.conv2.weight[5] * s.view(-1, 1, 1))


def test_layers_says_which_is_which():
    r = run("layers", "-m", f"{PLANTED}:residual", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)["layers"]}
    assert rows["block1.relu"]["traced_as"] == "block1" and rows["block1"]["traced_as"] == "block1"
    text = run("layers", "-m", f"{PLANTED}:residual").stdout
    assert "traced as block1" in text
