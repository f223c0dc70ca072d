"""A user's own model: ``--model path/to/file.py:factory``.

``factory()`` must return an ``nn.Module`` taking (N, 3, H, W) images and returning class logits
(N, classes): a tensor, or a tuple or dict holding one (``--output KEY|INDEX`` picks it; see
:mod:`circuits_cli.zoo.outputs`). Optional attributes on the returned module customise it:
``input_size`` (int or (H, W), square; default 224), ``mean`` and ``std`` (per-channel
normalisation of [0, 1] RGB; default ImageNet's) or ``preprocess`` (any function from [0, 1] RGB
to the model's input), ``labels`` (class names; ``--labels FILE`` gives them from a file).
``--weights FILE`` loads a state dict into it; ``weights="random"`` keeps the factory's weights.
Addressable layers: every module whose output is an image-shaped (N, C, H, W) tensor, and the
token sequences (N, T, D) of a stack of blocks, in the order they run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from torch import nn

from ..errors import CircuitsError
from .base import LoadedModel, discover_layers, imagenet_normalize, normalizer
from .weights import read_state_dict, weights_id


def build(spec: str, weights: Path | None = None, random: bool = False) -> LoadedModel:
    """The user's model; ``random`` (no ``weights``) keeps what the factory initialised."""
    file, _, factory_name = spec.rpartition(":")
    path = Path(file).expanduser()
    if not path.is_file():
        raise CircuitsError(f"model file {file!r} does not exist; write --model FILE.py:FACTORY "
                            "with FACTORY a function returning an nn.Module")
    if not factory_name.isidentifier():
        raise CircuitsError(f"{factory_name!r} is not a function name; write FILE.py:FACTORY")
    mod_name = f"circuits_user_model_{hashlib.sha1(os.fsencode(path.resolve())).hexdigest()[:8]}"
    spec_obj = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[mod_name] = module
    try:
        spec_obj.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file; report, don't crash
        raise CircuitsError(f"importing {file!r} failed: {type(err).__name__}: {err}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        found = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise CircuitsError(f"{file!r} has no function {factory_name!r}; it defines: "
                            f"{', '.join(found[:8]) or 'nothing callable'}")
    try:
        net = factory()
    except Exception as err:  # noqa: BLE001 - the user's code; report, don't crash
        raise CircuitsError(f"{factory_name}() in {file!r} raised {type(err).__name__}: "
                            f"{err}") from None
    if not isinstance(net, nn.Module):
        raise CircuitsError(f"{factory_name}() in {file!r} returned {type(net).__name__}, "
                            "not a torch.nn.Module")
    if weights is not None:
        try:
            net.load_state_dict(read_state_dict(Path(weights),
                                                f"a state dict of {factory_name}() from {file}"))
        except RuntimeError as err:
            raise CircuitsError(f"{str(weights)!r} does not fit {factory_name}(): "
                                f"{str(err).splitlines()[0]}") from None
        wid = weights_id(weights)
    else:
        wid = f"{path.name}:{factory_name}"
    net.eval()
    size = getattr(net, "input_size", 224)
    if isinstance(size, (tuple, list)):  # (H, W) or (C, H, W)
        if len(set(size[-2:])) != 1:
            raise CircuitsError(f"{factory_name}() in {file!r}: input_size {tuple(size)} is not "
                                "square; only square inputs are supported")
        size = size[-1]
    size = int(size)
    preprocess = getattr(net, "preprocess", None)
    if preprocess is None:
        mean, std = getattr(net, "mean", None), getattr(net, "std", None)
        preprocess = normalizer(mean, std) if mean is not None and std is not None \
            else imagenet_normalize
    return LoadedModel(
        name=spec, module=net, layers=discover_layers(net, size, lambda _p, _m: True),
        preprocess=preprocess, input_size=size,
        labels=list(getattr(net, "labels", [])), weights_id=wid,
        description=f"user model {factory_name}() from {file}"
                    + (f", weights from {Path(weights).name}" if weights is not None else
                       ", weights as the factory sets them"),
    )
