"""Model zoo: one registry, one interface (:class:`~circuits_cli.zoo.base.LoadedModel`).

Names:

- ``inceptionv1``: Lucid's InceptionV1 (inception5h), the model of the Circuits papers, through
  lucent's architecture with its local response normalisation corrected.
- ``googlenet-bvlc``: BVLC GoogLeNet (Caffe), loaded from the ``.npz`` in ``../shared/models``.
- ``toy``: a small InceptionV1-style network trained on the procedural toy world, shipped with the
  package.
- ``torchvision:NAME``: any torchvision classification model with its default pretrained weights.
- ``path/to/file.py:factory``: a user's own model, ``factory()`` returning an ``nn.Module``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from ..errors import CircuitsError, suggest
from .base import LayerInfo, LoadedModel

__all__ = ["LayerInfo", "LoadedModel", "load_model", "model_names", "resolve_device",
           "DEFAULT_MODEL", "MODEL_ENV"]

MODEL_ENV = "CIRCUITS_MODEL"
DEFAULT_MODEL = "inceptionv1"

# name -> "module:function"; each builder takes (weights: Path | None) and returns a LoadedModel.
_REGISTRY = {
    "inceptionv1": "circuits_cli.zoo.inceptionv1:build",
    "googlenet-bvlc": "circuits_cli.zoo.googlenet_bvlc:build",
    "toy": "circuits_cli.zoo.toy:build",
}


def model_names() -> list[str]:
    return sorted(_REGISTRY) + ["torchvision:NAME", "FILE.py:FACTORY"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise CircuitsError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CircuitsError(f"device {device!r} was asked for but no CUDA GPU is available; "
                            "use --device cpu (or auto)")
    if device == "mps" and not (getattr(torch.backends, "mps", None)
                                and torch.backends.mps.is_available()):
        raise CircuitsError("device 'mps' was asked for but is not available; use --device cpu")
    return torch.device(device)


def load_model(name: str | None = None, weights: str | Path | None = None,
               device: str | torch.device | None = "cpu") -> LoadedModel:
    """Build a zoo model by name, load its weights and move it to ``device`` in eval mode.

    ``name`` defaults to ``$CIRCUITS_MODEL`` or ``inceptionv1``. ``weights`` is a local file that
    replaces the model's default weights (required offline for ``inceptionv1``).
    """
    name = (name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL).strip()
    if weights is not None:
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise CircuitsError(f"weights file {str(weights)!r} does not exist; pass the path "
                                "of a local weights file to --weights")
    dev = resolve_device(device)
    if name.startswith("torchvision:"):
        from .torchvision_models import build as builder

        model = builder(name.split(":", 1)[1], weights)
    elif ":" in name and name.split(":", 1)[0].endswith(".py"):
        from .user import build as builder

        model = builder(name, weights)
    elif name in _REGISTRY:
        mod, fn = _REGISTRY[name].split(":")
        model = getattr(importlib.import_module(mod), fn)(weights)
    else:
        raise CircuitsError(suggest(name, model_names(), "model")
                            + " (or torchvision:NAME, or FILE.py:FACTORY for your own)")
    model.module.eval()
    for p in model.module.parameters():
        p.requires_grad_(False)
    return model.to(dev)
