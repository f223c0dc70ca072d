"""Attribution graphs against ground truth: planted networks whose every edge is known, with and
without a planted SAE; exact completeness of the linear decomposition; pruning and scores on
hand-made graphs; interventions in the replacement model against the network."""

from __future__ import annotations

import pytest
import torch
from planted_nets import inception_net
from torch import nn

from circuits_cli.graph import Graph, Target, attribute, build_graph, intervene_frozen, to_graph
from circuits_cli.graph.interventions import NodeRef, intervene_free
from circuits_cli.sae.model import SAE
from circuits_cli.zoo.base import LoadedModel, discover_layers

# ---------------------------------------------------------------------------------------------
# A planted two-layer network: A = relu(conv3x3(x)), B = relu(W_AB · A + b) (1x1), logits from
# the mean of B. Every edge A -> B is W_AB[d, c] * A[c] at the same position, zero elsewhere.

W_AB = torch.tensor([[1.5, -2.0, 0.0, 0.5],
                     [0.0, 1.0, 3.0, 0.0],
                     [-1.0, 0.0, 0.0, 2.0]])
B_BIAS = torch.tensor([0.1, -0.2, 0.3])


class Planted(nn.Module):
    def __init__(self, pool: str = "none", lrn: bool = False, act=nn.ReLU):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv_a.weight.copy_(torch.randn(4, 3, 3, 3, generator=g) * 0.5)
            self.conv_a.bias.copy_(torch.tensor([0.2, 0.1, -0.1, 0.3]))
        self.relu_a = act()
        self.pool = {"max": nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
                     "none": nn.Identity()}[pool]
        self.norm = nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0) if lrn else nn.Identity()
        self.conv_b = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            self.conv_b.weight.copy_(W_AB[:, :, None, None])
            self.conv_b.bias.copy_(B_BIAS)
        self.relu_b = nn.ReLU()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        a = self.norm(self.pool(self.relu_a(self.conv_a(x))))
        b = self.relu_b(self.conv_b(a))
        return self.fc(b.mean((2, 3)))


def _model(pool="none", lrn=False, act=nn.ReLU) -> LoadedModel:
    net = Planted(pool, lrn, act).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    paths = {"A": "norm" if lrn else ("pool" if pool != "none" else "relu_a"), "B": "relu_b"}
    found = discover_layers(net, 12, lambda path, _m: path in paths.values())
    layers = {n: type(found[p])(name=n, module=p, channels=found[p].channels,
                                shape=found[p].shape) for n, p in paths.items()}
    return LoadedModel(name="planted-graph", module=net, layers=layers, preprocess=lambda x: x,
                       input_size=12, labels=["yes", "no"], weights_id="planted")


def _image(seed=1, side=12):
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _activations(model, x):
    net = model.module
    a = net.norm(net.pool(net.relu_a(net.conv_a(x))))
    return a, net.relu_b(net.conv_b(a))


def _edge_matrix(att):
    """Dense (rows, columns) of the attribution with node tables."""
    return att.rows, att.row_nodes.tolist()


def test_every_edge_is_the_planted_weight_times_the_activation():
    model = _model()
    x = _image()
    att = attribute(model, x, Target("logit", 0), ["A", "B"], max_nodes=10_000, batch_size=7)
    a, b = _activations(model, x)
    la, lb = att.layers
    (a_off, _, _), (b_off, _, _) = att.offsets()
    rows = {int(n): r for n, r in zip(att.row_nodes, att.rows, strict=True)}
    checked = negative = 0
    for j in range(lb.n):  # every active B node was expanded
        d, y, xx = int(lb.units[j]), int(lb.ys[j]), int(lb.xs[j])
        row = rows[b_off + j]
        for i in range(la.n):
            c, ya, xa = int(la.units[i]), int(la.ys[i]), int(la.xs[i])
            want = float(W_AB[d, c] * a[0, c, ya, xa]) if (ya, xa) == (y, xx) else 0.0
            assert abs(float(row[a_off + i]) - want) < 1e-5
            checked += 1
            negative += want < 0
        # completeness of the linear decomposition: incoming edges + bias = activation
        assert abs(float(row.sum() + att.bias[b_off + j]) - float(b[0, d, y, xx])) < 1e-5
        assert abs(float(att.bias[b_off + j]) - float(B_BIAS[d])) < 1e-6
    assert checked > 100 and negative > 10  # inhibitory paths come out negative


