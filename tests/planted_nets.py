"""Small Inception-style networks for the connection and trace tests.

:func:`inception_net` is a two-block network with random weights whose non-linearities can be
switched off (identity activations, average pools): a network where the linear approximation is
exact. :func:`planted_car_net` hand-sets the weights of a "car" unit, as in "Zoom In": it sums a
"windows" unit weighted at the top of its 5x5 kernel (inhibiting the bottom), a "wheels" unit at
the bottom (inhibiting the top) and a "body" unit at the bottom, plus weak distractor inputs; the
windows / wheels / body units are in turn planted on stem units. Layers: ``stem`` (8, 32, 32),
``pool1`` (8, 16, 16), ``mixed_a`` (16, 16, 16), ``mixed_b`` (16, 16, 16), 10 logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from circuits_cli.zoo.base import Branch, InceptionBlock, LoadedModel, discover_layers

# block: (input, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj)
SPEC = {"mixed_a": (8, 4, 4, 6, 2, 2, 4), "mixed_b": (16, 4, 4, 4, 4, 4, 4)}
BLOCK_INPUT = {"mixed_a": "pool1", "mixed_b": "mixed_a"}


class Concat(nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


class Block(nn.Module):
    def __init__(self, c_in, c1, c3r, c3, c5r, c5, cp, act, pool):
        super().__init__()
        for name, conv in [("1x1", nn.Conv2d(c_in, c1, 1)),
                           ("3x3_reduce", nn.Conv2d(c_in, c3r, 1)),
                           ("3x3", nn.Conv2d(c3r, c3, 3, padding=1)),
                           ("5x5_reduce", nn.Conv2d(c_in, c5r, 1)),
                           ("5x5", nn.Conv2d(c5r, c5, 5, padding=2)),
                           ("pool_proj", nn.Conv2d(c_in, cp, 1))]:
            self.add_module(name, conv)
            self.add_module(f"act_{name}", act())
        self.add_module("pool", pool(3, 1))
        self.add_module("output", Concat())

    def _run(self, name, x):
        return self._modules[f"act_{name}"](self._modules[name](x))

    def forward(self, x):
        b1 = self._run("1x1", x)
        b3 = self._run("3x3", self._run("3x3_reduce", x))
        b5 = self._run("5x5", self._run("5x5_reduce", x))
        bp = self._run("pool_proj", self._modules["pool"](x))
        return self.output(b1, b3, b5, bp)


class Net(nn.Module):
    def __init__(self, act, pool, pool_stem):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_act = act()
        self.pool1 = pool_stem
        self.mixed_a = Block(*SPEC["mixed_a"], act=act, pool=pool)
        self.mixed_b = Block(*SPEC["mixed_b"], act=act, pool=pool)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool1(self.stem_act(self.stem(x)))
        x = self.mixed_b(self.mixed_a(x))
        return self.fc(x.mean(dim=(2, 3)))


def _maxpool(k, s):
    return nn.MaxPool2d(k, s, padding=(k - 1) // 2)


def _avgpool(k, s):
    return nn.AvgPool2d(k, s, padding=(k - 1) // 2, count_include_pad=False)


def _wrap(net: Net, name: str) -> LoadedModel:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    hook_points = {"stem": "stem_act", "pool1": "pool1", "mixed_a": "mixed_a.output",
                   "mixed_b": "mixed_b.output"}
    found = discover_layers(net, 32, lambda path, _m: path in hook_points.values())
    by_module = {info.module: info for info in found.values()}
    layers = {}
    for lname, path in hook_points.items():
        info = by_module[path]
        branches = ()
        if lname in SPEC:
            _, c1, _, c3, _, c5, cp = SPEC[lname]
            branches = (("1x1", c1), ("3x3", c3), ("5x5", c5), ("pool", cp))
        layers[lname] = type(info)(name=lname, module=path, channels=info.channels,
                                   shape=info.shape, branches=branches,
                                   kind="block" if lname in SPEC else "conv")
    blocks = {b: InceptionBlock(output=b, input=BLOCK_INPUT[b], branches=(
        Branch("1x1", (f"{b}.1x1",)),
        Branch("3x3", (f"{b}.3x3_reduce", f"{b}.3x3")),
        Branch("5x5", (f"{b}.5x5_reduce", f"{b}.5x5")),
        Branch("pool", (f"{b}.pool_proj",), pool=(3, 1, 1)))) for b in SPEC}
    return LoadedModel(name=name, module=net, layers=layers, preprocess=lambda x: x,
                       input_size=32, labels=[f"class {i}" for i in range(10)],
                       weights_id=f"{name}-v1", blocks=blocks)


def inception_net(linear: bool = False, bias: float = 0.0, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Random weights (He-like scale). ``linear``: identity activations and average pools (a
    linear network). ``bias``: every conv bias (large positive keeps all ReLUs active)."""
    torch.manual_seed(seed)
    act = nn.Identity if linear else nn.ReLU
    pool = _avgpool if linear else _maxpool
    net = Net(act, pool, pool(3, 2))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=(2.0 / (m.in_channels * m.kernel_size[0] ** 2))
                                ** 0.5)
                m.bias.fill_(bias)
    model = _wrap(net, "linear-net" if linear else "inception-net")
    model.module.to(dtype)
    return model


