"""Expanded weights against ground truth: planted kernels, the exact method against the
linearized one, the linearized one against finite differences of the real network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted_nets import (
    BODY,
    BODY_COLOUR,
    CAR,
    WHEEL_EDGE,
    WHEELS,
    WINDOW_EDGE,
    WINDOW_OFF,
    WINDOWS,
    inception_net,
    planted_car_net,
)

from circuits_cli.connections import (
    Connection,
    exact_available,
    expanded_weights,
    rank_inputs,
    resolve_method,
)
from circuits_cli.errors import CircuitsError


def _close(a, b, tol=1e-5):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(float(b.abs().max()), 1e-12)
    err = float((a - b).abs().max()) / scale
    assert err < tol, f"relative error {err:.2e} >= {tol}"


def _finite_differences(model, source, target, channels, at, size, eps=1e-3):
    """d target[j, centre] / d source[i, y, x] of the real network by central differences,
    around the source value ``at`` (1, C, H, W), for the (size x size) window centred on the
    target's centre. The network runs in float64."""
    src, tgt = model.layer(source), model.layer(target)
    C, H, W = at.shape[1:]
    r = size // 2
    cy, cx = H // 2, W // 2
    pos = [(i, y, x) for i in range(C) for y in range(cy - r, cy + r + 1)
           for x in range(cx - r, cx + r + 1)]
    batch = torch.zeros(2 * len(pos), C, H, W, dtype=at.dtype)
    batch[:] = at
    for n, (i, y, x) in enumerate(pos):
        batch[2 * n, i, y, x] += eps
        batch[2 * n + 1, i, y, x] -= eps
    out = {}
    h1 = model.module.get_submodule(src.module).register_forward_hook(lambda *_: batch)
    h2 = model.module.get_submodule(tgt.module).register_forward_hook(
        lambda _m, _i, o: out.__setitem__("t", o))
    try:
        with torch.no_grad():
            model.module(torch.zeros(len(batch), 3, model.input_size, model.input_size,
                                     dtype=at.dtype))
    finally:
        h1.remove()
        h2.remove()
    t = out["t"][:, channels, t_centre(out["t"])[0], t_centre(out["t"])[1]]
    d = (t[0::2] - t[1::2]) / (2 * eps)  # [positions, targets]
    return d.T.reshape(len(channels), C, size, size)


def t_centre(t):
    return t.shape[2] // 2, t.shape[3] // 2


# ---------------------------------------------------------------------------------------------
# exact vs linearized vs finite differences


def test_exact_equals_linearized_on_a_linear_network():
    model = inception_net(linear=True, seed=1)
    assert resolve_method(model, "mixed_a", "mixed_b") == "exact"
    exact = expanded_weights(model, "mixed_a", "mixed_b", method="exact")
    linear = expanded_weights(model, "mixed_a", "mixed_b", method="linear")
    assert exact.shape == (16, 16, 5, 5)
    _close(linear, exact, 1e-5)
    # and both are the real (linear) network's derivatives
    model64 = inception_net(linear=True, seed=1, dtype=torch.float64)
    at = torch.randn(1, 16, 16, 16, dtype=torch.float64)
    fd = _finite_differences(model64, "mixed_a", "mixed_b", list(range(16)), at, 5)
    _close(exact.double(), fd, 1e-5)


def test_exact_equals_linearized_with_relus_and_max_pools():
    """The exact method ignores the ReLU in a bottleneck path and treats the pool branch as an
    average pool, the linearized method does the same through hooks: they agree on any net."""
    model = inception_net(linear=False, seed=2)
    exact = expanded_weights(model, "mixed_a", "mixed_b", method="exact")
    linear = expanded_weights(model, "mixed_a", "mixed_b", method="linear")
    _close(linear, exact, 1e-5)


