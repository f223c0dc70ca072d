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
                 device: torch.device | str = "cpu", init_images: torch.Tensor | None = None):
        super().__init__()
        h = w = int(size)
        self.size = (h, w)
        self.decorrelate = decorrelate
        freqs = rfft2d_freqs(h, w)
        scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32,
                                                   device=device)[None, None, ..., None])
        self.register_buffer("color", torch.tensor(color_correlation_normalized.T,
                                                   device=device))
        if init_images is not None:  # start from these pictures exactly (feature accentuation)
            z = _decorrelated_logits(init_images, self.color if decorrelate else None, (h, w))
            spec = torch.view_as_real(torch.fft.rfftn(z * _MAGIC, dim=(-2, -1), norm="ortho"))
            self.spectrum = torch.nn.Parameter((spec / self.scale.cpu()).to(device))
            return
        init = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            init.append(torch.randn((3, *freqs.shape, 2), generator=gen) * sd)
        self.spectrum = torch.nn.Parameter(torch.stack(init).to(device))

    def forward(self) -> torch.Tensor:
        h, w = self.size
        spectrum = torch.view_as_complex(self.scale * self.spectrum)
        image = torch.fft.irfftn(spectrum, s=(h, w), norm="ortho")[:, :, :h, :w] / _MAGIC
        if self.decorrelate:
            image = torch.einsum("bchw,cd->bdhw", image, self.color)
        return torch.sigmoid(image)


def _decorrelated_logits(images: torch.Tensor, color: torch.Tensor | None,
                         size: tuple[int, int]) -> torch.Tensor:
    """The pre-sigmoid, decorrelated-colour values that give ``images`` (B, 3, H, W) in [0, 1]
    back through a parameterization's last two steps (colour matrix, sigmoid)."""
    x = torch.as_tensor(images, dtype=torch.float32).cpu()
    if x.shape[-2:] != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                            antialias=True)
    y = torch.logit(x.clamp(0.004, 0.996))
    if color is None:
        return y
    return torch.einsum("bdhw,dc->bchw", y, torch.linalg.inv(color.cpu().double()).float())


def _standardize(t: torch.Tensor) -> torch.Tensor:
    """Per item: zero mean, unit standard deviation over all of its values."""
    dims = tuple(range(1, t.dim()))
    return (t - t.mean(dim=dims, keepdim=True)) / (t.std(dim=dims, keepdim=True) + 1e-5)


class MacoImage(torch.nn.Module):
    """MACO (Fel et al., NeurIPS 2023): a batch of pictures whose Fourier magnitude is fixed to
    ``magnitude`` (3, H, W // 2 + 1), a natural-image spectrum in decorrelated colour
    (:mod:`.spectrum`); only the phase is optimised. As in the authors' code the phase is
    standardised before use and the spatial picture standardised after the inverse FFT, then
    colours are recorrelated and a sigmoid maps to [0, 1]. ``seeds``: one per picture.

    ``init_images``: start from these pictures instead (feature accentuation): each picture's
    own magnitude spectrum is kept fixed and its phase starts at the picture's phase, and neither
    phase nor picture is standardised, so that the first output is the picture itself.
    """

    def __init__(self, seeds: Sequence[int], size: int, magnitude: torch.Tensor,
                 device: torch.device | str = "cpu", init_images: torch.Tensor | None = None):
        super().__init__()
        h = w = int(size)
        self.size = (h, w)
        self.register_buffer("color", torch.tensor(color_correlation_normalized.T,
                                                   device=device))
        self.standardize = init_images is None
        if init_images is not None:
            z = _decorrelated_logits(init_images, self.color, (h, w))
            spec = torch.fft.rfft2(z, norm="ortho")
            self.register_buffer("magnitude", spec.abs().to(device))
            self.phase = torch.nn.Parameter(spec.angle().to(device))
            return
        mag = torch.as_tensor(magnitude, dtype=torch.float32)
        if tuple(mag.shape) != (3, h, w // 2 + 1):
            raise ValueError(f"magnitude spectrum of shape {tuple(mag.shape)}; expected "
                             f"(3, {h}, {w // 2 + 1})")
        self.register_buffer("magnitude", mag[None].to(device))
        init = [torch.randn(tuple(mag.shape), generator=torch.Generator().manual_seed(int(s)))
                for s in seeds]
        self.phase = torch.nn.Parameter(torch.stack(init).to(device))

    def forward(self) -> torch.Tensor:
        h, w = self.size
        phase = _standardize(self.phase) if self.standardize else self.phase
        spectrum = torch.polar(self.magnitude.expand_as(phase), phase)
        image = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")
        if self.standardize:
            image = _standardize(image)
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
