"""``timm:NAME``: any model of timm (PyTorch Image Models), with the input size and normalisation
of its own data config (:func:`timm.data.resolve_data_config`).

Pretrained weights come from the Hugging Face hub through timm when it is reachable (or from the
hub's local cache when it is not); offline without a cached copy the load is one clear line
asking for ``--weights FILE`` (a state dict saved from the same timm model) or random weights.
Class names are ImageNet's when the model's config names an ImageNet subset. Addressable layers:
as for torchvision models (every conv, every block with an image-shaped output), plus the token
sequences (N, T, D) of transformer blocks (:func:`circuits_cli.zoo.base.discover_layers`).
"""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

from ..errors import CircuitsError, suggest
from .base import LoadedModel, discover_layers, normalizer
from .torchvision_models import _keep
from .weights import read_state_dict, weights_id

HUB = ("huggingface.co", 443)


def _import_timm():
    try:
        import timm
    except ImportError:
        raise CircuitsError("timm models need the timm package: pip install timm (or "
                            "pip install 'circuits-cli[timm]')") from None
    return timm


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(HUB, timeout=timeout):
            return True
    except OSError:
        return False


def _cached_file(module) -> str | None:
    """The hub's local copy of ``module``'s pretrained weights, if one was downloaded before."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, fname)
        if isinstance(found, str):
            return found
    return None


def _three(values) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


def build(name: str, weights: Path | None = None, random: bool = False) -> LoadedModel:
    """timm's ``name`` with the state dict ``weights``, its pretrained weights (the hub), or,
    with ``random``, its random initialisation (nothing read)."""
    timm = _import_timm()
    if not timm.is_model(name):
        raise CircuitsError(suggest(name, timm.list_models(), "timm model"))
    module = timm.create_model(name, pretrained=False)
    if weights is not None:
        state = read_state_dict(Path(weights), f"a state dict saved from timm's {name}")
        try:
            module.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise CircuitsError(f"{str(weights)!r} does not fit timm:{name} ({first}); pass a "
                                f"state dict saved from timm's {name}") from None
        wid, described = weights_id(weights), f"timm {name} with weights from {Path(weights).name}"
    elif random:
        wid, described = "random", f"timm {name} with random weights"
    else:
        tag = (getattr(module, "pretrained_cfg", {}) or {}).get("hf_hub_id") or name
        cached = _cached_file(module)
        if cached is None and not _hub_reachable():
            raise CircuitsError(f"could not reach the Hugging Face hub for timm weights {tag} "
                                "(offline?); pass a local state dict with --weights FILE, or "
                                "--weights random")
        try:
            with contextlib.redirect_stdout(sys.stderr):  # keep --json's stdout clean
                overlay = {"file": cached} if cached else None
                module = timm.create_model(name, pretrained=True,
                                           pretrained_cfg_overlay=overlay)
        except Exception as err:  # noqa: BLE001 - hub and network errors of many kinds
            raise CircuitsError(f"could not load timm weights {tag} ({type(err).__name__}); "
                                "offline, pass a local state dict with --weights FILE") from None
        wid, described = f"timm:{tag}", f"timm {name} ({tag})"
    module.eval()
    cfg = timm.data.resolve_data_config({}, model=module)
    size = int(cfg["input_size"][-1])
    if cfg["input_size"][-2] != cfg["input_size"][-1]:
        raise CircuitsError(f"timm:{name} takes {cfg['input_size'][-2]}x{cfg['input_size'][-1]} "
                            "images; only square inputs are supported")
    labels, class_ids = [], []
    with contextlib.suppress(Exception):  # no ImageNet subset: no names (classes by index)
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(module)
        if subset:
            info = ImageNetInfo(subset)
            labels = [d.split(",")[0].strip() for d in info.label_descriptions()]
            class_ids = list(info.label_names())
    return LoadedModel(
        name=f"timm:{name}", module=module,
        layers=discover_layers(module, size, _keep,
                               prefix_tokens=int(getattr(module, "num_prefix_tokens", 0) or 0)),
        preprocess=normalizer(cfg["mean"], cfg["std"]), input_size=size, labels=labels,
        class_ids=class_ids, weights_id=wid,
        description=f"{described}; input {size}x{size}, normalised with mean "
                    f"{_three(cfg['mean'])} std {_three(cfg['std'])}",
    )