@pytest.mark.parametrize("pool,lrn,act", [
    ("max", False, nn.ReLU), ("none", True, nn.ReLU), ("max", True, nn.ReLU),
    ("none", False, lambda: nn.LeakyReLU(0.1, inplace=True)), ("max", False, nn.GELU)])
def test_completeness_is_exact_through_max_pools_and_lrn(pool, lrn, act):
    """Frozen max-pool selections, LRN denominators and activation gates (an in-place leaky
    ReLU, GELU as f(x)/x): each node's edges plus its bias (from an independent pass of the
    replacement model with every source at zero) equal its activation, and the frozen map's
    value equals the network's."""
    model = _model(pool, lrn, act)
    x = _image(2, 13)
    att = attribute(model, x, Target("logit", 1), ["A", "B"], max_nodes=10_000, batch_size=16)
    logits = model.module(x)[0]
    assert abs(float(att.value[-1]) - float(logits[1])) < 1e-5
    for n, r in zip(att.row_nodes.tolist(), att.rows, strict=True):
        assert abs(float(r.sum() + att.bias[n] - att.value[n])) < 1e-5
    assert ("lrn" in att.frozen) == lrn and ("maxpool" in att.frozen) == (pool == "max")
    assert ("smooth" in att.frozen) == (act is nn.GELU)


def test_inception_blocks_are_exact_too():
    model = inception_net(seed=3)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    att = attribute(model, x, Target("logit", 4), ["pool1", "mixed_a", "mixed_b"],
                    max_nodes=300, batch_size=64)
    assert len(att.row_nodes) == 301
    res = [abs(float(r.sum() + att.bias[n] - att.value[n]))
           for n, r in zip(att.row_nodes.tolist(), att.rows, strict=True)]
    assert max(res) < 1e-4
    # a target unit instead of a logit, at one position
    att = attribute(model, x, Target("unit", 11, "mixed_b", (3, 4)), ["pool1", "mixed_a"],
                    max_nodes=50)
    assert abs(float(att.rows[0].sum() + att.bias[-1] - att.value[-1])) < 1e-5


def test_batched_rows_equal_one_backward_pass_per_node():
    model = inception_net(seed=1)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    one = attribute(model, x, Target("logit", 2), ["mixed_a", "mixed_b"], max_nodes=40,
                    batch_size=1, update_interval=40)
    many = attribute(model, x, Target("logit", 2), ["mixed_a", "mixed_b"], max_nodes=40,
                     batch_size=20, update_interval=2)
    assert one.row_nodes.tolist() == many.row_nodes.tolist()
    assert torch.allclose(one.rows, many.rows, atol=1e-5)
    assert one.n_backward == 41 and many.n_backward == 3


# ---------------------------------------------------------------------------------------------
# A planted SAE on layer A: features with known decoder directions


def _planted_sae(arch="relu"):
    sae = SAE(4, 6, arch=arch, k=2 if arch == "topk" else None)
    dec = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0],
                        [0.6, 0.8, 0, 0], [0, 0, 0.8, 0.6]])
    with torch.no_grad():
        sae.W_dec.copy_(dec)
        sae.W_enc.copy_(dec.T)
        sae.b_enc.fill_(-0.05)
    return sae


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_sae_features_and_error_nodes(arch):
    model = _model()
    x = _image(3)
    sae = _planted_sae(arch)
    att = attribute(model, x, Target("logit", 0), ["A", "B"], saes={"A": sae},
                    max_nodes=10_000, batch_size=16)
    a, b = _activations(model, x)
    la, lb = att.layers
    a_off, e_off, _ = att.offsets()[0]
    b_off = att.offsets()[1][0]
    f = sae.encode_map(a)[0]
    err = a[0] - sae.forward_map(a)[0]
    assert la.n_errors == 12 * 12
    rows = {int(n): r for n, r in zip(att.row_nodes, att.rows, strict=True)}
    checked = 0
    for j in range(lb.n):
        d, y, xx = int(lb.units[j]), int(lb.ys[j]), int(lb.xs[j])
        row = rows[b_off + j]
        for i in range(la.n):
            k, ya, xa = int(la.units[i]), int(la.ys[i]), int(la.xs[i])
            want = 0.0
            if (ya, xa) == (y, xx):
                want = float(f[k, ya, xa].detach() * (W_AB[d] @ sae.W_dec[k].detach()))
            assert abs(float(row[a_off + i]) - want) < 1e-5
            checked += 1
        # the error node at the same position writes W_AB · err
        e_col = e_off + y * 12 + xx
        assert abs(float(row[e_col]) - float(W_AB[d] @ err[:, y, xx].detach())) < 1e-5
        assert abs(float(row.sum() + att.bias[b_off + j]) - float(b[0, d, y, xx])) < 1e-5
    assert checked > 50
    # feature nodes' own inputs: through the frozen encoder, exact as well
    for n, r in zip(att.row_nodes.tolist(), att.rows, strict=True):
        assert abs(float(r.sum() + att.bias[n] - att.value[n])) < 1e-5


