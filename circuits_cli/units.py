"""Units: what a layer is read and written along.

A unit names a layer plus how it is **read** (an encoder: a direction in the layer's channel
space, an optional bias and an optional ReLU) and how it is **written** (a decoder direction).
Every method that works on units (objectives, dataset examples, ablation, steering, expanded
weights) is defined through these, so each accepts every kind:

- :class:`Neuron` ``LAYER:CHANNEL`` (``mixed4c:447``, ``4c:447``): the one-hot case; reading it is
  the channel itself, removing it zeroes the channel.
- :class:`Direction` ``LAYER@FILE[#ROW]`` (``mixed4c@dirs.npy#3``): a direction from a file
  (``.npy``, ``.txt``/``.csv`` or ``.json``, shape (C,) or (K, C); row 0 by default). Reading it is
  the projection on the unit-length direction; removing it projects it out.
- A dictionary feature ``LAYER@SAE_FOLDER#N`` (``inception_4c@outputs/sae/.../#12``): latent N of
  a sparse autoencoder saved by ``circuits sae train`` (or SAELens): a :class:`Direction` with its
  encoder row, bias, ReLU and decoder row, so it plugs in without touching the commands.

``Unit(layer, channel)`` builds a :class:`Neuron`, the common case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .errors import CircuitsError
from .zoo.base import LoadedModel


@dataclass(frozen=True)
class Unit:
    """A unit of ``layer``: read along :meth:`encoder` (+ ``bias``, then ReLU if ``relu``),
    written along :meth:`decoder`. Subclasses say what the vectors are."""

    layer: str
    kind: ClassVar[str] = "unit"

    def __new__(cls, *args, **kwargs):
        if cls is Unit:  # Unit(layer, channel): a neuron
            return Neuron(*args, **kwargs)
        return super().__new__(cls)

    # --- what a subclass defines ---------------------------------------------------------
    def encoder(self, channels: int) -> torch.Tensor:
        """(C,) float32 read direction over the layer's ``channels``."""
        raise NotImplementedError

    def decoder(self, channels: int) -> torch.Tensor:
        """(C,) float32 write direction: what one unit of activation adds to the layer."""
        raise NotImplementedError

    @property
    def slug(self) -> str:
        """A file-name-safe form of the unit."""
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", str(self)).strip("-")

    # --- reading and writing, derived from the vectors --------------------------------------
    def read(self, acts: torch.Tensor) -> torch.Tensor:
        """The unit's activation map (N, H, W) from the layer's activation (N, C, H, W)
        (or (N,) from (N, C))."""
        w = self.encoder(acts.shape[1]).to(acts.device, acts.dtype)
        out = torch.einsum("nc...,c->n...", acts, w) + getattr(self, "bias", 0.0)
        return torch.relu(out) if getattr(self, "relu", False) else out

    def write(self, acts: torch.Tensor, amount: torch.Tensor | float) -> torch.Tensor:
        """``acts`` plus ``amount`` (a number or a map (N, H, W)) times the decoder direction."""
        d = self.decoder(acts.shape[1]).to(acts.device, acts.dtype)
        shape = (1, -1) + (1,) * (acts.dim() - 2)
        amount = torch.as_tensor(amount, dtype=acts.dtype, device=acts.device)
        if amount.dim() > 0:
            amount = amount.unsqueeze(1)
        return acts + amount * d.view(shape)

    def remove(self, acts: torch.Tensor) -> torch.Tensor:
        """The layer without this unit's contribution (its activation times its decoder)."""
        return self.write(acts, -self.read(acts))

    def clamp(self, acts: torch.Tensor, value: float) -> torch.Tensor:
        """The layer with the unit's activation set to ``value`` at every position."""
        return self.write(acts, value - self.read(acts))


@dataclass(frozen=True, order=True)
class Neuron(Unit):
    """One channel of one layer: ``LAYER:CHANNEL``."""

    layer: str
    channel: int
    kind: ClassVar[str] = "neuron"

    def __str__(self) -> str:
        return f"{self.layer}:{self.channel}"

    @property
    def slug(self) -> str:
        """``inception_4c/3x3:12`` -> ``inception_4c-3x3_12``."""
        from .files import slug

        return f"{slug(self.layer)}_{self.channel}"

    def encoder(self, channels: int) -> torch.Tensor:
        e = torch.zeros(channels)
        e[self.channel] = 1.0
        return e

    decoder = encoder

    def read(self, acts: torch.Tensor) -> torch.Tensor:
        return acts[:, self.channel]

    def write(self, acts: torch.Tensor, amount) -> torch.Tensor:
        out = acts.clone()
        out[:, self.channel] = acts[:, self.channel] + torch.as_tensor(
            amount, dtype=acts.dtype, device=acts.device)
        return out

    def remove(self, acts: torch.Tensor) -> torch.Tensor:
        out = acts.clone()
        out[:, self.channel] = 0
        return out


