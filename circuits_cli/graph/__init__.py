"""Attribution graphs for vision models: for one image, which units and features carried it to
its answer.

- :mod:`~circuits_cli.graph.replacement`: the local replacement model (nonlinear pieces frozen);
- :mod:`~circuits_cli.graph.attribution`: edges by batched backward passes, nodes expanded in
  order of influence;
- :mod:`~circuits_cli.graph.graph`: the graph as data, circuit-tracer's pruning and scores;
- :mod:`~circuits_cli.graph.interventions`: set or scale nodes, frozen or free; faithfulness;
- :mod:`~circuits_cli.graph.build`: :func:`build_graph`, the whole computation.

Nothing here writes files (``circuits_cli.reports`` draws and writes the graph).
"""

from .attribution import Attribution, Target, attribute
from .build import build_class_graph, build_graph, default_layers, node_crops, to_graph
from .graph import FORMAT, Graph
from .interventions import intervene_free, intervene_frozen, parse_edit, parse_node

__all__ = ["FORMAT", "Attribution", "Graph", "Target", "attribute", "build_class_graph",
           "build_graph",
           "default_layers", "intervene_free", "intervene_frozen", "node_crops", "parse_edit",
           "parse_node", "to_graph"]
