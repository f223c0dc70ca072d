"""The natural-image magnitude spectrum that MACO fixes (Fel et al., "Unlocking Feature
Visualization for Deeper Networks with MAgnitude Constrained Optimization", NeurIPS 2023).

MACO optimises only the phase of an image's Fourier spectrum; the magnitude is the average
magnitude spectrum of natural photographs, taken in the decorrelated colour space of the
Fourier parameterization (the inverse of Lucid's colour correlation matrix). The package ships
one computed locally from the 500 ImageNet photos of ``../shared/images/imagenet-samples``
(``data/natural_spectrum.npy``, 128 x 65 per colour, float16: a derived statistic, 50 kB);
nothing is downloaded. Recompute it, or make one from your own photos, with::

    python -m circuits_cli.render.spectrum PHOTO_DIR circuits_cli/render/data/natural_spectrum.npy

Each photo is resized (shorter side) and centre-cropped to ``size``, shifted by -0.5, decorrelated,
multiplied by a 2-D Hann window and transformed (``rfft2``, orthonormal); the magnitudes are
averaged over photos. Without the window a photo's edges (a discrete Fourier transform treats the
picture as periodic) put a cross of energy on the horizontal and vertical frequency axes, and MACO
renders with that spectrum show horizontal and vertical streaks.
"""

from __future__ import annotations

import argparse
import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHIPPED = Path(__file__).with_name("data") / "natural_spectrum.npy"
SHIPPED_SIZE = 128


def _decorrelation() -> torch.Tensor:
    from lucent.optvis.param.color import color_correlation_normalized

    return torch.linalg.inv(torch.tensor(color_correlation_normalized.T, dtype=torch.float64))


def compute_spectrum(images: str | Path | list, size: int = SHIPPED_SIZE) -> np.ndarray:
    """Mean magnitude spectrum (3, size, size // 2 + 1) float32 of the photos in ``images``
    (folders or files), in the decorrelated colour space."""
    from ..images import find_images, iter_batches

    files, _ = find_images([images] if isinstance(images, (str, Path)) else images)
    inverse = _decorrelation()
    hann = torch.hann_window(size, periodic=False, dtype=torch.float64)
    window = torch.outer(hann, hann)
    window = window / window.pow(2).mean().sqrt()  # keeps the energy of a stationary picture
    total, n = None, 0
    for x, _read, _skipped in iter_batches(files, batch=32, size=size, resize=size):
        if not len(x):
            continue
        x = torch.einsum("bchw,cd->bdhw", x.double() - 0.5, inverse) * window
        mag = torch.fft.rfft2(x, norm="ortho").abs().sum(0)
        total = mag if total is None else total + mag
        n += len(x)
    if not n:
        from ..errors import CircuitsError

        raise CircuitsError(f"no readable photos in {images!r} to compute a spectrum from")
    return (total / n).float().numpy()


def resize_spectrum(mag: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """A (3, S, S // 2 + 1) magnitude spectrum resampled to ``size``: bilinear on the centred
    (fftshifted) frequency grid, so that the wrap-around of the vertical frequencies is kept."""
    t = torch.as_tensor(np.asarray(mag, dtype=np.float32))
    if t.shape[-2] == size:
        return t.clone()
    centred = torch.fft.fftshift(t, dim=-2)[None]
    out = F.interpolate(centred, size=(size, size // 2 + 1), mode="bilinear",
                        align_corners=False, antialias=True)[0]
    return torch.fft.ifftshift(out, dim=-2)


@lru_cache(maxsize=8)
def _load(path: str) -> np.ndarray:
    return np.load(path, allow_pickle=False).astype(np.float32)


def natural_spectrum(size: int, path: str | Path | None = None) -> torch.Tensor:
    """The magnitude spectrum MACO fixes, at ``size`` (the shipped one unless ``path``)."""
    return resize_spectrum(_load(str(path or SHIPPED)), size)


def spectrum_id(path: str | Path | None = None) -> str:
    """Short hash of a spectrum file's contents (part of a MACO render's cache key)."""
    return hashlib.sha256(Path(path or SHIPPED).read_bytes()).hexdigest()[:12]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Compute MACO's natural magnitude spectrum.")
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=SHIPPED_SIZE)
    args = parser.parse_args(argv)
    mag = compute_spectrum(args.images, args.size)
    import io

    from ..files import write_bytes

    buf = io.BytesIO()
    np.save(buf, mag.astype(np.float16))
    write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}: {mag.shape}, {len(buf.getvalue()) / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
