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
import copy
import functools
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ..hooks import hooked, run_until
from ..zoo.base import LoadedModel
from .objectives import REFERENCE, Objective
from .recipe import Recipe
from .transforms import compose

LEARNING_RATE = Recipe.lr  # Lucid's Adam learning rate
BETAS = Recipe.betas
PRECISIONS = ("auto", "fp32", "bf16")


def _window_sum(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``out[:, c] = sum of t[:, j] for j in c-lo .. c+hi`` (zero outside). Written without
    in-place operations so that ``torch.compile`` fuses it; in eager mode this is also faster
    than in-place adds on channel slices (53 against 68 ms for the LRN's forward and backward
    on a bfloat16 8 x 192 x 56 x 56 map)."""
    c = t.shape[1]
    padded = F.pad(t, (0, 0, 0, 0, lo, hi))
    out = padded[:, 0:c]
    for s in range(1, lo + hi + 1):
        out = out + padded[:, s:s + c]
    return out


def _pow_neg(d: torch.Tensor, beta: float) -> torch.Tensor:
    """``d ** -beta``, with the common exponents through (cheaper) square roots."""
    if beta == 0.5:
        return d.rsqrt()
    if beta == 0.75:
        return d.rsqrt() * d.sqrt().rsqrt()
    return d.pow(-beta)


def _lrn_values(x, size: int, alpha: float, beta: float, k: float):
    """``(y, d, r)`` of :class:`_LocalResponseNorm`'s forward: ``d`` the denominator's base,
    ``r = d^-beta``, ``y = x r``."""
    d = _window_sum(x * x, size // 2, (size - 1) // 2) * (alpha / size) + k
    r = _pow_neg(d, beta)
    return x * r, d, r


def _lrn_input_grad(grad, x, d, r, size: int, alpha: float, beta: float):
    back = _window_sum(grad * x * r / d, (size - 1) // 2, size // 2)
    return grad * r - back * x * (2 * alpha * beta / size)


def _bound_copy(f: Callable, *constants) -> Callable:
    """``f`` with its trailing arguments bound to ``constants`` (as defaults) and a code object
    of its own: torch.compile keeps its cache of compiled variants, and the limit on their
    number, per code object (a ``functools.partial`` shares one wrapper's code with all the
    others)."""
    return types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, constants,
                              f.__closure__)


class _Fused:
    """The LRN's forward and backward compiled by ``torch.compile`` into one loop each (a
    dozen passes over a 192 x 56 x 56 map become one: 1.6x faster forward and backward than
    eager on CPU for the 64-channel LRN under autocast, and more accurate in bfloat16, since the
    intermediates stay float32). Compiled on first
    use for each LRN setting and dtype (about 10 s, then cached by torch on disk), with the
    constants bound (passed as arguments they made the kernels slower than eager) and a code
    object of its own, so that the variants of one setting (a new batch size recompiles once,
    with dynamic shapes) never reach torch's limit on recompilations. Off with
    ``CIRCUITS_COMPILE=0``; where compiling fails (no C++ compiler, an unsupported platform)
    the eager formulation is used and nothing else changes."""

    def __init__(self):
        self.failed = False
        self.fns: dict[tuple, tuple] = {}

    def enabled(self, x: torch.Tensor) -> bool:
        import os

        return (not self.failed and x.dim() == 4 and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.bfloat16)
                and os.environ.get("CIRCUITS_COMPILE", "1") != "0")

    def __call__(self, which: int, params: tuple, *tensors):
        size, alpha, beta, k = params
        key = (params, tensors[0].dtype)
        fns = self.fns.get(key)
        if fns is None:
            fns = self.fns[key] = (
                torch.compile(_bound_copy(_lrn_values, size, alpha, beta, k), fullgraph=True),
                torch.compile(_bound_copy(_lrn_input_grad, size, alpha, beta), fullgraph=True))
        # one memory layout (the one rendering uses) and no autograd flags, so that neither
        # multiplies the compiled variants
        tensors = [t.detach().contiguous(memory_format=torch.channels_last) for t in tensors]
        try:
            with torch.autocast(tensors[0].device.type, enabled=False):
                return fns[which](*tensors)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, once
            import warnings

            self.failed = True
            warnings.warn(f"torch.compile of the fast LRN failed ({type(exc).__name__}); "
                          "using the eager version", RuntimeWarning, stacklevel=2)
            return None


_FUSED = _Fused()


class _LocalResponseNorm(torch.autograd.Function):
    """LRN with a hand-written backward: about a third of the memory passes autograd makes
    through torch's formulation (LRN on a 192 x 56 x 56 map was a quarter of a GoogLeNet
    rendering step), fused by :class:`_Fused` where it can be. With ``W`` the channel window,
    ``d = k + alpha/n * W(x^2)``: ``y = x d^-beta`` and
    ``dL/dx = g d^-beta - 2 alpha beta / n * x * W^T(g y / d)``."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.params = (size, alpha, beta, k)
        fused = _FUSED(0, ctx.params, x) if _FUSED.enabled(x) else None
        # eager: in the input's own dtype; under bfloat16 autocast that is bfloat16 (0.35%
        # relative error against float64, where rounding the input alone costs 0.14%)
        y, d, r = fused if fused is not None else _lrn_values(x, size, alpha, beta, k)
        ctx.save_for_backward(x, d, r)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, d, r = ctx.saved_tensors
        size, alpha, beta, _k = ctx.params
        grad = grad.to(x.dtype)
        fused = _FUSED(1, ctx.params, grad, x, d, r) if _FUSED.enabled(x) else None
        if fused is not None:
            return fused.contiguous(memory_format=_format_of(x)), None, None, None, None
        return _lrn_input_grad(grad, x, d, r, size, alpha, beta), None, None, None, None


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() else torch.contiguous_format)


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float,
                        k: float) -> torch.Tensor:
    """:func:`torch.nn.functional.local_response_norm` for (N, C, H, W), the same formula
    ``x / (k + alpha/size * sum of x^2 over the size channels around)^beta`` computed with
    window sums and an analytic backward instead of a 3-D average pool (several times faster
    forward and backward on CPU)."""
    return _LocalResponseNorm.apply(x, size, alpha, beta, k)


