"""Hook points that read and write: ``run_with_hooks``, ``run_with_cache``, stopping early, and the
rule that ``hooks.py`` is the only module of the package that registers forward hooks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from circuits_cli.hooks import HookPoint, capture, probe, run_with_cache, run_with_hooks
from circuits_cli.zoo.base import LayerInfo, LoadedModel

REPO = Path(__file__).resolve().parents[1]


class _Net(nn.Module):
    """x -> a (linear, +1) -> b (doubling) -> c (sum over channels): every value is known."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=True)
        self.b = nn.Identity()
        self.c = nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.zero_()
            self.a.weight[:3, :, 0, 0] = torch.eye(3)
            self.a.bias.fill_(1.0)
            self.c.weight.fill_(1.0)
        self.calls: list[str] = []

    def forward(self, x):
        self.calls.append("a")
        x = self.a(x)
        self.calls.append("b")
        x = self.b(2 * x)
        self.calls.append("c")
        return self.c(x).mean(dim=(2, 3))


@pytest.fixture
def model():
    net = _Net().eval()
    layers = {n: LayerInfo(n, n, c, (c, 4, 4)) for n, c in (("a", 4), ("b", 4), ("c", 2))}
    return LoadedModel(name="net", module=net, layers=layers, preprocess=lambda x: x,
                       input_size=4, aliases={"first": "a"})


def test_hook_reads_and_writes_the_activation(model):
    x = torch.rand(2, 3, 4, 4)
    clean = run_with_hooks(model, x)
    # c sums 4 channels of 2 * (x + 1 padded with a 4th channel of 1): known in closed form
    want = 2 * (x.sum(1) + 4).mean(dim=(1, 2))
    assert torch.allclose(clean[:, 0], want) and torch.allclose(clean[:, 1], want)
    seen = {}

    def zero_channel_3(act, hook):
        seen["name"], seen["module"] = hook.name, hook.module
        act = act.clone()
        act[:, 3] = 0
        return act

    out = run_with_hooks(model, x, fwd_hooks=[("first", zero_channel_3)])
    assert seen == {"name": "a", "module": "a"}  # the alias resolves to the canonical layer
    assert torch.allclose(out, clean - 2.0)  # channel 3 was the constant 1, doubled


def test_hooks_on_one_point_compose_in_order(model):
    x = torch.rand(1, 3, 4, 4)
    out = run_with_hooks(model, x, fwd_hooks=[("b", lambda a, h: a * 0), ("b", lambda a, h: a + 1)])
    assert torch.allclose(out, torch.full_like(out, 4.0))  # (0 + 1) summed over 4 channels


def test_stop_at_never_runs_later_modules(model):
    x = torch.rand(1, 3, 4, 4)
    model.module.calls.clear()
    assert run_with_hooks(model, x, stop_at="a") is None
    assert model.module.calls == ["a"]
    out, cache = run_with_cache(model, x, ["a", "b"], fwd_hooks=[("a", lambda a, h: a * 3)])
    assert out is None and set(cache) == {"a", "b"}
    assert torch.allclose(cache["b"], 2 * cache["a"])  # the cache holds the written value
    assert torch.allclose(capture(model, x, "a")["a"][:, 3], torch.full((1, 4, 4), 1.0))


def test_hook_sees_module_inputs(model):
    got = {}

    def identity(out, hook: HookPoint):
        got["inputs"] = hook.inputs
        return hook.inputs[0]

    x = torch.rand(1, 3, 4, 4)
    _, cache = run_with_cache(model, x, ["a", "b"], fwd_hooks=[("b", identity)])
    assert torch.equal(got["inputs"][0], 2 * cache["a"])  # b's input is 2 * a


def test_probe_records_call_order_and_shapes(model):
    shapes = probe(model.module, torch.zeros(1, 3, 4, 4))
    assert list(shapes) == ["a", "b", "c"]
    assert shapes["a"] == (4, 4, 4) and shapes["c"] == (2, 4, 4)


def test_unknown_layer_is_a_clear_error(model):
    from circuits_cli.errors import CircuitsError

    with pytest.raises(CircuitsError, match="layer"):
        run_with_hooks(model, torch.rand(1, 3, 4, 4), fwd_hooks=[("nope", lambda a, h: a)])


def test_only_hooks_py_registers_forward_hooks():
    """Every read or write of an activation goes through circuits_cli/hooks.py."""
    pattern = re.compile(r"register_forward(_pre)?_hook|register_module_forward")
    offenders = []
    for root in ("circuits_cli", "benchmarks"):
        for path in (REPO / root).rglob("*.py"):
            if path == REPO / "circuits_cli" / "hooks.py":
                continue
            if pattern.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    assert pattern.search((REPO / "circuits_cli" / "hooks.py").read_text())  # the check can fail


def test_stop_holds_for_every_pass_in_one_block(model):
    """A second pass inside the same block computes its own activations (not the first's)."""
    from circuits_cli.hooks import forward, hooks

    xs = [torch.rand(1, 3, 4, 4) for _ in range(2)]
    with hooks(model, [("a", lambda a, h: a + 1)], stop_at="b", capture=["b"]) as acts:
        got = []
        for x in xs:
            forward(model, x)
            got.append(acts["b"].clone())
    for x, b in zip(xs, got, strict=True):
        assert torch.allclose(b, run_with_cache(model, x, "b")[1]["b"] + 2)
