"""Images from disk: find them in files and folders, load them as [0, 1] RGB tensors.

The standard ImageNet evaluation crop is the default: resize the shorter side to 256, then cut the
centre 224 x 224. Files that cannot be read as images are skipped and counted, never a crash; a
path that does not exist, or a folder without images, is a :class:`CircuitsError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import CircuitsError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm"})

_WNID = re.compile(r"^(n\d{8})(?!\d)")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], int]:
    """Image files named by ``paths`` (files, or folders searched recursively), and the number of
    files skipped because they are not images.

    A file named explicitly is always kept (reading it decides whether it is an image). Inside
    folders, files with an image extension are kept in sorted order; other files count as skipped,
    except hidden ones (``.DS_Store``). Duplicates are dropped. A path that does not exist, or
    no image at all, is a :class:`CircuitsError`.
    """
    paths = [Path(p).expanduser() for p in paths]
    if not paths:
        raise CircuitsError("no image given; name image files or folders of images")
    found: list[Path] = []
    seen: set[Path] = set()
    skipped = 0

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for path in paths:
        if path.is_dir():
            for sub in sorted(path.rglob("*")):
                if not sub.is_file() or any(part.startswith(".")
                                            for part in sub.relative_to(path).parts):
                    continue
                if sub.name == "circuits-outputs.jsonl":  # our own record of an output folder
                    continue
                if is_image_name(sub):
                    add(sub)
                else:
                    skipped += 1
        elif path.is_file():
            add(path)
        else:
            raise CircuitsError(f"{str(path)!r} does not exist; name image files or folders "
                                "of images")
    if not found:
        where = ", ".join(repr(str(p)) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise CircuitsError(f"no images found in {where} (looked for "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); point to a folder of "
                            "images")
    return found, skipped


def load_image(path: str | Path, size: int | None = 224, resize: int | None = 256) -> torch.Tensor:
    """One image as a float tensor (3, H, W) in [0, 1], RGB.

    The shorter side is resized to ``resize`` (bilinear, antialiased), then the centre
    ``size`` x ``size`` square is cut out. ``resize=None`` keeps the original scale (the shorter
    side is still raised to ``size`` if smaller); ``size=None`` skips the crop. An unreadable file
    is a :class:`CircuitsError`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise CircuitsError(f"cannot read {str(path)!r} as an image ({err})") from err
    target = max(resize, size or 0) if resize else (
        size if size and min(im.size) < size else None)
    if target:
        w, h = im.size
        scale = target / min(w, h)
        new = (max(target, round(w * scale)), max(target, round(h * scale)))
        if new != (w, h):
            im = im.resize(new, Image.BILINEAR)
    if size:
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    array = np.array(im, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def iter_batches(paths: Sequence[Path], batch: int = 32, size: int | None = 224,
                 resize: int | None = 256) -> Iterator[tuple[torch.Tensor, list[Path], int]]:
    """Load ``paths`` ``batch`` at a time: yields (tensor N,3,H,W, paths read, number skipped).
    Unreadable files are skipped; a batch where nothing could be read is not yielded (its skips
    are added to the next one, or yielded with an empty tensor at the end)."""
    if batch < 1:
        raise CircuitsError(f"batch size must be at least 1, got {batch}")
    pending_skips = 0
    for start in range(0, len(paths), batch):
        tensors, ok = [], []
        for path in paths[start:start + batch]:
            try:
                tensors.append(load_image(path, size=size, resize=resize))
                ok.append(path)
            except CircuitsError:
                pending_skips += 1
        if tensors:
            if size is None and len({t.shape for t in tensors}) > 1:
                raise CircuitsError("images of different sizes cannot share a batch; give a "
                                    "crop size or use batch size 1")
            yield torch.stack(tensors), ok, pending_skips
            pending_skips = 0
    if pending_skips:
        dim = size or 0
        yield torch.empty(0, 3, dim, dim), [], pending_skips


def load_images(paths: Iterable[str | Path], size: int | None = 224, resize: int | None = 256
                ) -> tuple[torch.Tensor, list[Path], int]:
    """All images of ``paths`` (files or folders) as one tensor (N, 3, H, W) in [0, 1], the paths
    that were read, and the number of files skipped (not images, or unreadable). Nothing
    readable at all is a :class:`CircuitsError`."""
    files, skipped = find_images(paths)
    tensors, ok = [], []
    for x, read, n_skipped in iter_batches(files, batch=64, size=size, resize=resize):
        tensors.append(x)
        ok += read
        skipped += n_skipped
    if not ok:
        raise CircuitsError(f"none of the {len(files)} image file(s) could be read; check that "
                            "they are images (JPEG, PNG, ...)")
    return torch.cat([t for t in tensors if len(t)]), ok, skipped


def wnid_of(path: str | Path) -> str | None:
    """The ImageNet wnid a file name starts with (``n03594945_jeep.JPEG`` -> ``n03594945``)."""
    match = _WNID.match(Path(path).name)
    return match.group(1) if match else None