@contextlib.contextmanager
def _patched_forwards(model: LoadedModel, kind: type, forward_of: Callable):
    """While active, every module of exactly type ``kind`` (and no forward of its own already)
    runs ``forward_of(module)`` instead of its forward; restored afterwards. Hooks on the
    modules still run."""
    patched = []
    for module in model.module.modules():
        if type(module) is kind and "forward" not in vars(module):
            module.forward = forward_of(module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def fast_modules(model: LoadedModel):
    """While rendering, run every ``nn.LocalResponseNorm`` of the model through
    :func:`local_response_norm` (numerically the same); restored afterwards."""
    return _patched_forwards(model, torch.nn.LocalResponseNorm,
                             lambda module: functools.partial(_lrn_forward, module))


#: Which images of the batch being rendered are stuck at zero: set around each backward pass by
#: :func:`optimize` (:func:`_redirecting`), read by :class:`_RedirectedReLU`.
_STUCK: list = [None]


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient is redirected where it would vanish (lucid's ``redirected_relu_grad``,
    on by default in lucid's ``render_vis``), for the images whose objective is still zero.

    Forward: ``max(x, 0)``. Backward: the ReLU's own gradient, except for an image whose
    objective is zero (a unit that its starting noise does not excite: no gradient reaches the
    picture) and whose gradient at this ReLU is all zero. There the gradient passes through,
    except where it would push a negative input further down. So such a render can start to
    move; once its unit responds, the ordinary gradient takes over. Images whose objective is
    above zero get exactly the ordinary gradient, and the images of a batch do not interact, so
    their renders are unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        relu_grad = torch.ops.aten.threshold_backward(grad, x, 0)  # the native ReLU's gradient
        stuck = _STUCK[0]
        if stuck is None or x.dim() < 2 or stuck.shape[0] != x.shape[0]:
            return relu_grad
        rows = stuck.to(x.device).nonzero().flatten()
        dead = rows[relu_grad[rows].flatten(1).abs().amax(dim=1) == 0]
        if dead.numel() == 0:
            return relu_grad
        g, xd = grad[dead], x[dead]
        # the loss is minimised: a positive gradient pushes the output, here the input, down
        redirected = torch.where((xd < 0) & (g > 0), torch.zeros_like(g), g)
        return relu_grad.index_copy(0, dead, redirected)


@contextlib.contextmanager
def _redirecting(stuck: torch.Tensor | None):
    """During one backward pass, mark the images stuck at zero (a bool per image of the batch;
    None: nothing is redirected)."""
    _STUCK[0] = stuck
    try:
        yield
    finally:
        _STUCK[0] = None


def redirected_relus(model: LoadedModel):
    """While rendering, run every ``nn.ReLU`` module of the model through
    :class:`_RedirectedReLU` (the same forward values); restored afterwards. Hooks on the
    modules still see their outputs."""
    return _patched_forwards(model, torch.nn.ReLU, lambda _module: _RedirectedReLU.apply)


def _lrn_forward(module: torch.nn.LocalResponseNorm, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4:
        return F.local_response_norm(x, module.size, module.alpha, module.beta, module.k)
    return local_response_norm(x, module.size, module.alpha, module.beta, module.k)


@contextlib.contextmanager
def channels_last(model: LoadedModel, enabled: bool = True):
    """While rendering, keep the model's 4-D weights in channels-last memory format (oneDNN's and
    cuDNN's preferred layout: about 10% faster convolutions on CPU); restored afterwards."""
    if not enabled or model.device.type not in ("cpu", "cuda"):
        yield False
        return
    formats = {name: p.is_contiguous(memory_format=torch.channels_last)
               for name, p in model.module.named_parameters() if p.dim() == 4}
    model.module.to(memory_format=torch.channels_last)
    try:
        yield True
    finally:
        if not all(formats.values()):
            model.module.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def batch_invariant_threads(device: torch.device):
    """On CPU, one intra-op thread while rendering, so that a picture does not depend on what
    shares its batch. With several threads oneDNN splits a lone image's convolutions across
    them but gives each image of a batch to one thread: the sums run in another order, and the
    optimisation amplifies the last-bit differences (measured on the toy model, 2 threads,
    mixed4a:3 after 32 steps: activation 0.532 alone, 0.542 in 0-3, pixels up to 49/255 apart).
    With one thread every image is computed the same way in any batch (bit for bit); on a
    shared or small machine it is also the faster setting (see docs/guides/reliability.md)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    # (B, H, W) accumulated |d objective / d picture| over the steps (MACO's transparency map)
    transparency: np.ndarray | None = None


def to_model_input(model: LoadedModel, images01: torch.Tensor) -> torch.Tensor:
    """Upsample images smaller than the model's input size (as lucent does) and preprocess; a
    model that takes only its own size (a transformer's position embeddings) gets exactly it."""
    size = model.input_size
    if images01.shape[-1] < size or images01.shape[-2] < size or (
            model.fixed_input_size and tuple(images01.shape[-2:]) != (size, size)):
        images01 = F.interpolate(images01, size=(size, size), mode="bilinear",
                                 align_corners=True)
    return model.preprocess(images01)


@torch.no_grad()
def measure(model: LoadedModel, images01: torch.Tensor, objective: Objective) -> torch.Tensor:
    """``objective`` (per item) on images in [0, 1], without transforms: the reported value."""
    with hooked(model, objective.layers) as acts:
        run_until(model, to_model_input(model, images01.to(model.device)))
    return objective(acts).float().cpu()


def optimize(model: LoadedModel, objective: Objective, seeds: list[int],
             recipe: Recipe | None = None, *, measure_with: Objective | None = None,
             init_images: torch.Tensor | None = None, transparency: bool | None = None,
             on_step: Callable[[int], None] | None = None,
             on_eval: Callable[[int, torch.Tensor], None] | None = None, eval_every: int = 0,
             stop_early: bool = True, fast_lrn: bool = True, memory_format: str = "channels_last",
             lr_decay: str = "none", **fields) -> Optimized:
    """Maximise ``objective`` (summed over items) for ``len(seeds)`` images made by ``recipe``
    (or ``Recipe(**fields)``: ``optimize(model, obj, seeds, steps=64, size=64)``).

    ``seeds`` draws each item's initial image; ``recipe.seed`` draws the transforms, the same
    sequence for every batch, so an item's result depends only on its own seed and objective.
    ``init_images`` (B, 3, H, W) in [0, 1]: start from these pictures instead (feature
    accentuation); they are also run through the same transforms every step as the reference
    whose activations an objective reads under ``reference/LAYER`` (see
    :func:`.objectives.stay_close`). ``measure_with`` is what is reported as the activation
    (default: ``objective``), e.g. the bare channel value when the objective also carries a
    diversity term or a minus sign. ``transparency`` (default: for ``maco``) accumulates the
    magnitude of the objective's gradient with respect to the picture.
    ``on_step(i)`` is called after every step (progress bars); ``on_eval(step, values)`` every
    ``eval_every`` steps with the measured values of the current images (time-to-quality curves;
    the time it takes is not counted in ``seconds``). For measuring what each part saves
    (benchmarks only): ``stop_early=False`` runs the whole network, ``fast_lrn=False`` keeps
    torch's LRN, ``memory_format="contiguous"`` the model's layout, ``lr_decay="cosine"``.
    """
    device = model.device
    if recipe is None:
        if fields.get("precision") == "auto":
            fields["precision"] = "bf16" if bf16_supported(device) else "fp32"
        recipe = Recipe(**fields)
    elif fields:
        raise TypeError(f"give a recipe or its fields, not both ({', '.join(fields)})")
    if transparency is None:
        transparency = recipe.param == "maco"
    measure_with = measure_with or objective
    steps, batch = recipe.steps, len(seeds)
    reference = None
    if init_images is not None:
        reference = torch.as_tensor(init_images, dtype=torch.float32).to(device)
        if reference.shape[-1] != recipe.size or reference.shape[-2] != recipe.size:
            reference = F.interpolate(reference, size=(recipe.size, recipe.size),
                                      mode="bilinear", align_corners=False, antialias=True)
    image_f = recipe.build_param(seeds, device, init_images=reference)
    optimizer = recipe.build_optimizer(image_f.parameters())
    scheduler = None
    if lr_decay == "cosine":  # from lr down to lr/100 over the run
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, recipe.lr / 100)
    elif lr_decay != "none":
        raise ValueError(f"unknown lr_decay {lr_decay!r}")
    transform = compose(recipe.build_transforms())
    # the picture: the last iterate, or the average of the iterates (Recipe.ema)
    shown = copy.deepcopy(image_f) if recipe.ema else image_f
    averaged, iterate = list(shown.parameters()), list(image_f.parameters())
    rng = np.random.RandomState(recipe.seed % 2**32)
    history: list[torch.Tensor] = []
    accumulated = None
    spent = 0.0
    # ReLUs redirect their gradient (for images stuck at zero) until every image's objective
    # has been above zero at once; after that the native ReLU runs, and nothing syncs per step
    redirect = True
    with (fast_modules(model) if fast_lrn else contextlib.nullcontext(),
          channels_last(model, memory_format == "channels_last") as nhwc,
          batch_invariant_threads(device)):
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with record_function("render.param+transforms"):
                picture = image_f()
                if transparency:
                    picture.retain_grad()
                x = picture if reference is None else torch.cat([picture, reference])
                x = transform(x, rng)
            with (record_function("render.forward"),
                  redirected_relus(model) if redirect else contextlib.nullcontext(),
                  hooked(model, objective.layers, stop=stop_early) as acts,
                  autocast_for(recipe.precision, device)):
                x = to_model_input(model, x)
                run_until(model, x.contiguous(memory_format=torch.channels_last) if nhwc else x)
            with record_function("render.objective"):
                acts = {k: v.float() for k, v in acts.items()}
                if reference is not None:
                    acts = {**{k: v[:batch] for k, v in acts.items()},
                            **{REFERENCE + k: v[batch:].detach() for k, v in acts.items()}}
                per_item = objective(acts)
                value = per_item.sum()
            if redirect:  # which images are stuck at zero (one host sync, while redirecting)
                stuck = per_item.detach() <= 0 if per_item.dim() == 1 else None
                redirect = stuck is not None and bool(stuck.any())
            with (record_function("render.backward"),
                  _redirecting(stuck) if redirect else contextlib.nullcontext()):
                (-value).backward()
            if transparency:
                grad = picture.grad.detach().abs().sum(1)
                accumulated = grad if accumulated is None else accumulated.add_(grad)
            with record_function("render.adam"):
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if shown is not image_f:
                with record_function("render.ema"), torch.no_grad():
                    # the usual warm-up, so that the first iterates do not weigh for long
                    decay = min(recipe.ema, (1 + step) / (10 + step))
                    torch._foreach_lerp_(averaged, iterate, 1 - decay)
            history.append(value.detach())  # no host sync per step (GPU)
            spent += time.perf_counter() - t0
            if on_step is not None:
                on_step(step)
            if on_eval is not None and eval_every and (step % eval_every == 0 or step == steps):
                with torch.no_grad():
                    on_eval(step, measure(model, shown(), measure_with))
        t0 = time.perf_counter()
        with torch.no_grad():
            final = torch.round(shown() * 255.0) / 255.0  # what the 8-bit PNG will hold
        activations = measure(model, final, measure_with).numpy()
        spent += time.perf_counter() - t0
    images = final.permute(0, 2, 3, 1).float().cpu().numpy()
    return Optimized(images=images, activations=activations, seconds=spent,
                     history=torch.stack(history).float().cpu().tolist() if history else [],
                     transparency=None if accumulated is None
                     else accumulated.float().cpu().numpy())
