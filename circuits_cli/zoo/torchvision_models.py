"""``torchvision:NAME``: any torchvision classification model with its default pretrained weights.

Weights download through torchvision (hash-checked, into the torch hub cache) unless ``--weights
FILE`` gives a local state dict, or ``weights="random"`` asks for torchvision's initialisation.
Class labels come from the weights' metadata, which needs no download. Addressable layers: every
``Conv2d``, every block (a module with children) whose output is an image-shaped tensor, and the
ReLUs of plain ``Sequential`` stacks (VGG, AlexNet), in the order they run.
"""

from __future__ import annotations

import contextlib
import sys
import urllib.error
from pathlib import Path

from torch import nn

from ..errors import CircuitsError, suggest
from .base import LoadedModel, discover_layers, imagenet_normalize
from .weights import read_state_dict, weights_id


def _keep(path: str, module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return True
    if isinstance(module, nn.ReLU):
        parent = path.rpartition(".")[0]
        return bool(parent) and "." not in parent  # e.g. features.3 in VGG
    return any(True for _ in module.children())


def build(name: str, weights: Path | None = None, random: bool = False) -> LoadedModel:
    """torchvision's ``name`` with the state dict ``weights``, its default pretrained weights
    (downloaded), or, with ``random``, its random initialisation (nothing read)."""
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        raise CircuitsError(suggest(name, available, "torchvision classification model"))
    default = tvm.get_model_weights(name).DEFAULT
    module = tvm.get_model(name, weights=None)
    if weights is not None:
        state = read_state_dict(Path(weights), f"a state dict saved from torchvision's {name}")
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise CircuitsError(f"{str(weights)!r} does not fit torchvision:{name} ({first}); "
                                f"pass a state dict saved from torchvision's {name}") from None
        wid = weights_id(weights)
        described = f"torchvision {name} with weights from {Path(weights).name}"
    elif random:
        wid, described = "random", f"torchvision {name} with random weights"
    else:
        try:
            # torch hub prints 'Downloading: ...' on stdout, which would corrupt --json: stderr
            with contextlib.redirect_stdout(sys.stderr):
                state = default.get_state_dict(progress=True, check_hash=True)
            module.load_state_dict(state)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CircuitsError(f"could not download torchvision weights {default} ({reason}); "
                                f"offline, pass a local state dict with --weights FILE") from None
        wid, described = f"torchvision:{default}", f"torchvision {name} ({default})"
    module.eval()
    crop = getattr(default.transforms(), "crop_size", [224])
    size = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    return LoadedModel(
        name=f"torchvision:{name}", module=module,
        layers=discover_layers(module, size, _keep), preprocess=imagenet_normalize,
        input_size=size, labels=list(default.meta.get("categories", [])), weights_id=wid,
        description=described,
    )
