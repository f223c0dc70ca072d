"""Benchmark: circuit-discovery methods scored against known circuits.

On each case of ``benchmarks/discovery_cases/`` (a planted network with distractors, the toy
model's car unit; format in that folder's README), every registered method of
:mod:`circuits_cli.quality.discovery` ranks the units of the case's layer for its target. For
each method, in the same run:

- precision and recall of the known nodes among its top ``k`` (``k`` = the size of the known
  circuit: matched sizes), and recall at ``2k``;
- the area under its faithfulness curve: faithfulness of its top 1, 2, ..., ``2k`` units
  (everything else at the layer ablated as the case says), over ``k' / 2k``;
- its wall time, and the ratio to activation patching's (the slow reference) in this run.

The known circuit's own faithfulness and completeness gap are reported beside them.
Runnable alone: ``python benchmarks/bench_discovery.py --out DIR [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

CASES = Path(__file__).resolve().parent / "discovery_cases"
THREADS = 2


def load_case(folder: Path) -> dict:
    """A case: its JSON plus ``model`` (loaded), ``images`` (float (N, 3, H, W) in [0, 1]),
    ``target`` (a quality Target), ``known`` and ``distractors`` as (layer, channel) nodes."""
    from circuits_cli.quality import unit_target
    from circuits_cli.units import parse_unit
    from circuits_cli.zoo import load_model

    folder = Path(folder)
    case = json.loads((folder / "case.json").read_text())
    spec = case["model"]
    if ".py:" in spec:
        spec = str(folder.parent / spec)
    model = load_model(spec, weights=folder / case["weights"] if case.get("weights") else None)
    arr = np.load(folder / case["images"]["file"])["images"]
    images = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255.0)

    def node(text: str):
        u = parse_unit(text, model)
        return (u.layer, u.channel)

    return {**case, "model_spec": case["model"], "model": model, "images": images,
            "target_unit": parse_unit(case["target"], model),
            "target": unit_target(parse_unit(case["target"], model)),
            "source": model.layer(case["source"]).name,
            "known_nodes": [node(k["node"]) for k in case["known"]],
            "distractor_nodes": [node(d["node"]) for d in case.get("distractors", [])]}


def run_case(case: dict, methods=None, seed: int = 0) -> dict:
    """Every method on one case: scores, curve areas, wall times."""
    from circuits_cli.quality import completeness, faithfulness, faithfulness_curve, node_set
    from circuits_cli.quality.discovery import METHODS, rank, score

    model, images, target, source = case["model"], case["images"], case["target"], case["source"]
    ablation = case.get("ablation", "mean")
    known = case["known_nodes"]
    k = len(known)
    n_units = model.layer(source).channels
    full = {source: torch.ones(n_units, dtype=torch.bool)}
    circuit = node_set(known, {source: n_units})
    truth = {"faithfulness": faithfulness(model, images, target, circuit, ablation=ablation),
             "completeness_gap": completeness(model, images, target, circuit,
                                              ablation=ablation).circuit_gap}
    rows = {}
    for name in methods or list(METHODS):
        started = time.perf_counter()
        ranking = rank(name, model, images, target, source, ablation=ablation, seed=seed)
        wall = time.perf_counter() - started
        at_k = score(ranking, known)
        curve = faithfulness_curve(model, images, target, full, ranking.nodes(2 * k),
                                   ablation=ablation)
        rows[name] = {"precision": at_k["precision"], "recall": at_k["recall"],
                      "recall_2k": score(ranking, known, 2 * k)["recall"],
                      "curve_area": curve.area, "curve": curve.faithfulness,
                      "top": [f"{source}:{c}" for c in ranking.channels[:2 * k]],
                      "distractor_ranks": {f"{layer}:{c}": ranking.channels.index(c) + 1
                                           for layer, c in case["distractor_nodes"]},
                      "wall_s": wall}
    ref = rows.get("patching", {}).get("wall_s")
    for row in rows.values():
        row["time_vs_patching"] = row["wall_s"] / ref if ref else None
    return {"case": case["name"], "target": case["target"], "source": source, "k": k,
            "n_images": len(images), "ablation": ablation, "known": truth, "methods": rows}


def table(results: list[dict]) -> list[str]:
    lines = ["| case | method | precision@k | recall@k | recall@2k | faithfulness-curve area "
             "| wall s | time / patching |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for name, r in res["methods"].items():
            lines.append(f"| {res['case']} (k={res['k']}) | {name} | {r['precision']:.2f} | "
                         f"{r['recall']:.2f} | {r['recall_2k']:.2f} | {r['curve_area']:.3f} | "
                         f"{r['wall_s']:.2f} | {r['time_vs_patching']:.3f} |")
    lines.append("")
    for res in results:
        t = res["known"]
        lines.append(f"- {res['case']}: the known circuit's faithfulness "
                     f"{t['faithfulness']:.3f}, completeness gap {t['completeness_gap']:.3f} "
                     f"({res['ablation']} ablation, {res['n_images']} images)")
    return lines


def register_graph() -> None:
    """The attribution graph as a discovery method (circuits_cli.graph.discovery)."""
    from circuits_cli.graph.discovery import graph_method
    from circuits_cli.quality.discovery import register_method

    register_method("graph", graph_method)


def main(out: Path, quick: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    register_graph()
    results = []
    for folder in sorted(p for p in CASES.iterdir() if (p / "case.json").is_file()):
        case = load_case(folder)
        if quick:
            case["images"] = case["images"][:16]
        print(f"  case {case['name']}: {len(case['images'])} images", flush=True)
        results.append(run_case(case))
    lines = ["## Circuit discovery against known circuits", "",
             "k = the size of the known circuit (matched size); the curve adds each method's "
             "top 1..2k units of the layer, everything else there ablated.", ""] + table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "discovery.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"cases": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main(args.out, quick=args.quick)