@dataclass(frozen=True, eq=True)
class Direction(Unit):
    """A unit read along ``enc`` (+ ``bias``, ReLU if ``relu``) and written along ``dec``.

    From a file (:func:`direction_from_file`) ``enc`` is a unit-length direction and ``dec``
    the same direction, so reading projects and removing projects out. A dictionary feature
    carries its SAE's encoder row, bias, ReLU and decoder row. ``name`` is how it is written
    (``mixed4c@dirs.npy#3``, ``inception_4c/sae:12``); ``source`` says where it came from."""

    layer: str
    enc: tuple[float, ...]
    dec: tuple[float, ...]
    name: str
    bias: float = 0.0
    relu: bool = False
    source: str = ""
    index: int = 0
    kind_name: str = "direction"

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.kind_name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, C={len(self.enc)})"

    def _vec(self, v: tuple[float, ...], channels: int) -> torch.Tensor:
        if len(v) != channels:
            raise CircuitsError(f"unit {self.name} has {len(v)} channels, but layer "
                                f"{self.layer!r} has {channels}")
        return torch.tensor(v, dtype=torch.float32)

    def encoder(self, channels: int) -> torch.Tensor:
        return self._vec(self.enc, channels)

    def decoder(self, channels: int) -> torch.Tensor:
        return self._vec(self.dec, channels)


def is_neuron(unit: Unit) -> bool:
    return isinstance(unit, Neuron)


