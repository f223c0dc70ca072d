"""The rendering recipe as data: one value that says how a picture is made.

A :class:`Recipe` holds the image parameterization, the transforms, the optimizer and its
settings, the steps, the picture size, the seed and the arithmetic, in the spirit of Lucid's
``render_vis(model, objective, param_f, optimizer, transforms)`` where the caller composes the
parts and the renderer does not grow a flag per variant. Its :meth:`Recipe.describe` is the ONE
description of it: the render cache key (:mod:`.cache`) and every manifest are made from it, and
:meth:`Recipe.from_description` reads it back (``Recipe.from_description(r.describe()) == r``).
The engine builds the parts from the same fields (:meth:`build_param`, :meth:`build_transforms`,
:meth:`build_optimizer`), so what is recorded is what ran.

Two parameterizations:

- ``fourier`` (default): Lucid's decorrelated Fourier image (``1/f``-scaled spectrum, free
  magnitude and phase) with Lucid's standard transforms; Adam at 0.1, the picture being the
  exponential moving average of the iterates (Lucid: 0.05, the last iterate);
- ``maco``: MACO (Fel et al., NeurIPS 2023): only the phase is free, the magnitude is fixed to the
  natural-image spectrum shipped with the package (:mod:`.spectrum`); random crops and noise as
  transforms; the accumulated input-gradient magnitude gives a transparency map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import CircuitsError
from . import transforms as tf

# Bump when the code of a recipe changes the pictures it makes (old cache entries then miss).
# 4: Fourier's default step 0.05 -> LR with the picture averaged over the iterates (EMA).
# 5: for an image whose objective is zero, ReLU modules pass a redirected gradient where theirs
#    vanishes (engine._RedirectedReLU), so a unit silent on its starting noise renders instead
#    of staying grey; other images are unchanged. A direction's starting image is seeded by
#    what it reads, not by its name (which holds its SAE's folder).
VERSION = 5
# Fourier's defaults. Measured on googlenet-bvlc (8 units of inception_4c, 512 steps,
# benchmarks/bench_visualize.py): Adam at 0.1 with an EMA of decay 0.95 reaches lucent's
# 512-step activation in about 200 steps where 0.05 without averaging needs about 340, and ends
# as high; 0.1 without averaging ends 1-2% lower, and averaging alone does not reach it sooner.
LR, EMA = 0.1, 0.95
PARAMS = ("fourier", "maco")
OPTIMIZERS = ("adam", "nadam")
PRECISIONS = ("fp32", "bf16")

# name -> factory(**params) -> Transform
TRANSFORMS = {
    "pad": lambda width, value=0.5: tf.pad(width, value),
    "jitter": lambda d: tf.jitter(d),
    "scale": lambda scales: tf.random_scale(scales),
    "rotate": lambda angles: tf.random_rotate(angles),
    "crop": lambda scale, centre_sd: tf.random_crop(scale, centre_sd),
    "noise": lambda sd: tf.noise(sd),
}


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in sorted(value.items()))
    return value


def _thaw(value):
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def step(name: str, **params) -> tuple:
    """One transform of a recipe, as data: ``step("jitter", d=8)``."""
    if name not in TRANSFORMS:
        raise CircuitsError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
    return (name, _freeze(params))


STANDARD_TRANSFORMS = (  # lucent's standard_transforms, same parameters
    step("pad", width=12, value=0.5),
    step("jitter", d=8),
    step("scale", scales=[1 + (i - 5) / 50.0 for i in range(11)]),
    step("rotate", angles=list(range(-10, 11)) + 5 * [0]),
    step("jitter", d=4),
)
# MACO's transforms: a random square crop (side a fraction of the picture, centre drawn around
# the middle) and Gaussian pixel noise. Fel et al. crop 20-25% of a 1280 px canvas; ours are
# 128 px pictures judged whole, so the crops are larger (0.6-1.0 lost the diagonal planted
# grating detectors at 64 steps: scale changes the period a detector sees).
MACO_TRANSFORMS = (
    step("crop", scale=[0.8, 1.0], centre_sd=0.15),
    step("noise", sd=0.05),
)


@dataclass(frozen=True)
class Recipe:
    """Everything but the model and the objective that determines a render."""

    param: str = "fourier"
    transforms: tuple = STANDARD_TRANSFORMS
    optimizer: str = "adam"
    lr: float = LR
    # Adam's momentum 0.8 instead of the usual 0.9. Measured on googlenet-bvlc (8 units of
    # inception_4c, 512 steps): +1.5% final activation at every checkpoint from 64 to 512 steps,
    # i.e. lucent's 512-step level about 9% sooner; the pictures look the same.
    betas: tuple = (0.8, 0.999)
    # Polyak averaging: the picture is an exponential moving average of the parameterization's
    # iterates (decay ``ema``; 0 = the last iterate, as Lucid). The random transforms make every
    # step's gradient noisy, so the iterates jitter around what the objective wants; their
    # average sits closer to it, which lets the step be larger (lr above). See VERSION 4.
    ema: float = EMA
    steps: int = 512
    size: int = 128
    seed: int = 0
    precision: str = "fp32"  # resolved: "auto" is turned into one of these before a recipe
    version: int = field(default=VERSION)

    def __post_init__(self):
        if self.param not in PARAMS:
            raise CircuitsError(f"unknown parameterization {self.param!r}; choose one of "
                                + ", ".join(PARAMS))
        if self.optimizer not in OPTIMIZERS:
            raise CircuitsError(f"unknown optimizer {self.optimizer!r}; choose one of "
                                + ", ".join(OPTIMIZERS))
        if self.precision not in PRECISIONS:
            raise CircuitsError(f"unknown precision {self.precision!r}; choose one of "
                                + ", ".join(PRECISIONS) + " (or auto)")
        for name in ("steps", "size", "seed"):
            value = getattr(self, name)
            if isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))
        for name, low in (("steps", 1), ("size", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CircuitsError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise CircuitsError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise CircuitsError(f"learning rate must be positive, got {self.lr!r}")
        if not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise CircuitsError(f"ema must be in [0, 1), got {self.ema!r}")
        object.__setattr__(self, "ema", float(self.ema))
        object.__setattr__(self, "transforms", tuple(
            t if isinstance(t, tuple) else step(t["name"], **{k: v for k, v in t.items()
                                                               if k != "name"})
            for t in self.transforms))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "lr", float(self.lr))
        for name, _params in self.transforms:
            if name not in TRANSFORMS:
                raise CircuitsError(f"unknown transform {name!r}")

    @classmethod
    def for_param(cls, param: str = "fourier", **fields) -> Recipe:
        """The recipe of a parameterization with its own defaults (transforms, optimizer, lr),
        any field overridden by ``fields``."""
        defaults = {"fourier": {}, "maco": MACO_DEFAULTS}.get(param)
        if defaults is None:
            raise CircuitsError(f"unknown parameterization {param!r}; choose one of "
                                + ", ".join(PARAMS))
        return cls(**{"param": param, **defaults, **fields})

    def replace(self, **fields) -> Recipe:
        return dataclasses.replace(self, **fields)

    # --- the one description ---------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-ready description: the cache key and the manifests are made of it."""
        d = {"param": self.param,
             "transforms": [{"name": name, **{k: _thaw(v) for k, v in params}}
                            for name, params in self.transforms],
             "optimizer": {"name": self.optimizer, "lr": self.lr, "betas": list(self.betas),
                           "ema": self.ema},
             "steps": self.steps, "size": self.size, "seed": self.seed,
             "precision": self.precision, "recipe_version": self.version}
        if self.param == "maco":
            from .spectrum import spectrum_id

            d["spectrum"] = spectrum_id()  # the shipped magnitude spectrum's contents
        return d

    @classmethod
    def from_description(cls, d: dict) -> Recipe:
        opt = d["optimizer"]
        return cls(param=d["param"], transforms=tuple(d["transforms"]), optimizer=opt["name"],
                   lr=opt["lr"], betas=tuple(opt["betas"]), ema=opt.get("ema", 0.0),
                   steps=d["steps"], size=d["size"],
                   seed=d["seed"], precision=d["precision"], version=d["recipe_version"])

    def summary(self) -> str:
        """One line for people (contact sheets)."""
        return f"{self.param} · {self.steps} steps · {self.size} px · seed {self.seed}"

    # --- building the parts ----------------------------------------------------------------
    def build_param(self, seeds: Sequence[int], device, init_images=None) -> torch.nn.Module:
        from . import param as param_mod

        if self.param == "maco":
            from .spectrum import natural_spectrum

            mag = natural_spectrum(self.size)
            return param_mod.MacoImage(seeds, self.size, mag, device=device,
                                       init_images=init_images)
        return param_mod.FourierImage(seeds, self.size, device=device, init_images=init_images)

    def build_transforms(self) -> list[tf.Transform]:
        return [TRANSFORMS[name](**{k: _thaw(v) for k, v in params})
                for name, params in self.transforms]

    def build_optimizer(self, parameters) -> torch.optim.Optimizer:
        cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.NAdam
        return cls(parameters, lr=self.lr, betas=self.betas)


# MACO's own optimizer settings (Fel et al. use NAdam at lr 1.0 on a standardised phase).
MACO_DEFAULTS = {"transforms": MACO_TRANSFORMS, "optimizer": "nadam", "lr": 1.0,
                 "betas": (0.9, 0.999), "ema": 0.0}