# ---------------------------------------------------------------------------------------------
# Pruning and scores on a hand-made graph


def _hand_graph():
    #  in0 -> f1 (w 2) -> target (w 1);  in1 -> f2 (w 1) -> target (w 0.1); err -> target (w 0.3)
    types = ["input_patch", "input_patch", "neuron", "neuron", "error", "logit"]
    nodes = [{"node_id": f"n{i}", "feature_type": t} for i, t in enumerate(types)]
    adj = torch.zeros(6, 6)
    adj[2, 0], adj[3, 1] = 2.0, 1.0
    adj[5, 2], adj[5, 3], adj[5, 4] = 1.0, 0.1, 0.3
    return Graph(nodes=nodes, adjacency=adj)


def test_influence_scores_and_pruning_by_hand():
    g = _hand_graph()
    infl = g.influence()
    # target row normalised: f1 1/1.4, f2 0.1/1.4, err 0.3/1.4; f rows normalised to 1
    assert torch.allclose(infl, torch.tensor([1 / 1.4, 0.1 / 1.4, 1 / 1.4, 0.1 / 1.4,
                                              0.3 / 1.4, 0.0]), atol=1e-6)
    s = g.compute_scores()
    assert s["replacement"] == pytest.approx(1.1 / 1.4, abs=1e-6)  # input / (input + error)
    # completeness: only the target reads an error node (0.3/1.4 of its input)
    out = infl + torch.tensor([0, 0, 0, 0, 0, 1.0])
    assert s["completeness"] == pytest.approx(float((out.sum() - 0.3 / 1.4) / out.sum()),
                                              abs=1e-6)
    node_mask, edge_mask, _ = g.prune(node_threshold=0.6, edge_threshold=0.98)
    assert node_mask.tolist() == [True, False, True, False, False, True]
    assert bool(edge_mask[5, 2]) and bool(edge_mask[2, 0]) and not bool(edge_mask[5, 3])
    pruned = g.pruned(0.6, 0.98)
    assert pruned.node_ids() == ["n0", "n2", "n5"]
    back = Graph.from_json(pruned.to_json())
    assert torch.equal(back.adjacency, pruned.adjacency)


# ---------------------------------------------------------------------------------------------
# Interventions and faithfulness