# channel indices in the layers' concatenations (1x1 | 3x3 | 5x5 | pool)
WINDOWS, WHEELS, BODY = 4, 5, 12        # mixed_a: two 3x3-branch units and a pool-branch unit
CAR = 4 + 4 + 3                         # mixed_b: the last unit of the 5x5 branch (like 4c:447)
WINDOW_EDGE, WINDOW_OFF, WHEEL_EDGE, BODY_COLOUR = 0, 1, 2, 3  # stem (pool1) units


def _top_bottom(top: float, bottom: float, size: int = 5) -> np.ndarray:
    k = np.zeros((size, size), np.float32)
    k[: size // 2] = top
    k[size // 2 + 1:] = bottom
    return k


@dataclass
class Planted:
    """The planted model and its ground truth: ``car_inputs`` maps a ``mixed_a`` channel to its
    planted 5x5 kernel into the car; ``second`` maps each planted ``mixed_a`` unit to its planted
    ``pool1`` inputs {channel: kernel}."""

    model: LoadedModel
    car: int = CAR
    car_inputs: dict[int, np.ndarray] = field(default_factory=dict)
    second: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    distractors: list[int] = field(default_factory=list)


def planted_car_net(seed: int = 0) -> Planted:
    """The car circuit of "Zoom In" planted by hand in :func:`inception_net`'s architecture."""
    model = inception_net(seed=seed)
    net = model.module
    gen = torch.Generator().manual_seed(seed + 1)
    a, b = net.mixed_a, net.mixed_b
    windows = _top_bottom(1.0, -0.5)   # excite the top of the car, inhibit the bottom
    wheels = _top_bottom(-0.5, 1.0)    # excite the bottom, inhibit the top
    body = _top_bottom(0.0, 0.6)       # excite the bottom
    distractors = [c for c in range(16) if c not in (WINDOWS, WHEELS, BODY)]
    with torch.no_grad():
        # mixed_b 5x5 branch: bottleneck 0/1/2 copy windows/wheels/body, 3 mixes the distractors
        b.__getattr__("5x5_reduce").weight.zero_()
        red = b.__getattr__("5x5_reduce").weight
        red[0, WINDOWS], red[1, WHEELS], red[2, BODY] = 1.0, 1.0, 1.0
        red[3, distractors, 0, 0] = 0.5 * torch.randn(len(distractors), generator=gen)
        w5 = b.__getattr__("5x5").weight
        car = CAR - 4 - 4
        w5[car] = 0.0
        w5[car, 0] = torch.from_numpy(windows)
        w5[car, 1] = torch.from_numpy(wheels)
        w5[car, 2] = torch.from_numpy(body)
        w5[car, 3] = 0.05 * torch.randn(5, 5, generator=gen)
        # mixed_a: windows = top-heavy horizontal edge, off at its centre row; wheels = a blob;
        # body = the pool-branch projection of a colour unit
        r3 = a.__getattr__("3x3_reduce").weight
        r3.zero_()
        r3[0, WINDOW_EDGE] = r3[1, WINDOW_OFF] = r3[2, WHEEL_EDGE] = 1.0
        r3[3, 4:, 0, 0] = 0.5 * torch.randn(4, generator=gen)
        w3 = a.__getattr__("3x3").weight
        edge = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.2, 0.2], [0.0, 0.0, 0.0]])
        w3[0] = 0.0
        w3[0, 0], w3[0, 1] = edge, -0.4 * torch.ones(3, 3)
        w3[0, 3] = 0.05 * torch.randn(3, 3, generator=gen)
        w3[1] = 0.0
        w3[1, 2] = torch.tensor([[0.3, 0.6, 0.3], [0.6, 1.0, 0.6], [0.3, 0.6, 0.3]])
        w3[1, 3] = 0.05 * torch.randn(3, 3, generator=gen)
        proj = a.__getattr__("pool_proj").weight
        proj[0] = 0.0
        proj[0, BODY_COLOUR] = 1.5
        proj[0, 4:, 0, 0] = 0.05 * torch.randn(4, generator=gen)
    box = np.full((3, 3), 1.5 / 9, np.float32)
    pad = lambda k: np.pad(k, 1)  # noqa: E731 - 3x3 kernels centred in the block's 5x5
    second = {WINDOWS: {WINDOW_EDGE: pad(edge.numpy()), WINDOW_OFF: pad(-0.4 * np.ones((3, 3)))},
              WHEELS: {WHEEL_EDGE: pad(w3[1, 2].numpy().copy())},
              BODY: {BODY_COLOUR: pad(box)}}
    return Planted(model=model, car_inputs={WINDOWS: windows, WHEELS: wheels, BODY: body},
                   second=second, distractors=distractors)
