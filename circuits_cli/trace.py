"""Circuits: from one target unit back through the weights to the units that build it.

:func:`trace` starts at a unit, computes the expanded weights from the previous layer to it
(:func:`~circuits_cli.connections.expanded_weights`), keeps its ``top_k`` strongest inputs (L2 norm
of the spatial kernel), and repeats from those inputs for ``depth`` hops (``top_k`` may differ
per hop: ``(5, 2)`` keeps five inputs of the target and two of each of those). The result is a
:class:`Circuit`: nodes (units), edges (signed strength and spatial kernel of each connection) and
the hops (which layers, which method). It is written as ``circuit.json`` (:meth:`Circuit.save`)
and drawn by :func:`circuits_cli.reports.diagrams.draw_circuit`.

The previous layer of a layer is the input of its Inception block (``model.blocks``) when the
model describes one, skipping pooling/normalisation layers (so ``inception_4a`` reads
``inception_3b`` through the max-pool, with the linear approximation); a branch layer
(``inception_4c/5x5``) reads its block's input; other layers read the previous conv or block
layer in forward order. ``source`` fixes the layer of the first hop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .connections import (
    expanded_weights,
    rank_inputs,
    resolve_method,
    through_decoders,
    through_tokens,
    unit_weights,
)
from .errors import CircuitsError
from .units import Unit, is_neuron, parse_unit
from .zoo.base import LoadedModel

FORMAT = "circuits-circuit/1"
SKIPPED_KINDS = ("pool", "norm")  # layers a hop reads through, never stops at
#: What each method of a hop means, said under the circuit: only ``exact`` is the weights alone.
HOP_NOTES = {"linear": "the linear approximation: ReLUs as identity, max-pools as average "
                       "pools; a residual block's skip path is an input like its convs",
             "frozen": "through attention: the linear map with attention patterns, LayerNorm "
                       "scales and activation gates frozen on the operating-point images; "
                       "kernels span the token grid, to the target's centre patch"}


@dataclass
class Node:
    """One unit of the circuit. ``depth`` 0 is the target; ``max_weight`` is the largest |weight|
    over all the unit's inputs from the next hop (what its kernels are normalised by), None for
    the units of the last hop. ``render`` is the feature visualization PNG, if rendered.
    ``label`` is what the unit is known to detect (e.g. ``"wheels d' 2.3"``), shown under it in
    diagrams and reports; None where nobody has measured it."""

    id: str
    layer: str
    channel: int | None  # None for a direction or dictionary feature (its id says which)
    depth: int
    branch: str | None = None
    max_weight: float | None = None
    render: str | None = None
    activation: float | None = None
    label: str | None = None


@dataclass
class Edge:
    """A connection ``source`` -> ``target`` (node ids): ``strength`` = L2 norm of the expanded
    weight's spatial kernel, ``sign`` = +1 excitation / -1 inhibition (sign of the kernel sum),
    ``rank`` = 1 for the target's strongest input, ``relative`` = strength over the target's
    strongest input, ``kernel`` = the signed spatial kernel (h x w, source-layer positions)."""

    source: str
    target: str
    strength: float
    sign: int
    rank: int
    relative: float
    kernel: list[list[float]]

    def kernel_array(self) -> np.ndarray:
        return np.asarray(self.kernel, dtype=np.float32)


@dataclass
class Hop:
    """One layer-to-layer step: expanded weights from ``source`` to ``target`` by ``method``."""

    source: str
    target: str
    method: str
    kernel_size: tuple[int, int]


@dataclass
class Circuit:
    model: str
    weights_id: str
    target: str
    depth: int
    top_k: int | list[int]  # inputs kept per unit: one number, or one per hop
    method: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    note: str = ""
    render_settings: dict | None = None

    # -- lookup --------------------------------------------------------------------------
    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def inputs(self, node_id: str) -> list[Edge]:
        """Edges into ``node_id``, strongest first."""
        return sorted((e for e in self.edges if e.target == node_id), key=lambda e: e.rank)

    def breadth(self) -> str:
        """How many inputs were kept, in words (:func:`breadth`)."""
        return breadth(self.top_k)

    def layers(self) -> list[str]:
        """Layers from the target's back to the earliest."""
        return [self.hops[0].target] + [h.source for h in self.hops] if self.hops \
            else [self.node(self.target).layer]

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = {"format": FORMAT, **asdict(self)}
        for hop in data["hops"]:
            hop["kernel_size"] = list(hop["kernel_size"])
        return data

    @classmethod
    def from_json(cls, data: dict) -> Circuit:
        if data.get("format") != FORMAT:
            raise CircuitsError(f"not a circuit file (format {data.get('format')!r}, expected "
                                f"{FORMAT!r}); write one with 'circuits trace'")
        fields = {k: v for k, v in data.items() if k not in ("format", "nodes", "edges", "hops")}
        return cls(**fields, nodes=[Node(**n) for n in data["nodes"]],
                   edges=[Edge(**e) for e in data["edges"]],
                   hops=[Hop(h["source"], h["target"], h["method"], tuple(h["kernel_size"]))
                         for h in data["hops"]])

    def save(self, path: Path) -> None:
        from .files import write_json

        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> Circuit:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CircuitsError(f"cannot read circuit file {str(path)!r} ({err})") from None
        return cls.from_json(data)


