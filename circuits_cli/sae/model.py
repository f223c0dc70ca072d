"""The sparse autoencoder itself, and its file format (SAELens's layout).

A sparse autoencoder (SAE, "dictionary learning") rewrites an activation vector ``x`` (here: the
channel vector at one spatial position of a conv layer) as a sparse, non-negative combination of
``d_sae`` learned directions, more of them than ``x`` has dimensions:

    f = σ(W_encᵀ (x − b_dec) + b_enc)        (encoder: the feature activations)
    x̂ = W_decᵀ f + b_dec                     (decoder: every row W_dec[i] is unit norm)

``σ`` is ``TopK`` (keep the k largest pre-activations, ReLU them, zero the rest; Gao et al. 2024,
"Scaling and evaluating sparse autoencoders") or ``ReLU`` (trained with an L1 penalty; Bricken et
al. 2023, "Towards Monosemanticity").

Feature ``i`` is a unit like a neuron: its encoder direction ``W_enc[:, i]`` and bias
``b_enc[i]`` say when it fires, its decoder direction ``W_dec[i]`` says what it writes into the
layer (:meth:`SAE.feature`).

Files: a folder with ``cfg.json`` and ``sae_weights.safetensors`` holding ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` (float32) — the layout SAELens
(``SAE.load_from_disk``) and the tools around it read. The weights work on the layer's raw
activations: the input scaling used during training is folded in (see :meth:`SAE.fold_scale`), so
``normalize_activations`` is ``"none"`` and the scale is recorded in ``cfg["normalisation"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CircuitsError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("topk", "relu")
#: SAELens's name of each architecture (its "standard" SAE is ReLU + L1)
SAELENS_ARCH = {"topk": "topk", "relu": "standard"}
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")


@dataclass(frozen=True)
class Feature:
    """One dictionary feature: when it fires (encoder) and what it writes (decoder)."""

    index: int
    encoder: torch.Tensor  # (d_in,) W_enc[:, i]
    bias: float            # b_enc[i]
    decoder: torch.Tensor  # (d_in,) W_dec[i], unit norm


class SAE(nn.Module):
    """A sparse autoencoder on ``d_in``-dimensional vectors with ``d_sae`` latents.

    ``arch`` is ``"topk"`` (``k`` latents active per sample) or ``"relu"``. ``cfg`` is the
    dictionary saved as ``cfg.json`` (model, layer, data set, metrics, ...).
    Inputs of :meth:`encode` / :meth:`forward` are ``(..., d_in)``; for a conv layer's
    ``(N, C, H, W)`` activation use :meth:`encode_map` / :meth:`forward_map`.
    """

    def __init__(self, d_in: int, d_sae: int, arch: str = "topk", k: int | None = None,
                 cfg: dict | None = None):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise CircuitsError(f"unknown SAE architecture {arch!r}; choose topk or relu")
        if arch == "topk" and not (k and 0 < k <= d_sae):
            raise CircuitsError(f"a TopK SAE needs 1 <= k <= d_sae ({d_sae}); got k={k}")
        self.d_in, self.d_sae, self.arch = int(d_in), int(d_sae), arch
        self.k = int(k) if arch == "topk" else None
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.cfg: dict = dict(cfg or {})
        self.folder: Path | None = None  # where it was loaded from

    # ------------------------------------------------------------------------------- init

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> SAE:
        """Random unit-norm decoder rows, encoder = decoder transpose (Gao et al.), zero
        biases."""
        w = torch.randn(self.d_sae, self.d_in, generator=generator)
        self.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        return self

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def fold_scale(self, scale: float) -> None:
        """Make weights trained on ``scale * x`` work on raw ``x``, decoder rows kept unit norm.

        TopK and ReLU commute with a positive factor, so ``f(scale·x) / scale`` is the SAE with
        ``b_enc`` and ``b_dec`` divided by ``scale``: feature activations come out in the
        layer's own units and the reconstruction is ``x̂`` of raw ``x``.
        """
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)

    # ---------------------------------------------------------------------------- forward

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        if self.arch == "relu":
            return torch.relu(pre)
        vals, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``(..., d_sae)`` of ``(..., d_in)`` vectors."""
        return self.activation(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(..., d_in)`` from feature activations ``(..., d_sae)``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch != "topk":
            return self.decode(self.encode(x))
        # TopK: decode the k active latents only (k rows of W_dec, not all d_sae)
        vals, idx = self.pre_acts(x).topk(self.k, dim=-1)
        flat_v, flat_i = torch.relu(vals).reshape(-1, self.k), idx.reshape(-1, self.k)
        out = torch.nn.functional.embedding_bag(flat_i, self.W_dec, per_sample_weights=flat_v,
                                                mode="sum")
        return out.reshape(*x.shape[:-1], self.d_in) + self.b_dec

    def encode_map(self, act: torch.Tensor) -> torch.Tensor:
        """``(N, d_sae, H, W)`` feature maps of a conv activation ``(N, d_in, H, W)``."""
        return self.encode(act.movedim(1, -1)).movedim(-1, 1)

    def forward_map(self, act: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, d_in, H, W)`` of a conv activation, position by position."""
        return self.forward(act.movedim(1, -1)).movedim(-1, 1)

    def feature(self, i: int) -> Feature:
        if not 0 <= i < self.d_sae:
            raise CircuitsError(f"feature {i} is out of range; this SAE has {self.d_sae} "
                                f"features (0-{self.d_sae - 1})")
        return Feature(i, self.W_enc[:, i].detach().clone(), float(self.b_enc[i].detach()),
                       self.W_dec[i].detach().clone())

    # ------------------------------------------------------------------------------- files

    def state(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().contiguous().float().cpu() for k in KEYS}

    def save(self, folder: str | Path) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` into ``folder`` (atomically)."""
        from safetensors.torch import save_file

        from ..files import atomic_write, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(self.state(), tmp))
        write_json(folder / CFG_FILE, self.saelens_cfg())
        return folder

    def saelens_cfg(self) -> dict:
        """``cfg`` with the fields SAELens reads filled in from the weights."""
        cfg = dict(self.cfg)
        cfg.update({"architecture": SAELENS_ARCH[self.arch], "d_in": self.d_in,
                    "d_sae": self.d_sae, "dtype": "float32", "device": "cpu",
                    "apply_b_dec_to_input": True, "normalize_activations": "none",
                    "reshape_activations": "none"})
        if self.arch == "topk":
            cfg["k"] = self.k
        cfg.setdefault("metadata", {})
        return cfg


