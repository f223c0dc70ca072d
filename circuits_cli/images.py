"""Images from disk: find them in files and folders, load them as [0, 1] RGB tensors.

The standard ImageNet evaluation crop is the default: resize the shorter side to 256, then cut the
centre 224 x 224. Files that cannot be read as images are skipped and counted, never a crash; a
path that does not exist, or a folder without images, is a :class:`CircuitsError`.
"""

from __future__ import annotations

import os
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


#: Greyscale modes with more than 8 bits per pixel, which Pillow's ``convert("RGB")`` clips to
#: 255 (a 16-bit PNG came out white): they are scaled to [0, 1] by their bit depth instead.
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def display_name(path: str | Path) -> str:
    """A file name to print or draw: the name as it is, except that bytes which are not valid
    UTF-8 (a name from another system) are shown as ``\\xNN`` (fonts and encoders refuse the
    lone surrogates Python reads them as)."""
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


def describe(path: str | Path) -> str:
    """A file name for a message: printable even when it is not valid UTF-8 (the undecodable
    bytes shown as ``\\xNN``, as ``ls`` does), quoted."""
    return f"'{display_name(path)}'"


def _pixel_limit_error(path: Path, err: Exception | None = None) -> CircuitsError:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return CircuitsError(f"{describe(path)} is larger than the {limit:,} pixels circuits reads "
                         "(Pillow's limit against decompression bombs)")


def open_image(path: str | Path):
    """``PIL.Image.open(path)`` with every failure as a one-line :class:`CircuitsError` naming
    the file: not an image, truncated, or over Pillow's pixel limit (a decompression bomb, or a
    picture too large to read safely; Pillow's own warning, with its library path, is never
    shown). Use it as a context manager, like ``Image.open``."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged headers
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _pixel_limit_error(path, err) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise CircuitsError(f"cannot read {describe(path)} as an image ({_reason(err)})") from None


def _reason(err: Exception) -> str:
    """The error's own words without the path (Pillow repeats the file name, undecodable
    bytes and all)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text.split(" '", 1)[0] if "cannot identify image file" in text else text


def _full_scale(im) -> float:
    """The value of white in a greyscale image of more than 8 bits: 65535 for 16-bit modes; for
    32-bit integers the file's bit depth (TIFF BitsPerSample and SampleFormat; PGM and PNG are
    16-bit); 1 for floats (taken as already in [0, 1]). Read from the opened file (its tags)."""
    if im.mode == "F":
        scale = 1.0
    elif im.mode.startswith("I;16"):
        scale = 65535.0
    else:
        bits, signed = 16, False
        tags = getattr(im, "tag_v2", None)
        if tags is not None:
            bits = int(np.max(tags.get(258, (16,)) or (16,)))
            signed = 2 in tuple(np.atleast_1d(tags.get(339, (1,))))
        scale = float(2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)
    return scale


def _high_depth_array(im, scale: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: ``im`` over ``scale`` (:func:`_full_scale`), clipped; NaN is
    0."""
    a = np.asarray(im, dtype=np.float64)
    a = np.nan_to_num(a / scale, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def load_image(path: str | Path, size: int | None = 224, resize: int | None = 256) -> torch.Tensor:
    """One image as a float tensor (3, H, W) in [0, 1], RGB.

    The shorter side is resized to ``resize`` (bilinear, antialiased), then the centre
    ``size`` x ``size`` square is cut out. ``resize=None`` keeps the original scale (the shorter
    side is still raised to ``size`` if smaller); ``size=None`` skips the crop. Greyscale
    pictures of 16 or 32 bits are scaled by their bit depth (:func:`_full_scale`). An
    unreadable file, or one over Pillow's pixel limit, is a :class:`CircuitsError` naming it.
    """
    import warnings

    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow's notes on damaged files ("Corrupt EXIF data", with its library path) are
            # not the user's business: the file reads, or is skipped by name
            warnings.simplefilter("ignore")
            with open_image(path) as im:
                scale = _full_scale(im) if im.mode in HIGH_DEPTH_MODES else None
                im = ImageOps.exif_transpose(im)
                if scale is not None:
                    im = Image.fromarray(_high_depth_array(im, scale), mode="F")
                else:
                    im = im.convert("RGB")
    except CircuitsError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CircuitsError(f"cannot read {describe(path)} as an image ({_reason(err)})") from None
    target = max(resize, size or 0) if resize else (
        size if size and min(im.size) < size else None)
    if target:
        w, h = im.size
        scale = target / min(w, h)
        new = (max(target, round(w * scale)), max(target, round(h * scale)))
        if new != (w, h):
            im = im.resize(new, Image.BILINEAR)
    if im.mode == "F":
        grey = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        array = np.repeat(grey[..., None], 3, axis=2)
    else:
        array = np.asarray(im, dtype=np.float32) / 255.0
    if size:  # the centre crop, on the array (Pillow's crop would apply its pixel limit again)
        h, w = array.shape[:2]
        left, top = (w - size) // 2, (h - size) // 2
        array = array[top:top + size, left:left + size]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def _why_unreadable(path: Path) -> str:
    """`` over the pixel limit`` for a picture too large to read (its header says so), else
    nothing: the other reasons (not an image, truncated) need no explaining."""
    from PIL import Image

    try:
        with open_image(path):
            return ""
    except CircuitsError as err:
        return (f" over Pillow's {Image.MAX_IMAGE_PIXELS:,}-pixel limit"
                if "pixels circuits reads" in str(err) else "")


def skipped_note(n_not_images: int, failed: Sequence[Path]) -> str | None:
    """The one warning line for skipped files, naming the unreadable ones (the first three), or
    None when nothing was skipped."""
    if not n_not_images and not failed:
        return None
    parts = []
    if n_not_images:
        parts.append(f"{n_not_images} non-image")
    if failed:
        names = ", ".join(describe(Path(p).name) + _why_unreadable(p) for p in failed[:3])
        parts.append(f"{len(failed)} unreadable ({names}{', ...' if len(failed) > 3 else ''})")
    return f"skipped {n_not_images + len(failed)} file(s): {' and '.join(parts)}"


def iter_batches(paths: Sequence[Path], batch: int = 32, size: int | None = 224,
                 resize: int | None = 256, failed: list[Path] | None = None
                 ) -> Iterator[tuple[torch.Tensor, list[Path], int]]:
    """Load ``paths`` ``batch`` at a time: yields (tensor N,3,H,W, paths read, number skipped).
    Unreadable files are skipped (and appended to ``failed`` when given); a batch where nothing
    could be read is not yielded (its skips are added to the next one, or yielded with an empty
    tensor at the end)."""
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
                if failed is not None:
                    failed.append(path)
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