# ---------------------------------------------------------------------------------------------
# Layers


def _enclosing_block(model: LoadedModel, layer: str) -> str | None:
    """The Inception block a branch layer belongs to (``inception_4c/3x3`` or ``mixed4c_3x3``
    -> the block), by name."""
    for block in model.blocks:
        if layer != block and layer.startswith(block) and layer[len(block)] in "/_.":
            return block
    return None


def previous_layer(model: LoadedModel, layer: str) -> str | None:
    """The layer a hop from ``layer`` reads (module docstring), None at the network's input."""
    name = model.layer(layer).name
    names = list(model.layers)
    block = model.blocks.get(name) or model.blocks.get(_enclosing_block(model, name) or "")
    if block is not None:
        prev = model.layer(block.input).name
    else:
        return _previous_in_order(model, canonical_layer(model, name))
    while prev is not None and model.layers[prev].kind in SKIPPED_KINDS:
        i = names.index(prev)
        prev = next((c for c in reversed(names[:i]) if model.layers[c].kind not in SKIPPED_KINDS
                     and model.layers[c].kind != "branch"), None)
    return prev


def canonical_layer(model: LoadedModel, layer: str) -> str:
    """The layer ``layer`` collapses into for tracing (itself unless it is an alias: a block
    and its last block hold one tensor; conv, BatchNorm and ReLU are one layer)."""
    info = model.layer(layer)
    return info.alias_of or info.name


def _previous_in_order(model: LoadedModel, name: str) -> str | None:
    """The previous layer in forward order that a hop reads: aliases and class-token views are
    skipped, and so is everything inside the target when it is a block (so a residual block
    reads the block before it, the identity path included, and a conv inside a block reads the
    conv before it)."""
    names = list(model.layers)
    members = [name] + [n for n, i in model.layers.items() if i.alias_of == name]
    own = model.layers[name].module
    inside = [model.layers[m].module for m in members
              if list(model.module.get_submodule(model.layers[m].module).children())
              and not own.startswith(model.layers[m].module + ".")]
    scope = max(inside, key=lambda p: p.count(".")) if inside else None
    for cand in reversed(names[:names.index(name)]):
        info = model.layers[cand]
        if info.kind not in ("conv", "block", "tokens") or info.alias_of or info.module == own:
            continue  # (the patches of the block whose class token is the target: one output)
        if scope is not None and info.module.startswith(scope + "."):
            continue
        return cand
    return None


# ---------------------------------------------------------------------------------------------
# Tracing


def breadth(top_k: int | Sequence[int]) -> str:
    """A circuit's ``top_k`` in words: "top 3 inputs per unit", or with one number per hop
    "top 5 inputs of the target, then 2 per unit"."""
    ks = [top_k] if isinstance(top_k, int) else list(top_k)
    if len(set(ks)) == 1:
        return f"top {ks[0]} inputs per unit"
    if len(ks) == 2:
        return f"top {ks[0]} inputs of the target, then {ks[1]} per unit"
    return f"top {', '.join(map(str, ks))} inputs per unit, hop by hop"


def hop_top_k(top_k: int | Sequence[int], depth: int) -> list[int]:
    """One ``top_k`` per hop: a number for all hops, or one per hop (the last repeats; extra
    ones are an error)."""
    ks = [top_k] if isinstance(top_k, int) else [int(k) for k in top_k]
    if not ks or any(k < 1 for k in ks):
        raise CircuitsError(f"top-k must be at least 1, got {top_k}")
    if len(ks) > depth:
        raise CircuitsError(f"{len(ks)} top-k values for {depth} hop(s); give at most one per "
                            "hop")
    return ks + [ks[-1]] * (depth - len(ks))