def find_sae_folder(path: str | Path) -> Path:
    """The SAE folder of ``path``: the folder itself, or the folder of a ``cfg.json`` /
    ``sae_weights.safetensors`` file inside it. A clear error when it is not one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CircuitsError(f"{str(path)!r} does not exist; pass an SAE folder (with cfg.json "
                            f"and {WEIGHTS_FILE}) written by 'circuits sae train'")
    if not path.is_dir() and path.name not in (CFG_FILE, WEIGHTS_FILE):
        # a file of another name: its folder is not what the user named, so name the file
        raise CircuitsError(f"{str(path)!r} is a file, not an SAE folder; pass the folder "
                            f"(with {CFG_FILE} and {WEIGHTS_FILE}) written by 'circuits sae "
                            "train' (or SAELens), or its " + WEIGHTS_FILE)
    folder = path if path.is_dir() else path.parent
    missing = [n for n in (CFG_FILE, WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        raise CircuitsError(f"{str(folder)!r} is not an SAE folder: {' and '.join(missing)} "
                            "missing; pass a folder written by 'circuits sae train' (or SAELens)")
    return folder


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Read an SAE folder (ours or SAELens's ``standard``/``topk``) back into an :class:`SAE`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = find_sae_folder(path)
    try:
        cfg = json.loads((folder / CFG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CircuitsError(f"cannot read {str(folder / CFG_FILE)!r} as JSON "
                            f"({type(err).__name__}); is this an SAE folder?") from None
    try:
        weights = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, SafetensorError, ValueError) as err:
        raise CircuitsError(f"cannot read {str(folder / WEIGHTS_FILE)!r} as safetensors "
                            f"({type(err).__name__})") from None
    missing = [k for k in KEYS if k not in weights]
    if missing:
        raise CircuitsError(f"{str(folder / WEIGHTS_FILE)!r} lacks {', '.join(missing)}; an SAE "
                            "file holds W_enc, W_dec, b_enc and b_dec")
    d_in, d_sae = weights["W_enc"].shape
    arch = {"standard": "relu", "relu": "relu", "topk": "topk"}.get(cfg.get("architecture"))
    if arch is None:
        raise CircuitsError(f"SAE architecture {cfg.get('architecture')!r} is not supported; "
                            "this tool reads topk and standard (ReLU) SAEs")
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,),
              "b_dec": (d_in,)}
    bad = [k for k, s in shapes.items() if tuple(weights[k].shape) != s]
    if bad:
        raise CircuitsError(f"inconsistent SAE weight shapes in {str(folder)!r}: "
                            + ", ".join(f"{k} {tuple(weights[k].shape)}" for k in bad))
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    sae = SAE(d_in, d_sae, arch, k, cfg)
    with torch.no_grad():
        for key in KEYS:
            getattr(sae, key).copy_(weights[key].float())
    sae.folder = folder
    return sae.to(device).eval()