def test_frozen_interventions_are_the_graphs_linear_prediction():
    """Zeroing a node in the replacement model changes the target by exactly the node's total
    effect through the frozen map: the sum over paths of edge products (here, one layer below
    the target, the edge itself); the real network agrees while no gate flips."""
    model = _model()
    x = _image(5)
    att = attribute(model, x, Target("logit", 0), ["A", "B"], max_nodes=10_000)
    lb = att.layers[1]
    b_off = att.offsets()[1][0]
    j = int(torch.argmax(lb.values))
    d, y, xx = int(lb.units[j]), int(lb.ys[j]), int(lb.xs[j])
    edge = float(att.rows[0][b_off + j])  # target row: B node -> logit
    ref = NodeRef("B", d, y, xx)
    frozen, maps = intervene_frozen(att, [(ref, "set", 0.0)])
    assert frozen - float(att.value[-1]) == pytest.approx(-edge, abs=1e-5)
    free = intervene_free(att, [(ref, "set", 0.0)])
    assert free == pytest.approx(frozen, abs=1e-5)  # B is the last layer: nothing to re-gate
    # a node of A moves the B nodes it feeds, by the planted weight
    la = att.layers[0]
    i = int(torch.argmax(la.values))
    c, ya, xa = int(la.units[i]), int(la.ys[i]), int(la.xs[i])
    _, maps = intervene_frozen(att, [(NodeRef("A", c, ya, xa), "scale", 2.0)])
    a, b = _activations(model, x)
    gate = (b[0, :, ya, xa] > 0).float()
    moved = maps["B"][0, :, ya, xa] - b[0, :, ya, xa]
    assert torch.allclose(moved, gate * W_AB[:, c] * a[0, c, ya, xa], atol=1e-5)
    # the same through the graph's own method, with string node names
    g = to_graph(att)
    res = g.intervene(f"A:{c}@{ya},{xa}*2")
    assert res["change"] == pytest.approx(float(intervene_frozen(
        att, [(NodeRef("A", c, ya, xa), "scale", 2.0)])[0] - att.value[-1]), abs=1e-6)
    for d in range(3):
        node = f"B:{d}@{ya},{xa}"
        if node in res["nodes"]:
            assert res["nodes"][node] == pytest.approx(float(maps["B"][0, d, ya, xa]), abs=1e-5)
    assert g.intervene("B:0=0", frozen=False)["change"] == pytest.approx(
        intervene_free(att, [(NodeRef("B", 0), "set", 0.0)]) - float(att.value[-1]), abs=1e-6)


def test_faithfulness_of_the_whole_and_the_empty_graph():
    from circuits_cli.graph.build import _keep_masks
    from circuits_cli.graph.interventions import faithfulness, reference_means

    model = _model()
    x = _image(6)
    full, pruned = build_graph(model, x, Target("logit", 0), ["A", "B"], max_nodes=10_000,
                               interventions=3)
    att = full.attribution
    zero = reference_means(att, None)
    # every node kept: the graph is the model
    whole = faithfulness(att, _keep_masks(att, full), zero)
    assert whole["faithfulness"] == pytest.approx(1.0, abs=1e-9)
    empty = Graph(nodes=[], adjacency=torch.zeros(0, 0))
    f = faithfulness(att, _keep_masks(att, empty), zero)
    assert f["faithfulness"] == pytest.approx(0.0, abs=1e-9)
    assert 0.5 < full.scores["faithfulness"] <= 1.0 + 1e-6  # the pruned graph's
    assert full.scores["max_residual"] < 1e-5
    assert len(pruned.interventions) == 3
    for rec in pruned.interventions:
        assert rec["predicted"] == pytest.approx(rec["actual"], abs=0.05 * abs(rec["actual"])
                                                 + 1e-4)
    data = pruned.to_json()
    assert data["format"] == "circuits-graph/1"
    assert {"metadata", "nodes", "links", "qParams", "scores"} <= set(data)
    assert to_graph(att).adjacency.shape[0] >= len(data["nodes"])


# ---------------------------------------------------------------------------------------------
# A small vision transformer: token layers, LayerNorm, GELU and nn.MultiheadAttention


class TinyViT(nn.Module):
    def __init__(self, d=8, heads=2):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.block1 = Block(d, heads)
        self.block2 = Block(d, heads)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        t = self.block2(self.block1(t))
        return self.head(self.norm(t)[:, 0])


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, t):
        h = self.ln1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(self.ln2(t))


def test_a_vision_transformer_is_exact_with_its_attention_patterns_held():
    net = TinyViT().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    from circuits_cli.zoo.base import LayerInfo

    layers = {n: LayerInfo(name=n, module=n, channels=8, kind="tokens")
              for n in ("block1", "block2")}
    model = LoadedModel(name="tiny-vit", module=net, layers=layers, preprocess=lambda x: x,
                        input_size=16, labels=["a", "b", "c"], weights_id="planted")
    x = _image(7, 16)
    att = attribute(model, x, Target("logit", 2), ["block1", "block2"], max_nodes=10_000,
                    batch_size=64)
    assert att.layers[0].shape == (8, 1, 17)  # 8 channels of the stream x 17 tokens
    assert abs(float(att.value[-1]) - float(net(x)[0, 2])) < 1e-5
    res = [abs(float(r.sum() + att.bias[n] - att.value[n]))
           for n, r in zip(att.row_nodes.tolist(), att.rows, strict=True)]
    assert max(res) < 1e-4
    assert "multi_head_attention_forward" not in att.unfrozen
    assert {"norm", "smooth", "constant"} <= set(att.frozen)
    # the frozen map is the replacement model: scaling a token's stream moves the logit by the
    # graph's total effect, and the network, re-normalising and re-attending, differently
    full = to_graph(att)
    frozen = full.intervene("block1:3@0,5*0")["change"]
    free = full.intervene("block1:3@0,5*0", frozen=False)["change"]
    assert frozen != pytest.approx(0.0, abs=1e-7) and free != pytest.approx(0.0, abs=1e-7)