def trace(model: LoadedModel, unit: Unit, depth: int = 2, top_k: int | Sequence[int] = 3,
          source: str | None = None, method: str = "auto",
          features: dict[str, list[Unit]] | None = None,
          images: torch.Tensor | None = None) -> Circuit:
    """The circuit of ``unit``: its ``top_k`` strongest inputs, theirs, ... over ``depth`` hops
    (``top_k`` one number, or one per hop). All units of one hop are computed in one batched
    call. ``features`` maps a layer to the
    dictionary features of an SAE on it (:func:`circuits_cli.units.sae_features`): a hop into
    that layer ranks its features (through their decoder directions) instead of its neurons,
    so SAEs on successive
    layers give a feature circuit. A hop through token layers (a transformer's residual
    stream) freezes attention on ``images`` ([0, 1] RGB; default a mid-grey image) and says so
    in the circuit's note."""
    if depth < 1:
        raise CircuitsError(f"depth must be at least 1, got {depth}")
    ks = hop_top_k(top_k, depth)
    info = model.layer(canonical_layer(model, unit.layer))
    if is_neuron(unit):
        if not 0 <= unit.channel < info.channels:
            raise CircuitsError(f"channel {unit.channel} is out of range for layer "
                                f"{info.name!r}, which has {info.channels} channels "
                                f"(0-{info.channels - 1})")
        unit = Unit(info.name, unit.channel)
    if source is not None:
        source = model.layer(source).name
        if model.layer_index(source) >= model.layer_index(info.name):
            raise CircuitsError(f"--from layer {source!r} does not come before {info.name!r}; "
                                "choose an earlier layer")
        resolve_method(model, source, info.name, method)  # fail early on exact-without-path

    circuit = Circuit(model=model.name, weights_id=model.weights_id, target=str(unit),
                      depth=depth, top_k=ks[0] if len(set(ks)) == 1 else ks, method=method)
    circuit.nodes.append(_node(model, unit, 0))
    frontier = [unit]
    layer = info.name
    for hop in range(depth):
        src = source if hop == 0 and source is not None else previous_layer(model, layer)
        if src is None:
            circuit.note = "; ".join(x for x in (
                circuit.note, f"stopped after {hop} hop(s): {layer!r} reads the network's "
                              "input") if x)
            break
        used = resolve_method(model, src, layer, method)
        with torch.no_grad():
            kernels = _frontier_weights(model, src, layer, frontier, used, images)
        if through_tokens(model, src, layer):
            used = "frozen"
            where = (f"{len(images)} image(s)" if images is not None else "a mid-grey image")
            frozen_note = (f"hops through token layers use attention patterns, LayerNorm "
                           f"scales and activation gates frozen on {where}")
            if frozen_note not in circuit.note:
                circuit.note = "; ".join(x for x in (circuit.note, frozen_note) if x)
        kernels = kernels.detach().cpu().double()
        dictionary = features.get(src) if features else None
        if dictionary:  # rank the source layer's dictionary features, not its neurons
            kernels = torch.stack([through_decoders(k, dictionary, model.layer(src).channels)
                                   for k in kernels])
        circuit.hops.append(Hop(src, layer, used, tuple(kernels.shape[-2:])))
        next_frontier: list[Unit] = []
        for row, target in zip(kernels, frontier, strict=True):
            node = circuit.node(str(target))
            node.max_weight = float(row.abs().max())
            ranked = rank_inputs(row, ks[hop])
            top = ranked[0].strength if ranked and ranked[0].strength > 0 else 1.0
            for rank, conn in enumerate(ranked, 1):
                src_unit = dictionary[conn.channel] if dictionary else Unit(src, conn.channel)
                if not any(n.id == str(src_unit) for n in circuit.nodes):
                    circuit.nodes.append(_node(model, src_unit, hop + 1))
                    next_frontier.append(src_unit)
                circuit.edges.append(Edge(
                    source=str(src_unit), target=str(target), strength=conn.strength,
                    sign=conn.sign, rank=rank, relative=conn.strength / top,
                    kernel=np.round(conn.kernel.astype(np.float64), 7).tolist()))
        frontier, layer = next_frontier, src
    return circuit


def _frontier_weights(model: LoadedModel, source: str, layer: str, frontier: list[Unit],
                      method: str, images: torch.Tensor | None = None) -> torch.Tensor:
    """Expanded weights ``[len(frontier), C_in, h, w]`` into the units of one hop: neurons in
    one batched call, directions and features through their encoders."""
    neurons = [u for u in frontier if is_neuron(u)]
    rows: dict[Unit, torch.Tensor] = {}
    if neurons:
        k = expanded_weights(model, source, layer, [u.channel for u in neurons], method=method,
                             images=images)
        rows.update(zip(neurons, k, strict=True))
    for u in frontier:
        if u not in rows:
            rows[u] = unit_weights(model, source, u, method, images=images)
    return torch.stack([rows[u] for u in frontier])


def node_unit(model: LoadedModel, node: Node) -> Unit:
    """The unit a node stands for (a direction is read back from its id, ``LAYER@FILE#ROW``)."""
    if node.channel is not None:
        return Unit(model.layer(node.layer).name, node.channel)
    return parse_unit(node.id, model)


