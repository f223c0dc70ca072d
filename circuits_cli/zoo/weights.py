"""Where a model's pretrained weights come from, as data, and the one loader that reads it.

Every zoo model describes its weights with a :class:`WeightsSpec` (file name, an environment
variable, folders to look in, a URL with its digest, the preprocessing and the labels file) and
:func:`find_weights` is the only code that turns one into a file: a variable naming a local file,
then the folders in order, then a download into the torch hub cache checked by SHA-256.
:func:`sha256_file` is the project's one hash of a file and :func:`weights_id` the identity a
model records in manifests (``sha256:`` and 16 hex digits).

This module imports no torch at import time (``circuits --help`` stays fast).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from ..errors import CircuitsError

#: The package folder holding shipped weights (``circuits_cli/zoo``), for ``{package}``.
PACKAGE_DIR = Path(__file__).resolve().parent


def _repo_root() -> Path:
    """The source checkout (``{repo}``): ``../shared`` beside it holds the shared weights."""
    return PACKAGE_DIR.parents[1]


@dataclass(frozen=True)
class WeightsSpec:
    """How a model's pretrained weights are found. Pure data; :func:`find_weights` reads it.

    ``search`` folders are tried in order; in them ``{cwd}`` is the current directory,
    ``{repo}`` the source checkout and ``{package}`` the installed ``circuits_cli/zoo`` folder.
    ``env`` names a variable holding a local file, tried before the folders. Without a local file
    ``url`` is downloaded (``url_env`` points it at a mirror) into the torch hub cache; the file
    must have the digest ``sha256`` (or ``$sha256_env``); with neither, the digest of the first
    download is recorded beside it and later loads are checked against it. ``preprocessing``
    says how an RGB image in [0, 1] becomes the input; ``labels`` is a class-list file looked for
    beside the weights, then in the ``search`` folders (None: the labels come with the weights or
    the model). ``missing_hint`` ends the error when nothing is found.
    """

    title: str
    file: str
    env: str | None = None
    search: tuple[str, ...] = ()
    url: str | None = None
    url_env: str | None = None
    sha256: str | None = None
    sha256_env: str | None = None
    preprocessing: str = ""
    labels: str | None = None
    missing_hint: str = "pass --weights FILE"

    def folders(self) -> list[Path]:
        """The ``search`` folders, placeholders expanded."""
        subs = {"cwd": str(Path.cwd()), "repo": str(_repo_root()), "package": str(PACKAGE_DIR)}
        return [Path(rule.format(**subs)).resolve() for rule in self.search]

    def places(self) -> str:
        """The ``search`` folders as a user reads them (``.``, ``../shared/models``)."""
        shown = []
        for rule in self.search:
            text = (rule.replace("{cwd}/", "").replace("{cwd}", ".")
                    .replace("{repo}/", "the checkout's ").replace("{package}", "circuits_cli/zoo"))
            if text not in shown:
                shown.append(text)
        return ", ".join(shown)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (the project's one file hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_id(path: str | Path) -> str:
    """``sha256:`` and the first 16 hex digits of the file's SHA-256: a model's identity."""
    return "sha256:" + sha256_file(path)[:16]


def find_weights(spec: WeightsSpec) -> Path:
    """The weights file of ``spec``: ``$env``, the ``search`` folders, else a checked download.
    Nothing found is a one-line :class:`CircuitsError` saying where it looked and what to do."""
    env = os.environ.get(spec.env) if spec.env else None
    candidates = [Path(env).expanduser()] if env else []
    candidates += [folder / spec.file for folder in spec.folders()]
    for path in candidates:
        if path.is_file():
            return path
    if env:
        raise CircuitsError(f"${spec.env} is {env!r}, which is not a file; point it at "
                            f"{spec.file} or pass --weights FILE")
    if spec.url:
        return download(spec)
    where = spec.places()
    if spec.env:
        where = f"{where}, or ${spec.env}" if where else f"${spec.env}"
    raise CircuitsError(f"{spec.title} weights not found ({spec.file} in {where}); "
                        f"{spec.missing_hint}")


def find_beside(spec: WeightsSpec, name: str | None, weights: Path | None) -> Path | None:
    """A companion file (e.g. the labels) beside ``weights``, else in the ``search`` folders."""
    if not name:
        return None
    folders = ([weights.parent] if weights is not None else []) + spec.folders()
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return None


def download(spec: WeightsSpec) -> Path:
    """``spec.url`` into ``$TORCH_HOME/hub/checkpoints`` (with progress) on first use, checked
    against ``spec.sha256``/``$sha256_env`` or the digest pinned by the first download."""
    import torch

    url = os.environ.get(spec.url_env, spec.url) if spec.url_env else spec.url
    dest = Path(torch.hub.get_dir()) / "checkpoints" / spec.file
    pin = dest.with_name(dest.name + ".sha256")
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dest), progress=True)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise CircuitsError(
                f"could not download the {spec.title} weights from {url} ({reason}); offline, "
                f"pass a local copy of {spec.file} with --weights FILE") from None
    digest = sha256_file(dest)
    expected = ((os.environ.get(spec.sha256_env) if spec.sha256_env else None) or spec.sha256
                or (pin.read_text().split()[0] if pin.is_file() else None))
    if expected is None:
        pin.write_text(f"{digest}  {spec.file}\n")
    elif digest != expected.lower():
        raise CircuitsError(
            f"{dest} has sha256 {digest[:16]}..., expected {expected[:16]}...; the file is "
            f"corrupt or not the {spec.title} weights: delete it to download again, or pass "
            f"--weights FILE")
    return dest


def read_state_dict(path: Path, expects: str):
    """A PyTorch state dict from ``path``; ``expects`` names what this model's --weights wants
    (the end of the one-line error for a file that is not one)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CircuitsError(f"cannot read {str(path)!r} as a PyTorch state dict "
                            f"({type(err).__name__}); --weights expects {expects}") from None
    if not isinstance(state, dict):
        raise CircuitsError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict; "
                            f"--weights expects {expects}")
    return state
