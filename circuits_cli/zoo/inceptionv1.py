"""``inceptionv1``: Lucid's InceptionV1 ("inception5h"), the model of the Circuits papers.

The architecture is lucent's (``lucent.modelzoo.inceptionv1``): same modules, same parameter
names, so lucent's converted weights load unchanged. Two things differ from lucent's own forward:

- **Local response normalisation is corrected.** lucent calls ``local_response_norm(size=9,
  alpha=1e-4, beta=0.5, k=1)``, but the TensorFlow graph uses ``depth_radius=5, bias=2,
  alpha=1e-4, beta=0.5``, which in PyTorch is ``LocalResponseNorm(size=11, alpha=0.0011,
  beta=0.5, k=2)`` (PyTorch divides alpha by size and centres a window of ``size`` channels;
  lucent PR #51). ``tests/test_inceptionv1.py`` checks this against TensorFlow's formula.
- **It returns logits** (the pre-softmax ``softmax2_pre_activation_matmul``), and the two LRNs
  are modules (``localresponsenorm0/1``) so that their outputs are addressable layers.

Weights: ``--weights FILE`` loads a local state dict (``inception5h.pth``). Without it the file is
downloaded on first use into the torch hub cache (``$TORCH_HOME/hub/checkpoints``) with a progress
bar. Upstream publishes no digest for it, so the sha256 of the first download is recorded beside
the file (``inception5h.pth.sha256``) and every later load is checked against it; set
``$CIRCUITS_INCEPTIONV1_SHA256`` to pin a digest you trust. ``$CIRCUITS_INCEPTIONV1_URL`` points
the download at a mirror.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lucent.modelzoo.inceptionv1.InceptionV1 import InceptionV1 as LucentInceptionV1
from lucent.modelzoo.inceptionv1.InceptionV1 import model_urls
from torch import nn

from ..errors import CircuitsError
from . import lucent_style
from .base import LoadedModel
from .registry import register_model
from .weights import WeightsSpec, read_state_dict, weights_id

WEIGHTS_URL = model_urls["inceptionv1"]
WEIGHTS_FILE = "inception5h.pth"
URL_ENV = "CIRCUITS_INCEPTIONV1_URL"
SHA256_ENV = "CIRCUITS_INCEPTIONV1_SHA256"

#: TensorFlow's LRN (depth_radius 5, bias 2, alpha 1e-4, beta 0.5) in PyTorch's convention.
CORRECT_LRN = dict(size=11, alpha=0.0011, beta=0.5, k=2.0)
#: What lucent 0.1.8 uses (kept to prove that our forward equals lucent's otherwise).
LUCENT_LRN = dict(size=9, alpha=9.99999974738e-05, beta=0.5, k=1.0)

BLOCKS = ("mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e",
          "mixed5a", "mixed5b")
_BRANCH_ORDER = ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool", "pool_reduce")
_BLOCK_INPUT = {"mixed3a": "maxpool1", "mixed4a": "maxpool4", "mixed5a": "maxpool10"}
_POOL_BEFORE = {"mixed4a": "maxpool4", "mixed5a": "maxpool10"}
NEG_INF = float("-inf")


class InceptionV1(LucentInceptionV1):
    """lucent's InceptionV1 with a structured forward, LRN modules and logits as output."""

    def __init__(self, lrn: dict | None = None, redirected_relu: bool = True):
        super().__init__(pretrained=False, redirected_ReLU=redirected_relu)
        lrn = CORRECT_LRN if lrn is None else lrn
        self.localresponsenorm0 = nn.LocalResponseNorm(**lrn)
        self.localresponsenorm1 = nn.LocalResponseNorm(**lrn)

    @staticmethod
    def _maxpool(layer: nn.Module, x: torch.Tensor, stride: int) -> torch.Tensor:
        # TF "SAME" pooling: pad right/bottom (stride 2) or all sides (stride 1) with -inf.
        pad = (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1)
        return layer(F.pad(x, pad, value=NEG_INF), kernel_size=(3, 3), stride=(stride, stride),
                     padding=0, ceil_mode=False)

    def _conv(self, name: str, x: torch.Tensor, pad: int = 0) -> torch.Tensor:
        """``name``_pre_relu_conv, then the ReLU module ``name`` (the addressable output)."""
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        return getattr(self, name)(getattr(self, f"{name}_pre_relu_conv")(x))

    def _mixed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        b1 = self._conv(f"{name}_1x1", x)
        b3 = self._conv(f"{name}_3x3", self._conv(f"{name}_3x3_bottleneck", x), pad=1)
        b5 = self._conv(f"{name}_5x5", self._conv(f"{name}_5x5_bottleneck", x), pad=2)
        bp = self._conv(f"{name}_pool_reduce", self._maxpool(getattr(self, f"{name}_pool"), x, 1))
        return getattr(self, name)((b1, b3, b5, bp), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._conv("conv2d0", F.pad(x, (2, 3, 2, 3)))
        x = self.localresponsenorm0(self._maxpool(self.maxpool0, x, 2))
        x = self._conv("conv2d2", self._conv("conv2d1", x), pad=1)
        x = self._maxpool(self.maxpool1, self.localresponsenorm1(x), 2)
        for name in BLOCKS:
            if name in _POOL_BEFORE:
                x = self._maxpool(getattr(self, _POOL_BEFORE[name]), x, 2)
            x = self._mixed(name, x)
        x = F.avg_pool2d(x, kernel_size=(7, 7), stride=(1, 1))
        return self.softmax2_pre_activation_matmul(x.reshape(-1, 1024))


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """Lucid's convention: RGB in [0, 1] -> ``x * 255 - 117``."""
    return x * 255.0 - 117.0


WEIGHTS = WeightsSpec(
    title="InceptionV1", file=WEIGHTS_FILE, url=WEIGHTS_URL, url_env=URL_ENV,
    sha256_env=SHA256_ENV, preprocessing="RGB in [0, 1] -> x * 255 - 117 (Lucid)",
    labels=None)


def load_state(path: Path, expects: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (see :func:`circuits_cli.zoo.weights.read_state_dict`)."""
    return read_state_dict(path, expects)


def _check_state(model: nn.Module, state: dict, path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CircuitsError(f"{str(path)!r} lacks {missing[0]!r} ({len(missing)} keys missing); "
                            "it is not an InceptionV1 (inception5h) state dict")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CircuitsError(f"{str(path)!r}: {key!r} has shape {tuple(state[key].shape)}, "
                                f"expected {tuple(value.shape)}; not InceptionV1 weights")


def _layer_names() -> list[str]:
    names = ["conv2d0", "maxpool0", "localresponsenorm0", "conv2d1", "conv2d2",
             "localresponsenorm1", "maxpool1"]
    for block in BLOCKS:
        if block in _POOL_BEFORE:
            names.append(_POOL_BEFORE[block])
        names += [f"{block}_{b}" for b in _BRANCH_ORDER] + [block]
    return names


def describe(module: InceptionV1):
    """Layers (shapes from one forward pass on a zero image) and Inception blocks."""
    return lucent_style.describe(module, _layer_names(), BLOCKS, _BLOCK_INPUT, 224)


@register_model("inceptionv1", weights=WEIGHTS,
                description="Lucid InceptionV1 (inception5h) through lucent, LRN corrected")
def build(weights: Path | None) -> LoadedModel:
    """InceptionV1 with the weights of ``weights``, or random weights when it is None."""
    module = InceptionV1().eval()
    if weights is not None:
        state = load_state(weights)
        _check_state(module, state, weights)
        module.load_state_dict(state, strict=False)  # the LRN modules have no parameters
    layers, blocks = describe(module)
    return LoadedModel(
        name="inceptionv1", module=module, layers=layers, preprocess=preprocess,
        input_size=224, labels=[f"class {i}" for i in range(1008)],
        weights_id=weights_id(weights) if weights is not None else "random",
        aliases={b[len("mixed"):]: b for b in BLOCKS}, blocks=blocks,
        description="Lucid InceptionV1 (inception5h) through lucent, LRN corrected",
    )
