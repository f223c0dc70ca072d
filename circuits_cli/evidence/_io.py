"""Atomic writes for the evidence outputs (temporary file in the same folder, then a rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_path(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    return atomic_path(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png",
                                                     facecolor="white"))


def write_text(path: str | Path, text: str) -> Path:
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")

    return atomic_path(path, write)
