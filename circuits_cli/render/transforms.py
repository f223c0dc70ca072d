"""Random transformations applied to the image before every optimisation step (Lucid's
"transformation robustness"): without them activation maximization finds high-frequency patterns
that fool the network but mean nothing to a person.

:func:`standard_transforms` is lucent's ``lucent.optvis.transform.standard_transforms`` with the
same parameters (pad 12 with grey, jitter 8, scale 0.9..1.1 in 11 steps, rotate -10..10 degrees
with extra weight on 0, jitter 4). The operations are re-implemented rather than imported because
lucent's draw their randomness from numpy's *global* generator and move tensors to ``cuda:0``
whenever a GPU exists; here every transform takes an explicit ``numpy.random.RandomState`` (so a
render is reproducible from its seed without touching global state) and stays on the input's
device. Jitter is an exact integer shift, as Lucid's random crop (lucent's kornia-0.4.1
``translate`` shifts by a fraction of a pixel more than asked and blurs bilinearly); scale uses
the same bilinear resampling as lucent, rotation bilinear resampling about the centre.
A batch shares one draw per step, as in Lucid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, np.random.RandomState], torch.Tensor]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels of constant ``value`` (0.5 = grey)."""

    def inner(x, rng):
        return F.pad(x, [width] * 4, mode="constant", value=value)

    return inner


def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate content by (dx, dy) >= 0 pixels (right, down), filling with zeros; same size."""
    h, w = x.shape[-2:]
    if dx == 0 and dy == 0:
        return x
    return F.pad(x, [dx, 0, dy, 0])[..., :h, :w]


def jitter(d: int) -> Transform:
    """Random translation by 0..d-1 pixels in x and in y (lucent's ``jitter(d)``)."""
    if d <= 1:
        raise ValueError(f"jitter needs d > 1, got {d}")

    def inner(x, rng):
        dx, dy = int(rng.choice(d)), int(rng.choice(d))
        return shift(x, dx, dy)

    return inner


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a random factor from ``scales`` (bilinear, corners aligned); an image that
    shrinks is padded back to its size with zeros, one that grows keeps its larger size."""

    def inner(x, rng):
        scale = float(rng.choice(scales))
        h, w = x.shape[-2:]
        sh, sw = math.ceil(scale * h), math.ceil(scale * w)
        if (sh, sw) == (h, w):
            return x
        y = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=True)
        pad_x = max(0, math.ceil((w - sw) / 2))
        pad_y = max(0, math.ceil((h - sh) / 2))
        # lucent pads [pad_y, pad_x] * 2 = (left=pad_y, right=pad_x, top=pad_y, bottom=pad_x)
        return F.pad(y, [pad_y, pad_x, pad_y, pad_x]) if (pad_x or pad_y) else y

    return inner


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the image centre by ``degrees`` (bilinear, zeros outside)."""
    if degrees == 0:
        return x
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    b, _, h, w = x.shape
    # affine_grid works in normalised coordinates; correct for a non-square aspect ratio.
    mat = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype,
                       device=x.device)
    grid = F.affine_grid(mat.expand(b, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate by a random angle (degrees) from ``angles``."""

    def inner(x, rng):
        return rotate(x, float(rng.choice(angles)))

    return inner


def compose(transforms: Sequence[Transform]) -> Transform:
    def inner(x, rng):
        for t in transforms:
            x = t(x, rng)
        return x

    return inner


def standard_transforms() -> list[Transform]:
    """Lucent's (and Lucid's) standard transformation robustness, same parameters."""
    return [
        pad(12, value=0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(4),
    ]


def random_crop(scale: Sequence[float], centre_sd: float) -> Transform:
    """MACO's crop: a square whose side is a random fraction ``scale[0]..scale[1]`` of the
    picture, centred at a point drawn from N(0.5, ``centre_sd``) of the picture (kept inside);
    the engine then resamples it to the model's input size. One box per step for the batch."""
    lo, hi = float(scale[0]), float(scale[1])

    def inner(x, rng):
        h, w = x.shape[-2:]
        frac = lo + (hi - lo) * rng.rand()
        side = max(2, min(h, w, int(round(frac * min(h, w)))))
        cy, cx = 0.5 + centre_sd * rng.randn(2)
        y0 = int(np.clip(round(cy * h - side / 2), 0, h - side))
        x0 = int(np.clip(round(cx * w - side / 2), 0, w - side))
        return x[..., y0:y0 + side, x0:x0 + side]

    return inner


def noise(sd: float) -> Transform:
    """Gaussian pixel noise of standard deviation ``sd`` (MACO). One noise image per step,
    shared by the batch, so that an item's result does not depend on its batch."""

    def inner(x, rng):
        gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
        n = torch.randn((1, *x.shape[1:]), generator=gen).to(x.device, x.dtype)
        return x + sd * n

    return inner