def test_the_planted_copying_head_is_an_edge_at_the_right_tokens():
    """The planted ViT (tests/planted_vit.py): its head copies channel 0 of patch K into channel
    1 of patch Q with weight COPY. In the graph of an image, the edge from blocks.0 channel 0 at
    K into blocks.1 channel 1 at Q is COPY x the source's activation, from no other patch."""
    from planted_vit import COPY, KEY, QUERY

    from circuits_cli.zoo import load_model

    model = load_model(f"{__import__('planted_vit').__file__}:build")
    x = _image(8, 32)
    x[:, 0] = 1.0  # red everywhere: channel 0 (redness) is active at every patch
    layers = ["blocks.0", "blocks.0/cls", "blocks.1", "blocks.1/cls"]
    att = attribute(model, x, Target("unit", 1, "blocks.1", QUERY), layers[:2],
                    max_nodes=0)
    ln = att.layers[0]
    a = att.offsets()[0][0]
    row = att.rows[0]
    src = [(int(u), int(y), int(xx)) for u, y, xx in zip(ln.units, ln.ys, ln.xs, strict=True)]
    at_key = src.index((0, *KEY))
    assert float(row[a + at_key]) == pytest.approx(COPY * float(ln.values[at_key]), rel=1e-4)
    others = [float(row[a + i]) for i, (u, y, xx) in enumerate(src)
              if u == 0 and (y, xx) not in (KEY, QUERY)]
    assert max(abs(v) for v in others) < 1e-6
    assert abs(float(row.sum() + att.bias[-1] - att.value[-1])) < 1e-5


def test_the_planted_skip_connection_is_an_edge_with_its_planted_weight():
    """tests/planted_residual.py: block2:0 reads block1:0 through the skip connection alone
    (weight 1), and block1:0 reads stem:0 through the skip (1) and stem:2 through two convs
    (2 x 0.75). In the graph of an image, each edge is that weight x the source's activation
    at the same position, wherever the ReLUs pass (the gates the graph froze)."""
    from circuits_cli.zoo import load_model

    path = __import__("planted_residual").__file__
    model = load_model(f"{path}:residual")
    x = _image(9, 32)
    att = attribute(model, x, Target("unit", 0, "block2", (16, 16)), ["stem", "block1"],
                    max_nodes=4, batch_size=4)
    (s_off, _, _), (b_off, _, _) = att.offsets()
    stem, block1 = att.layers
    b1 = [(int(u), int(y), int(xx)) for u, y, xx in zip(block1.units, block1.ys, block1.xs,
                                                        strict=True)]
    j = b1.index((0, 16, 16))
    row = att.rows[0]
    assert float(row[b_off + j]) == pytest.approx(float(block1.values[j]), rel=1e-3)  # x 1
    rows = {int(n): r for n, r in zip(att.row_nodes, att.rows, strict=True)}
    r1 = rows[b_off + j]  # the most influential node: expanded first
    st = [(int(u), int(y), int(xx)) for u, y, xx in zip(stem.units, stem.ys, stem.xs,
                                                       strict=True)]
    for ch, weight in ((0, 1.0), (2, 1.5)):
        if (ch, 16, 16) in st:
            i = st.index((ch, 16, 16))
            assert float(r1[s_off + i]) == pytest.approx(weight * float(stem.values[i]),
                                                         rel=0.05)
    assert abs(float(r1.sum() + att.bias[b_off + j] - att.value[b_off + j])) < 1e-5
