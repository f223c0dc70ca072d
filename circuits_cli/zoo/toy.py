"""``toy``: a small InceptionV1 trained on the procedural toy world, shipped with the package.

Works offline on any machine: the weights (``circuits_cli/zoo/data/toy.pt``, about 1 MB) come
with the package, and the network is small enough that everything runs in seconds on a CPU. Its
input is a 64x64 RGB scene; its seven classes are :data:`circuits_cli.toy.world.CLASSES`. The
checkpoint records the training recipe and the held-out accuracy (``circuits toy train`` redoes
it). ``--weights FILE`` loads another checkpoint written by ``circuits toy train``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import CircuitsError
from .base import Branch, InceptionBlock, LayerInfo, LoadedModel

SHIPPED = Path(__file__).resolve().parent / "data" / "toy.pt"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kind(name: str, blocks) -> str:
    if name in blocks:
        return "block"
    if "pool" in name and not name.endswith("pool_reduce"):
        return "pool"
    return "branch" if name.startswith("mixed") else "conv"


def describe(module, input_size: int = 64):
    """Layers (shapes from one forward pass on a zero image) and Inception blocks."""
    from ..toy.model import BLOCKS, POOL_BEFORE, layer_names

    names = layer_names()
    shapes: dict[str, tuple[int, int, int]] = {}

    def record(name):
        def hook(_m, _i, out):  # returns None: the output is left as it is
            shapes.setdefault(name, tuple(out.shape[1:]))
        return hook

    handles = [module.get_submodule(n).register_forward_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, input_size, input_size,
                               device=next(module.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    layers: dict[str, LayerInfo] = {}
    blocks: dict[str, InceptionBlock] = {}
    prev = "conv2d2"
    for name in names:
        branches: tuple[tuple[str, int], ...] = ()
        if name in BLOCKS:
            branches = tuple((b, shapes[f"{name}_{src}"][0]) for b, src in
                             (("1x1", "1x1"), ("3x3", "3x3"), ("5x5", "5x5"),
                              ("pool", "pool_reduce")))
            block_in = POOL_BEFORE.get(name, prev)
            blocks[name] = InceptionBlock(output=name, input=block_in, branches=(
                Branch("1x1", (f"{name}_1x1_pre_relu_conv",)),
                Branch("3x3", (f"{name}_3x3_bottleneck_pre_relu_conv",
                               f"{name}_3x3_pre_relu_conv")),
                Branch("5x5", (f"{name}_5x5_bottleneck_pre_relu_conv",
                               f"{name}_5x5_pre_relu_conv")),
                Branch("pool", (f"{name}_pool_reduce_pre_relu_conv",), pool=(3, 1, 1)),
            ))
            prev = name
        layers[name] = LayerInfo(name=name, module=name, channels=shapes[name][0],
                                 shape=shapes[name], branches=branches,
                                 kind=_kind(name, BLOCKS))
    return layers, blocks


def build(weights: Path | None = None) -> LoadedModel:
    from ..toy.model import BLOCKS, preprocess
    from ..toy.train import build_module, load_checkpoint

    path = Path(weights) if weights is not None else SHIPPED
    if not path.is_file():
        raise CircuitsError(f"the toy model's weights {str(path)!r} are missing; reinstall the "
                            "package, or train them with 'circuits toy train --out toy.pt' and "
                            "pass --weights toy.pt")
    try:
        ckpt = load_checkpoint(path)
        module = build_module(ckpt)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CircuitsError(f"cannot read {str(path)!r} as a toy-model checkpoint "
                            f"({type(err).__name__}); --weights for -m toy expects a "
                            "file written by 'circuits toy train'") from None
    layers, blocks = describe(module, ckpt["recipe"]["size"])
    acc = ckpt.get("metrics", {}).get("held_out_accuracy")
    return LoadedModel(
        name="toy", module=module, layers=layers, preprocess=preprocess,
        input_size=ckpt["recipe"]["size"], labels=list(ckpt["classes"]),
        class_ids=list(ckpt["classes"]), weights_id="sha256:" + _sha256(path)[:16],
        aliases={b[len("mixed"):]: b for b in BLOCKS}, blocks=blocks,
        description="toy InceptionV1 trained on the procedural toy world"
                    + (f" (held-out accuracy {acc:.3f})" if acc is not None else ""),
    )