def load_directions(path: str | Path, channels: int, layer: str) -> np.ndarray:
    """Direction vectors (K, C) from .npy, .txt/.csv or .json; a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CircuitsError(f"direction file {str(path)!r} does not exist")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            arr = np.asarray(json.loads(path.read_text()), dtype=np.float64)
        else:
            arr = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
    except (ValueError, OSError) as err:
        raise CircuitsError(f"cannot read directions from {str(path)!r} ({err}); give a .npy, "
                            ".txt/.csv or .json array of shape (K, C) or (C,)") from err
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != channels:
        raise CircuitsError(f"directions in {str(path)!r} have shape {arr.shape}, but layer "
                            f"{layer!r} has {channels} channels: give (K, {channels}) or "
                            f"({channels},)")
    if not np.isfinite(arr).all() or (np.linalg.norm(arr, axis=1) == 0).any():
        raise CircuitsError(f"directions in {str(path)!r} must be finite and non-zero")
    return arr


def direction(layer: str, vector, name: str | None = None, source: str = "",
              index: int = 0) -> Direction:
    """A :class:`Direction` along ``vector`` (normalised to unit length)."""
    v = np.asarray(vector, dtype=np.float64).ravel()
    v = v / max(float(np.linalg.norm(v)), 1e-12)
    t = tuple(float(x) for x in v.astype(np.float32))
    return Direction(layer, t, t, name or f"{layer}@direction", source=source, index=index)


def feature(layer: str, sae, index: int, name: str | None = None) -> Direction:
    """Dictionary feature ``index`` of ``sae`` (a :class:`circuits_cli.sae.model.SAE` on
    ``layer``) as a unit: read ``ReLU(W_enc[:, i] . (x - b_dec) + b_enc[i])`` (for a TopK SAE
    the feature's own pre-activation, without the competition of the other latents), written
    along ``W_dec[i]``."""
    f = sae.feature(index)
    enc = f.encoder.double()
    bias = float(f.bias - float(sae.b_dec.detach().double().cpu() @ enc.cpu()))
    folder = str(getattr(sae, "folder", "") or "")
    return Direction(layer, tuple(float(x) for x in f.encoder.float().cpu()),
                     tuple(float(x) for x in f.decoder.float().cpu()),
                     name or f"{layer}@{folder}#{index}", bias=bias, relu=True, source=folder,
                     index=index, kind_name="feature")


def units_from_file(model: LoadedModel, layer: str, path: str | Path,
                    rows: Sequence[int] | None = None) -> list[Direction]:
    """The units of a file, read once: rows of a direction file (``.npy``, ``.txt``/``.csv``,
    ``.json``) or features of an SAE folder (``cfg.json`` + ``sae_weights.safetensors``, ours or
    SAELens's, checked against the layer and model it was trained on); ``rows`` picks some
    (default: all)."""
    from .sae.model import CFG_FILE, WEIGHTS_FILE, load_sae

    info = model.layer(layer)
    p = Path(path).expanduser()
    if p.is_dir() or p.name in (CFG_FILE, WEIGHTS_FILE):
        sae = load_sae(path)
        cfg = sae.cfg
        trained_on = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
        if trained_on and model.layers.get(trained_on) is not None and trained_on != info.name:
            row = rows[0] if rows else 0
            raise CircuitsError(f"the SAE in {str(path)!r} was trained on layer {trained_on!r}, "
                                f"not {info.name!r}; write {trained_on}@{path}#{row}")
        if sae.d_in != info.channels:
            raise CircuitsError(f"the SAE in {str(path)!r} reads {sae.d_in} channels, but layer "
                                f"{info.name!r} has {info.channels}")
        if cfg.get("model_name") and cfg["model_name"] != model.name:
            raise CircuitsError(f"the SAE in {str(path)!r} was trained on model "
                                f"{cfg['model_name']!r}, not {model.name!r}")
        rows = range(sae.d_sae) if rows is None else rows
        return [feature(info.name, sae, i, name=f"{info.name}@{path}#{i}") for i in rows]
    arr = load_directions(path, info.channels, info.name)
    rows = range(arr.shape[0]) if rows is None else rows
    out = []
    for row in rows:
        if not 0 <= row < arr.shape[0]:
            raise CircuitsError(f"direction {row} does not exist in {str(path)!r}; it holds "
                                f"{arr.shape[0]} (0-{arr.shape[0] - 1})")
        name = f"{info.name}@{path}" + (f"#{row}" if arr.shape[0] > 1 or row else "")
        out.append(direction(info.name, arr[row], name=name, source=str(path), index=row))
    return out


def sae_features(model: LoadedModel, folder: str | Path) -> tuple[str, list[Unit]]:
    """(layer, every feature of the SAE folder as a unit), e.g. for
    :func:`circuits_cli.trace.trace`'s ``features``: a feature circuit."""
    from .sae.model import load_sae

    cfg = load_sae(folder).cfg
    layer = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
    if not layer:
        raise CircuitsError(f"the SAE in {str(folder)!r} does not record its layer (hook_name)")
    name = model.layer(layer).name
    return name, units_from_file(model, name, folder)


def direction_from_file(model: LoadedModel, layer: str, path: str | Path,
                        row: int = 0) -> Direction:
    """Row ``row`` of a direction file, or feature ``row`` of an SAE folder."""
    return units_from_file(model, layer, path, [row])[0]


_NEURON = re.compile(r"^(?P<layer>[^:@\s]+):(?P<channel>-?\d+)$")
_FILE = re.compile(r"^(?P<layer>[^:@\s]+)@(?P<path>[^#]+?)(?:#(?P<row>\d+))?$")


def parse_unit(spec: str, model: LoadedModel) -> Unit:
    """Parse and check a unit against ``model``: ``LAYER:CHANNEL`` (a neuron; short Inception
    names allowed), ``LAYER@FILE[#ROW]`` (a direction from a file) or ``LAYER@SAE_FOLDER#N``
    (a dictionary feature)."""
    text = spec.strip()
    if m := _NEURON.match(text):
        info = model.layer(m["layer"])
        channel = int(m["channel"])
        if not 0 <= channel < info.channels:
            raise CircuitsError(f"channel {channel} is out of range for layer {info.name!r}, "
                                f"which has {info.channels} channels (0-{info.channels - 1})")
        return Neuron(info.name, channel)
    if m := _FILE.match(text):
        return direction_from_file(model, m["layer"], m["path"], int(m["row"] or 0))
    raise CircuitsError(f"malformed unit {spec!r}; write LAYER:CHANNEL (e.g. {_example(model)}), "
                        "LAYER@FILE[#ROW] for a direction or LAYER@SAE_FOLDER#N for a feature")


def parse_channels(spec: str, n_channels: int, layer: str = "layer") -> list[int]:
    """``"0-63,447"`` or ``"all"`` -> sorted unique channel indices, each checked against range."""
    spec = spec.strip()
    if spec.lower() == "all":
        return list(range(n_channels))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CircuitsError(f"malformed unit list {spec!r}; write e.g. '0-63,447' or 'all'")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if hi < lo:
            raise CircuitsError(f"empty range {part!r} in {spec!r}; write LOW-HIGH, LOW <= HIGH")
        if hi >= n_channels:
            raise CircuitsError(f"channel {hi} is out of range for {layer!r}, which has "
                                f"{n_channels} channels (0-{n_channels - 1})")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _example(model: LoadedModel) -> str:
    names = list(model.layers)
    return f"'{names[len(names) // 2]}:0'" if names else "'layer:0'"
