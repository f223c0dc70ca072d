"""Evidence for a circuit beyond the weights: dataset examples, ablation, finding a class's units.

- :mod:`.activations`: a layer's activations over an image folder, computed once and memory-mapped
  from disk afterwards (``$CIRCUITS_CACHE/activations``).
- :mod:`.receptive_field`: the input pixels under a unit position, from the network's gradients.
- :mod:`.examples`: dataset examples (top images and receptive-field crops) and their PNG sheet.
- :mod:`.ablation`: zero/mean ablation of input units against random units of the same layer.
- :mod:`.find`: the units of a layer that build a class logit.

:func:`add_evidence` adds all of it to a ``circuits trace`` output folder: dataset examples per
node, the ablation of the target's traced inputs, and a self-contained HTML report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ablation import AblationResult, ablate, parse_inputs
from .activations import (
    ImageSet,
    LayerActivations,
    default_cache_dir,
    image_set,
    layer_activations,
    layers_activations,
)
from .examples import Example, ExampleSet, dataset_examples, examples_sheet
from .find import FindResult, UnitScore, find_units, lookup_class
from .receptive_field import ReceptiveField  # the function: .receptive_field.receptive_field

__all__ = ["AblationResult", "ablate", "parse_inputs", "ImageSet", "LayerActivations",
           "default_cache_dir", "image_set", "layer_activations", "layers_activations",
           "Example", "ExampleSet", "dataset_examples", "examples_sheet", "FindResult",
           "UnitScore", "find_units", "lookup_class", "ReceptiveField",
           "Evidence", "CircuitAblation", "add_evidence", "EVIDENCE_FILE"]

EVIDENCE_FILE = "evidence.json"
EVIDENCE_FORMAT = "circuits-evidence/1"


@dataclass
class CircuitAblation:
    """Ablation of one group of a node's traced inputs. ``expected`` is what the weights predict:
    ``drop`` for excitatory inputs, ``rise`` for inhibitory ones; ``agrees`` whether the measured
    change beats the random baseline in that direction (|z| >= 2 and p <= 0.05)."""

    node: str
    group: str  # "excitatory" or "inhibitory"
    expected: str
    result: AblationResult

    @property
    def p_expected(self) -> float:
        """One-sided p-value in the direction the weights predict (drop or rise)."""
        r = self.result
        return r.p_value if self.expected == "drop" else r.p_value_rise

    @property
    def agrees(self) -> bool:
        z = self.result.z_score
        return (z >= 2 if self.expected == "drop" else z <= -2) and self.p_expected <= 0.05

    def to_json(self) -> dict:
        return {"node": self.node, "group": self.group, "expected": self.expected,
                "agrees": self.agrees, **self.result.to_json(),
                "p_expected": self.p_expected}


@dataclass
class Evidence:
    """What :func:`add_evidence` wrote into a circuit folder."""

    directory: Path
    examples: dict[str, ExampleSet] = field(default_factory=dict)  # node id -> examples
    sheets: dict[str, Path] = field(default_factory=dict)  # node id -> PNG
    ablations: list[CircuitAblation] = field(default_factory=list)
    html: Path | None = None
    n_images: int = 0
    n_skipped: int = 0


def add_evidence(circuit_dir: str | Path, model, images: str | Path | Sequence[str | Path], *,
                 top: int = 9, ablation: bool = True, mode: str = "zero", draws: int = 50,
                 top_images: int | None = 100, reduce: str = "mean", seed: int = 0,
                 all_nodes: bool = False, html: bool = True,
                 cache_dir: str | Path | None = None, batch_size: int = 16,
                 progress: bool = False) -> Evidence:
    """Add dataset examples, ablation and an HTML report to a ``circuits trace`` output folder.

    Writes into ``circuit_dir``: ``examples/<unit>.png`` and ``.json`` for every node,
    ``evidence.json`` (examples index and ablation results) and ``report.html``. The ablation
    zeroes (``mode``) the target's traced inputs, excitatory and inhibitory separately, over the
    ``top_images`` images where the target is most active (None: all), against ``draws`` random
    draws of as many units of the same layer; ``all_nodes`` does the same for every node that
    has traced inputs. Everything is checked before anything is written.
    """
    import json

    from ..errors import CircuitsError
    from ..files import write_text
    from ..trace import Circuit, node_unit

    directory = Path(circuit_dir)
    cfile = directory / "circuit.json"
    if not cfile.is_file():
        raise CircuitsError(f"{str(directory)!r} has no circuit.json; pass the output folder "
                            "of 'circuits trace'")
    circuit = Circuit.load(cfile)
    if circuit.model != model.name or str(circuit.weights_id) != str(model.weights_id):
        raise CircuitsError(f"the circuit in {str(directory)!r} was traced on model "
                            f"{circuit.model!r} (weights {circuit.weights_id}), not "
                            f"{model.name!r} (weights {model.weights_id}); load the same model")
    imgs = image_set(images)
    if html:
        from ..reports.html import REPORT_FILE, check_report_path

        check_report_path(directory / REPORT_FILE)
    evfile = directory / EVIDENCE_FILE
    if evfile.exists():
        try:
            fmt = json.loads(evfile.read_text(encoding="utf-8")).get("format", "")
        except (OSError, ValueError, AttributeError):
            fmt = ""
        if fmt != EVIDENCE_FORMAT:
            raise CircuitsError(f"{str(evfile)!r} exists and was not written by circuits; move "
                                "it or choose another folder")
    units = {n.id: node_unit(model, n) for n in circuit.nodes}
    layers = list(dict.fromkeys(u.layer for u in units.values()))
    acts = layers_activations(model, layers, imgs, cache_dir=cache_dir, batch_size=batch_size,
                              progress=progress)
    first = next(iter(acts.values()))
    ev = Evidence(directory=directory, n_images=first.n_images, n_skipped=first.n_skipped)
    for node_id, unit in units.items():
        exs = dataset_examples(model, unit, acts[unit.layer], top=top, cache_dir=cache_dir)
        png = directory / "examples" / f"{unit.slug}.png"
        examples_sheet(exs, png)
        write_text(png.with_suffix(".json"), json.dumps(exs.to_json(), indent=1))
        ev.examples[node_id], ev.sheets[node_id] = exs, png

    if ablation:
        targets = [n.id for n in circuit.nodes if (all_nodes or n.id == circuit.target)
                   and circuit.inputs(n.id)]
        for node_id in targets:
            edges = circuit.inputs(node_id)
            for group, sign, expected in (("excitatory", 1, "drop"), ("inhibitory", -1, "rise")):
                ins = [units[e.source] for e in edges if e.sign == sign]
                if not ins:
                    continue
                res = ablate(model, units[node_id], ins, imgs, mode=mode, draws=draws, seed=seed,
                             reduce=reduce, top_images=top_images, cache_dir=cache_dir,
                             batch_size=batch_size, progress=progress)
                ev.ablations.append(CircuitAblation(node_id, group, expected, res))

    data = {"format": EVIDENCE_FORMAT, "model": model.name, "weights_id": str(model.weights_id),
            "images": imgs.source, "n_images": ev.n_images, "n_skipped": ev.n_skipped,
            "examples": {nid: {"sheet": str(p.relative_to(directory)),
                               "json": str(p.with_suffix(".json").relative_to(directory)),
                               "top": [e.to_json() for e in ev.examples[nid].examples],
                               "summary": ev.examples[nid].summary}
                         for nid, p in ev.sheets.items()},
            "ablation": [a.to_json() for a in ev.ablations],
            "ablation_settings": {"mode": mode, "draws": draws, "top_images": top_images,
                                  "reduce": reduce, "seed": seed} if ablation else None}
    write_text(directory / EVIDENCE_FILE, json.dumps(data, indent=1))
    if html:
        from ..reports.html import write_report

        ev.html = write_report(directory)
    return ev
