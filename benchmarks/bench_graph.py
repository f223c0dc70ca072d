"""Benchmark: attribution graphs on googlenet-bvlc, and their quality on vehicle photos.

Speed (one 224 px photo, target its class logit, layers inception_4a-4c, 2 torch threads):

- ``neurons``: :func:`circuits_cli.graph.attribute`, 200 nodes expanded in order of influence,
  64 per batched backward pass;
- ``saes``: the same with an SAE on each of the three layers (TopK, 4x, k=32; random
  dictionaries: the cost does not depend on what they learned);
- the anchor, **one backward pass per node**: the same nodes, ``batch_size=1``, measured on the
  first ``ANCHOR_NODES`` expanded nodes and scaled to 200 (its rows are checked equal to the
  batched ones). Goal: a 200-node graph in under 60 s, >= 20x faster than the per-node loop.

Quality (10 vehicle photos of ``../shared/images/imagenet-samples``, each at its own label):
replacement, completeness and faithfulness (zero ablation of the other active nodes) of the
pruned graph over inception_4a-4c (per position) and of the unit-level graph (positions merged),
and how many of the pruned graph's inception_4c units ``circuits find`` ranks in its top 10 for
the class.

Runnable alone: ``python benchmarks/bench_graph.py --out DIR [--quick]``. Skipped without the
BVLC weights in ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "models" / "bvlc_googlenet.npz"
PHOTOS = SHARED / "images" / "imagenet-samples"
LAYERS = ["inception_4a", "inception_4b", "inception_4c"]
THREADS = 2
ANCHOR_NODES = 16
VEHICLES = ("jeep", "cab", "convertible", "minibus", "moving_van", "passenger_car",
            "streetcar", "trailer_truck", "trolleybus", "beach_wagon")


def _photo(model, name):
    from circuits_cli.images import load_image

    path = next(PHOTOS.glob(f"*_{name}.JPEG"))
    return path, load_image(path, size=224, resize=256)[None]


def _speed(model, x, target, quick: bool) -> dict:
    from circuits_cli.graph import attribute
    from circuits_cli.sae.model import SAE

    n = 60 if quick else 200
    out = {}
    t = time.perf_counter()
    att = attribute(model, x, target, LAYERS, max_nodes=n, batch_size=64)
    out["neurons"] = {"nodes": n, "total_s": round(time.perf_counter() - t, 2),
                      **att.timings}
    saes = {}
    for i, layer in enumerate(LAYERS):
        c = model.layer(layer).channels
        saes[layer] = SAE(c, 4 * c, arch="topk", k=32).init_weights(
            torch.Generator().manual_seed(i))
    t = time.perf_counter()
    att_sae = attribute(model, x, target, LAYERS, saes=saes, max_nodes=n, batch_size=64)
    out["saes"] = {"nodes": n, "total_s": round(time.perf_counter() - t, 2), **att_sae.timings,
                   "max_residual": float(max(abs(float(r.sum() + att_sae.bias[k]
                                                     - att_sae.value[k]))
                                             for k, r in zip(att_sae.row_nodes.tolist(),
                                                             att_sae.rows, strict=True)))}
    # the anchor: one backward pass per node, on the same first nodes (same order)
    k = min(ANCHOR_NODES, n)
    t = time.perf_counter()
    one = attribute(model, x, target, LAYERS, max_nodes=k, batch_size=1)
    anchor_s = time.perf_counter() - t - one.timings["record_s"]
    per_node = anchor_s / (k + 1)
    same = one.row_nodes.tolist() == att.row_nodes[:k + 1].tolist()
    agree = bool(same and torch.allclose(one.rows, att.rows[:k + 1], atol=1e-4, rtol=1e-4))
    out["anchor_per_node"] = {"nodes_measured": k, "seconds_per_node": round(per_node, 3),
                              "scaled_to_nodes_s": round(per_node * (n + 1), 1),
                              "rows_equal_batched": agree}
    out["speedup_vs_per_node"] = round(per_node * (n + 1) / out["neurons"]["rows_s"], 1)
    return out


def _quality(model, quick: bool) -> list[dict]:
    from circuits_cli.evidence.find import find_units
    from circuits_cli.graph import Target, build_graph

    rows = []
    for name in VEHICLES[: 3 if quick else 10]:
        path, x = _photo(model, name)
        wnid = path.name.split("_")[0]
        cls = model.class_ids.index(wnid)
        target = Target("logit", cls, label=model.label(cls))
        row = {"photo": path.name, "class": model.label(cls),
               "top1": model.label(int(model.logits(x)[0].argmax()))}
        for mode, merge in (("positions", False), ("units", True)):
            full, pruned = build_graph(model, x, target, LAYERS, max_nodes=200, batch_size=64,
                                       interventions=0, merge=merge)
            s = full.scores
            row[mode] = {k: round(float(s[k]), 4) for k in
                         ("replacement", "completeness", "faithfulness", "max_residual")}
            row[mode]["pruned_nodes"] = s["pruned_nodes"]
            if merge:
                found = {u.unit.channel for u in
                         find_units(model, str(cls), "inception_4c", top=10).units}
                in_graph = {n["feature"] for n in pruned.nodes
                            if n["layer"] == "inception_4c"}
                row["find_top10_in_graph"] = len(found & in_graph)
        rows.append(row)
    return rows


def main(out: Path, quick: bool = False) -> dict:
    from circuits_cli.graph import Target
    from circuits_cli.zoo import load_model

    if not WEIGHTS.is_file():
        return {"skipped": f"no BVLC weights at {WEIGHTS}"}
    torch.set_num_threads(THREADS)
    model = load_model("googlenet-bvlc", weights=WEIGHTS)
    path, x = _photo(model, "jeep")
    cls = int(model.logits(x)[0].argmax())
    result = {"photo": path.name, "target": model.label(cls), "layers": LAYERS,
              "threads": THREADS}
    result["speed"] = _speed(model, x, Target("logit", cls, label=model.label(cls)), quick)
    result["quality"] = _quality(model, quick)
    sp = result["speed"]
    lines = [f"## Attribution graphs (googlenet-bvlc, {path.name}, {LAYERS[0]}-{LAYERS[-1]}, "
             f"{THREADS} threads)", "",
             "| graph | nodes expanded | backward passes | rows (s) | total (s) |",
             "| --- | --- | --- | --- | --- |"]
    for key in ("neurons", "saes"):
        r = sp[key]
        lines.append(f"| {key} | {r['nodes']} | {r['backward_passes']} | {r['rows_s']} | "
                     f"{r['total_s']} |")
    a = sp["anchor_per_node"]
    lines += ["", f"One backward pass per node: {a['seconds_per_node']} s a node (measured on "
              f"{a['nodes_measured']} nodes, rows equal to the batched ones: "
              f"{a['rows_equal_batched']}), {a['scaled_to_nodes_s']} s for the same graph: the "
              f"batched passes are **{sp['speedup_vs_per_node']}x** faster.", "",
              "| photo | class | top-1 | faithfulness (positions) | faithfulness (units) | "
              "completeness | units kept | find's top 10 in the unit graph |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["quality"]:
        lines.append(f"| {r['photo']} | {r['class']} | {r['top1']} | "
                     f"{r['positions']['faithfulness']:.3f} | {r['units']['faithfulness']:.3f} | "
                     f"{r['positions']['completeness']:.3f} | {r['units']['pruned_nodes']} | "
                     f"{r['find_top10_in_graph']} |")
    (out / "graph.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    print(json.dumps(main(args.out, quick=args.quick), indent=2))
