"""Image parameterizations for feature visualization (Lucid's ``optvis.param``).

The image is not optimised pixel by pixel: it lives in the Fourier basis, each frequency scaled by
``1/f`` (so that all frequencies get comparable gradient steps and the result has natural-image
statistics), in a decorrelated colour space (a fixed 3x3 square root of ImageNet's colour
correlation), squashed to [0, 1] with a sigmoid. This is Lucid's default parameterization; the
frequency grid and the colour matrix are lucent's own (``lucent.optvis.param``), the module here
adds what rendering many units at once needs: a batch in which every image has its own
reproducible initial value (so that a unit's render does not depend on which batch it was in),
and a device argument (lucent's ``fft_image`` always builds on ``cuda:0`` when a GPU exists).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from lucent.optvis.param.color import color_correlation_normalized
from lucent.optvis.param.spatial import rfft2d_freqs

# Lucid's constant: dividing the inverse FFT by 4 keeps early images from saturating the sigmoid.
_MAGIC = 4.0


def item_seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (``item_seed(0, "mixed4c", 447, 0)``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class FourierImage(torch.nn.Module):
    """A batch of ``size`` x ``size`` RGB images, parameterized as in Lucid.

    ``seeds`` gives one seed per image: image ``i`` starts from the spectrum that seed draws,
    whatever else is in the batch. Calling the module returns images (B, 3, H, W) in [0, 1].
    """

    def __init__(self, seeds: Sequence[int], size: int, sd: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True,
                 device: torch.device | str = "cpu"):
        super().__init__()
        h = w = int(size)
        self.size = (h, w)
        self.decorrelate = decorrelate
        freqs = rfft2d_freqs(h, w)
        init = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            init.append(torch.randn((3, *freqs.shape, 2), generator=gen) * sd)
        self.spectrum = torch.nn.Parameter(torch.stack(init).to(device))
        scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32,
                                                   device=device)[None, None, ..., None])
        self.register_buffer("color", torch.tensor(color_correlation_normalized.T,
                                                   device=device))

    def forward(self) -> torch.Tensor:
        h, w = self.size
        spectrum = torch.view_as_complex(self.scale * self.spectrum)
        image = torch.fft.irfftn(spectrum, s=(h, w), norm="ortho")[:, :, :h, :w] / _MAGIC
        if self.decorrelate:
            image = torch.einsum("bchw,cd->bdhw", image, self.color)
        return torch.sigmoid(image)


class PixelImage(torch.nn.Module):
    """Plain pixels through a sigmoid (for comparison; converges to high-frequency noise)."""

    def __init__(self, seeds: Sequence[int], size: int, sd: float = 0.01,
                 device: torch.device | str = "cpu"):
        super().__init__()
        init = [torch.randn((3, size, size), generator=torch.Generator().manual_seed(int(s))) * sd
                for s in seeds]
        self.pixels = torch.nn.Parameter(torch.stack(init).to(device))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.pixels)


def image(seeds: Sequence[int], size: int, fft: bool = True, decorrelate: bool = True,
          device: torch.device | str = "cpu") -> torch.nn.Module:
    """The parameterization ``render_units`` uses: Fourier + decorrelated colour by default."""
    if fft:
        return FourierImage(seeds, size, decorrelate=decorrelate, device=device)
    return PixelImage(seeds, size, device=device)
