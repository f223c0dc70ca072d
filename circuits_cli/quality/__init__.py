"""How good is a circuit? Faithfulness, completeness and minimality of a node set, and the
discovery methods a circuit benchmark compares.

- :mod:`.metrics`: node sets (``{layer: mask}``, or ``{layer: Features(units, keep)}`` for a
  layer seen as directions or SAE features), targets (a class logit, the probability of a
  set of classes, a unit's activation), ablation (``mean``, ``zero``, ``resample``) and the
  measures: :func:`faithfulness`, :func:`completeness`, :func:`minimality`,
  :func:`faithfulness_curve` and all of them at once, :func:`circuit_quality`.
- :mod:`.discovery`: methods that rank a layer's units for a target (expanded weights,
  activation patching, gradient x activation, random; more can be registered) and the scores
  of a ranking against a known circuit (precision and recall at matched size).

Computation only: nothing here writes files. It works on plain node sets, so a traced circuit
(:mod:`circuits_cli.trace`) or a graph converts to one before it is measured.
"""

from .metrics import (
    ABLATIONS,
    CircuitQuality,
    Completeness,
    Curve,
    Evaluator,
    Features,
    NodeSet,
    Target,
    circuit_quality,
    completeness,
    curve_area,
    evaluator,
    faithfulness,
    faithfulness_curve,
    logit,
    minimality,
    node_set,
    nodes_of,
    probability,
    unit_target,
)

__all__ = ["ABLATIONS", "CircuitQuality", "Completeness", "Curve", "Evaluator", "Features",
           "NodeSet", "Target", "circuit_quality", "completeness", "curve_area", "evaluator",
           "faithfulness", "faithfulness_curve", "logit", "minimality", "node_set", "nodes_of",
           "probability", "unit_target"]
