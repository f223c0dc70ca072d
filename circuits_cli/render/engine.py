"""The optimisation loop of feature visualization, batched.

One call optimises a batch of images together, item ``i`` for its own objective (see
:mod:`.objectives`), as in Lucid's batched rendering. Compared with lucent's ``render_vis`` the
loop differs only in what costs time and not in what it computes: the network's weights stay
frozen (no weight gradients), the forward pass stops at the deepest layer the objective reads
(:func:`circuits_cli.hooks.hooked` raises ``StopForward`` there), and the randomness comes from
explicit seeded generators.

Each step: image parameterization -> random transforms (one draw per step for the whole batch)
-> bilinear upsampling to the model's input size when the image is smaller (lucent renders 128 px
and upsamples to 224) -> the model's preprocessing -> forward to the target layer -> objective ->
Adam step on the image parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..hooks import hooked, run_until
from ..zoo.base import LoadedModel
from . import param as param_mod
from .objectives import Objective
from .transforms import Transform, compose, standard_transforms

LEARNING_RATE = 0.05  # Lucid's Adam learning rate


@dataclass
class Optimized:
    """What one batched optimisation produced."""

    images: np.ndarray  # (B, H, W, 3) float32 in [0, 1]
    activations: np.ndarray  # (B,) the measured objective on the final, untransformed images
    seconds: float
    history: list[float] = field(default_factory=list)  # summed objective per step (transformed)


def to_model_input(model: LoadedModel, images01: torch.Tensor) -> torch.Tensor:
    """Upsample images smaller than the model's input size (as lucent does) and preprocess."""
    size = model.input_size
    if images01.shape[-1] < size or images01.shape[-2] < size:
        images01 = F.interpolate(images01, size=(size, size), mode="bilinear",
                                 align_corners=True)
    return model.preprocess(images01)


@torch.no_grad()
def measure(model: LoadedModel, images01: torch.Tensor, objective: Objective) -> torch.Tensor:
    """``objective`` (per item) on images in [0, 1], without transforms: the reported value."""
    with hooked(model, objective.layers) as acts:
        run_until(model, to_model_input(model, images01.to(model.device)))
    return objective(acts).float().cpu()


def optimize(model: LoadedModel, objective: Objective, seeds: list[int], *, steps: int = 512,
             size: int = 128, seed: int = 0, lr: float = LEARNING_RATE,
             transforms: list[Transform] | None = None, measure_with: Objective | None = None,
             fft: bool = True, decorrelate: bool = True,
             on_step: Callable[[int], None] | None = None,
             on_eval: Callable[[int, torch.Tensor], None] | None = None,
             eval_every: int = 0) -> Optimized:
    """Maximise ``objective`` (summed over items) for ``len(seeds)`` images.

    ``seeds`` draws each item's initial image; ``seed`` draws the transforms, the same sequence
    for every batch, so an item's result depends only on its own seed and objective.
    ``measure_with`` is what is reported as the activation (default: ``objective``), e.g. the bare
    channel value when the objective also carries a diversity term or a minus sign.
    ``on_step(i)`` is called after every step (progress bars); ``on_eval(step, values)`` every
    ``eval_every`` steps with the measured values of the current images (time-to-quality curves;
    the time it takes is not counted in ``seconds``).
    """
    device = model.device
    measure_with = measure_with or objective
    image_f = param_mod.image(seeds, size, fft=fft, decorrelate=decorrelate, device=device)
    optimizer = torch.optim.Adam(image_f.parameters(), lr=lr)
    transform = compose(standard_transforms() if transforms is None else transforms)
    rng = np.random.RandomState(seed % 2**32)
    history: list[float] = []
    spent = 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        x = transform(image_f(), rng)
        with hooked(model, objective.layers) as acts:
            run_until(model, to_model_input(model, x))
        value = objective(acts).sum()
        (-value).backward()
        optimizer.step()
        history.append(float(value.detach()))
        spent += time.perf_counter() - t0
        if on_step is not None:
            on_step(step)
        if on_eval is not None and eval_every and (step % eval_every == 0 or step == steps):
            with torch.no_grad():
                on_eval(step, measure(model, image_f(), measure_with))
    t0 = time.perf_counter()
    with torch.no_grad():
        final = torch.round(image_f() * 255.0) / 255.0  # what the 8-bit PNG will hold
    activations = measure(model, final, measure_with).numpy()
    spent += time.perf_counter() - t0
    images = final.permute(0, 2, 3, 1).float().cpu().numpy()
    return Optimized(images=images, activations=activations, seconds=spent, history=history)
