"""Interventions on an attribution graph's nodes, in the replacement model or the real network.

A node is set (``=VALUE``) or scaled (``*FACTOR``) at its position, or at every position of its
unit (``mixed4a:37``, no ``@y,x``), and the target moves:

- **frozen**: in the local replacement model (the recorded gates held): the change is exactly
  what the graph's linear map predicts, and every downstream node's new value is known;
- **free**: in the real network (gates recomputed): what actually happens.

**Faithfulness** (Marks et al., 2024): keep the graph's nodes, ablate every other node at the
graph's layers (to its mean over reference images, or to zero), and compare the target:
``(F(graph) − F(none)) / (F(model) − F(none))``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import CircuitsError
from ..hooks import forward, hooks
from .attribution import Attribution, as_map, from_map

_NODE = re.compile(r"^(?P<layer>[^:@]+):(?P<f>f)?(?P<unit>\d+)(?:@(?P<y>\d+),(?P<x>\d+))?$")


@dataclass(frozen=True)
class NodeRef:
    """A unit or SAE feature of a graph layer, at one position or (``y`` None) everywhere."""

    layer: str
    unit: int
    y: int | None = None
    x: int | None = None
    feature: bool = False


def _resolve(m: re.Match, label: str, layers: list[str], model, widths: dict[str, int],
             saes: dict[str, bool]) -> tuple[str, int]:
    """The graph layer and unit of a matched node spec, checked: the layer is one of the
    graph's (by its name or any name the model knows it by), ``LAYER:fN`` where the layer has
    an SAE and ``LAYER:N`` where it has none, the unit within the layer's ``widths``. Errors
    start with ``label`` ("node 'x'", "intervention 'x'")."""
    layer = m["layer"] if m["layer"] in layers else model.layer(m["layer"]).name
    if layer not in layers:
        raise CircuitsError(f"{label}: layer {m['layer']!r} is not one of the graph's layers "
                            f"({', '.join(layers)})")
    is_sae = saes.get(layer, False)
    if bool(m["f"]) != is_sae:
        raise CircuitsError(f"{label}: layer {layer!r} has "
                            + ("SAE features (write LAYER:fN)" if is_sae else "no SAE"))
    unit = int(m["unit"])
    if unit >= widths[layer]:
        raise CircuitsError(f"{label}: layer {layer!r} has {widths[layer]} "
                            + ("features" if is_sae else "units"))
    return layer, unit


def parse_node(spec: str, att: Attribution) -> NodeRef:
    """``LAYER:UNIT[@Y,X]`` or ``LAYER:fFEATURE[@Y,X]`` (a layer of the graph)."""
    m = _NODE.match(spec.strip())
    if not m:
        raise CircuitsError(f"cannot read node {spec!r}; write LAYER:UNIT or LAYER:UNIT@Y,X "
                            "(an SAE feature: LAYER:fN@Y,X)")
    by_name = {ln.name: ln for ln in att.layers}
    layer, unit = _resolve(m, f"node {spec!r}", list(by_name), att.model,
                           {n: ln.shape[0] for n, ln in by_name.items()},
                           {n: ln.sae is not None for n, ln in by_name.items()})
    _, h, w = by_name[layer].shape
    y = None if m["y"] is None else int(m["y"])
    x = None if m["x"] is None else int(m["x"])
    if y is not None and not (y < h and x < w):
        raise CircuitsError(f"node {spec!r}: positions of {layer!r} run to @{h - 1},{w - 1}")
    return NodeRef(layer, unit, y, x, by_name[layer].sae is not None)


def check_edit(text: str, layers: list[str], model, saes: dict | None = None) -> None:
    """Check an intervention's form, layer and unit before any work (:func:`parse_edit`
    checks the position against the graph)."""
    node = re.split(r"[=*]", text, maxsplit=1)[0]
    m = _NODE.match(node.strip())
    if not m or not re.search(r"[=*]\s*[-+0-9.eE]+\s*$", text):
        raise CircuitsError(f"cannot read intervention {text!r}; write NODE=VALUE or "
                            "NODE*FACTOR (e.g. mixed4a:37@3,5=0 or mixed4a:37*2)")
    saes = saes or {}
    _resolve(m, f"intervention {text!r}", layers, model,
             {n: saes[n].d_sae if saes.get(n) is not None else model.layer(n).channels
              for n in layers},
             {n: saes.get(n) is not None for n in layers})


def parse_edit(text: str, att: Attribution) -> tuple[NodeRef, str, float]:
    """``NODE=VALUE`` or ``NODE*FACTOR`` -> (node, "set"|"scale", number)."""
    for op, kind in (("=", "set"), ("*", "scale")):
        if op in text:
            node, _, num = text.rpartition(op)
            try:
                value = float(num)
            except ValueError:
                break
            if value != value or abs(value) == float("inf"):
                raise CircuitsError(f"intervention {text!r}: the value must be finite")
            return parse_node(node, att), kind, value
    raise CircuitsError(f"cannot read intervention {text!r}; write NODE=VALUE or NODE*FACTOR "
                        "(e.g. mixed4a:37@3,5=0 or mixed4a:37*2)")


def _apply(v: torch.Tensor, ref: NodeRef, kind: str, value: float) -> torch.Tensor:
    v = v.clone()
    where = (slice(None), ref.unit) if ref.y is None else (slice(None), ref.unit, ref.y, ref.x)
    v[where] = value if kind == "set" else v[where] * value
    return v


def _editor(edits: list[tuple[NodeRef, str, float]]) -> dict:
    by_layer: dict[str, list] = {}
    for e in edits:
        by_layer.setdefault(e[0].layer, []).append(e)

    def make(items):
        def fn(v):
            for ref, kind, value in items:
                v = _apply(v, ref, kind, value)
            return v
        return fn

    return {name: make(items) for name, items in by_layer.items()}


def intervene_frozen(att: Attribution, edits: list[tuple[NodeRef, str, float]]):
    """(target, {layer: node map}) in the replacement model with ``edits`` applied: the
    recorded gates held, every later node recomputed through the frozen linear maps."""
    with torch.no_grad():
        _, leaves, t, _ = att.runner.run(1, edits=_editor(edits), grad=False)
    return float(t[0]), {name: leaf[0] for name, leaf in leaves.items()}


def intervene_free(att: Attribution, edits: list[tuple[NodeRef, str, float]]) -> float:
    """The target in the real network with ``edits`` applied (gates recomputed; with an SAE
    the layer is its reconstruction plus the error, the edit made on the features)."""
    runner = att.runner

    def edit(name, fn):
        sae = runner.saes.get(name)

        def hook(raw, _hook):
            out = as_map(raw, name)
            if sae is None:
                return from_map(fn(out), raw)
            f = sae.encode_map(out)
            err = out - runner._decode(sae, f)
            return from_map(runner._decode(sae, fn(f)) + err, raw)
        return hook

    return _free(att, [(name, edit(name, fn)) for name, fn in _editor(edits).items()])


def _free(att: Attribution, points) -> float:
    runner = att.runner
    captured = {}
    stop = runner.target.layer
    if stop:
        points = list(points) + [(stop, lambda out, _h: captured.setdefault("t", out))]
    with torch.no_grad(), hooks(att.model, points, stop_at=stop):
        out = forward(att.model, runner.x0)
    return float(runner.target_value(captured["t"] if stop else out)[0])


def reference_means(att: Attribution, images01: torch.Tensor | None, batch: int = 16) -> dict:
    """Per layer, the mean node map (and error map, with an SAE) over reference images
    ``images01`` (N, 3, H, W); zeros when None."""
    runner = att.runner
    if images01 is None:
        return {name: (torch.zeros_like(v), None if e is None else torch.zeros_like(e))
                for name, (v, e) in runner.values.items()}
    sums: dict[str, list] = {}
    n = 0
    for s in range(0, len(images01), batch):
        x = att.model.preprocess(images01[s:s + batch].to(att.model.device))
        acts = {}

        def keep(name):
            def fn(out, _h):
                acts[name] = out
            return fn

        with torch.no_grad(), hooks(att.model, [(nm, keep(nm)) for nm in runner.layers],
                                    stop_at=runner.layers[-1]):
            forward(att.model, x)
        for name in runner.layers:
            a = as_map(acts[name], name)
            if a.shape[1:] != runner.values[name][0].shape[1:] and runner.saes.get(name) is None:
                raise CircuitsError(f"reference images give {name!r} a different shape "
                                    f"{tuple(a.shape[1:])}; use images of the graph image's "
                                    "size")
            sae = runner.saes.get(name)
            if sae is None:
                parts = [a.sum(0, keepdim=True), None]
            else:
                f = sae.encode_map(a)
                parts = [f.sum(0, keepdim=True),
                         (a - runner._decode(sae, f)).sum(0, keepdim=True)]
            if name not in sums:
                sums[name] = parts
            else:
                sums[name] = [sums[name][0] + parts[0],
                              None if parts[1] is None else sums[name][1] + parts[1]]
        n += len(x)
    return {name: (p[0] / n, None if p[1] is None else p[1] / n) for name, p in sums.items()}


def ablated_target(att: Attribution, keep: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
                   means: dict) -> float:
    """The target in the real network when, at each graph layer, the nodes outside ``keep``
    (node-map masks, and error-position masks with an SAE) take their reference value.

    Only nodes take their reference value: units or features that were silent on the image are
    not nodes of its graph (their gate was shut), so they are held silent, at zero, rather than
    switched on at their mean over other images or left to turn on when an earlier layer is
    ablated (they are outside the graph too). With zero ablation this is everything outside the
    graph at zero, the node set of :func:`circuits_cli.graph.circuit.node_set` under
    :mod:`circuits_cli.quality`'s zero ablation."""
    runner = att.runner

    def edit(name):
        sae = runner.saes.get(name)
        k, ke = keep[name]
        m, me = means[name]
        active = (runner.values[name][0][0] != 0).to(m.dtype)
        kept = k.to(m.device).to(m.dtype)
        fill = m * active  # a node takes its reference value, a silent unit stays at zero

        def fn(out, _hook):
            if sae is None:
                return out * kept + fill * (1 - kept)
            f = sae.encode_map(out)
            err = out - runner._decode(sae, f)
            f = f * kept + fill * (1 - kept)
            kef = ke.to(out.dtype)
            err = err * kef + me * (1 - kef)
            return runner._decode(sae, f) + err
        return fn

    return _free(att, [(name, edit(name)) for name in runner.layers])


def faithfulness(att: Attribution, keep: dict, means: dict) -> dict:
    """(F(graph) − F(none)) / (F(model) − F(none)) with the three values."""
    runner = att.runner
    none = {name: (torch.zeros(v.shape[1:], dtype=torch.bool),
                   None if e is None else torch.zeros(e.shape[2:], dtype=torch.bool))
            for name, (v, e) in runner.values.items()}
    f_model = _free(att, [])
    f_none = ablated_target(att, none, means)
    f_graph = ablated_target(att, keep, means)
    denom = f_model - f_none
    score = (f_graph - f_none) / denom if abs(denom) > 1e-12 else float("nan")
    return {"faithfulness": score, "f_model": f_model, "f_none": f_none, "f_graph": f_graph}
