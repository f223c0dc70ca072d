"""Where files go, and how they are written: one rule for every command.

- Caches live under one root, ``$CIRCUITS_CACHE`` or ``~/.cache/circuits``: ``renders/`` (feature
  visualizations), ``activations/`` (dataset activations, receptive fields).
- Command outputs default to ``outputs/COMMAND/MODEL/NAME`` (:func:`output_dir`), with file-name
  parts made safe by one helper, :func:`slug`.
- A command **claims** its output folder first (:func:`claim_output`), before any expensive work:
  the folder (and the cache root) must be writable, and none of the files it will write may be a
  file that circuits did not write. The folder's ``circuits-outputs.jsonl`` lists what circuits
  wrote there (path and sha256, one JSON line per write); a file not listed there, or changed
  since, belongs to the user and is never replaced: the command stops with a one-line error
  naming it, and writes nothing. Our own files from an earlier run are resumed or replaced.
  Hidden files (``.DS_Store``, ``.ipynb_checkpoints``, our own temporaries) never block a folder.
- Every output goes to a temporary file in the same folder, then a rename: a crash or Ctrl-C never
  leaves half a file, and a reader never sees one. Files get the usual permissions (``0666`` less
  the umask), not the private ``0600`` of a bare ``mkstemp``. Writes into a claimed folder are
  checked and recorded automatically (:func:`atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import CircuitsError

CACHE_ENV = "CIRCUITS_CACHE"
OUTPUTS_MANIFEST = "circuits-outputs.jsonl"
MANIFEST_FORMAT = "circuits-outputs/1"


def slug(text) -> str:
    """A file-name-safe version of ``text`` (``inception_4c/5x5`` -> ``inception_4c-5x5``,
    ``torchvision:resnet50`` -> ``torchvision-resnet50``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(text)).strip("-") or "x"


def cache_root(override: str | Path | None = None) -> Path:
    """``override``, else ``$CIRCUITS_CACHE``, else ``~/.cache/circuits``."""
    if override is not None:
        return Path(override).expanduser()
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "circuits"


def cache_dir(kind: str, root: str | Path | None = None) -> Path:
    """``$CIRCUITS_CACHE/KIND`` or ``~/.cache/circuits/KIND`` (``renders``, ``activations``)."""
    return cache_root(root) / kind


def output_dir(command: str, model: str, name: str) -> Path:
    """``outputs/COMMAND/MODEL/NAME`` with file-name-safe parts."""
    return Path("outputs") / command / slug(model) / slug(name)


# ---------------------------------------------------------------------------------------------
# Writable places


def check_writable(folder: str | Path, what: str, hint: str) -> None:
    """Raise a one-line :class:`CircuitsError` unless ``folder`` can be created and written.

    Nothing is created: the first existing ancestor must be a folder in which a file can be
    made (a real probe, so that it also holds for root, for whom permission bits mean nothing,
    and on read-only file systems)."""
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == folder else f"cannot be created: {str(probe)!r} is a file"
        raise CircuitsError(f"{what} {str(folder)!r} {where}; {hint}")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".circuits-probe-")
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CircuitsError(f"{what} {str(folder)!r} is not writable ({reason}); {hint}") from None
    os.close(fd)
    os.unlink(tmp)


def check_cache_writable(root: str | Path | None = None) -> Path:
    """The cache root, after checking that it can be written (one clear line otherwise)."""
    path = cache_root(root)
    check_writable(path, "cache folder",
                   f"set ${CACHE_ENV} (or --cache-dir) to a writable folder")
    return path


# ---------------------------------------------------------------------------------------------
# Output folders: who wrote which file

_CLAIMS: dict[Path, OutputFolder] = {}


def _sha256_file(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in Path(rel).parts)


class OutputFolder:
    """A folder a command writes into; see the module docstring for the rule."""

    def __init__(self, root: str | Path, command: str):
        # Absolute, so that the record's paths do not depend on the working directory: a
        # relative ``--out`` (the default ``outputs/...``) and a path inside it written as
        # ``outputs/.../circuit.png`` name the same file on every run. ``shown`` is the folder
        # as the user gave it, for messages.
        self.shown = Path(root)
        self.root = Path(os.path.abspath(root))
        self.command = command
        self._files: dict[str, set[str]] = {}
        self._read_to = 0  # the manifest only grows: read what was appended since

    @property
    def manifest_path(self) -> Path:
        return self.root / OUTPUTS_MANIFEST

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the folder: a relative ``path`` is taken as relative to the
        folder (the names a command lists when it claims it); pass an absolute path for any
        other (:func:`atomic_write` does)."""
        path = Path(path)
        if not path.is_absolute():
            path = self.root / path
        return os.path.relpath(os.path.abspath(path), self.root)

    def written(self) -> dict[str, set[str]]:
        """relative path -> sha256 of every version circuits wrote there."""
        try:
            with open(self.manifest_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._read_to:  # replaced by someone: read it again
                    self._files, self._read_to = {}, 0
                f.seek(self._read_to)
                data = f.read()
        except OSError:
            self._files, self._read_to = {}, 0
            return {}
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                self._files.setdefault(str(entry["path"]), set()).add(str(entry["sha256"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash: ignore it
        self._read_to += end
        return self._files

    def foreign(self, path: str | Path, written: dict[str, set[str]] | None = None
                ) -> str | None:
        """Why ``path`` (in this folder) must not be replaced, or None when it may be."""
        rel = self.rel(path)
        full = self.root / rel
        if rel == OUTPUTS_MANIFEST:
            return None
        if not os.path.lexists(full):
            return None
        if full.is_dir() and not full.is_symlink():
            return "is a folder"
        if _hidden(rel):
            return None  # our own temporaries and the system's clutter
        written = self.written() if written is None else written
        if rel not in written:
            if _legacy_ours(full) or (not written and self._legacy_folder()):
                return None
            return "was not written by circuits"
        if _sha256_file(full) not in written[rel]:
            return "was not written by circuits (it changed since circuits wrote it)"
        return None

    def _legacy_folder(self) -> bool:
        """A folder circuits wrote before the manifest existed (no manifest, and a JSON file of
        ours at its top: circuit.json, weights.json, a visualize manifest...): its files are
        adopted as ours once, so that re-running into an old output folder resumes as it did."""
        if self.manifest_path.exists():
            return False
        try:
            return any(_legacy_ours(p) for p in self.root.glob("*.json"))
        except OSError:
            return False

    def check(self, outputs: Iterable[str | Path]) -> None:
        """Refuse (one line, nothing written) if any of ``outputs`` is a user's file."""
        written = self.written()
        for out in outputs:
            why = self.foreign(out, written)
            if why:
                raise CircuitsError(f"{str(self.shown / self.rel(out))!r} {why}; circuits never "
                                    "replaces a file it did not write: move it or choose another "
                                    "--out")

    def record(self, path: str | Path, sha256: str) -> None:
        """Note that circuits writes ``path`` (one appended line: safe for concurrent shards).
        Called before the rename, so that a kill between the two never leaves a file of ours
        unrecorded; the leading newline ends a line a killed writer may have cut."""
        line = "\n" + json.dumps({"path": self.rel(path), "sha256": sha256, "command": self.command,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o666 & ~_umask())
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)


