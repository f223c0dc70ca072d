"""From an attribution to a pruned, scored, intervened-on graph (nothing here writes files)."""

from __future__ import annotations

import torch

from ..connections import linearized
from ..errors import CircuitsError
from ..hooks import forward, hooks
from ..zoo.base import LoadedModel
from .attribution import INPUT, Attribution, Target, attribute
from .graph import Graph
from .interventions import NodeRef, faithfulness, intervene_free, intervene_frozen, reference_means
from .replacement import DESCRIPTION


def default_layers(model: LoadedModel, target: Target) -> list[str]:
    """Every block between the input and the target: the Inception (mixed) blocks; elsewhere
    the elements of the network's sequences of blocks (a ResNet's residual blocks, a ViT's
    transformer blocks, a ConvNeXt's stages and blocks: modules with children whose path ends
    in an index, the innermost such), else its top-level feature-map layers."""
    import re

    order = list(model.layers)
    end = order.index(model.layer(target.layer).name) if target.layer else len(order)
    if model.blocks:
        names = [b for b in model.blocks if order.index(b) < end]
    else:
        infos = [model.layers[n] for n in order[:end]]
        usable = [i for i in infos if i.shape is not None and len(i.shape) == 3
                  and getattr(i, "alias_of", None) is None
                  and (getattr(i, "tokens", None) or ("patches",))[0] == "patches"]
        modules = dict(model.module.named_modules())
        blocks = [i for i in usable if re.search(r"\.\d+$", i.module)
                  and len(list(modules[i.module].children())) > 0]
        paths = [b.module for b in blocks]
        names = []
        for b in blocks:
            if any(p != b.module and p.startswith(b.module + ".") for p in paths):
                continue
            names.append(b.name)
            if f"{b.name}/cls" in model.layers:  # a ViT block's class token, its own position
                names.append(f"{b.name}/cls")
        if not names:
            names = [i.name for i in usable if "." not in i.module]
    if not names:
        raise CircuitsError("no layer lies between the input and the target; name them with "
                            "--layers")
    return names


