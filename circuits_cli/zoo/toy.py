"""``toy``: a small InceptionV1 trained on the procedural toy world, shipped with the package.

Works offline on any machine: the weights (``circuits_cli/zoo/data/toy.pt``, about 1 MB) come
with the package, and the network is small enough that everything runs in seconds on a CPU. Its
input is a 64x64 RGB scene; its eight classes are :data:`circuits_cli.toy.world.CLASSES`. The
checkpoint records the training recipe and the held-out accuracy (``circuits toy train`` redoes
it). ``--weights FILE`` loads another checkpoint written by ``circuits toy train``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CircuitsError
from . import lucent_style
from .base import LoadedModel
from .registry import register_model
from .weights import PACKAGE_DIR, WeightsSpec, weights_id

SHIPPED = PACKAGE_DIR / "data" / "toy.pt"
WEIGHTS = WeightsSpec(
    title="toy model", file="toy.pt", search=("{package}/data",),
    preprocessing="RGB in [0, 1], 64x64 (see circuits_cli.toy.model.preprocess)",
    missing_hint="reinstall the package, or train them with 'circuits toy train --out DIR' and "
                 "pass --weights DIR/toy.pt")


def describe(module, input_size: int = 64):
    """Layers (shapes from one forward pass on a zero image) and Inception blocks."""
    from ..toy.model import BLOCKS, POOL_BEFORE, layer_names

    return lucent_style.describe(module, layer_names(), BLOCKS,
                                 {BLOCKS[0]: "conv2d2", **POOL_BEFORE}, input_size)


def _read(path: Path):
    """(module, checkpoint) of a file written by ``circuits toy train``; a one-line error else."""
    from ..toy.train import build_module, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
        return build_module(ckpt), ckpt
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise CircuitsError(f"cannot read {str(path)!r} as a toy-model checkpoint "
                            f"({type(err).__name__}); --weights for -m toy expects a "
                            "file written by 'circuits toy train'") from None


@register_model("toy", weights=WEIGHTS,
                description="toy InceptionV1 trained on the procedural toy world")
def build(weights: Path | None) -> LoadedModel:
    """The toy network of the checkpoint ``weights``, or of the default architecture with random
    weights when it is None."""
    from ..toy.model import BLOCKS, ToyInceptionV1, preprocess
    from ..toy.train import Recipe
    from ..toy.world import CLASSES

    if weights is not None:
        module, ckpt = _read(Path(weights))
        size, classes = ckpt["recipe"]["size"], list(ckpt["classes"])
        acc = ckpt.get("metrics", {}).get("held_out_accuracy")
        recipe = ckpt.get("recipe")
    else:
        module, size, classes, acc = ToyInceptionV1().eval(), Recipe().size, list(CLASSES), None
        recipe = None
    layers, blocks = describe(module, size)
    return LoadedModel(
        name="toy", module=module, layers=layers, preprocess=preprocess,
        input_size=size, labels=classes, class_ids=list(classes),
        weights_id=weights_id(weights) if weights is not None else "random",
        aliases={b[len("mixed"):]: b for b in BLOCKS}, blocks=blocks, recipe=recipe,
        description=("toy InceptionV1 with random weights" if weights is None
                     else "toy InceptionV1 trained on the procedural toy world"
                     + (f" (held-out accuracy {acc:.3f})" if acc is not None else "")),
    )
