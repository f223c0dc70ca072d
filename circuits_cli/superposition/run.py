"""Run the experiments into a folder: figures, numbers, trained weights, and a manifest.

The folder's ``manifest.json`` lists every file this code wrote there. A file that exists in the
folder and is not listed is the user's: the run refuses (before any training) rather than
overwrite it. Each experiment's trained weights go to ``runs/NAME.json`` as soon as it finishes,
with its parameters; a re-run with the same parameters reuses them, so an interrupted run resumes
without retraining what was finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from .. import files
from ..errors import CircuitsError
from . import experiments as E
from . import figures as F
from .model import ToyRun

MANIFEST = "manifest.json"
MANIFEST_KIND = "circuits superposition"
FIGURES = {
    "sweep": ("wtw_sweep.png", "feature_norms.png"),
    "phase": ("phase_diagram.png",),
    "dimensionality": ("dimensionality.png",),
}
ORDER = tuple(E.EXPERIMENTS)


def default_out_dir(seed: int = 0):
    return files.output_dir("superposition", "toy-models", f"seed{seed}")


def planned_files(experiments) -> list[str]:
    out = []
    for name in experiments:
        out.append(f"runs/{name}.json")
        out.extend(FIGURES[name])
    return out + ["results.json", MANIFEST]


def _read_manifest(out: Path) -> list[str] | None:
    """The files a previous run wrote in ``out`` (``None``: no manifest; error: not ours)."""
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("command") != MANIFEST_KIND:
            raise ValueError
        return list(data["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CircuitsError(f"{str(path)!r} exists and was not written by 'circuits "
                            "superposition'; choose another --out") from None


def check_out_dir(out: Path, experiments) -> list[str]:
    """Refuse, before any work, an --out that is a file, cannot be created, or holds a file this
    command would write that it did not write itself. Returns the previous manifest's files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CircuitsError(f"--out {str(out)!r} is a file, not a folder; choose a folder")
    ours = _read_manifest(out) if out.is_dir() else None
    ours = ours or []
    for name in planned_files(experiments):
        target = out / name
        if name != MANIFEST and target.exists() and name not in ours:
            raise CircuitsError(f"{str(target)!r} exists and was not written by 'circuits "
                                "superposition'; it is left alone: choose another --out")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CircuitsError(f"cannot create the folder {str(out)!r} ({err.strerror}); "
                            "choose another --out") from None
    probe = out / ".write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CircuitsError(f"cannot write in {str(out)!r} ({err.strerror}); "
                            "choose another --out") from None
    return ours


def _load_runs(path: Path, params: dict) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("params") != params:
        return None
    return {k: ToyRun.from_json(v) for k, v in data["runs"].items()}


def params_for(name: str, steps: int | None = None, seed: int = 0):
    cls = E.EXPERIMENTS[name][0]
    params = cls()
    changes = {"seed": seed}
    if steps is not None:
        changes["steps"] = steps
    return replace(params, **changes)


def run_superposition(out: str | Path, experiments=ORDER, steps: int | None = None,
                      seed: int = 0, log=None, params: dict | None = None) -> dict:
    """Run ``experiments`` (``sweep``, ``phase``, ``dimensionality``) into ``out`` and return the
    numbers (also written to ``out/results.json``). ``params`` may replace an experiment's
    parameter object, e.g. ``{"phase": PhaseParams(restarts=2)}``."""
    out = Path(out)
    unknown = set(experiments) - set(ORDER)
    if unknown:
        raise CircuitsError(f"unknown experiment {sorted(unknown)[0]!r}; choose from "
                            f"{', '.join(ORDER)}")
    experiments = [e for e in ORDER if e in experiments]
    if steps is not None and steps < 1:
        raise CircuitsError(f"--steps must be at least 1, got {steps}")
    previous = check_out_dir(out, experiments)
    manifest = sorted(set(previous) | set(planned_files(experiments)))
    files.write_json(out / MANIFEST, {"command": MANIFEST_KIND, "files": manifest})

    results = {}
    for name in experiments:
        p = (params or {}).get(name) or params_for(name, steps, seed)
        pj = E._params_json(p)
        run_path = out / "runs" / f"{name}.json"
        runs = _load_runs(run_path, pj) if run_path.exists() else None
        start = time.perf_counter()
        if runs is not None and log:
            log(f"{name}: reusing the trained models in {run_path}")
        fn = E.EXPERIMENTS[name][1]
        if name == "sweep":
            res = fn(p, log=log, runs=runs)
        else:
            res = fn(p, log=log, run=(runs or {}).get("relu"))
        trained = res.pop("runs")
        if runs is None:
            files.write_json(run_path, {"params": pj, "runs": {k: r.to_json()
                                                               for k, r in trained.items()}},
                             indent=None)
        res["train_seconds"] = {k: round(r.seconds, 2) for k, r in trained.items()}
        res["wall_seconds"] = round(time.perf_counter() - start, 2)
        res["resumed"] = runs is not None
        results[name] = res
        figs = {"sweep": [F.wtw_sweep_figure, F.feature_norms_figure],
                "phase": [F.phase_diagram_figure],
                "dimensionality": [F.dimensionality_figure]}[name]
        for draw, fname in zip(figs, FIGURES[name], strict=True):
            files.save_figure(draw(res), out / fname)
        if log:
            log(f"{name}: {summary_line(name, res)}")
    files.write_json(out / "results.json", results)
    return results


def summary_line(name: str, res: dict) -> str:
    """One line of the headline numbers of an experiment."""
    if name == "sweep":
        relu = ", ".join(f"S={r['sparsity']:g}: {r['represented']}"
                         for r in res["models"]["relu"])
        lin = ", ".join(f"S={r['sparsity']:g}: {r['represented']}"
                        for r in res["models"]["linear"])
        return f"features represented (ReLU) {relu}; (linear) {lin}"
    if name == "phase":
        return (f"agreement with theory {res['agreement_with_theory']:.1%} of "
                f"{sum(res['counts'].values())} cells "
                f"({res['agreement_with_theory_clear_cells']:.1%} of the {res['clear_cells']} "
                "cells off the boundaries); " +
                ", ".join(f"{k} {v}" for k, v in res["counts"].items()))
    s = res["band_share"]["0.05"]
    return (f"{s['sparse_models']['share']:.1%} of {s['sparse_models']['count']} represented "
            f"features within ±0.05 of a band (uniform spread: {s['uniform_chance']:.1%})")