def _boxes(model: LoadedModel, layers: list[str], image_size: tuple[int, int]) -> dict:
    """Each layer's receptive-field side (pixels) and stride, from the input gradient of the
    central position of the linearized network (every path open)."""
    h, w = image_size
    out = {}
    x = torch.full((1, 3, h, w), 0.5, device=model.device)
    x = model.preprocess(x).requires_grad_(True)
    for name in layers:
        acts = {}
        with linearized(model), hooks(model, [(name, lambda o, _h, n=name: acts.setdefault(n, o))],
                                      stop_at=name):
            forward(model, x)
        a = acts[name]
        if a.dim() != 4:  # a token sequence: no spatial receptive field to draw
            out[name] = None
            continue
        gh, gw = a.shape[-2:]
        g, = torch.autograd.grad(a[0, :, gh // 2, gw // 2].sum(), x)
        m = g.abs().sum((0, 1)) > 0
        ys, xs = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        side = (int(ys[-1] - ys[0] + 1), int(xs[-1] - xs[0] + 1)) if len(ys) else (h, w)
        out[name] = (side, (h / gh, w / gw))
    return out


def _box(geo, y: int, x: int, image_size) -> list[float] | None:
    if geo is None:
        return None
    (sh, sw), (ry, rx) = geo
    cy, cx = (y + 0.5) * ry, (x + 0.5) * rx
    h, w = image_size
    return [max(0.0, cx - sw / 2), max(0.0, cy - sh / 2), min(float(w), cx + sw / 2),
            min(float(h), cy + sh / 2)]


def to_graph(att: Attribution) -> Graph:
    """The graph of the expanded nodes, every error and input node and the target; edges from
    nodes that were not expanded are left out (their sum is kept per node as ``dropped``)."""
    expanded = set(att.row_nodes.tolist())
    cols = []
    for i in range(att.n_nodes):
        kind = att.kind_of(i)[0]
        if kind in ("input", "error", "target") or i in expanded:
            cols.append(i)
    cols_t = torch.tensor(cols)
    pos = {c: k for k, c in enumerate(cols)}
    n = len(cols)
    adj = torch.zeros(n, n)
    row_of = {int(r): k for k, r in enumerate(att.row_nodes.tolist())}
    geos = _boxes(att.model, [ln.name for ln in att.layers], att.image_size)
    gh, gw = att.patch_grid
    ih, iw = att.image_size
    t = att.target
    nodes = []
    for c in cols:
        kind, li, j = att.kind_of(c)
        node = {"activation": float(att.value[c]), "bias": float(att.bias[c]), "crop": None,
                "thumbnail": None, "examples": None, "atlas": None, "is_target": False}
        if kind == "input":
            py, px = divmod(j, gw)
            node.update(node_id=f"{INPUT}@{py},{px}", feature=None, layer=INPUT, layer_index=0,
                        ctx_idx=[py, px], feature_type="input_patch", label=f"patch {py},{px}",
                        box=[px * iw / gw, py * ih / gh, (px + 1) * iw / gw,
                             (py + 1) * ih / gh])
        elif kind == "target":
            ttype = "logit" if t.layer is None else "unit"
            label = t.label or (f"logit {t.index}" if t.layer is None
                                else f"{t.layer}:{t.index}")
            node.update(node_id="target", feature=t.index, layer="target",
                        layer_index=len(att.layers) + 1, ctx_idx=None, feature_type=ttype,
                        label=label, box=None, is_target=True)
        else:
            ln = att.layers[li]
            at = "" if ln.merged else None
            if kind == "error":
                if ln.merged:
                    y = x = None
                else:
                    y, x = divmod(j, ln.shape[2])
                    at = f"@{y},{x}"
                node.update(node_id=f"error:{ln.name}{at}", feature=None, layer=ln.name,
                            layer_index=li + 1, ctx_idx=None if ln.merged else [y, x],
                            feature_type="error", label=f"error {ln.name}{at}".strip())
            else:
                u = int(ln.units[j])
                if not ln.merged:
                    at = f"@{int(ln.ys[j])},{int(ln.xs[j])}"
                name = f"{ln.name}:f{u}" if ln.sae is not None else f"{ln.name}:{u}"
                node.update(node_id=f"{name}{at}", feature=u, layer=ln.name,
                            layer_index=li + 1,
                            ctx_idx=None if ln.merged else [int(ln.ys[j]), int(ln.xs[j])],
                            feature_type="sae_feature" if ln.sae is not None else "neuron",
                            label=name)
            if not ln.merged:
                node["box"] = _box(geos[ln.name], *node["ctx_idx"], att.image_size)
            elif kind == "node":  # a unit over all positions: where it is strongest
                where = att.runner.values[ln.name][0][0, node["feature"]].argmax()
                y, x = divmod(int(where), ln.shape[2])
                node["box"] = _box(geos[ln.name], y, x, att.image_size)
                node["peak"] = [y, x]
            else:
                node["box"] = None
        if c in row_of:
            row = att.rows[row_of[c]]
            adj[pos[c]] = row[cols_t]
            node["dropped"] = float(row.sum() - adj[pos[c]].sum())
            node["input_abs"] = float(row.abs().sum())
            node["residual"] = float(att.value[c] - row.sum() - att.bias[c])
        nodes.append(node)
    g = Graph(nodes=nodes, adjacency=adj, attribution=att)
    return g


def _keep_masks(att: Attribution, graph: Graph) -> dict:
    keep = {}
    for ln in att.layers:
        k = torch.zeros(ln.shape, dtype=torch.bool)
        ke = None if ln.error is None else torch.zeros(ln.shape[1:], dtype=torch.bool)
        keep[ln.name] = (k, ke)
    for node in graph.nodes:
        where = (slice(None), slice(None)) if node["ctx_idx"] is None else tuple(node["ctx_idx"])
        if node["feature_type"] in ("neuron", "sae_feature"):
            keep[node["layer"]][0][(node["feature"], *where)] = True
        elif node["feature_type"] == "error":
            keep[node["layer"]][1][where] = True
    return keep


def record_interventions(att: Attribution, graph: Graph, n: int = 10) -> list[dict]:
    """For the ``n`` most influential units or features of ``graph``: the target's change when
    each is zeroed, predicted by the replacement model and measured in the real network."""
    return _record_ids(att, _strongest(graph, n))


def build_graph(model: LoadedModel, image01: torch.Tensor, target: Target,
                layers: list[str] | None = None, *, saes: dict | None = None,
                node_threshold: float = 0.8, edge_threshold: float = 0.98,
                max_nodes: int = 200, batch_size: int = 32, patch: int = 16,
                reference01: torch.Tensor | None = None, interventions: int = 10,
                merge: bool = False, metadata: dict | None = None) -> tuple[Graph, Graph]:
    """(full graph, pruned graph) for one image. Scores (replacement, completeness) are
    computed on the full graph; faithfulness on the pruned one, with the nodes outside it
    ablated to their mean over ``reference01`` (zero without)."""
    layers = layers or default_layers(model, target)
    att = attribute(model, image01, target, layers, saes=saes, max_nodes=max_nodes,
                    batch_size=batch_size, patch=patch, merge=merge)
    full = to_graph(att)
    scores = full.compute_scores()
    residuals = [abs(n["residual"]) for n in full.nodes if "residual" in n]
    scores["max_residual"] = max(residuals) if residuals else 0.0
    pruned = full.pruned(node_threshold, edge_threshold)
    means = reference_means(att, reference01)
    faith = faithfulness(att, _keep_masks(att, pruned), means)
    scores.update(faithfulness=faith["faithfulness"], f_model=faith["f_model"],
                  f_none=faith["f_none"], f_graph=faith["f_graph"],
                  ablation="mean" if reference01 is not None else "zero",
                  pruned_nodes=sum(1 for n in pruned.nodes
                                   if n["feature_type"] in ("neuron", "sae_feature")),
                  expanded_nodes=len(att.row_nodes) - 1)
    recorded = record_interventions(att, pruned, interventions) if interventions else []
    approximations = [f"{name}: not frozen; its gradient at the point stands in for it"
                      for name in att.unfrozen]
    meta = {"schema_version": 1, "scan": model.name, "model": model.name,
            "weights_id": model.weights_id, "image_size": list(att.image_size),
            "target": {"kind": target.kind, "label": target.label, "index": target.index,
                       "layer": target.layer, "value": float(att.value[-1]),
                       "position": list(target.position) if target.position else None},
            "layers": layers, "positions": "merged" if merge else "each",
            "patch_grid": list(att.patch_grid), "patch": patch,
            "node_threshold": node_threshold, "edge_threshold": edge_threshold,
            "max_nodes": max_nodes, "frozen": [DESCRIPTION[k] for k in att.frozen],
            "approximations": approximations,
            "sae": {name: str(getattr(s, "folder", "") or "") for name, s in (saes or {}).items()},
            "timings": att.timings, **(metadata or {})}
    for g in (full, pruned):
        g.metadata = dict(meta, **({} if g is full else {"node_threshold": node_threshold,
                                                          "edge_threshold": edge_threshold}))
        g.scores = dict(scores)
        g.interventions = recorded
    return full, pruned


def node_crops(data: dict, image01: torch.Tensor, size: int = 48) -> dict:
    """For each node of a graph (graph.json's dict) with a box, the image inside it as an
    (size, size, 3) uint8 array: what that node sees of this image (its thumbnail)."""
    import torch.nn.functional as F

    out = {}
    _, h, w = image01.shape
    for node in data["nodes"]:
        box = node.get("box")
        if not box:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = min(max(0, x0), w - 1), min(max(0, y0), h - 1)
        x1, y1 = max(x0 + 1, min(w, x1)), max(y0 + 1, min(h, y1))
        crop = image01[:, y0:y1, x0:x1][None]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
        out[node["node_id"]] = (crop[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(
            torch.uint8).numpy()
    return out


def build_class_graph(model: LoadedModel, images01: torch.Tensor, target: Target,
                      layers: list[str] | None = None, *, saes: dict | None = None,
                      node_threshold: float = 0.8, edge_threshold: float = 0.98,
                      max_nodes: int = 200, batch_size: int = 32, patch: int = 16,
                      reference01: torch.Tensor | None = None, interventions: int = 10,
                      metadata: dict | None = None) -> tuple[Graph, Graph]:
    """(full, pruned) class-level graph: one unit-level graph (positions merged) per image of
    ``images01`` (N, 3, H, W), averaged: a node's activation and each edge are their means over
    the images (0 where a unit was silent or not expanded). Faithfulness is the mean over the
    images of each image's faithfulness with the class graph's units kept; recorded
    interventions are means too.

    The same computation in steps that array jobs can share out (each image's work depends only
    on the image and, for the second step, on the merged graph): :func:`image_graph_record` per
    image, :func:`merge_image_graphs` over all of them, :func:`image_class_scores` per image,
    :func:`finish_class_graph`."""
    layers = layers or default_layers(model, target)
    per = []
    for i in range(len(images01)):
        att = attribute(model, images01[i:i + 1], target, layers, saes=saes,
                        max_nodes=max_nodes, batch_size=batch_size, patch=patch, merge=True)
        per.append((att, image_graph_record(att)))
    records = [r for _, r in per]
    full, pruned = merge_image_graphs(records, node_threshold, edge_threshold)
    strongest = _strongest(pruned, interventions) if interventions else []
    scores = [image_class_scores(att, rec, pruned, reference01, strongest) for att, rec in per]
    return finish_class_graph(model, target, layers, full, pruned, records, scores,
                              saes=saes, node_threshold=node_threshold,
                              edge_threshold=edge_threshold, max_nodes=max_nodes, patch=patch,
                              reference=reference01 is not None,
                              interventions=interventions, metadata=metadata)


def image_graph_record(att: Attribution) -> dict:
    """One image's unit-level graph (an attribution with positions merged) as plain data, all a
    class graph needs of it: nodes, adjacency and what the attribution froze (``torch.save``-able,
    so that an array job can hand it over)."""
    g = to_graph(att)
    return {"nodes": g.nodes, "adjacency": g.adjacency, "image_size": list(att.image_size),
            "patch_grid": list(att.patch_grid), "frozen": list(att.frozen),
            "unfrozen": sorted(att.unfrozen), "expanded": len(att.row_nodes) - 1}


def merge_image_graphs(records: list[dict], node_threshold: float = 0.8,
                       edge_threshold: float = 0.98) -> tuple[Graph, Graph]:
    """(full, pruned): the images' unit graphs averaged (in the order given), and pruned; the
    full graph's scores (replacement, completeness, largest residual) set on both."""
    order: dict[str, dict] = {}
    for r in records:
        for n in r["nodes"]:
            order.setdefault(n["node_id"], n)
    first = {k: i for i, k in enumerate(order)}
    ids = sorted(order, key=lambda k: (order[k]["layer_index"], first[k]))
    pos = {k: i for i, k in enumerate(ids)}
    n_img = len(records)
    adj = torch.zeros(len(ids), len(ids))
    act = torch.zeros(len(ids))
    bias = torch.zeros(len(ids))
    for r in records:
        idx = torch.tensor([pos[n["node_id"]] for n in r["nodes"]])
        adj[idx[:, None], idx[None, :]] += r["adjacency"] / n_img
        act[idx] += torch.tensor([n["activation"] for n in r["nodes"]]) / n_img
        bias[idx] += torch.tensor([n["bias"] for n in r["nodes"]]) / n_img
    nodes = []
    for k in ids:
        n = {key: v for key, v in order[k].items()
             if key not in ("residual", "dropped", "peak", "input_abs")}
        n.update(activation=float(act[pos[k]]), bias=float(bias[pos[k]]), box=None,
                 crop=None)
        nodes.append(n)
    full = Graph(nodes=nodes, adjacency=adj)
    scores = full.compute_scores()
    scores["max_residual"] = max(abs(n.get("residual", 0.0)) for r in records
                                 for n in r["nodes"])
    pruned = full.pruned(node_threshold, edge_threshold)
    full.scores, pruned.scores = dict(scores), dict(scores)
    return full, pruned


def image_class_scores(att: Attribution, record: dict, pruned: Graph,
                       reference01: torch.Tensor | None, strongest: list[dict]) -> dict:
    """One image's share of a class graph's scores: its faithfulness with the class graph's
    nodes kept, and what zeroing each of the ``strongest`` nodes (those in its own graph)
    does to its target."""
    means = reference_means(att, reference01)
    have = {n["node_id"] for n in record["nodes"]}
    return {"faith": faithfulness(att, _keep_masks(att, pruned), means),
            "recorded": _record_ids(att, [n for n in strongest if n["node_id"] in have])}


def finish_class_graph(model: LoadedModel, target: Target, layers: list[str], full: Graph,
                       pruned: Graph, records: list[dict], image_scores: list[dict], *,
                       saes: dict | None, node_threshold: float, edge_threshold: float,
                       max_nodes: int, patch: int, reference: bool, interventions: int,
                       metadata: dict | None) -> tuple[Graph, Graph]:
    """The class graph's scores, recorded interventions and metadata from the images' shares
    (in image order); returns (full, pruned)."""
    n_img = len(records)
    faiths = [s["faith"] for s in image_scores]
    scores = dict(full.scores)
    scores.update(
        faithfulness=sum(f["faithfulness"] for f in faiths) / n_img,
        faithfulness_per_image=[f["faithfulness"] for f in faiths],
        f_model=sum(f["f_model"] for f in faiths) / n_img,
        f_none=sum(f["f_none"] for f in faiths) / n_img,
        f_graph=sum(f["f_graph"] for f in faiths) / n_img,
        ablation="mean" if reference else "zero",
        pruned_nodes=sum(1 for n in pruned.nodes if n["feature_type"] in ("neuron",
                                                                          "sae_feature")),
        expanded_nodes=max(r["expanded"] for r in records))
    recorded = []
    if interventions:
        sums: dict[str, list[float]] = {}
        for s in image_scores:
            for rec in s["recorded"]:
                v = sums.setdefault(rec["node_id"], [0.0, 0.0])
                v[0] += rec["predicted"] / n_img
                v[1] += rec["actual"] / n_img
        recorded = [{"node_id": k, "value": 0.0, "predicted": v[0], "actual": v[1]}
                    for k, v in sums.items()]
    target_value = next(float(n["activation"]) for n in full.nodes if n["node_id"] == "target")
    meta = {"schema_version": 1, "scan": model.name, "model": model.name,
            "weights_id": model.weights_id, "image_size": records[0]["image_size"],
            "images": n_img,
            "target": {"kind": target.kind, "label": target.label, "index": target.index,
                       "layer": target.layer, "value": target_value,
                       "position": list(target.position) if target.position else None},
            "layers": layers, "positions": "merged (mean over the images)",
            "patch_grid": records[0]["patch_grid"], "patch": patch,
            "node_threshold": node_threshold, "edge_threshold": edge_threshold,
            "max_nodes": max_nodes, "frozen": [DESCRIPTION[k] for k in records[0]["frozen"]],
            "approximations": sorted({f"{name}: not frozen; its gradient at the point stands "
                                      "in for it" for r in records for name in r["unfrozen"]}),
            "sae": {name: str(getattr(s, "folder", "") or "") for name, s in
                    (saes or {}).items()}, **(metadata or {})}
    for g in (full, pruned):
        g.metadata, g.scores, g.interventions = dict(meta), dict(scores), recorded
    return full, pruned


def strongest_nodes(graph: Graph, n: int) -> list[dict]:
    """The ``n`` units or features of ``graph`` with the most influence on the target."""
    return _strongest(graph, n)


def _strongest(graph: Graph, n: int) -> list[dict]:
    infl = graph.influence()
    feats = torch.nonzero(graph.is_feature).flatten()
    order = feats[torch.argsort(infl[feats], descending=True)][:n]
    return [graph.nodes[i] for i in order.tolist()]


def _record_ids(att: Attribution, nodes: list[dict]) -> list[dict]:
    """Zero each of ``nodes`` (graph.json node dicts) in the replacement model and in the
    network: the target's change in each."""
    base = float(att.value[-1])
    out = []
    for node in nodes:
        y, x = node["ctx_idx"] or (None, None)
        edit = [(NodeRef(node["layer"], node["feature"], y, x,
                         node["feature_type"] == "sae_feature"), "set", 0.0)]
        out.append({"node_id": node["node_id"], "value": 0.0,
                    "predicted": intervene_frozen(att, edit)[0] - base,
                    "actual": intervene_free(att, edit) - base})
    return out