def _legacy_ours(path: Path) -> bool:
    """Outputs of circuits from before the manifest existed: JSON with a ``circuits-*`` format
    or the visualize tool mark, HTML with the report's generator tag."""
    try:
        if path.suffix == ".json" and path.stat().st_size < 50_000_000:
            data = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(data, dict) and (
                str(data.get("format", "")).startswith("circuits-")
                or data.get("tool") == "circuits visualize")
        if path.suffix == ".html":
            with open(path, encoding="utf-8", errors="replace") as f:
                return "content='circuits report'" in f.read(4096)
    except (OSError, ValueError):
        return False
    return False


def claim_output(out: str | Path, command: str, outputs: Iterable[str | Path] = (), *,
                 cache: bool | str | Path = False) -> OutputFolder:
    """Claim ``out`` for ``command``: call it before any expensive work.

    Checks that ``out`` is (or can be made) a writable folder, that none of ``outputs`` (paths
    relative to ``out``, or inside it) is a file circuits did not write, and, with ``cache``
    (True, or a cache root), that the cache can be written. Creates nothing. From then on every
    :func:`atomic_write` under ``out`` refuses to replace a user's file and is recorded in
    ``out/circuits-outputs.jsonl``."""
    out = Path(out).expanduser()
    if os.path.lexists(out) and not out.is_dir():
        raise CircuitsError(f"--out {str(out)!r} is a file; --out is always a folder")
    check_writable(out, "output folder", "choose another --out")
    folder = OutputFolder(out, command)
    folder.check(outputs)
    if cache is not False:
        check_cache_writable(None if cache is True else cache)
    _CLAIMS[Path(os.path.abspath(out))] = folder
    if out.is_dir():  # what a killed run of ours left in the folder and its sub-folders
        clean_dead_temporaries(out)
        for sub in out.iterdir():
            if sub.is_dir() and not sub.name.startswith("."):
                clean_dead_temporaries(sub)
    return folder


def _claim_for(path: Path) -> OutputFolder | None:
    if not _CLAIMS:
        return None
    full = Path(os.path.abspath(path))
    best = None
    for root, folder in _CLAIMS.items():
        if full.is_relative_to(root) and (best is None or len(root.parts) > len(best.root.parts)):
            best = folder
    return best


def release_claims() -> None:
    """Forget every claimed folder (a command's end; tests)."""
    _CLAIMS.clear()


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HOST = socket.gethostname()
_TMP_NAME = re.compile(r"^\..*\.tmp-(?P<host>.+)-(?P<pid>\d+)-")
_CLEANED: set[str] = set()


def temp_prefix(name: str) -> str:
    """``.NAME.tmp-HOST-PID-``: the prefix of our temporary files and folders, so that those of
    a process that died (SIGKILL, power loss) can be told apart and removed."""
    return f".{name}.tmp-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_dead_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` whose process (on this host) is
    gone; those of live processes (a concurrent shard) are left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


def _clean_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _CLEANED:
        _CLEANED.add(key)
        clean_dead_temporaries(folder)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then rename it to ``path``.

    Inside a claimed output folder the file must not be a user's (one-line error, nothing
    written), and the write is recorded in the folder's manifest."""
    path = Path(path)
    claim = _claim_for(path)
    if claim is not None:
        # absolute: a cwd-relative path under a relative --out must not be joined onto it again
        claim.check([Path(os.path.abspath(path))])
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.stem), suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if claim is not None:
            claim.record(Path(os.path.abspath(path)), _sha256_file(Path(tmp)))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8; a file name that is not valid UTF-8 (read by Python as lone surrogates) is written
    back as its own bytes, so that a report naming it never fails."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8",
                                                               errors="surrogateescape"))


def write_json(path: str | Path, data, indent: int = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


_SURROGATE = re.compile("[\udc80-\udcff]")


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """A matplotlib figure as PNG, on a white background. Text holding a file name that is not
    valid UTF-8 (lone surrogates, which the font engine refuses) is drawn with those bytes as
    ``\\xNN``."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        label = text.get_text()
        if isinstance(label, str) and _SURROGATE.search(label):
            text.set_text(label.encode("utf-8", "surrogateescape")
                          .decode("utf-8", "backslashreplace"))
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png",
                                                      facecolor="white"))
