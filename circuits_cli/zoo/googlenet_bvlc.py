"""BVLC GoogLeNet (the original Caffe InceptionV1) in PyTorch, from ``bvlc_googlenet.npz``.

The network follows ``bvlc_googlenet.deploy.prototxt`` layer by layer: max-pooling with Caffe's
ceil rounding, local response normalisation across 5 channels (alpha 1e-4, beta 0.75; Caffe divides
alpha by the size, as :class:`torch.nn.LocalResponseNorm` does), true 5x5 convolutions, Inception
outputs concatenated 1x1 | 3x3 | 5x5 | pool_proj, a 7x7 average pool, dropout (inactive in eval)
and a 1000-way classifier.

Module paths mirror the Caffe layer names with ``/`` written as ``.``: the Caffe convolution
``inception_4c/3x3`` is the module ``inception_4c.3x3``, its ReLU ``inception_4c.relu_3x3``, the
block's concatenation ``inception_4c.output``; so the parameter ``inception_4c.3x3.weight`` is the
array ``inception_4c/3x3/weight`` of the ``.npz``.

Layers are named after the Caffe blobs. As Caffe's ReLUs work in place, a convolution's blob is
its post-ReLU activation, so the layer ``inception_4c/3x3`` is hooked at ``inception_4c.relu_3x3``.
The concatenation is called ``inception_4c`` (alias ``inception_4c/output``, short ``4c``).

Weights: when no file is given, the first of these that exists is used:

1. ``$CIRCUITS_BVLC_WEIGHTS``;
2. ``./bvlc_googlenet.npz`` in the current directory;
3. ``../shared/models/bvlc_googlenet.npz`` relative to the current directory;
4. ``shared/models/bvlc_googlenet.npz`` beside the source checkout (``../shared`` of the repo).

Class labels and wnids come from ``imagenet_synsets.txt`` beside the weights file (or in one of the
``shared/models`` folders above); without it classes are called ``class N``.

Input: RGB in [0, 1] -> x 255, channels reordered to BGR, minus the mean (104, 117, 123).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CircuitsError
from ..hooks import probe
from .base import Branch, InceptionBlock, LayerInfo, LoadedModel
from .registry import register_model
from .weights import WeightsSpec, find_beside, find_weights, weights_id

WEIGHTS_ENV = "CIRCUITS_BVLC_WEIGHTS"
WEIGHTS_FILE = "bvlc_googlenet.npz"
SYNSETS_FILE = "imagenet_synsets.txt"
MEAN_BGR = (104.0, 117.0, 123.0)
NUM_CLASSES = 1000

# block: (input channels, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj), from the prototxt.
INCEPTION = {
    "inception_3a": (192, 64, 96, 128, 16, 32, 32),
    "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64),
    "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64),
    "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128),
    "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}
# the layer each block reads (the previous block, or the max-pool between stages).
BLOCK_INPUT = {
    "inception_3a": "pool2/3x3_s2", "inception_3b": "inception_3a",
    "inception_4a": "pool3/3x3_s2", "inception_4b": "inception_4a",
    "inception_4c": "inception_4b", "inception_4d": "inception_4c",
    "inception_4e": "inception_4d", "inception_5a": "pool4/3x3_s2",
    "inception_5b": "inception_5a",
}


def _pool(kernel: int, stride: int, padding: int = 0) -> nn.MaxPool2d:
    """Caffe max-pooling: output size rounded up (ceil), windows start inside the input."""
    return nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)


def _lrn() -> nn.LocalResponseNorm:
    """Caffe LRN across channels, local_size 5, alpha 1e-4, beta 0.75, k 1."""
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


class Concat(nn.Module):
    """Channel concatenation (Caffe ``Concat``), a module of its own so it can be hooked."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class Inception(nn.Module):
    """One Inception block; submodules carry the Caffe names (``1x1``, ``relu_1x1``, ...)."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        for name, conv in [("1x1", nn.Conv2d(c_in, c1, 1)),
                           ("3x3_reduce", nn.Conv2d(c_in, c3r, 1)),
                           ("3x3", nn.Conv2d(c3r, c3, 3, padding=1)),
                           ("5x5_reduce", nn.Conv2d(c_in, c5r, 1)),
                           ("5x5", nn.Conv2d(c5r, c5, 5, padding=2))]:
            self.add_module(name, conv)
            self.add_module(f"relu_{name}", nn.ReLU())
        self.add_module("pool", _pool(3, 1, 1))
        self.add_module("pool_proj", nn.Conv2d(c_in, cp, 1))
        self.add_module("relu_pool_proj", nn.ReLU())
        self.add_module("output", Concat())

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self._modules[f"relu_{name}"](self._modules[name](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self._modules
        b1 = self._run("1x1", x)
        b3 = self._run("3x3", self._run("3x3_reduce", x))
        b5 = self._run("5x5", self._run("5x5_reduce", x))
        bp = self._run("pool_proj", m["pool"](x))
        return m["output"](b1, b3, b5, bp)


def _stage(**modules: nn.Module) -> nn.Module:
    """A container for the stem's Caffe layers that share a prefix (``conv1``, ``pool1``, ...)."""
    stage = nn.Module()
    for name, module in modules.items():
        stage.add_module(name, module)
    return stage


