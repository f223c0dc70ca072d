"""On-disk cache of renders, keyed by everything that determines the picture.

A render is identified by its settings (:func:`circuits_cli.render.render_settings`): the
model (name and weights identity), the unit, the objective (with its parameters), the sign and
the description of the rendering recipe (:meth:`.recipe.Recipe.describe`: parameterization,
transforms, optimizer, steps, size, seed, precision, recipe version). Each entry is a PNG
(and, for MACO, a grey transparency PNG ``*.alpha.png``) and a JSON record beside it; all are
written atomically (temporary file + rename) and the JSON is written last, so an entry whose
JSON exists is complete: a crash or Ctrl-C never leaves half an entry, and every other command
that needs the same render finds it.

Default location: ``$CIRCUITS_CACHE/renders`` (default ``~/.cache/circuits/renders``).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import cache_dir, slug, write_bytes


def default_cache_dir() -> Path:
    return cache_dir("renders")


_slug = slug  # the one file-name rule (circuits_cli.files.slug)


def render_key(**settings) -> str:
    """A stable hash of the settings (a dict of JSON-serialisable values)."""
    import torch  # the thread count changes float summation order, hence the bytes

    blob = json.dumps({"threads": torch.get_num_threads(), **settings}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


atomic_write_bytes = write_bytes  # kept name: render.run and reports.sheets use it


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) floats in [0, 1] -> uint8, rounded (what a PNG stores)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, 3) image, or an (H, W) grey one, in [0, 1] (or uint8);
    deterministic bytes."""
    arr = image if image.dtype == np.uint8 else to_uint8(image)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L").save(buf, format="PNG")
    return buf.getvalue()


def read_png(path: Path, grey: bool = False) -> np.ndarray:
    """A PNG as (H, W, 3) float32 in [0, 1] (``grey``: (H, W))."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0


def alpha_path(png: Path) -> Path:
    """Where a render's transparency map lies beside its PNG."""
    return png.with_suffix(".alpha.png")


class RenderCache:
    """``get(settings) -> (image, record) | None`` and ``put(settings, image, record)``.

    ``settings`` must contain ``model``, ``weights_id``, ``layer``, ``channel`` and
    ``objective``; they name the entry's folder and file for people browsing the cache.
    """

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def paths(self, settings: dict) -> tuple[Path, Path]:
        key = render_key(**settings)
        folder = (self.root / _slug(settings["model"]) / _slug(str(settings["weights_id"])[:24])
                  / _slug(settings["layer"]))
        which = settings["channel"] if "channel" in settings else settings["unit_vectors"][:8]
        stem = f"{_slug(settings['layer'])}_{which}-{_slug(settings['objective'])}"
        if settings.get("param", "fourier") != "fourier":
            stem += f"-{_slug(settings['param'])}"
        if settings.get("negative"):
            stem += "-neg"
        stem += f"-{key[:16]}"
        return folder / f"{stem}.png", folder / f"{stem}.json"

    def get(self, settings: dict) -> tuple[np.ndarray, dict, np.ndarray | None] | None:
        """(image, record, transparency map or None), or None for a miss."""
        png, meta = self.paths(settings)
        try:
            record = json.loads(meta.read_text())
            if record.get("settings") != json.loads(json.dumps(settings)):
                return None  # a hash collision or a foreign file: treat as a miss
            alpha = read_png(alpha_path(png), grey=True) if record.get("alpha") else None
            return read_png(png), record, alpha
        except (OSError, ValueError):
            return None

    def put(self, settings: dict, image: np.ndarray, record: dict,
            alpha: np.ndarray | None = None) -> Path:
        png, meta = self.paths(settings)
        atomic_write_bytes(png, png_bytes(image))
        if alpha is not None:
            atomic_write_bytes(alpha_path(png), png_bytes(alpha))
        record = {**record, "alpha": alpha is not None}
        body = json.dumps({"settings": settings, **record}, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(meta, body.encode())
        return png
