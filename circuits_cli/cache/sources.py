"""Where the images of an activation cache come from, and how they are decoded.

A *source* is a fixed, ordered list of items, each with a stable id (the id, not the machine or
the job, seeds the positions sampled from its image):

- a **folder tree** (ImageNet's ``train/n01440764/*.JPEG`` layout, searched recursively, sorted):
  id = the path relative to the folder;
- a **file list** (``.txt`` / ``.lst``: one image path per line, relative to the list's folder
  unless absolute; blank lines and ``#`` comments ignored): id = the line;
- a **tar shard set** in WebDataset's layout (``shards-{000000..000099}.tar``, a glob, a folder of
  ``.tar`` files, or one ``.tar``): every member with an image extension, in archive order; id =
  ``TAR-NAME/MEMBER``. Members are read at their offset (uncompressed tar), with the stdlib
  :mod:`tarfile` index;
- ``toy:N[:SEED]``: ``N`` toy-world scenes rendered on the fly (nothing on disk; scene ``i`` is
  a pure function of ``(SEED, i)``), for measurements at scale without a data set.

:class:`ImageDataset` decodes items for a ``torch.utils.data.DataLoader`` (worker processes decode
while the main process runs the network). Files go through :func:`circuits_cli.images.load_image`
(the one reader: EXIF rotation, the ImageNet resize-and-crop, unreadable files as errors); a tar
member is handed to it as a short-lived temporary file.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CircuitsError
from ..images import IMAGE_EXTENSIONS, find_images

TOY_RE = re.compile(r"^toy:(\d+)(?::(\d+))?$")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")
LIST_SUFFIXES = (".txt", ".lst")


@dataclass
class Source:
    """An ordered list of items: ``ids[i]`` names item ``i``; ``where[i]`` says how to read it
    (a file path, ``(tar path, offset, size, suffix)``, or ``("toy", seed, index)``)."""

    kind: str
    description: str
    ids: list[str] = field(default_factory=list)
    where: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        """Hash of the item ids in order: the identity of this source's shards."""
        h = hashlib.sha256(self.kind.encode())
        for i in self.ids:
            h.update(b"\0" + i.encode())
        return h.hexdigest()


