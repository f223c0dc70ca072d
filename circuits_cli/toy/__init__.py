"""The toy world: a procedural dataset of scenes whose classes share parts, a small
InceptionV1-style network trained on it, and the analysis that finds its part detectors.

- :mod:`circuits_cli.toy.world`: the scene and part-image generator (deterministic by seed).
- :mod:`circuits_cli.toy.model`: ``ToyInceptionV1`` with lucent's layer names.
- :mod:`circuits_cli.toy.train`: the training recipe (recorded in the checkpoint) and loop.
- :mod:`circuits_cli.toy.analysis`: part selectivity, part detectors, class units.

The trained network ships as the zoo model ``toy`` (``circuits_cli/zoo/data/toy.pt``).
"""

from .world import CLASSES, PARTS, make_dataset, make_part_images, make_scene, save_scenes

__all__ = ["CLASSES", "PARTS", "make_dataset", "make_part_images", "make_scene", "save_scenes"]
