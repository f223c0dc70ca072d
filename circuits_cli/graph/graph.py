"""The attribution graph as data: nodes, the adjacency matrix, pruning and scores.

Pruning and scores follow circuit-tracer (``graph.py``): edges are row-normalised by absolute
value; a node's influence on the target is its weight through all paths (``w A + w A² + ...``);
pruning keeps the smallest set of nodes whose cumulative influence reaches ``node_threshold``,
then the edges whose cumulative score reaches ``edge_threshold``, and drops nodes left without an
outgoing edge. The **replacement score** is the share of
the target's influence that reaches it from the input rather than from error nodes; the
**completeness score** is the influence-weighted share of each node's input that does not come
from error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attribution import Attribution, normalize

FORMAT = "circuits-graph/1"


@dataclass
class Graph:
    """An attribution graph: ``nodes`` (dicts in graph.json's node schema, with ``feature_type``
    in input_patch / neuron / sae_feature / error / logit / unit), ``adjacency[t, s]`` = the edge
    from node s to node t, and ``metadata``, ``scores``, ``interventions``."""

    nodes: list[dict]
    adjacency: torch.Tensor
    metadata: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    interventions: list[dict] = field(default_factory=list)
    attribution: Attribution | None = field(default=None, repr=False)

    # node groups -------------------------------------------------------------------------
    def _mask(self, *types: str) -> torch.Tensor:
        return torch.tensor([n["feature_type"] in types for n in self.nodes], dtype=torch.bool)

    @property
    def is_target(self) -> torch.Tensor:
        return self._mask("logit", "unit")

    @property
    def is_input(self) -> torch.Tensor:
        return self._mask("input_patch")

    @property
    def is_error(self) -> torch.Tensor:
        return self._mask("error")

    @property
    def is_feature(self) -> torch.Tensor:
        return self._mask("neuron", "sae_feature")

    def index(self, node_id: str) -> int:
        for i, n in enumerate(self.nodes):
            if n["node_id"] == node_id:
                return i
        raise KeyError(node_id)

    def target_weights(self) -> torch.Tensor:
        return self.is_target.to(torch.float32)

    # influence, scores, pruning ----------------------------------------------------------
    def influence(self) -> torch.Tensor:
        """Each node's influence on the target through all paths (row-normalised |A|)."""
        return influence(normalize(self.adjacency), self.target_weights())

    def compute_scores(self) -> dict:
        a = normalize(self.adjacency)
        w = self.target_weights()
        infl = influence(a, w)
        err, inp = self.is_error, self.is_input
        token, error = float(infl[inp].sum()), float(infl[err].sum())
        # without error nodes (neurons, no dictionary) nothing is replaced: the score is 1
        replacement = token / (token + error) if error > 0 else 1.0
        non_error = 1 - a[:, err].sum(dim=1)
        out_infl = infl + w
        completeness = float((non_error * out_infl).sum() / out_infl.sum())
        # the share of each expanded node's |input| carried by nodes of the graph (the rest
        # comes from units that were not expanded), weighted by influence
        total = torch.tensor([n.get("input_abs", 0.0) for n in self.nodes])
        kept = self.adjacency.abs().sum(1)
        has = total > 0
        share = torch.ones(len(self.nodes))
        share[has] = (kept[has] / total[has]).clamp(max=1.0)
        covered = float((share * out_infl).sum() / out_infl.sum())
        return {"replacement": replacement, "completeness": completeness,
                "input_coverage": covered}

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(node mask, edge mask, cumulative influence) as circuit-tracer's ``prune_graph``:
        the input and the target are always kept."""
        if not (0.0 <= node_threshold <= 1.0 and 0.0 <= edge_threshold <= 1.0):
            raise ValueError("thresholds must be between 0 and 1")
        w = self.target_weights()
        node_infl = influence(normalize(self.adjacency), w)
        node_mask = node_infl >= find_threshold(node_infl, node_threshold)
        node_mask |= self.is_input | self.is_target
        pruned = self.adjacency.clone()
        pruned[~node_mask] = 0
        pruned[:, ~node_mask] = 0
        norm = normalize(pruned)
        edge_scores = norm * (influence(norm, w) + w)[:, None]
        edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)
        edge_mask &= pruned != 0
        # every kept node must reach the target through kept edges. (circuit-tracer also asks
        # a feature for an incoming edge, which its token embeddings give every feature through
        # the residual stream; in a network of cut layers only the first layer reads the input,
        # so the deepest expanded nodes stand as the graph's sources instead.)
        internal = ~(self.is_input | self.is_target)
        old = node_mask.clone()
        node_mask[internal] &= edge_mask[:, internal].any(0)
        while not torch.equal(node_mask, old):
            old = node_mask.clone()
            edge_mask[~node_mask] = False
            edge_mask[:, ~node_mask] = False
            node_mask[internal] &= edge_mask[:, internal].any(0)
        # inputs that feed nothing kept are not drawn
        node_mask[self.is_input] = edge_mask[:, self.is_input].any(0)
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        s, order = torch.sort(node_infl, descending=True)
        cum = torch.zeros_like(node_infl)
        total = s.sum()
        cum[order] = torch.cumsum(s, 0) / total if total > 0 else 0.0
        return node_mask, edge_mask, cum

    def pruned(self, node_threshold: float = 0.8, edge_threshold: float = 0.98,
               max_nodes: int | None = None) -> Graph:
        """A new graph with the pruned nodes and edges (and at most ``max_nodes`` units or
        features, the most influential), scores computed on this one kept."""
        node_mask, edge_mask, cum = self.prune(node_threshold, edge_threshold)
        infl = self.influence()
        if max_nodes is not None:
            feats = torch.nonzero(node_mask & self.is_feature).flatten()
            if len(feats) > max_nodes:
                drop = feats[torch.argsort(infl[feats], descending=True)[max_nodes:]]
                node_mask[drop] = False
                edge_mask[drop] = False
                edge_mask[:, drop] = False
        keep = torch.nonzero(node_mask).flatten()
        adj = torch.where(edge_mask, self.adjacency, torch.zeros_like(self.adjacency))
        adj = adj[keep][:, keep]
        nodes = []
        for i in keep.tolist():
            n = dict(self.nodes[i])
            n["influence"] = float(infl[i])
            n["cumulative_influence"] = float(cum[i])
            nodes.append(n)
        meta = dict(self.metadata, node_threshold=node_threshold, edge_threshold=edge_threshold)
        return Graph(nodes=nodes, adjacency=adj, metadata=meta, scores=dict(self.scores),
                     interventions=list(self.interventions), attribution=self.attribution)

    def intervene(self, *edits: str, frozen: bool = True) -> dict:
        """Set or scale nodes (``"mixed4a:37@3,5=0"``, ``"mixed4a:37*2"``: a unit at every
        position) and see the target move: in the replacement model (``frozen``, gates held,
        with every node's new value) or in the network (gates recomputed). Returns
        ``{"target": new value, "change": ..., "nodes": {node id: new value}}`` (``nodes`` for
        frozen interventions only). Needs the graph's attribution (a graph just built)."""
        from .interventions import intervene_free, intervene_frozen, parse_edit

        if self.attribution is None:
            raise ValueError("this graph was read from a file: interventions need the model; "
                             "build it again with build_graph")
        att = self.attribution
        parsed = [parse_edit(e, att) for e in edits]
        base = float(att.value[-1])
        if not frozen:
            value = intervene_free(att, parsed)
            return {"target": value, "change": value - base, "nodes": {}}
        value, maps = intervene_frozen(att, parsed)
        nodes = {}
        for n in self.nodes:
            if n["feature_type"] in ("neuron", "sae_feature") and n["ctx_idx"] is not None:
                y, x = n["ctx_idx"]
                nodes[n["node_id"]] = float(maps[n["layer"]][0, n["feature"], y, x])
        return {"target": value, "change": value - base, "nodes": nodes}

    def node_ids(self) -> list[str]:
        return [n["node_id"] for n in self.nodes]

    # the file ----------------------------------------------------------------------------
    def links(self) -> list[dict]:
        t, s = torch.nonzero(self.adjacency, as_tuple=True)
        ids = self.node_ids()
        return [{"source": ids[j], "target": ids[i], "weight": float(self.adjacency[i, j])}
                for i, j in zip(t.tolist(), s.tolist(), strict=True)]

    def to_json(self) -> dict:
        """graph.json's content (circuit-tracer's schema, image positions for token
        positions)."""
        infl = self.influence()
        nodes = []
        for i, n in enumerate(self.nodes):
            n = {k: v for k, v in n.items() if k != "input_abs"}
            n.setdefault("influence", float(infl[i]))
            nodes.append(n)
        return {"format": FORMAT, "metadata": self.metadata, "scores": self.scores,
                "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both"},
                "nodes": nodes, "links": self.links(), "interventions": self.interventions}

    @classmethod
    def from_json(cls, data: dict) -> Graph:
        nodes = data["nodes"]
        ids = {n["node_id"]: i for i, n in enumerate(nodes)}
        adj = torch.zeros(len(nodes), len(nodes))
        for link in data["links"]:
            adj[ids[link["target"]], ids[link["source"]]] = float(link["weight"])
        return cls(nodes=[dict(n) for n in nodes], adjacency=adj,
                   metadata=dict(data.get("metadata", {})), scores=dict(data.get("scores", {})),
                   interventions=list(data.get("interventions", [])))


def influence(norm: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``w A + w A² + ...`` for a normalised adjacency of a DAG (circuit-tracer's
    ``compute_influence``)."""
    current = weights @ norm
    total = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            break
        current = current @ norm
        total += current
    return total


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The score above which the kept scores add up to ``threshold`` of the total."""
    s = torch.sort(scores, descending=True).values
    total = s.sum()
    if total <= 0:
        return s[0] if len(s) else torch.tensor(0.0)
    cum = torch.cumsum(s, 0) / total
    i = min(int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype))), len(s) - 1)
    return s[i]
