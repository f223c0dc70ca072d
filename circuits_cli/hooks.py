"""Activation hooks: read any layer's activation by name, without running the network past it.

Each addressable layer of a :class:`~circuits_cli.zoo.base.LoadedModel` is the output of one named
module (its hook point, ``LayerInfo.module``). :func:`capture` registers a forward hook on each
requested hook point, keeps what it sees, and, once the deepest requested layer has been computed,
raises :class:`StopForward` from inside the hook so that the rest of the network never runs.
Gradients flow through captured tensors, so rendering can optimise them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .zoo.base import LoadedModel


class StopForward(Exception):
    """Raised inside a hook once every requested layer is captured; caught by :func:`capture`."""


@contextmanager
def hooked(model: LoadedModel, layers: Sequence[str], stop: bool = True) -> Iterator[dict]:
    """Context manager: while active, a forward pass fills the yielded dict ``{layer: tensor}``.

    With ``stop=True`` the forward pass raises :class:`StopForward` as soon as all layers are in;
    run the forward pass through :func:`run_until` (or catch it yourself).
    """
    infos = [model.layer(name) for name in layers]
    wanted = {info.name for info in infos}
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for info in infos:
        def hook(_m, _inp, out, name=info.name):
            acts[name] = out
            if stop and wanted.issubset(acts):
                raise StopForward
        handles.append(model.module.get_submodule(info.module).register_forward_hook(hook))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def run_until(model: LoadedModel, inputs: torch.Tensor) -> None:
    """Run the network on already-preprocessed ``inputs``, swallowing :class:`StopForward`."""
    try:
        model.module(inputs)
    except StopForward:
        pass


def capture(model: LoadedModel, images01: torch.Tensor, layers: Sequence[str] | str,
            stop: bool = True, preprocess: bool = True) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` for a batch of [0, 1] RGB images (gradients kept if enabled).

    ``preprocess=False`` means ``images01`` is already the model's input.
    """
    if isinstance(layers, str):
        layers = [layers]
    x = model.preprocess(images01) if preprocess else images01
    with hooked(model, layers, stop=stop) as acts:
        run_until(model, x)
    missing = [name for name in (model.layer(n).name for n in layers) if name not in acts]
    if missing:
        raise RuntimeError(f"layers {missing} were never computed by the forward pass")
    return {model.layer(n).name: acts[model.layer(n).name] for n in layers}
