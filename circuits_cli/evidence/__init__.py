"""Evidence for a circuit beyond the weights: dataset examples, ablation, finding a class's units.

- :mod:`.activations`: a layer's activations over an image folder, computed once and memory-mapped
  from disk afterwards (``$CIRCUITS_CACHE/activations``).
- :mod:`.receptive_field`: the input pixels under a unit position, from the network's gradients.
- :mod:`.examples`: dataset examples (top images and receptive-field crops) and their PNG sheet.
- :mod:`.ablation`: zero/mean ablation of input units against random units of the same layer.
- :mod:`.find`: the units of a layer that build a class logit.

:func:`gather_evidence` collects all of it for a traced circuit, in memory (an
:class:`Evidence`); :func:`circuits_cli.reports.evidence.add_evidence` writes it into a
``circuits trace`` output folder with a self-contained HTML report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ablation import AblationResult, ablate, parse_inputs
from .activations import (
    ImageSet,
    LayerActivations,
    cache_activations,
    default_cache_dir,
    image_set,
    layer_activations,
    layers_activations,
)
from .examples import Example, ExampleSet, dataset_examples, examples_sheet
from .find import FindResult, UnitScore, find_units, lookup_class
from .receptive_field import ReceptiveField  # the function: .receptive_field.receptive_field

__all__ = ["AblationResult", "ablate", "parse_inputs", "ImageSet", "LayerActivations",
           "cache_activations", "default_cache_dir", "image_set", "layer_activations",
           "layers_activations",
           "Example", "ExampleSet", "dataset_examples", "examples_sheet", "FindResult",
           "UnitScore", "find_units", "lookup_class", "ReceptiveField",
           "Evidence", "CircuitAblation", "gather_evidence", "check_evidence_outputs",
           "EVIDENCE_FILE", "measure_quality"]

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
    """The evidence for a circuit, in memory: dataset examples per node and the ablation tests
    (:func:`gather_evidence`). JSON on disk is its serialisation (:meth:`to_json`);
    :func:`circuits_cli.reports.evidence.add_evidence` writes it beside a traced circuit."""

    examples: dict[str, ExampleSet] = field(default_factory=dict)  # node id -> examples
    ablations: list[CircuitAblation] = field(default_factory=list)
    images: str = ""
    n_images: int = 0
    n_skipped: int = 0
    settings: dict | None = None  # the ablation's settings, None without ablation
    quality: object = None  # a circuits_cli.quality.CircuitQuality, None when not measured
    quality_note: str = ""  # why quality was not measured, when it was asked for
    model: str = ""
    weights_id: str = ""
    directory: Path | None = None  # where it was written, if it was
    sheets: dict[str, Path] = field(default_factory=dict)  # node id -> PNG, once written
    html: Path | None = None

    def to_json(self, directory: Path | None = None) -> dict:
        """``evidence.json``: paths of the example sheets relative to ``directory``."""
        def rel(p: Path) -> str:
            return str(p.relative_to(directory)) if directory is not None else str(p)

        return {"format": EVIDENCE_FORMAT, "model": self.model, "weights_id": self.weights_id,
                "images": self.images, "n_images": self.n_images, "n_skipped": self.n_skipped,
                "examples": {nid: {**({"sheet": rel(self.sheets[nid]),
                                       "json": rel(self.sheets[nid].with_suffix(".json"))}
                                      if nid in self.sheets else {}),
                                   "top": [e.to_json() for e in exs.examples],
                                   "summary": exs.summary}
                             for nid, exs in self.examples.items()},
                "ablation": [a.to_json() for a in self.ablations],
                "ablation_settings": self.settings,
                "quality": self.quality.to_json() if self.quality is not None else None,
                **({"quality_note": self.quality_note} if self.quality_note else {})}


def gather_evidence(model, circuit, images: str | Path | Sequence[str | Path] | ImageSet, *,
                    top: int = 9, ablation: bool = True, mode: str = "zero", draws: int = 50,
                    top_images: int | None = 100, reduce: str = "mean", seed: int = 0,
                    all_nodes: bool = False, cache_dir: str | Path | None = None,
                    batch_size: int = 16, progress: bool = False,
                    quality_images: int | None = None, quality_ablation: str = "mean",
                    quality_reference: int = 64) -> Evidence:
    """Dataset examples of every node of ``circuit`` (a :class:`circuits_cli.trace.Circuit`)
    and the ablation of the target's traced inputs, excitatory and inhibitory separately
    (``all_nodes``: of every node with traced inputs), against ``draws`` random draws of as
    many units of the same layer. Nothing is written.

    Each group is measured over ``top_images`` images (None: all) where it can show its
    effect: the excitatory inputs where the target is most active, the inhibitory ones where
    they are (an inhibitor is mostly silent on the images its target fires on most, which is
    why the target fires there, so zeroing it there changes little). The random draws never
    take one of the node's traced inputs, whose own effects would blur the chance baseline.

    ``quality_images`` (None or 0: skip) measures the circuit's faithfulness, completeness and
    minimality and its faithfulness curve (:func:`circuits_cli.quality.circuit_quality`) on the
    target's activation over the images where the target is most active, everything else at
    the circuit's layers ablated by ``quality_ablation`` (``mean``/``resample``: from
    ``quality_reference`` images spread over the whole set)."""
    from ..errors import CircuitsError
    from ..trace import node_unit

    if circuit.model != model.name or str(circuit.weights_id) != str(model.weights_id):
        raise CircuitsError(f"the circuit was traced on model {circuit.model!r} (weights "
                            f"{circuit.weights_id}), not {model.name!r} (weights "
                            f"{model.weights_id}); load the same model")
    imgs = image_set(images)
    units = {n.id: node_unit(model, n) for n in circuit.nodes}
    layers = list(dict.fromkeys(u.layer for u in units.values()))
    acts = layers_activations(model, layers, imgs, cache_dir=cache_dir, batch_size=batch_size,
                              progress=progress)
    first = next(iter(acts.values()))
    ev = Evidence(images=imgs.source, n_images=first.n_images, n_skipped=first.n_skipped,
                  model=model.name, weights_id=str(model.weights_id))
    for node_id, unit in units.items():
        ev.examples[node_id] = dataset_examples(model, unit, acts[unit.layer], top=top,
                                                cache_dir=cache_dir)
    if ablation:
        ev.settings = {"mode": mode, "draws": draws, "top_images": top_images,
                       "reduce": reduce, "seed": seed, "excluded": "traced inputs"}
        targets = [n.id for n in circuit.nodes if (all_nodes or n.id == circuit.target)
                   and circuit.inputs(n.id)]
        for node_id in targets:
            edges = circuit.inputs(node_id)
            traced = [units[e.source] for e in edges]
            for group, sign, expected, top_by in (("excitatory", 1, "drop", "target"),
                                                  ("inhibitory", -1, "rise", "inputs")):
                ins = [units[e.source] for e in edges if e.sign == sign]
                if not ins:
                    continue
                res = ablate(model, units[node_id], ins, imgs, mode=mode, draws=draws, seed=seed,
                             reduce=reduce, top_images=top_images, top_by=top_by,
                             exclude=traced, cache_dir=cache_dir, batch_size=batch_size,
                             progress=progress)
                ev.ablations.append(CircuitAblation(node_id, group, expected, res))
    if quality_images:
        ev.quality, ev.quality_note = measure_quality(
            model, circuit, units[circuit.target], acts, quality_images,
            ablation=quality_ablation, reference=quality_reference, seed=seed,
            batch_size=batch_size)
    return ev


def measure_quality(model, circuit, target, acts: dict, n_images: int, *,
                    ablation: str = "mean", reference: int = 64, seed: int = 0,
                    batch_size: int = 16):
    """(CircuitQuality or None, note): the quality of a traced circuit on its target's
    activation over the ``n_images`` images where the target is most active (by its spatial
    max in ``acts``, the layers' activations over the image set), ablating from ``reference``
    images spread evenly over the set (for ``resample``, over the images not measured)."""
    import numpy as np

    from ..errors import CircuitsError
    from ..images import load_image
    from ..quality import circuit_quality, unit_target
    from ..trace import circuit_node_set
    from .activations import unit_activations

    try:
        nodes, order = circuit_node_set(model, circuit)
    except CircuitsError as err:
        return None, str(err)
    t_acts = acts[target.layer]
    score = unit_activations(model, target, t_acts, batch_size=batch_size).column("max")
    rows = np.sort(np.argsort(-score, kind="stable")[:n_images])
    n_all = t_acts.n_images
    pool = np.arange(n_all)
    if ablation == "resample":  # donors are other images than the measured ones
        pool = np.setdiff1d(pool, rows)
    if len(pool) == 0:
        return None, ("resample ablation needs images besides the ones measured; give more "
                      "images or fewer --quality-images")
    ref_rows = pool[np.unique(np.linspace(0, len(pool) - 1,
                                          min(reference, len(pool))).round().astype(int))]
    size = int(t_acts.preprocessing.get("size", 224))
    resize = t_acts.preprocessing.get("resize")

    def load(idx):
        import torch

        return torch.stack([load_image(t_acts.paths[i], size=size, resize=resize) for i in idx])

    images = load(rows)
    ref = None if ablation == "zero" else load(ref_rows)
    if ablation == "resample" and len(ref) < 2:
        return None, "resample ablation needs at least two reference images"
    q = circuit_quality(model, images, unit_target(target), nodes, order, ablation=ablation,
                        reference=ref, seed=seed, batch_rows=max(16, 8 * batch_size))
    return q, ""


def check_evidence_outputs(directory: str | Path, circuit, model, *,
                           cache_dir: str | Path | None = None, html: bool = True) -> None:
    """Claim ``directory`` for the evidence files of ``circuit`` (``examples/UNIT.png`` and
    ``.json`` per node, ``evidence.json``, ``report.html``) and check the activation cache,
    before any activation is computed (:func:`circuits_cli.files.claim_output`)."""
    from ..files import claim_output
    from ..trace import node_unit

    names = [EVIDENCE_FILE] + (["report.html"] if html else [])
    for n in circuit.nodes:
        slug = node_unit(model, n).slug
        names += [f"examples/{slug}.png", f"examples/{slug}.json"]
    claim_output(directory, "evidence", names,
                 cache=cache_dir if cache_dir is not None else default_cache_dir())
