"""A class-level attribution graph spread over array jobs (``circuits graph --images DIR
--launcher local|slurm``), the same graph one process builds.

:func:`circuits_cli.graph.build.build_class_graph` averages one unit graph per image; its work
splits in two rounds, each over the images:

1. **graphs**: each image's attribution and unit graph (:func:`~circuits_cli.graph.build.
   image_graph_record`), written by the job that computed it to ``OUT/.graph-parts/KEY/
   graph-NNNNN.pt`` (atomically: a finished image is never redone);
2. **scores**: every job merges all the unit graphs (cheap, the same in each: the class graph
   and its pruning), then, for its images, the faithfulness with the class graph's nodes kept
   and the recorded interventions (:func:`~circuits_cli.graph.build.image_class_scores`),
   written to ``scores-NNNNN.pt``.

The second round needs each image's frozen network again (what an attribution freezes is not
saved: it is the model's whole forward state), so each image's attribution is computed twice,
once per round: N jobs take about 2/N of one process's time. This process then merges the
parts in image order (:func:`~circuits_cli.graph.build.finish_class_graph`), exactly as one
process does; the parts are removed once graph.json is written by the command.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

PARTS = ".graph-parts"


def _load_images(paths: list[str], size: int) -> torch.Tensor:
    from ..images import load_image

    return torch.stack([load_image(p, size=size, resize=round(size * 256 / 224)) for p in paths])


def _part(folder: Path, phase: str, i: int) -> Path:
    return folder / f"{phase}-{i:05d}.pt"


def _read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _key(spec: dict) -> str:
    keep = {k: spec[k] for k in ("model", "weights", "weights_id", "images", "target", "layers",
                                 "saes", "settings", "scoring")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def class_graph_job(spec: dict, phase: str, k: int, n: int) -> dict:
    """Job ``k`` of ``n``: ``phase`` ("graphs" or "scores") for images ``k, k+n, ...`` not done
    yet. A module function of plain values, so that submitit ships it to Slurm or a process."""
    from ..files import atomic_write
    from ..graph import Target, attribute
    from ..graph.build import image_class_scores, image_graph_record, merge_image_graphs
    from ..sae.model import load_sae
    from ..zoo import load_model

    folder = Path(spec["parts"])
    mine = [i for i in range(len(spec["images"])) if i % n == k
            and not _part(folder, phase, i).is_file()]
    if not mine:
        return {"phase": phase, "computed": 0}
    model = load_model(spec["model"], weights=spec.get("weights"), device=spec.get("device",
                       "auto"), output=spec.get("output"), labels=spec.get("labels"))
    t = spec["target"]
    target = Target(t["kind"], t["index"], t["layer"],
                    tuple(t["position"]) if t["position"] else None, t["label"])
    saes = {layer: load_sae(f) for layer, f in spec["saes"].items()}
    st = spec["settings"]
    pruned = reference = strongest = None
    if phase == "scores":
        from ..graph.build import strongest_nodes

        records = [_read(_part(folder, "graphs", i)) for i in range(len(spec["images"]))]
        sc = spec["scoring"]
        _, pruned = merge_image_graphs(records, sc["node_threshold"], sc["edge_threshold"])
        strongest = strongest_nodes(pruned, sc["interventions"]) if sc["interventions"] else []
        if sc["reference"]:
            reference = _load_images(sc["reference"], model.input_size)
    for i in mine:
        x = _load_images([spec["images"][i]], model.input_size)
        att = attribute(model, x, target, spec["layers"], saes=saes, max_nodes=st["max_nodes"],
                        batch_size=st["batch_size"], patch=st["patch"], merge=True)
        if phase == "graphs":
            data = image_graph_record(att)
        else:
            data = image_class_scores(att, records[i], pruned, reference, strongest)
        atomic_write(_part(folder, phase, i), lambda tmp, d=data: torch.save(d, tmp))
    return {"phase": phase, "computed": len(mine)}


def class_graph_on_array(model, spec: dict, *, launcher: str, jobs: int, out: Path,
                         slurm: dict | None, saes: dict,
                         log: Callable[[str], None] | None = None):
    """(full, pruned) class graph of ``spec["images"]`` computed by ``jobs`` array jobs on
    ``launcher`` (see the module docstring); resumable: images already done are not redone."""
    from ..graph import Target
    from ..graph.build import finish_class_graph, merge_image_graphs
    from ..launch import run_array

    folder = Path(out) / PARTS / _key(spec)
    spec = dict(spec, parts=str(folder.resolve()))
    n_img = len(spec["images"])
    n = max(1, min(jobs, n_img))
    for phase in ("graphs", "scores"):
        todo = [i for i in range(n_img) if not _part(folder, phase, i).is_file()]
        if todo:
            if log is not None:
                log(f"graph: {phase} of {len(todo)} of {n_img} image(s) on {n} job(s)")
            run_array(class_graph_job, [(spec, phase, k, n) for k in range(n)],
                      launcher=launcher, folder=Path(out) / ".submitit", slurm=slurm,
                      name=f"circuits-graph-{phase}", log=log)
    records = [_read(_part(folder, "graphs", i)) for i in range(n_img)]
    scores = [_read(_part(folder, "scores", i)) for i in range(n_img)]
    sc, st, t = spec["scoring"], spec["settings"], spec["target"]
    full, pruned = merge_image_graphs(records, sc["node_threshold"], sc["edge_threshold"])
    target = Target(t["kind"], t["index"], t["layer"],
                    tuple(t["position"]) if t["position"] else None, t["label"])
    return finish_class_graph(model, target, spec["layers"], full, pruned, records, scores,
                              saes=saes, node_threshold=sc["node_threshold"],
                              edge_threshold=sc["edge_threshold"], max_nodes=st["max_nodes"],
                              patch=st["patch"], reference=bool(sc["reference"]),
                              interventions=sc["interventions"], metadata=spec.get("metadata"))


def remove_parts(out: Path) -> None:
    """The per-image parts once the graph is written (they only serve a resumed run)."""
    shutil.rmtree(Path(out) / PARTS, ignore_errors=True)
