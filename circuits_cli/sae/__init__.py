"""Sparse autoencoders (dictionary learning) on a conv layer: train, save, load, evaluate.

- :mod:`.model`: the :class:`SAE` (TopK or ReLU), its files (SAELens's layout) and loader;
- :mod:`.train`: the training loop, streamed from the activation store and resumable;
- :mod:`.evaluate`: explained variance, L0, dead/dense latents, and downstream fidelity (the
  model's accuracy and KL when the layer is replaced by the reconstruction);
- :mod:`.features`: the features that write to a neuron, with their dataset examples and
  feature visualizations (the page: :mod:`circuits_cli.reports.polysemantic`).
"""

from .model import SAE, Feature, find_sae_folder, load_sae
from .train import TrainConfig, train

__all__ = ["SAE", "Feature", "TrainConfig", "find_sae_folder", "load_sae", "train"]