def circuit_node_set(model: LoadedModel, circuit: Circuit):
    """The circuit as a node set for :mod:`circuits_cli.quality`: ``({layer: mask}, order)``
    over the layers of its inputs (the target's own layer is what is measured, not ablated),
    ``order`` the nodes as traced (hop by hop, strongest first). A layer of neurons is a (C,)
    channel mask; a layer of directions or dictionary features is a
    :class:`~circuits_cli.quality.Features` over every row of the file or SAE they come from
    (the dictionary the circuit was picked from), ``order`` then naming rows."""
    from .quality import Features, node_set
    from .units import units_from_file

    nodes = [n for n in circuit.nodes if n.depth > 0]
    if not nodes:
        raise CircuitsError("the circuit has no inputs to measure")
    order, dictionaries = [], {}
    for n in nodes:
        layer = model.layer(n.layer).name
        if n.channel is not None:
            order.append((layer, n.channel))
            continue
        unit = node_unit(model, n)
        if layer not in dictionaries:
            dictionaries[layer] = units_from_file(model, layer, unit.source)
        order.append((layer, unit.index))
    mixed = [layer for layer in dictionaries if any(lay == layer and n.channel is not None
                                                    for n, (lay, _) in zip(nodes, order,
                                                                           strict=True))]
    if mixed:
        raise CircuitsError(f"layer {mixed[0]!r} holds both neurons and features in the "
                            "circuit; measure one kind per layer")
    channels = {layer: model.layer(layer).channels for layer, _ in order
                if layer not in dictionaries}
    masks = node_set([v for v in order if v[0] not in dictionaries], channels)
    out = {}
    for layer, _ in order:  # layers in trace order
        if layer in out:
            continue
        if layer in dictionaries:
            keep = torch.zeros(len(dictionaries[layer]), dtype=torch.bool)
            for lay, i in order:
                if lay == layer:
                    keep[i] = True
            out[layer] = Features(dictionaries[layer], keep)
        else:
            out[layer] = masks[layer]
    return out, order


def _node(model: LoadedModel, unit: Unit, depth: int) -> Node:
    channel = unit.channel if is_neuron(unit) else None
    branch = model.layer(unit.layer).branch_of(channel) if channel is not None else None
    return Node(id=str(unit), layer=unit.layer, channel=channel, depth=depth,
                branch=branch[0] if branch else None)


def attach_renders(circuit: Circuit, model: LoadedModel, *, steps: int = 512, size: int = 128,
                   seed: int = 0, param: str = "fourier", cache_dir: Path | None = None,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """Feature visualizations of every node, from the render cache where they exist (rendered
    and cached otherwise). Sets each node's ``render`` path and ``activation``; returns the
    pictures by node id."""
    from .render import render_units

    nodes = list(circuit.nodes)
    units = [node_unit(model, n) for n in nodes]
    renders = render_units(model, units, steps=steps, size=size, seed=seed, param=param,
                           cache_dir=cache_dir, progress=progress)
    for node, render in zip(nodes, renders, strict=True):
        node.render = str(render.path) if render.path is not None else None
        node.activation = float(render.activation)
    circuit.render_settings = {"steps": steps, "size": size, "seed": seed,
                               **({"param": param} if param != "fourier" else {})}
    return {node.id: render.image for node, render in zip(nodes, renders, strict=True)}


def render_tree(circuit: Circuit) -> str:
    """The circuit as indented text, target first, inputs strongest first."""
    lines = [f"Circuit of {circuit.target} ({circuit.model}), {len(circuit.hops)} hop(s), "
             f"{circuit.breadth()}"]
    for hop in circuit.hops:
        how = HOP_NOTES.get(hop.method, "")
        lines.append(f"  {hop.source} -> {hop.target}: {hop.method} expanded weights, kernels "
                     f"{hop.kernel_size[0]}x{hop.kernel_size[1]}" + (f" ({how})" if how else ""))

    def walk(node_id: str, indent: int, seen: set[str]) -> None:
        for edge in circuit.inputs(node_id):
            kind = "excites " if edge.sign > 0 else "inhibits"
            node = circuit.node(edge.source)
            branch = f" [{node.branch}]" if node.branch else ""
            lines.append(f"{'  ' * indent}<- {edge.source}{branch}  {kind}  strength "
                         f"{edge.strength:.4g} ({edge.relative:.2f})")
            if edge.source not in seen:
                seen.add(edge.source)
                walk(edge.source, indent + 1, seen)

    root = circuit.node(circuit.target)
    lines.append(circuit.target + (f" [{root.branch}]" if root.branch else ""))
    walk(circuit.target, 1, {circuit.target})
    if circuit.note:
        lines.append(circuit.note)
    return "\n".join(lines)
