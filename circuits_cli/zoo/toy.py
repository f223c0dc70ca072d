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

from ..errors import CircuitsError
from . import lucent_style
from .base import LoadedModel

SHIPPED = Path(__file__).resolve().parent / "data" / "toy.pt"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(module, input_size: int = 64):
    """Layers (shapes from one forward pass on a zero image) and Inception blocks."""
    from ..toy.model import BLOCKS, POOL_BEFORE, layer_names

    return lucent_style.describe(module, layer_names(), BLOCKS,
                                 {BLOCKS[0]: "conv2d2", **POOL_BEFORE}, input_size)


def build(weights: Path | None = None) -> LoadedModel:
    from ..toy.model import BLOCKS, preprocess
    from ..toy.train import build_module, load_checkpoint

    path = Path(weights) if weights is not None else SHIPPED
    if not path.is_file():
        raise CircuitsError(f"the toy model's weights {str(path)!r} are missing; reinstall the "
                            "package, or train them with 'circuits toy train --out DIR' and "
                            "pass --weights DIR/toy.pt")
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