class GoogLeNetBVLC(nn.Module):
    """BVLC GoogLeNet; ``forward`` maps a preprocessed BGR batch (N, 3, 224, 224) to logits."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = _stage(**{"7x7_s2": nn.Conv2d(3, 64, 7, stride=2, padding=3),
                               "relu_7x7": nn.ReLU()})
        self.pool1 = _stage(**{"3x3_s2": _pool(3, 2), "norm1": _lrn()})
        self.conv2 = _stage(**{"3x3_reduce": nn.Conv2d(64, 64, 1),
                               "relu_3x3_reduce": nn.ReLU(),
                               "3x3": nn.Conv2d(64, 192, 3, padding=1),
                               "relu_3x3": nn.ReLU(),
                               "norm2": _lrn()})
        self.pool2 = _stage(**{"3x3_s2": _pool(3, 2)})
        self.inception_3a = Inception(*INCEPTION["inception_3a"])
        self.inception_3b = Inception(*INCEPTION["inception_3b"])
        self.pool3 = _stage(**{"3x3_s2": _pool(3, 2)})
        self.inception_4a = Inception(*INCEPTION["inception_4a"])
        self.inception_4b = Inception(*INCEPTION["inception_4b"])
        self.inception_4c = Inception(*INCEPTION["inception_4c"])
        self.inception_4d = Inception(*INCEPTION["inception_4d"])
        self.inception_4e = Inception(*INCEPTION["inception_4e"])
        self.pool4 = _stage(**{"3x3_s2": _pool(3, 2)})
        self.inception_5a = Inception(*INCEPTION["inception_5a"])
        self.inception_5b = Inception(*INCEPTION["inception_5b"])
        self.pool5 = _stage(**{"7x7_s1": nn.AvgPool2d(7, stride=1, ceil_mode=True),
                               "drop_7x7_s1": nn.Dropout(0.4)})
        self.loss3 = _stage(classifier=nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, p1, c2 = self.conv1._modules, self.pool1._modules, self.conv2._modules
        x = c1["relu_7x7"](c1["7x7_s2"](x))
        x = p1["norm1"](p1["3x3_s2"](x))
        x = c2["relu_3x3_reduce"](c2["3x3_reduce"](x))
        x = c2["norm2"](c2["relu_3x3"](c2["3x3"](x)))
        x = self.pool2._modules["3x3_s2"](x)
        x = self.inception_3b(self.inception_3a(x))
        x = self.pool3._modules["3x3_s2"](x)
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = self._modules[f"inception_{name}"](x)
        x = self.pool4._modules["3x3_s2"](x)
        x = self.inception_5b(self.inception_5a(x))
        x = self.pool5._modules["drop_7x7_s1"](self.pool5._modules["7x7_s1"](x))
        return self.loss3._modules["classifier"](torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------------
# Layers, blocks, aliases


def _layer_table() -> list[tuple[str, str, str]]:
    """(layer name, hook module path, kind) in forward order."""
    rows = [("conv1/7x7_s2", "conv1.relu_7x7", "conv"),
            ("pool1/3x3_s2", "pool1.3x3_s2", "pool"),
            ("pool1/norm1", "pool1.norm1", "norm"),
            ("conv2/3x3_reduce", "conv2.relu_3x3_reduce", "conv"),
            ("conv2/3x3", "conv2.relu_3x3", "conv"),
            ("conv2/norm2", "conv2.norm2", "norm"),
            ("pool2/3x3_s2", "pool2.3x3_s2", "pool")]
    for block in INCEPTION:
        for branch in ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5"):
            rows.append((f"{block}/{branch}", f"{block}.relu_{branch}", "branch"))
        rows.append((f"{block}/pool", f"{block}.pool", "branch"))
        rows.append((f"{block}/pool_proj", f"{block}.relu_pool_proj", "branch"))
        rows.append((block, f"{block}.output", "block"))
        if block == "inception_3b":
            rows.append(("pool3/3x3_s2", "pool3.3x3_s2", "pool"))
        elif block == "inception_4e":
            rows.append(("pool4/3x3_s2", "pool4.3x3_s2", "pool"))
    rows.append(("pool5/7x7_s1", "pool5.7x7_s1", "pool"))
    return rows


def _output_shapes(paths: list[str], size: int) -> dict[str, tuple]:
    """Output shape (C, H, W) of each module path, from one forward pass on the meta device
    (no memory, no arithmetic)."""
    meta = GoogLeNetBVLC(NUM_CLASSES).to("meta")
    return probe(meta, torch.zeros(1, 3, size, size, device="meta"), paths)


def _layers(size: int = 224) -> dict[str, LayerInfo]:
    rows = _layer_table()
    shapes = _output_shapes([path for _, path, _ in rows], size)
    layers = {}
    for name, path, kind in rows:
        branches: tuple[tuple[str, int], ...] = ()
        if kind == "block":
            _, c1, _, c3, _, c5, cp = INCEPTION[name]
            branches = (("1x1", c1), ("3x3", c3), ("5x5", c5), ("pool_proj", cp))
        shape = shapes[path]
        layers[name] = LayerInfo(name=name, module=path, channels=shape[0], shape=shape,
                                 branches=branches, kind=kind)
    return layers


def _blocks() -> dict[str, InceptionBlock]:
    blocks = {}
    for block in INCEPTION:
        blocks[block] = InceptionBlock(
            output=block, input=BLOCK_INPUT[block],
            branches=(Branch("1x1", (f"{block}.1x1",)),
                      Branch("3x3", (f"{block}.3x3_reduce", f"{block}.3x3")),
                      Branch("5x5", (f"{block}.5x5_reduce", f"{block}.5x5")),
                      Branch("pool_proj", (f"{block}.pool_proj",), pool=(3, 1, 1))))
    return blocks


def _aliases(layers: dict[str, LayerInfo]) -> dict[str, str]:
    """``4c`` -> ``inception_4c``, ``inception_4c/output`` -> ``inception_4c``,
    ``4c/3x3`` -> ``inception_4c/3x3``."""
    aliases = {}
    for block in INCEPTION:
        short = block.removeprefix("inception_")
        aliases[short] = block
        aliases[f"{block}/output"] = block
        aliases[f"{short}/output"] = block
        for name in layers:
            if name.startswith(block + "/"):
                aliases[short + name[len(block):]] = name
    return aliases


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB (N, 3, H, W) -> Caffe input: 0-255 BGR minus the mean (differentiable)."""
    mean = torch.tensor(MEAN_BGR, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return x.flip(1) * 255.0 - mean


# ---------------------------------------------------------------------------------------------
# Files


WEIGHTS = WeightsSpec(
    title="BVLC GoogLeNet", file=WEIGHTS_FILE, env=WEIGHTS_ENV,
    search=("{cwd}", "{cwd}/../shared/models", "{repo}/../shared/models"),
    preprocessing="RGB in [0, 1] -> x 255, BGR, minus the mean (104, 117, 123) (Caffe)",
    labels=SYNSETS_FILE)


def default_weights() -> Path:
    """The weights file used when none is given (see the module docstring for the order)."""
    return find_weights(WEIGHTS)


def find_synsets(weights: Path | None) -> Path | None:
    """``imagenet_synsets.txt`` beside the weights, else in a ``shared/models`` folder."""
    return find_beside(WEIGHTS, SYNSETS_FILE, weights)


def read_synsets(path: Path | None) -> tuple[list[str], list[str]]:
    """(labels, wnids) from lines ``n01440764 tench, Tinca tinca``; the label is the first name.
    Empty lists when the file is missing or does not list exactly 1000 classes."""
    if path is None:
        return [], []
    labels, wnids = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        wnid, _, names = line.strip().partition(" ")
        wnids.append(wnid)
        labels.append(names.split(",")[0].strip() or wnid)
    if len(wnids) != NUM_CLASSES:
        return [], []
    return labels, wnids


def load_weights(module: nn.Module, path: Path) -> None:
    """Copy the arrays of ``path`` into ``module``; a missing key or a wrong shape is a one-line
    error naming the first bad key."""
    expected = f"expected the BVLC GoogLeNet weights ({WEIGHTS_FILE}, 116 arrays keyed like " \
               "'conv1/7x7_s2/weight')"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # EOF: an empty file
        reason = str(err) or ("the file is empty" if isinstance(err, EOFError)
                              else type(err).__name__)
        raise CircuitsError(f"cannot read {str(path)!r} as an .npz file ({reason}); "
                            f"{expected}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CircuitsError(f"{str(path)!r} holds a single array, not an .npz archive; {expected}")
    state = {}
    with archive:
        keys = set(archive.files)
        for name, param in module.state_dict().items():
            key = name.replace(".", "/")
            if key not in keys:
                raise CircuitsError(f"weights file {str(path)!r} has no array {key!r}; {expected}")
            array = archive[key]
            if tuple(array.shape) != tuple(param.shape):
                raise CircuitsError(f"array {key!r} in {str(path)!r} has shape "
                                    f"{tuple(array.shape)}, expected {tuple(param.shape)}; "
                                    f"{expected}")
            state[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    module.load_state_dict(state)


@register_model("googlenet-bvlc", weights=WEIGHTS,
                description="BVLC GoogLeNet (Caffe InceptionV1), ImageNet-1k, 1000 classes")
def build(weights: Path | None) -> LoadedModel:
    """BVLC GoogLeNet with the arrays of ``weights`` (see the module docstring), or random
    weights when it is None."""
    module = GoogLeNetBVLC(NUM_CLASSES)
    if weights is not None:
        weights = Path(weights).expanduser()
        load_weights(module, weights)
    module.eval()
    layers = _layers(224)
    labels, wnids = read_synsets(find_synsets(weights))
    return LoadedModel(
        name="googlenet-bvlc",
        module=module,
        layers=layers,
        preprocess=preprocess,
        input_size=224,
        labels=labels,
        class_ids=wnids,
        weights_id=weights_id(weights) if weights is not None else "random",
        aliases=_aliases(layers),
        description="BVLC GoogLeNet (Caffe InceptionV1), ImageNet-1k, 1000 classes",
        blocks=_blocks(),
    )
