"""A pruned attribution graph as a circuit of :mod:`circuits_cli.quality`: its units as a node
set (at the positions the graph kept them, or at every position for a unit-level graph) and its
target as a quality target, so that faithfulness, completeness, minimality and the faithfulness
curve measure a graph as they measure a traced circuit.

One difference is by design: the graph's own faithfulness (``scores["faithfulness"]``) ablates
only the nodes of its image, the units that were active there, and leaves silent ones to the
network; a node set ablates everything outside it. With zero ablation the two agree exactly (a
silent unit is zero already); with mean ablation the node set also switches silent units on at
their mean.
"""

from __future__ import annotations

import torch

from ..errors import CircuitsError
from ..quality import logit, unit_target
from ..quality.metrics import NodeSet
from ..quality.metrics import Target as QualityTarget
from ..zoo.base import LoadedModel
from .graph import Graph


def node_set(graph: Graph, model: LoadedModel) -> NodeSet:
    """``{layer: mask}`` keeping the graph's unit nodes: ``(C, H, W)`` masks where nodes sit at
    positions (the shapes come from the graph's attribution), ``(C,)`` where every node of the
    layer is a whole unit (a unit-level or class graph). Every layer of the graph is in the node
    set, with nothing kept where no node of it survived. SAE-feature graphs are refused: their
    nodes are features, whose node set is a :class:`~circuits_cli.quality.Features` of the SAE."""
    layers = list(graph.metadata.get("layers") or [])
    for n in graph.nodes:
        if n["feature_type"] in ("neuron", "sae_feature", "error") and n["layer"] not in layers:
            layers.append(n["layer"])
    if any(n["feature_type"] in ("sae_feature", "error") for n in graph.nodes):
        raise CircuitsError("this graph has SAE features: node_set takes a graph of units")
    att = graph.attribution
    shapes = {ln.name: ln.shape for ln in att.layers} if att is not None else {}
    masks: NodeSet = {}
    for layer in layers:
        at = [n for n in graph.nodes if n["feature_type"] == "neuron" and n["layer"] == layer]
        channels = model.layer(layer).channels
        if all(n["ctx_idx"] is None for n in at):
            masks[layer] = torch.zeros(channels, dtype=torch.bool)
            for n in at:
                masks[layer][n["feature"]] = True
            continue
        if layer not in shapes:
            raise CircuitsError(f"the graph's nodes of {layer!r} sit at positions, and the graph "
                                "has no attribution to say the layer's shape (build it, do not "
                                "read it from graph.json)")
        masks[layer] = torch.zeros(shapes[layer], dtype=torch.bool)
        for n in at:
            y, x = n["ctx_idx"]
            masks[layer][n["feature"], y, x] = True
    return masks


def quality_target(graph: Graph, model: LoadedModel) -> QualityTarget:
    """The graph's target as a quality target: a class logit, or a unit's mean over positions
    (a target at one position has no quality counterpart)."""
    from ..units import parse_unit

    t = graph.metadata.get("target") or {}
    if t.get("kind") == "logit":
        return logit(t["index"], t.get("label") or None)
    if t.get("kind") == "unit" and not t.get("position"):
        return unit_target(parse_unit(f"{t['layer']}:{t['index']}", model))
    raise CircuitsError(f"the graph's target {t.get('label') or t} has no quality counterpart "
                        "(a unit at one position)")
