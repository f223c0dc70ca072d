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

import contextlib
import functools
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
PRECISIONS = ("auto", "fp32", "bf16")


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float,
                        k: float) -> torch.Tensor:
    """:func:`torch.nn.functional.local_response_norm`, computed with ``size`` shifted adds
    instead of a 3-D average pool (5-10x faster forward and backward on CPU, where torch's LRN
    took a third of a GoogLeNet rendering step). Same formula:
    ``x / (k + alpha/size * sum of x^2 over the size channels around)^beta``."""
    c = x.shape[1]
    sq = F.pad(x * x, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    total = sq[:, 0:c]
    for i in range(1, size):
        total = total + sq[:, i:i + c]
    d = total * (alpha / size) + k
    if beta == 0.75:
        return x * d.rsqrt() * d.sqrt().rsqrt()
    if beta == 0.5:
        return x * d.rsqrt()
    return x / d.pow(beta)


@contextlib.contextmanager
def fast_modules(model: LoadedModel):
    """While rendering, run every ``nn.LocalResponseNorm`` of the model through
    :func:`local_response_norm` (numerically the same); restored afterwards."""
    patched = []
    for module in model.module.modules():
        if type(module) is torch.nn.LocalResponseNorm and "forward" not in vars(module):
            module.forward = functools.partial(_lrn_forward, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _lrn_forward(module: torch.nn.LocalResponseNorm, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        return F.local_response_norm(x, module.size, module.alpha, module.beta, module.k)
    return local_response_norm(x, module.size, module.alpha, module.beta, module.k)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast_for(precision: str, device: torch.device):
    """The autocast context of the forward pass: bfloat16 for ``bf16`` (``auto``: where the
    hardware has native bfloat16), else a no-op. Images, transforms, Adam and the reported
    activations stay float32."""
    if precision == "auto":
        precision = "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
             fft: bool = True, decorrelate: bool = True, precision: str = "fp32",
             lr_decay: str = "none",
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
    scheduler = None
    if lr_decay == "cosine":  # from lr down to lr/100 over the run
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, lr / 100)
    elif lr_decay != "none":
        raise ValueError(f"unknown lr_decay {lr_decay!r}")
    transform = compose(standard_transforms() if transforms is None else transforms)
    rng = np.random.RandomState(seed % 2**32)
    history: list[float] = []
    spent = 0.0
    with fast_modules(model):
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            x = transform(image_f(), rng)
            with hooked(model, objective.layers) as acts, autocast_for(precision, device):
                run_until(model, to_model_input(model, x))
            value = objective({k: v.float() for k, v in acts.items()}).sum()
            (-value).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
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
