"""Model zoo: one registry, one interface (:class:`~circuits_cli.zoo.base.LoadedModel`).

Names:

- ``inceptionv1``: Lucid's InceptionV1 (inception5h), the model of the Circuits papers, through
  lucent's architecture with its local response normalisation corrected.
- ``googlenet-bvlc``: BVLC GoogLeNet (Caffe), loaded from the ``.npz`` in ``../shared/models``.
- ``toy``: a small InceptionV1-style network trained on the procedural toy world, shipped with the
  package.
- ``torchvision:NAME``: any torchvision classification model with its default pretrained weights.
- ``timm:NAME``: any timm model (pretrained weights from the Hugging Face hub when online; random
  or ``--weights FILE`` offline), with the input size and normalisation of its config.
- ``path/to/file.py:factory``: a user's own model, ``factory()`` returning an ``nn.Module``.

The named models register with :func:`~circuits_cli.zoo.registry.register_model`; how each one's
weights are found is a :class:`~circuits_cli.zoo.weights.WeightsSpec` read by one loader. Every
model can be built with random weights (``load_model(name, weights="random")``) for tests and
benchmarks. Importing this package imports no torch (``circuits --help`` stays fast).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CircuitsError, suggest
from . import registry
from .registry import register_model
from .weights import WeightsSpec, find_weights

if TYPE_CHECKING:
    import torch

    from .base import LayerInfo, LoadedModel

__all__ = ["LayerInfo", "LoadedModel", "load_model", "model_names", "resolve_device",
           "register_model", "WeightsSpec", "DEFAULT_MODEL", "MODEL_ENV", "RANDOM"]

MODEL_ENV = "CIRCUITS_MODEL"
DEFAULT_MODEL = "inceptionv1"
#: ``weights=RANDOM`` builds a model with random initial weights (seeded: the same every time).
RANDOM = "random"
RANDOM_SEED = 0


def __getattr__(name: str):  # LayerInfo, LoadedModel: imported (with torch) when first used
    if name in ("LayerInfo", "LoadedModel"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def model_names() -> list[str]:
    return registry.names() + ["torchvision:NAME", "timm:NAME", "FILE.py:FACTORY"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    import torch

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
               device: str | torch.device | None = "cpu", pretrained: bool = True,
               output: str | None = None, labels: str | Path | None = None) -> LoadedModel:
    """Build a zoo model by name, load its weights and move it to ``device`` in eval mode.

    ``name`` defaults to ``$CIRCUITS_MODEL`` or ``inceptionv1``. ``weights`` is a local file that
    replaces the model's default weights (required offline for ``inceptionv1``), or ``"random"``
    (the same as ``pretrained=False``): random initial weights, seeded so that two builds are
    equal, with ``weights_id`` ``random:seed0``; nothing is read or downloaded.

    ``output`` names the element of a tuple or dict output that holds the logits (a key or an
    index); ``labels`` is a file of class names, one per line. Both are checked here, with one
    forward pass, as is what a user's own model returns (:mod:`circuits_cli.zoo.outputs`).
    """
    import torch

    name = (name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL).strip()
    if isinstance(weights, str) and weights == RANDOM:
        weights, pretrained = None, False
    if weights is not None:
        if not pretrained:
            raise CircuitsError("a weights file and random weights were both asked for; "
                                "pass one of them")
        weights = Path(weights).expanduser()
        if not weights.is_file():
            raise CircuitsError(f"weights file {str(weights)!r} does not exist; pass the path "
                                "of a local weights file to --weights")
    dev = resolve_device(device)
    if labels is not None and not Path(labels).expanduser().is_file():
        raise CircuitsError(f"labels file {str(labels)!r} does not exist; give a text file "
                            "with one class name per line")
    if name.startswith("torchvision:"):
        from .torchvision_models import build as family
    elif name.startswith("timm:"):
        from .timm_models import build as family
    elif ":" in name and name.split(":", 1)[0].endswith(".py"):
        from .user import build as family
    elif name in registry.MODULES:
        family = None
    else:
        raise CircuitsError(suggest(name, model_names(), "model")
                            + " (or torchvision:NAME, timm:NAME, or FILE.py:FACTORY for your own)")
    with torch.random.fork_rng(devices=[]):
        if not pretrained:
            torch.manual_seed(RANDOM_SEED)
        if family is not None:
            spec = name.split(":", 1)[1] if name.startswith(("torchvision:", "timm:")) \
                else name
            model = family(spec, weights, random=not pretrained)
        else:
            entry = registry.entry(name)
            if pretrained:
                model = entry.build(weights if weights is not None
                                    else find_weights(entry.weights))
            else:
                model = entry.build(None)
    if not pretrained:
        model.weights_id = f"random:seed{RANDOM_SEED}"
    model.module.eval()
    for p in model.module.parameters():
        p.requires_grad_(False)
    model = model.to(dev)
    user = family is not None and family.__module__.endswith(".user")
    if user or output is not None or labels is not None:
        from .outputs import check_output, read_labels

        check_output(model, output)
        if labels is not None and model.no_logits:
            raise CircuitsError(f"--labels names classes, and {model.no_logits}")
        if labels is not None:
            model.labels = read_labels(Path(labels), model.memo["zoo.n_classes"])
            model.class_ids = []
    return model
