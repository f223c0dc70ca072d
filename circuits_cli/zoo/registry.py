"""The model registry: builders register with :func:`register_model`, complete by construction.

A zoo module declares its model in one place::

    @register_model("toy", weights=TOY_WEIGHTS, description="...")
    def build(weights: Path | None) -> LoadedModel: ...

``build`` receives the weights file to load (found by
:func:`circuits_cli.zoo.weights.find_weights` from the :class:`WeightsSpec`, or given by the
user), or None for random initial weights (tests, benchmarks). :data:`MODULES` tells which module
to import for a name, so loading stays lazy (``circuits --help`` imports no torch); the decorator
refuses a name missing from it or declared by another module, and :func:`entry` refuses a module
that does not register the name it is listed for, so the table and the decorators cannot
disagree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .weights import WeightsSpec

#: name -> the module whose ``@register_model(name)`` builds it (imported on first use).
MODULES = {
    "inceptionv1": "circuits_cli.zoo.inceptionv1",
    "googlenet-bvlc": "circuits_cli.zoo.googlenet_bvlc",
    "toy": "circuits_cli.zoo.toy",
}


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, how its weights are found, one line about it."""

    name: str
    build: Callable  # (weights: Path | None) -> LoadedModel; None builds random weights
    weights: WeightsSpec
    description: str = ""


_ENTRIES: dict[str, ModelEntry] = {}


def register_model(name: str, weights: WeightsSpec, description: str = ""):
    """Register the decorated builder as model ``name`` (see the module docstring)."""

    def decorate(fn: Callable) -> Callable:
        if MODULES.get(name) != fn.__module__:
            raise RuntimeError(f"model {name!r} is registered in {fn.__module__}, but "
                               f"zoo.registry.MODULES lists {MODULES.get(name)!r} for it")
        known = _ENTRIES.get(name)
        if known is not None and known.build.__qualname__ != fn.__qualname__:
            raise RuntimeError(f"model {name!r} is registered twice in {fn.__module__}")
        _ENTRIES[name] = ModelEntry(name, fn, weights, description)
        return fn

    return decorate


def names() -> list[str]:
    """The registered model names (from the table: nothing is imported)."""
    return sorted(MODULES)


def entry(name: str) -> ModelEntry:
    """The entry of a registered ``name``, importing its module on first use."""
    module = MODULES[name]
    importlib.import_module(module)
    if name not in _ENTRIES:
        raise RuntimeError(f"{module} does not register model {name!r} "
                           "(its builder lacks @register_model)")
    return _ENTRIES[name]


def registered() -> dict[str, ModelEntry]:
    """Every registered entry, importing every module of the table."""
    return {name: entry(name) for name in names()}
