"""Evidence on disk: the example sheets, ``evidence.json`` and ``report.html`` of a circuit
folder, written from an in-memory :class:`circuits_cli.evidence.Evidence`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..evidence import (
    EVIDENCE_FILE,
    Evidence,
    ImageSet,
    check_evidence_outputs,
    examples_sheet,
    gather_evidence,
    image_set,
)


def write_evidence(directory: str | Path, evidence: Evidence, html: bool = True,
                   steering: bool | None = None) -> Evidence:
    """Write ``examples/<unit>.png`` and ``.json`` per node, ``evidence.json`` and (``html``)
    ``report.html`` into a circuit folder; returns ``evidence`` with the paths filled in."""
    from ..files import write_text

    directory = Path(directory)
    for node_id, exs in evidence.examples.items():
        png = directory / "examples" / f"{exs.unit.slug}.png"
        examples_sheet(exs, png)
        write_text(png.with_suffix(".json"), json.dumps(exs.to_json(), indent=1))
        evidence.sheets[node_id] = png
    write_text(directory / EVIDENCE_FILE, json.dumps(evidence.to_json(directory), indent=1))
    evidence.directory = directory
    if html:
        from .html import write_report

        evidence.html = write_report(directory, steering=steering)
    return evidence


def add_evidence(circuit_dir: str | Path, model, images: str | Path | Sequence[str | Path]
                 | ImageSet, *, html: bool = True, cache_dir: str | Path | None = None,
                 steering: bool | None = None, **options) -> Evidence:
    """Gather the evidence of the circuit in a ``circuits trace`` folder
    (:func:`circuits_cli.evidence.gather_evidence`, same ``options``) and write it there.
    Everything is checked before anything is written; ``steering`` as
    :func:`.html.build_report`."""
    from ..errors import CircuitsError
    from ..trace import Circuit

    directory = Path(circuit_dir)
    cfile = directory / "circuit.json"
    if not cfile.is_file():
        raise CircuitsError(f"{str(directory)!r} has no circuit.json; pass the output folder "
                            "of 'circuits trace'")
    circuit = Circuit.load(cfile)
    imgs = image_set(images)
    if circuit.model != model.name or str(circuit.weights_id) != str(model.weights_id):
        raise CircuitsError(f"the circuit in {str(directory)!r} was traced on model "
                            f"{circuit.model!r} (weights {circuit.weights_id}), not "
                            f"{model.name!r} (weights {model.weights_id}); load the same model")
    check_evidence_outputs(directory, circuit, model, cache_dir=cache_dir, html=html)
    evidence = gather_evidence(model, circuit, imgs, cache_dir=cache_dir, **options)
    return write_evidence(directory, evidence, html=html, steering=steering)


def add_steering(circuit_dir: str | Path, model, unit, images, *, mode: str = "add",
                 strengths: Sequence[float] | None = None,
                 cache_dir: str | Path | None = None, batch_size: int = 16,
                 progress: bool = False):
    """Steer ``unit`` (a circuit's target) over ``images``
    (:func:`circuits_cli.evidence.steering.steer`, the same arguments) and write its result
    into the circuit folder: ``steer.json`` (its JSON, the before/after samples included) and
    ``steer.png`` (the dose-response figure), which :func:`.html.write_report` shows as the
    report's steering section. Returns the :class:`SteeringResult`."""
    from ..evidence.steering import steer

    result = steer(model, unit, images, mode=mode, strengths=strengths, cache_dir=cache_dir,
                   batch_size=batch_size, progress=progress)
    write_steering(circuit_dir, result)
    return result


def write_steering(directory: str | Path, result) -> dict:
    """Write a :class:`~circuits_cli.evidence.steering.SteeringResult` into ``directory``:
    ``steer.json`` (its JSON, the before/after samples included) and ``steer.png`` (the
    dose-response figure). Returns the JSON written."""
    from ..evidence.steering import dose_response_figure
    from ..files import save_figure, write_json
    from .html import STEER_JSON, STEER_PNG

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    write_json(directory / STEER_JSON, data)
    save_figure(dose_response_figure(result), directory / STEER_PNG)
    return data
