"""Where files go, and how they are written.

- Caches live under one root, ``$CIRCUITS_CACHE`` or ``~/.cache/circuits``: ``renders/`` (feature
  visualizations), ``activations/`` (dataset activations, receptive fields).
- Command outputs default to ``outputs/COMMAND/MODEL/NAME``.
- Every output goes to a temporary file in the same folder, then a rename: a crash or Ctrl-C never
  leaves half a file, and a reader never sees one. Files get the usual permissions (``0666`` less
  the umask), not the private ``0600`` of a bare ``mkstemp``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "CIRCUITS_CACHE"


def cache_dir(kind: str) -> Path:
    """``$CIRCUITS_CACHE/KIND`` or ``~/.cache/circuits/KIND`` (``renders``, ``activations``)."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "circuits") / kind


def output_dir(command: str, model: str, name: str) -> Path:
    """``outputs/COMMAND/MODEL/NAME`` with file-name-safe parts."""

    def slug(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", s).strip("-")

    return Path("outputs") / command / slug(model) / slug(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data, indent: int = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG, on a white background."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png",
                                                      facecolor="white"))