def _expand_braces(pattern: str) -> list[str]:
    """WebDataset's ``{000..099}`` ranges (zero-padded as written), then glob each result."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m[1], m[2]
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for n in range(int(lo), int(hi) + 1):
        out += _expand_braces(pattern[:m.start()] + str(n).zfill(width) + pattern[m.end():])
    return out


def _tar_paths(spec: str) -> list[Path] | None:
    """The tar files ``spec`` names, or None when it is not a tar source."""
    path = Path(spec).expanduser()
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
        return tars if tars and not images else None
    if not (spec.endswith(".tar") or "{" in spec or any(c in spec for c in "*?[")):
        return None
    paths = []
    for pattern in _expand_braces(os.path.expanduser(spec)):
        hits = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        for hit in hits:
            if not Path(hit).is_file():
                raise CircuitsError(f"tar shard {hit!r} does not exist (from --images {spec!r})")
            paths.append(Path(hit))
    if not paths:
        raise CircuitsError(f"--images {spec!r} matches no tar file")
    return paths


def _index_tar(path: Path) -> list[tuple[str, tuple]]:
    """(id, where) of every image member of one uncompressed tar, in archive order."""
    out = []
    try:
        with tarfile.open(path, mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                suffix = Path(member.name).suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    out.append((f"{path.name}/{member.name}",
                                (str(path.resolve()), member.offset_data, member.size, suffix)))
    except (tarfile.ReadError, OSError) as err:
        raise CircuitsError(f"cannot read {str(path)!r} as an uncompressed tar shard ({err}); "
                            "WebDataset shards are plain .tar files") from None
    return out


def open_source(spec: str | Path) -> Source:
    """The :class:`Source` named by one ``--images`` value (see the module docstring)."""
    text = str(spec)
    m = TOY_RE.match(text)
    if m:
        n, seed = int(m[1]), int(m[2] or 0)
        if n < 1:
            raise CircuitsError(f"--images {text!r}: give at least one scene (toy:N, N >= 1)")
        return Source("toy", text, [f"toy:{seed}:{i}" for i in range(n)],
                      [("toy", seed, i) for i in range(n)])
    tars = _tar_paths(text)
    if tars is not None:
        ids, where = [], []
        for t in tars:
            for i, w in _index_tar(t):
                ids.append(i)
                where.append(w)
        if not ids:
            raise CircuitsError(f"no image members in the tar shard(s) {text!r} (looked for "
                                f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        return Source("tar", text, ids, where)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        ids, where = [], []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line).expanduser()
            full = p if p.is_absolute() else path.parent / p
            if not full.is_file():
                raise CircuitsError(f"{line!r} listed in {text!r} does not exist; the list "
                                    "holds one image path per line, relative to the list's "
                                    "folder")
            ids.append(line)
            where.append(str(full))
        if not ids:
            raise CircuitsError(f"the file list {text!r} names no image")
        return Source("list", text, ids, where)
    if path.is_dir():
        files, _ = find_images([path])
        return Source("folder", text, [str(f.relative_to(path)) for f in files],
                      [str(f) for f in files])
    if not path.exists():
        raise CircuitsError(f"--images {text!r} does not exist; give a folder of images, a "
                            "file list (.txt), tar shards (a.tar, shards-{000..009}.tar) or "
                            "toy:N")
    raise CircuitsError(f"--images {text!r} is neither a folder, a file list (.txt/.lst) nor a "
                        "tar shard")


def open_sources(specs) -> Source:
    """Several ``--images`` values as one source (in the order given); an image named twice is
    a :class:`CircuitsError` (its rows would be cached twice)."""
    specs = list(specs)
    if not specs:
        raise CircuitsError("give --images: a folder, a file list, tar shards or toy:N")
    parts = [open_source(s) for s in specs]
    if len(parts) == 1:
        return parts[0]
    kinds = {p.kind for p in parts}
    out = Source("+".join(sorted(kinds)), ", ".join(p.description for p in parts))
    for p in parts:
        out.ids += p.ids
        out.where += p.where
    if len(set(out.ids)) != len(out.ids):
        raise CircuitsError("the --images sources name some images twice; give each once")
    return out


# ------------------------------------------------------------------------------- decoding


class ImageDataset(torch.utils.data.Dataset):
    """Items ``indices`` of ``source`` as ``(index, image (3, size, size) in [0, 1], ok)``;
    an item that cannot be decoded gives zeros and ``ok = False`` (the writer records it)."""

    def __init__(self, source: Source, indices, size: int, resize: int):
        self.source = source
        self.indices = list(indices)
        self.size, self.resize = size, resize

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        try:
            return i, decode(self.source.where[i], self.size, self.resize), True
        except CircuitsError:
            return i, torch.zeros(3, self.size, self.size), False


def decode(where, size: int, resize: int) -> torch.Tensor:
    """The image at ``where`` (a :class:`Source` location, or its JSON form as a cache's shard
    records it: a list instead of a tuple) as ``(3, size, size)`` in [0, 1]; a file that is gone
    or unreadable is a :class:`CircuitsError`."""
    from ..images import load_image

    if isinstance(where, (tuple, list)) and where and where[0] == "toy":
        return _toy_image(int(where[1]), int(where[2]), size)
    if isinstance(where, (tuple, list)):
        return _tar_image(tuple(where), size, resize)
    return load_image(where, size=size, resize=resize)


def where_json(where):
    """A location as a cache's shard records it: a file as its absolute path (the picture of a
    dataset example is read from there later, from any working directory), a tar member or a
    toy scene as a list."""
    if isinstance(where, tuple):
        return list(where)
    return os.path.abspath(where)


def _toy_image(seed: int, index: int, size: int) -> torch.Tensor:
    from ..toy.world import CLASSES, make_scene

    key = int(hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:15], 16)
    img, _ = make_scene(key, CLASSES[index % len(CLASSES)], size=size)
    return torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)


def _tar_image(where: tuple, size: int, resize: int) -> torch.Tensor:
    from ..images import load_image

    path, offset, length, suffix = where
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise CircuitsError(f"cannot read the tar shard {path!r} ({err.strerror})") from None
    with f:
        f.seek(offset)
        data = f.read(length)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=".circuits-tar-member-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_image(tmp, size=size, resize=resize)
    finally:
        os.unlink(tmp)
