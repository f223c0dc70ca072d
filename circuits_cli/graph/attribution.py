"""Attribution: the edges of the local replacement model, by batched backward passes.

For one image the network runs once with its nonlinear pieces recorded
(:mod:`circuits_cli.graph.replacement`). Every chosen layer is then **cut**: in the replacement
model its activation is a leaf tensor, so the gradient of a node at one layer with respect to the
leaves of the earlier layers is exactly the frozen linear map between them, and

    edge(source → target) = activation(source) × ∂target/∂source   (through the frozen map)

A node's incoming edges plus its bias (the replacement model's value of that node when every
source is zero) add up to its activation, exactly: the map is affine.

Nodes are (layer, unit, position) for a layer of neurons; with an SAE on a layer, (layer, feature,
position) plus one **error node** per position (the activation minus the SAE's reconstruction,
which the replacement model carries unchanged); the input is one node per image patch; the target
is a class logit or a unit (a channel's mean over positions, or one position).

Rows are computed for a batch of target nodes at once: the replacement model runs on B copies of
the leaves and each copy's backward pass starts from its own node (one forward and one backward
pass per batch, not per node). Nodes are expanded in order of their influence on the target, as
circuit-tracer does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import CircuitsError
from ..hooks import forward, hooks
from ..zoo.base import LoadedModel
from .replacement import Frozen, record, replay

INPUT = "input"
TARGET = "target"


@dataclass(frozen=True)
class Target:
    """What the graph explains: a class logit (``layer`` None) or a unit's activation
    (``layer`` and ``index`` = channel; the mean over positions, or ``position``)."""

    kind: str  # "logit" or "unit"
    index: int
    layer: str | None = None
    position: tuple[int, int] | None = None
    label: str = ""


@dataclass
class LayerNodes:
    """The nodes of one layer: ``units`` (channel or SAE feature), ``ys``, ``xs`` of the active
    ones and their ``values``; with an SAE, ``error`` holds the error vectors (C, H, W).

    With ``merged`` a node is a unit over all its positions (``ys``/``xs`` None): its value is
    the unit's mean over positions, and the layer has one error node."""

    name: str
    shape: tuple[int, int, int]           # (units, H, W) of the node map
    units: torch.Tensor
    ys: torch.Tensor | None
    xs: torch.Tensor | None
    values: torch.Tensor
    sae: object | None = None
    error: torch.Tensor | None = None      # (C, H, W) with an SAE
    merged: bool = False

    @property
    def n(self) -> int:
        return int(self.units.numel())

    @property
    def n_errors(self) -> int:
        if self.error is None:
            return 0
        return 1 if self.merged else self.shape[1] * self.shape[2]

    def read(self, maps: torch.Tensor) -> torch.Tensor:
        """The nodes' entries of node maps (B, U, H, W) -> (B, n) (the mean over positions
        when merged)."""
        if self.merged:
            return maps.mean((-2, -1))[:, self.units]
        return maps[:, self.units, self.ys, self.xs]

    def contributions(self, grad: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Edges from these nodes: gradient × activation summed over each node's entries."""
        if self.merged:
            return (grad * maps).sum((-2, -1))[:, self.units]
        return grad[:, self.units, self.ys, self.xs] * maps[:, self.units, self.ys, self.xs]

    def error_contributions(self, grad: torch.Tensor) -> torch.Tensor:
        c = (grad * self.error).sum(1)
        return c.sum((-2, -1))[:, None] if self.merged else c.flatten(1)

    def seed_raw(self, g: torch.Tensor, row: int, j: int, mask: torch.Tensor) -> None:
        """Start row ``row``'s backward pass at SAE feature node ``j`` from the layer's raw map
        ``g`` (B, C, H, W): the feature's pre-activation is linear in it, ``(x - b_dec) · W_enc[:,
        u] + b_enc[u]``, so its gradient there is the encoder column (at the node's position, or
        at every position where the feature is active, over H·W, for a merged node); ``mask``
        is the recorded active set (d_sae, H, W)."""
        u = int(self.units[j])
        col = self.sae.W_enc[:, u].detach().to(g.dtype)
        if self.merged:
            h, w = self.shape[1], self.shape[2]
            g[row] = col[:, None, None] * mask[u].to(g.dtype) / (h * w)
        else:
            g[row, :, self.ys[j], self.xs[j]] = col

    def seed(self, g: torch.Tensor, row: int, j: int) -> None:
        """Start row ``row``'s backward pass at node ``j``."""
        u = self.units[j]
        if self.merged:
            g[row, u] = 1.0 / (self.shape[1] * self.shape[2])
        else:
            g[row, u, self.ys[j], self.xs[j]] = 1.0


@dataclass
class Attribution:
    """The result of :func:`attribute`: node tables, the rows computed and what it took.

    Columns (node indices) run: input patches, then each layer's active nodes followed by its
    error nodes, then the target (last). ``rows[i]`` holds the incoming edges of node
    ``row_nodes[i]`` over all columns; ``bias`` and ``value`` are per node."""

    model: LoadedModel
    target: Target
    layers: list[LayerNodes]
    patch_grid: tuple[int, int]
    image_size: tuple[int, int]
    rows: torch.Tensor
    row_nodes: torch.Tensor
    bias: torch.Tensor
    value: torch.Tensor
    frozen: list[str]
    unfrozen: list[str]
    timings: dict = field(default_factory=dict)
    n_backward: int = 0

    # column layout ---------------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    def offsets(self) -> list[tuple[int, int, int]]:
        """(first node, first error node, end) of each layer's columns."""
        out, start = [], self.n_inputs
        for ln in self.layers:
            out.append((start, start + ln.n, start + ln.n + ln.n_errors))
            start += ln.n + ln.n_errors
        return out

    @property
    def n_nodes(self) -> int:
        return self.n_inputs + sum(ln.n + ln.n_errors for ln in self.layers) + 1

    @property
    def target_index(self) -> int:
        return self.n_nodes - 1

    def kind_of(self, i: int) -> tuple[str, int | None, int]:
        """("input"|"node"|"error"|"target", layer number or None, index within it)."""
        if i < self.n_inputs:
            return "input", None, i
        if i == self.target_index:
            return "target", None, 0
        for li, (a, e, end) in enumerate(self.offsets()):
            if i < e:
                return "node", li, i - a
            if i < end:
                return "error", li, i - e
        raise IndexError(i)

    def expandable(self) -> torch.Tensor:
        """Mask of the nodes that have incoming edges of their own (units and features)."""
        m = torch.zeros(self.n_nodes, dtype=torch.bool)
        for a, e, _ in self.offsets():
            m[a:e] = True
        return m


# ---------------------------------------------------------------------------------------------
# The replacement model's runs


def as_map(a: torch.Tensor, layer: str = "") -> torch.Tensor:
    """A layer's activation as a node map (N, units, H, W): feature maps as they are, token
    sequences (N, T, D) as (N, D, 1, T) — a node per channel of the stream and token."""
    if a.dim() == 4:
        return a
    if a.dim() == 3:
        return a.transpose(1, 2).unsqueeze(2)
    raise CircuitsError(f"layer {layer!r} gives a {a.dim()}-d activation; attribution graphs "
                        "need feature maps (N, C, H, W) or token sequences (N, T, D)")


def from_map(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A node map back in the layout of ``like`` (the layer's own activation)."""
    return m if like.dim() == 4 else m.squeeze(2).transpose(1, 2)


class _Runner:
    """Record once; then run the replacement model with leaves at every chosen layer."""

    def __init__(self, model: LoadedModel, image01: torch.Tensor, layers: list[str],
                 target: Target, saes: dict[str, object]):
        self.model = model
        self.layers = layers
        self.target = target
        self.saes = saes
        self.x0 = model.preprocess(image01.to(model.device)).detach()
        self.masks: dict[str, torch.Tensor] = {}  # SAE active sets
        self.frozen = Frozen()
        self.acts: dict[str, torch.Tensor] = {}
        self.values: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        with torch.no_grad():
            self._record()

    # -- SAE splice: the same calls when recording and replaying -----------------------------
    @staticmethod
    def _pre(sae, act: torch.Tensor) -> torch.Tensor:
        return sae.pre_acts(act.movedim(1, -1)).movedim(-1, 1)

    @staticmethod
    def _decode(sae, f: torch.Tensor) -> torch.Tensor:
        return sae.decode(f.movedim(1, -1)).movedim(-1, 1)

    def _active(self, sae, pre: torch.Tensor) -> torch.Tensor:
        if getattr(sae, "arch", "relu") == "topk":
            idx = pre.topk(sae.k, dim=1).indices
            mask = torch.zeros_like(pre).scatter(1, idx, 1.0)
            return mask * (pre > 0)
        return (pre > 0).to(pre.dtype)

    def _record(self) -> None:
        target_layer = self.target.layer

        def keep(name):
            def fn(out, _hook):
                self.acts[name] = out.detach()
            return fn

        points = [(name, keep(name)) for name in self.layers]
        if target_layer:
            points.append((target_layer, keep("__target__")))
        with record(self.frozen), hooks(self.model, points,
                                        stop_at=target_layer if target_layer else None):
            logits = forward(self.model, self.x0)
        if not target_layer:
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise CircuitsError("the model's output is not a (batch, classes) tensor of "
                                    "logits; target a unit (--target LAYER:UNIT) instead")
            self.acts["__target__"] = logits.detach()
        for name in self.layers:
            act = as_map(self.acts[name], name)
            sae = self.saes.get(name)
            if sae is None:
                self.values[name] = (act, None)
                continue
            pre = self._pre(sae, act)
            mask = self._active(sae, pre)
            self.masks[name] = mask
            f = pre * mask
            err = act - self._decode(sae, f)
            self.values[name] = (f, err)

    def target_value(self, out: torch.Tensor) -> torch.Tensor:
        """The target per batch row, from the logits or the target layer's activation."""
        t = self.target
        if t.layer is None:
            return out[:, t.index]
        ch = as_map(out, t.layer)[:, t.index]
        if t.position is not None:
            return ch[:, t.position[0], t.position[1]]
        return ch.flatten(1).mean(1)

    def run(self, batch: int, *, values: dict | None = None, input_value=None,
            input_grad: bool = False, stop: str | None = None, grad: bool = True,
            edits: dict | None = None, rows: bool = False):
        """One pass of the replacement model on ``batch`` copies.

        ``values`` overrides leaves: ``{layer: (node values, error)}`` with batch 1 or
        ``batch``. With ``edits`` (``{layer: fn(node map) -> node map}``) the leaves are not
        cut: each layer carries what the earlier ones computed (an SAE layer's error stays as
        recorded), edited where named — the replacement model run forward, for interventions.
        Returns (precut, leaves, target, input leaf): ``precut[layer]`` is the node map the
        earlier leaves computed (features for an SAE layer), ``leaves[layer]`` the (nodes,
        error) tensors that the rest of the pass read.

        With ``rows`` (the rows' backward passes) an SAE layer's ``precut`` is its raw map, not
        its features: :func:`attribute` seeds a feature's row through its encoder column
        (:meth:`LayerNodes.seed_raw`), so the encoder is never run on the copies, forward or
        backward."""
        values = values or {}
        x = self.x0 if input_value is None else input_value
        if input_grad:
            x = x.expand(batch, *x.shape[1:]).clone().requires_grad_(grad)
        precut: dict[str, torch.Tensor] = {}
        leaves: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        captured: dict[str, torch.Tensor] = {}

        def cut(name):
            sae = self.saes.get(name)

            def fn(raw, _hook):
                out = as_map(raw, name)
                if sae is None or rows:
                    precut[name] = out
                else:
                    precut[name] = self._pre(sae, out) * self.masks[name]
                v, e = values.get(name, self.values[name])
                if edits is not None:
                    v = precut[name]
                    if name in edits:
                        v = edits[name](v)
                node = v.expand(batch, *v.shape[1:]).clone().requires_grad_(grad)
                err = None
                if e is not None:
                    err = e.expand(batch, *e.shape[1:]).clone().requires_grad_(grad)
                leaves[name] = (node, err)
                if sae is None:
                    return from_map(node, raw)
                return from_map(self._decode(sae, node) + err, raw)
            return fn

        def grab(out, _hook):
            captured["t"] = out

        points = [(name, cut(name)) for name in self.layers]
        stop_at = stop
        if self.target.layer and stop is None:
            points.append((self.target.layer, grab))
            stop_at = self.target.layer
        with torch.set_grad_enabled(grad), replay(self.frozen), \
                hooks(self.model, points, stop_at=stop_at):
            out = forward(self.model, x)
        t = None
        if stop is None:
            t = self.target_value(captured["t"] if self.target.layer else out)
        return precut, leaves, t, (x if input_grad else None)


# ---------------------------------------------------------------------------------------------
# Attribution


def _nodes(runner: _Runner, merged: bool) -> list[LayerNodes]:
    out = []
    for name in runner.layers:
        v, e = runner.values[name]
        v0 = v[0]
        err = None if e is None else e[0].detach()
        if merged:
            units = (v0 != 0).flatten(1).any(1).nonzero().flatten()
            out.append(LayerNodes(name=name, shape=tuple(v0.shape), units=units, ys=None,
                                  xs=None, values=v0.mean((-2, -1))[units].float().cpu(),
                                  sae=runner.saes.get(name), error=err, merged=True))
            continue
        nz = (v0 != 0).nonzero(as_tuple=True)
        out.append(LayerNodes(name=name, shape=tuple(v0.shape), units=nz[0], ys=nz[1], xs=nz[2],
                              values=v0[nz].detach().float().cpu(),
                              sae=runner.saes.get(name), error=err))
    return out


def _patches(x_grad_x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) contributions summed per patch -> (B, gh * gw)."""
    b, _, h, w = x_grad_x.shape
    gh, gw = grid
    s = x_grad_x.sum(1)
    ys = (torch.arange(h, device=s.device) * gh) // h
    xs = (torch.arange(w, device=s.device) * gw) // w
    cell = (ys[:, None] * gw + xs[None, :]).flatten()
    out = torch.zeros(b, gh * gw, dtype=s.dtype, device=s.device)
    return out.index_add_(1, cell, s.flatten(1))


def attribute(model: LoadedModel, image01: torch.Tensor, target: Target, layers: list[str], *,
              saes: dict | None = None, max_nodes: int = 200, batch_size: int = 32,
              patch: int = 16, update_interval: int = 1, merge: bool = False) -> Attribution:
    """The attribution graph's rows for one image (``image01``: (1, 3, H, W) in [0, 1]).

    Expands up to ``max_nodes`` nodes in order of influence on the target (recomputed every
    ``update_interval`` batches), ``batch_size`` nodes per backward pass. ``patch`` is the input
    patch side in pixels. ``merge`` makes each node a unit over all its positions (a
    position-free graph, as for a class)."""
    saes = dict(saes or {})
    if image01.dim() != 4 or image01.shape[0] != 1:
        raise CircuitsError("attribute takes one image, (1, 3, H, W)")
    t0 = time.perf_counter()
    model.module.eval()
    runner = _Runner(model, image01, layers, target, saes)
    # A token layer read as its patch tokens leaves its class token uncut when the graph does
    # not hold its "/cls" view too: paths through it reach the input around the cuts, so every
    # row then takes the input's gradient as well (exact, at the cost of the full pass).
    leaky = any(getattr(model.layers.get(n), "tokens", None) is not None
                and model.layers[n].tokens[0] == "patches" and f"{n}/cls" not in layers
                for n in layers)
    lnodes = _nodes(runner, merge)
    h, w = runner.x0.shape[-2:]
    grid = (max(1, -(-h // patch)), max(1, -(-w // patch)))
    att = Attribution(model=model, target=target, layers=lnodes, patch_grid=grid,
                      image_size=(int(h), int(w)), rows=torch.zeros(0), row_nodes=torch.zeros(0),
                      bias=torch.zeros(0), value=torch.zeros(0), frozen=[], unfrozen=[])
    n = att.n_nodes
    offsets = att.offsets()
    dtype = torch.float32
    t_record = time.perf_counter() - t0

    # node values, and biases from one pass with every source at zero
    value = torch.zeros(n, dtype=dtype)
    bias = torch.zeros(n, dtype=dtype)
    zero_values = {name: (torch.zeros_like(v), None if e is None else torch.zeros_like(e))
                   for name, (v, e) in runner.values.items()}
    with torch.no_grad():
        precut0, _, t_zero, _ = runner.run(1, values=zero_values,
                                           input_value=torch.zeros_like(runner.x0), grad=False)
        for ln, (a, e, end) in zip(lnodes, offsets, strict=True):
            value[a:e] = ln.values
            if ln.error is not None:
                err = ln.error.sum(0)
                value[e:end] = (err.sum() if ln.merged else err.flatten()).float().cpu()
            bias[a:e] = ln.read(precut0[ln.name])[0].float().cpu()
        full = runner.run(1, grad=False)[2]
    value[-1] = float(full[0])
    bias[-1] = float(t_zero[0])
    # an input patch's value: the sum of its (preprocessed) pixels
    x_sum = _patches(runner.x0, grid)[0].float().cpu()
    value[:att.n_inputs] = x_sum

    layer_of = {ln.name: li for li, ln in enumerate(lnodes)}
    rows_list: list[torch.Tensor] = []
    row_nodes: list[int] = []
    n_backward = 0

    def compute_rows(nodes: list[int]) -> torch.Tensor:
        nonlocal n_backward
        b = len(nodes)
        kinds = [att.kind_of(i) for i in nodes]
        is_target = [k[0] == "target" for k in kinds]
        first = leaky or any(k[0] == "node" and k[1] == 0 for k in kinds)
        deepest = None if any(is_target) else lnodes[max(k[1] for k in kinds)].name
        precut, leaves, tval, xleaf = runner.run(b, input_grad=first, stop=deepest, rows=True)
        outs, grads = [], []
        for li, ln in enumerate(lnodes):
            sel = [r for r, k in enumerate(kinds) if k[0] == "node" and k[1] == li]
            if not sel:
                continue
            g = torch.zeros_like(precut[ln.name])
            for r in sel:
                if ln.sae is None:
                    ln.seed(g, r, kinds[r][2])
                else:  # precut is the raw map: seed it with the feature's encoder column
                    ln.seed_raw(g, r, kinds[r][2], runner.masks[ln.name][0])
            outs.append(precut[ln.name])
            grads.append(g)
        if any(is_target):
            g = torch.tensor([1.0 if t else 0.0 for t in is_target], dtype=tval.dtype)
            outs.append(tval)
            grads.append(g)
        inputs, where = [], []
        if xleaf is not None:
            inputs.append(xleaf)
            where.append(("input", None))
        for name, (node, err) in leaves.items():
            inputs.append(node)
            where.append(("node", name))
            if err is not None:
                inputs.append(err)
                where.append(("error", name))
        got = torch.autograd.grad(outs, inputs, grad_outputs=grads, allow_unused=True)
        n_backward += 1
        rows = torch.zeros(b, n, dtype=dtype)
        for (kind, name), gr in zip(where, got, strict=True):
            if gr is None:
                continue
            if kind == "input":
                rows[:, :att.n_inputs] = _patches(gr * runner.x0, grid).float().cpu()
                continue
            li = layer_of[name]
            ln = lnodes[li]
            a, e, end = offsets[li]
            if kind == "node":
                v = runner.values[name][0]
                rows[:, a:e] = ln.contributions(gr, v).float().cpu()
            else:
                rows[:, e:end] = ln.error_contributions(gr).float().cpu()
        return rows

    t1 = time.perf_counter()
    rows_list.append(compute_rows([att.target_index]))
    row_nodes.append(att.target_index)
    expandable = att.expandable()
    visited = torch.zeros(n, dtype=torch.bool)
    budget = min(max_nodes, int(expandable.sum()))
    n_done = 0
    while n_done < budget:
        matrix = torch.cat(rows_list)
        infl = partial_influence(matrix, torch.tensor(row_nodes), n)
        infl[~expandable | visited] = -1.0
        order = torch.argsort(infl, descending=True)
        want = min(update_interval * batch_size, budget - n_done)
        queue = [int(i) for i in order[:want] if infl[i] >= 0]
        if not queue:
            break
        for s in range(0, len(queue), batch_size):
            chunk = queue[s:s + batch_size]
            rows_list.append(compute_rows(chunk))
            row_nodes.extend(chunk)
            visited[chunk] = True
            n_done += len(chunk)
    t_rows = time.perf_counter() - t1
    att.rows = torch.cat(rows_list)
    att.row_nodes = torch.tensor(row_nodes)
    att.bias, att.value = bias, value
    att.frozen = runner.frozen.kinds() + (["sae"] if saes else [])
    att.unfrozen = sorted(runner.frozen.unfrozen)
    att.n_backward = n_backward
    att.timings = {"record_s": round(t_record, 3), "rows_s": round(t_rows, 3),
                   "rows": len(row_nodes), "backward_passes": n_backward,
                   "batch_size": batch_size}
    att.runner = runner  # interventions reuse the recorded state
    return att


def normalize(matrix: torch.Tensor) -> torch.Tensor:
    """|edges| with each row scaled to sum to 1 (circuit-tracer's ``normalize_matrix``)."""
    m = matrix.abs()
    return m / m.sum(dim=1, keepdim=True).clamp(min=1e-10)


def partial_influence(rows: torch.Tensor, row_nodes: torch.Tensor, n: int,
                      max_iter: int = 256) -> torch.Tensor:
    """Influence of every node on the target (row 0's node) through all paths, from the rows
    computed so far: ``w A + w A² + ...`` with row-normalised |A| (circuit-tracer's
    ``compute_partial_influences``)."""
    norm = normalize(rows)
    pos = torch.full((n,), -1, dtype=torch.long)
    pos[row_nodes] = torch.arange(len(row_nodes))
    influence = torch.zeros(n)
    prod = torch.zeros(n)
    prod[row_nodes[0]] = 1.0
    for _ in range(max_iter):
        have = pos >= 0
        weights = prod[have]
        if not bool(weights.any()):
            break
        prod = weights @ norm[pos[have]]
        influence += prod
    return influence
