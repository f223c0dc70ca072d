"""The attribution graph as a circuit-discovery method for :mod:`circuits_cli.quality.discovery`
(``register_method("graph", graph_method)``): the units of one layer ranked by the size of their
mean edge into the target, each image's graph exact through its frozen gates."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CircuitsError
from ..quality.discovery import Ranking
from .attribution import Target, attribute


def _target(target) -> Target:
    if target.kind == "unit":
        return Target("unit", int(target.unit.channel), target.unit.layer, None, str(target))
    if target.kind == "logit":
        return Target("logit", int(target.classes[0]), None, None, target.name)
    raise CircuitsError("the graph method explains a class logit or a unit, not a probability")


def graph_method(model, images: torch.Tensor, target, source: str, *, ablation: str = "mean",
                 seed: int = 0) -> Ranking:
    """Rank the units of ``source`` by |mean over ``images`` of their edge into the target| in
    each image's attribution graph (positions merged: a unit's edge sums over its positions).
    ``ablation`` and ``seed`` are not used: the graph needs no ablation."""
    layer = model.layer(source).name
    tgt = _target(target)
    n = model.layer(layer).channels
    total = torch.zeros(n, dtype=torch.float64)
    for i in range(len(images)):
        att = attribute(model, images[i:i + 1], tgt, [layer], max_nodes=0, merge=True)
        ln = att.layers[0]
        a = att.offsets()[0][0]
        total[ln.units] += att.rows[0][a:a + ln.n].double()
    scores = (total / max(1, len(images))).abs().numpy()
    order = np.argsort(-scores, kind="stable")
    return Ranking("graph", layer, [int(c) for c in order], [float(scores[c]) for c in order])