def _keep_relus_on(model, source, at):
    """Raise each conv's bias (in forward order) until its output is >= 1 everywhere for the
    source value ``at``: every ReLU after the source is then on, the network locally linear."""
    src = model.layer(source)
    convs = [m for m in model.module.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        seen = {}
        h1 = model.module.get_submodule(src.module).register_forward_hook(lambda *_: at)
        h2 = conv.register_forward_hook(lambda _m, _i, o: seen.__setitem__("out", o))
        with torch.no_grad():
            model.module(torch.zeros(1, 3, model.input_size, model.input_size, dtype=at.dtype))
            h1.remove()
            h2.remove()
            if "out" in seen:  # convs before the source do not run on ``at``
                low = seen["out"].amin(dim=(0, 2, 3))
                conv.bias += torch.clamp(1.0 - low, min=0.0)


def test_linearized_matches_finite_differences_where_the_network_is_locally_linear():
    model = inception_net(linear=False, seed=3, dtype=torch.float64)
    # the max-pools are not locally averages: swap the blocks' max-pools for average pools
    for module in model.module.modules():
        if isinstance(module, torch.nn.MaxPool2d) and module is not model.module.pool1:
            module.__class__ = torch.nn.AvgPool2d
            module.count_include_pad, module.divisor_override = False, None
    at = torch.rand(1, 8, 16, 16, dtype=torch.float64)
    _keep_relus_on(model, "pool1", at)
    channels = [0, 5, 11, 15]
    linear = expanded_weights(model, "pool1", "mixed_b", channels, method="linear")
    assert linear.shape == (4, 8, 9, 9)  # two blocks with 5x5 kernels: a 9x9 receptive field
    fd = _finite_differences(model, "pool1", "mixed_b", channels, at, 9)
    _close(linear, fd, 1e-6)


def test_linearized_differs_from_the_real_network_where_relus_are_off():
    """The check above can fail: with every ReLU off the real network's derivative is zero."""
    model = inception_net(linear=False, bias=-50.0, seed=3, dtype=torch.float64)
    linear = expanded_weights(model, "mixed_a", "mixed_b", [11], method="linear")
    fd = _finite_differences(model, "mixed_a", "mixed_b", [11], torch.rand(1, 16, 16, 16,
                                                                           dtype=torch.float64), 5)
    assert float(fd.abs().max()) == 0.0 and float(linear.abs().max()) > 0.1


def test_linearized_through_lucent_modules():
    """lucent's InceptionV1: redirected-ReLU modules, -inf padding before its max-pools."""
    from circuits_cli.zoo.base import LoadedModel
    from circuits_cli.zoo.inceptionv1 import InceptionV1, describe, preprocess

    torch.manual_seed(0)
    module = InceptionV1().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    layers, blocks = describe(module)
    model = LoadedModel("lucent-random", module, layers, preprocess, blocks=blocks)
    exact = expanded_weights(model, "mixed3a", "mixed3b", [0, 200, 300, 479], method="exact")
    linear = expanded_weights(model, "mixed3a", "mixed3b", [0, 200, 300, 479], method="linear")
    _close(linear, exact, 1e-5)
    # conv feeding conv: the kernel itself, by both methods
    assert resolve_method(model, "conv2d1", "conv2d2") == "exact"
    _close(expanded_weights(model, "conv2d1", "conv2d2", [7], method="linear"),
           module.conv2d2_pre_relu_conv.weight[[7]], 1e-6)
    # across a max-pool (stride 2) only the linear method exists
    assert not exact_available(model, "mixed3b", "mixed4a")
    assert expanded_weights(model, "mixed3b", "mixed4a", [3]).shape[:2] == (1, 480)


# ---------------------------------------------------------------------------------------------
# planted circuit


def test_planted_car_kernels_are_recovered_exactly():
    planted = planted_car_net()
    model = planted.model
    for method in ("exact", "linear"):
        kernels = expanded_weights(model, "mixed_a", "mixed_b", [CAR], method=method)[0]
        for channel, kernel in planted.car_inputs.items():
            _close(kernels[channel], kernel, 1e-6)
        ranked = rank_inputs(kernels, top_k=3)
        assert [c.channel for c in ranked] == [WINDOWS, WHEELS, BODY]
        assert [c.sign for c in ranked] == [1, 1, 1]
        windows, wheels = ranked[0].kernel, ranked[1].kernel
        assert windows[:2].min() > 0 and windows[3:].max() < 0  # excites the top, inhibits below
        assert wheels[3:].min() > 0 and wheels[:2].max() < 0
        strengths = {c.channel: c.strength for c in rank_inputs(kernels)}
        weakest_planted = min(strengths[c] for c in planted.car_inputs)
        assert max(strengths[c] for c in planted.distractors) < 0.5 * weakest_planted
        assert sum(strengths[c] > 0 for c in planted.distractors) >= 8  # distractors are there


def test_planted_second_layer():
    planted = planted_car_net()
    kernels = expanded_weights(planted.model, "pool1", "mixed_a", [WINDOWS, WHEELS, BODY])
    for row, unit in zip(kernels, (WINDOWS, WHEELS, BODY), strict=True):
        for channel, kernel in planted.second[unit].items():
            _close(row[channel], kernel, 1e-6)
    top = rank_inputs(kernels[0], top_k=2)
    assert [(c.channel, c.sign) for c in top] == [(WINDOW_EDGE, 1), (WINDOW_OFF, -1)]
    assert rank_inputs(kernels[1], 1)[0].channel == WHEEL_EDGE
    assert rank_inputs(kernels[2], 1)[0].channel == BODY_COLOUR


# ---------------------------------------------------------------------------------------------
# batching, logits, ranking, errors


def test_batching_and_subsets_give_the_same_kernels():
    model = inception_net(seed=4)
    full = expanded_weights(model, "pool1", "mixed_b", method="linear")
    one_by_one = expanded_weights(model, "pool1", "mixed_b", method="linear", batch_size=1)
    _close(one_by_one, full, 1e-6)
    _close(expanded_weights(model, "pool1", "mixed_b", [9, 2], method="linear"), full[[9, 2]],
           1e-6)


def test_logits_are_the_linearized_class_gradient():
    model = inception_net(seed=5)
    grads = expanded_weights(model, "mixed_b", "logits", [3, 7])
    assert grads.shape == (2, 16, 16, 16)
    # after mixed_b the head is a mean over positions then the classifier: W[c, i] / (H * W)
    want = model.module.fc.weight[[3, 7]][:, :, None, None].expand(2, 16, 16, 16) / 256
    _close(grads, want, 1e-6)
    # through a block: agrees with the chain of exact block kernels and the head
    assert expanded_weights(model, "mixed_a", "logits", [3]).shape == (1, 16, 16, 16)


def test_rank_inputs_orders_by_l2_norm_and_keeps_sign():
    k = np.zeros((4, 3, 3), np.float32)
    k[0, 0, 0] = 1.0                      # norm 1, excitatory
    k[1] = -1.0                           # norm 3, inhibitory
    k[2, 1] = [2.0, -0.5, 0.0]            # norm ~2.06, sum > 0
    ranked = rank_inputs(torch.from_numpy(k), top_k=3)
    assert [c.channel for c in ranked] == [1, 2, 0]
    assert [c.sign for c in ranked] == [-1, 1, 1]
    assert ranked[0].strength == pytest.approx(3.0)
    assert isinstance(ranked[0], Connection) and ranked[0].kernel.shape == (3, 3)
    np.testing.assert_array_equal(ranked[1].kernel, k[2])
    assert len(rank_inputs(k)) == 3  # channel 3 is all zero: not an input, never listed
    with pytest.raises(CircuitsError):
        rank_inputs(k, top_k=0)


def test_bad_requests_are_one_line_errors():
    model = inception_net(seed=6)
    cases = [dict(source="mixed_b", target="mixed_a"),              # wrong order
             dict(source="pool1", target="mixed_b", method="exact"),  # no exact path
             dict(source="mixed_a", target="mixed_b", method="magic"),
             dict(source="mixed_a", target="mixed_b", channels=[16]),
             dict(source="mixed_a", target="logits", method="exact"),
             dict(source="mixed_a", target="logits", channels=[10]),
             dict(source="mixd_a", target="mixed_b")]
    for case in cases:
        with pytest.raises(CircuitsError) as err:
            expanded_weights(model, **case)
        assert "\n" not in str(err.value)
    with pytest.raises(CircuitsError, match="did you mean 'mixed_a'"):
        expanded_weights(model, "mixd_a", "mixed_b")


def test_googlenet_exact_equals_linearized(bvlc_model):
    assert resolve_method(bvlc_model, "inception_4b", "inception_4c") == "exact"
    channels = [0, 127, 128, 383, 384, 447, 448, 511]  # every branch and its edges
    exact = expanded_weights(bvlc_model, "inception_4b", "inception_4c", channels, "exact")
    linear = expanded_weights(bvlc_model, "inception_4b", "inception_4c", channels, "linear")
    assert exact.shape == (8, 512, 5, 5)
    _close(linear, exact, 1e-5)
    logits = expanded_weights(bvlc_model, "inception_5b", "logits", [1])
    assert logits.shape == (1, 1024, 7, 7)
    w = bvlc_model.module.loss3.classifier.weight[1]
    _close(logits[0, :, 3, 3], w / 49, 1e-5)


def test_receptive_field_larger_than_the_map_is_computed_on_a_larger_map():
    """At a 16 px input the receptive fields of mixed_b reach past the 8 x 8 maps of pool1
    (9 x 9) and the 16 x 16 map of stem (19 x 19, through the stride-2 pool): the kernels must
    be those the same network gives at 32 px, where they fit."""
    import dataclasses

    model = inception_net(seed=7)
    small = dataclasses.replace(model, input_size=16)
    for source, size in (("pool1", 9), ("stem", 19)):
        want = expanded_weights(model, source, "mixed_b", [0, 11], method="linear")
        got = expanded_weights(small, source, "mixed_b", [0, 11], method="linear")
        assert got.shape == want.shape == (2, 8, size, size)
        _close(got, want, 1e-5)
