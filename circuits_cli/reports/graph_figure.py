"""``graph.png``: an attribution graph (``circuits-graph/1``) as a static layered figure.

The image's patches sit at the bottom, the target at the top, one row per layer between them, in
forward order. A node sits at its position's x in the image (the centre of its receptive field),
spread sideways so that no two nodes or labels overlap. A node is drawn by its thumbnail when
one is given (a feature visualization or a dataset-example crop; an input patch is its crop of
the image), otherwise by a marker whose shape says what it is: circle = neuron, square = SAE
feature, grey diamond = error node (what the dictionary misses at that position).

Edges follow the project's convention: **red = excites, blue = inhibits**, line width
proportional to |weight| relative to the receiving node's strongest drawn input. A paper-size
figure cannot hold hundreds of nodes, so each layer shows its most influential nodes (pinned
nodes always) and the figure shows the strongest links between them; the caption states how
many of each are drawn, and the title the target and the graph's scores.

:func:`graph_figure` only draws (the caller saves, with :func:`circuits_cli.files.save_figure`);
:func:`load_graph_images` reads the image and thumbnails a graph folder holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import CircuitsError

FORMAT = "circuits-graph/1"
RED = "#c0392b"
BLUE = "#2166ac"
INK = "#202020"
MUTED = "#606060"
TYPE_NAMES = {"input_patch": "input patches", "neuron": "neurons", "sae_feature": "SAE features",
              "error": "error", "logit": "logit", "unit": "unit"}

# geometry, in inches (the axes are drawn 1:1 in inches, so thumbnails stay square)
# about 8 inches wide in all: a full-width figure of a paper (7 in) shrinks it little
NODE = 0.44  # thumbnail / marker box
SLOT = 0.8  # horizontal room of one node with its label
ROW = 1.3  # distance between layer rows
GRAPH_W = 6.6  # width of the graph area
MARGIN_L = 1.45  # row labels (and the image, at the input row)
LABEL_PT = 6.5


def check_graph(graph: Mapping) -> None:
    """A graph dict the writers can draw, or a :class:`CircuitsError` saying what is wrong."""
    if not isinstance(graph, Mapping) or graph.get("format") != FORMAT:
        got = graph.get("format") if isinstance(graph, Mapping) else type(graph).__name__
        raise CircuitsError(f"not an attribution graph: format is {got!r}, expected {FORMAT!r}")
    for key in ("metadata", "nodes", "links"):
        if key not in graph:
            raise CircuitsError(f"attribution graph without {key!r}")
    ids = {n["node_id"] for n in graph["nodes"]}
    for link in graph["links"]:
        for end in ("source", "target"):
            if link[end] not in ids:
                raise CircuitsError(f"attribution graph: link {end} {link[end]!r} is not a node")


def _as_rgb(image) -> np.ndarray | None:
    """An image (array of uint8 / float in [0, 1], or PIL) as float RGB in [0, 1]."""
    if image is None:
        return None
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0, 1)


def load_graph_images(graph: Mapping, folder: str | Path) -> tuple[np.ndarray | None, dict]:
    """The input image and the nodes' thumbnails (``metadata.image`` and each node's
    ``thumbnail``, paths relative to ``folder``) as arrays; unreadable files are left out."""
    from PIL import Image

    def read(rel):
        if not rel:
            return None
        try:
            with Image.open(Path(folder) / rel) as im:
                return _as_rgb(im)
        except OSError:
            return None

    image = read(graph.get("metadata", {}).get("image"))
    thumbs = {n["node_id"]: t for n in graph["nodes"]
              if (t := read(n.get("thumbnail"))) is not None}
    return image, thumbs


def _x_fraction(node: Mapping, image_w: float | None, grid_w: dict[str, int]) -> float:
    """Where the node sits across the image, 0 (left) .. 1 (right)."""
    box = node.get("box")
    if box and image_w:
        return float(np.clip((box[0] + box[2]) / 2 / image_w, 0, 1))
    ctx = node.get("ctx_idx")
    if ctx is not None:
        return (ctx[1] + 0.5) / max(grid_w.get(node["layer"], 1), 1)
    return 0.5


def spread(desired: list[float], lo: float, hi: float, gap: float) -> list[float]:
    """Positions as close to ``desired`` (sorted ascending) as possible, at least ``gap`` apart,
    inside [lo, hi]; evenly spaced when they cannot all fit."""
    n = len(desired)
    if n == 0:
        return []
    if (n - 1) * gap > hi - lo:
        return list(np.linspace(lo, hi, n)) if n > 1 else [(lo + hi) / 2]
    pos = [min(max(d, lo), hi) for d in desired]
    for i in range(1, n):
        pos[i] = max(pos[i], pos[i - 1] + gap)
    pos[-1] = min(pos[-1], hi)
    for i in range(n - 2, -1, -1):
        pos[i] = min(pos[i], pos[i + 1] - gap)
    return pos


def _short(text: str, n: int = 14) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _node_lines(node: Mapping) -> tuple[str, str | None]:
    """Two label lines: what the node is, and its human label when that says more."""
    ctx = node.get("ctx_idx")
    at = f"({ctx[0]},{ctx[1]})" if ctx is not None else ""
    kind = node["feature_type"]
    if kind == "input_patch":
        return f"patch {at}", None
    if kind == "error":
        return f"error {at}", None
    if node.get("is_target"):
        return _short(node.get("label") or "target", 40), f"{node['activation']:.3g}"
    first = f"#{node['feature']} {at}"
    label = (node.get("label") or "").strip()
    generic = {"", node["node_id"], f"{node['layer']}:{node['feature']}"}
    return first, None if label in generic else _short(label)


def _choose_nodes(graph: Mapping, per_layer: int) -> dict[int, list[dict]]:
    """Per layer index, the nodes drawn: the most influential ``per_layer`` plus pinned ones."""
    pinned = set(graph.get("qParams", {}).get("pinnedIds", []))
    rows: dict[int, list[dict]] = {}
    for node in graph["nodes"]:
        rows.setdefault(int(node["layer_index"]), []).append(node)
    chosen = {}
    for li, nodes in rows.items():
        ranked = sorted(nodes, key=lambda n: (-(n["node_id"] in pinned or n.get("is_target")),
                                              -abs(n.get("influence") or 0.0),
                                              -abs(n.get("activation") or 0.0), n["node_id"]))
        chosen[li] = ranked[:per_layer]
    return chosen


def _row_name(li: int, n_layers: int, layers: list, nodes: list[dict]) -> str:
    if li == 0:
        return "input"
    if li == n_layers + 1:
        return "target"
    return layers[li - 1] if li - 1 < len(layers) else nodes[0]["layer"]


def graph_figure(graph: Mapping, image=None, thumbnails: Mapping | None = None, *,
                 max_nodes_per_layer: int | None = None, max_edges: int = 70) -> Figure:
    """The layered figure of ``graph`` (see the module docstring). ``image``: the input at model
    resolution (array or PIL), drawn at the input row and cut into the input patches;
    ``thumbnails``: node id -> image array, drawn in place of a node's marker."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, FancyBboxPatch, Rectangle, RegularPolygon

    check_graph(graph)
    meta = graph["metadata"]
    thumbnails = dict(thumbnails or {})
    img = _as_rgb(image)
    layers = list(meta.get("layers", []))
    n_layers = len(layers)
    h_img, w_img = (meta.get("image_size") or (img.shape[:2] if img is not None else (0, 0)))
    fit = int(GRAPH_W // SLOT) + 1
    per_layer = min(max_nodes_per_layer or fit, fit)
    chosen = _choose_nodes(graph, per_layer)
    all_rows: dict[int, int] = {}
    for node in graph["nodes"]:
        all_rows[int(node["layer_index"])] = all_rows.get(int(node["layer_index"]), 0) + 1
    grid_w: dict[str, int] = {}
    for node in graph["nodes"]:
        if node.get("ctx_idx") is not None:
            grid_w[node["layer"]] = max(grid_w.get(node["layer"], 0), node["ctx_idx"][1] + 1)
    if meta.get("patch_grid"):
        grid_w["input"] = int(meta["patch_grid"][1])

    # positions (inches): x across the graph area, y = row
    pos: dict[str, tuple[float, float]] = {}
    row_indices = sorted(chosen)
    row_y = {li: i * ROW for i, li in enumerate(row_indices)}
    half = SLOT / 2
    for li in row_indices:
        nodes = sorted(chosen[li], key=lambda n: (_x_fraction(n, w_img, grid_w), n["node_id"]))
        desired = [half + _x_fraction(n, w_img, grid_w) * (GRAPH_W - SLOT) for n in nodes]
        for n, x in zip(nodes, spread(desired, half, GRAPH_W - half, SLOT),
                        strict=True):
            pos[n["node_id"]] = (x, row_y[li])
    drawn = {n["node_id"]: n for li in row_indices for n in chosen[li]}

    # links between drawn nodes, strongest relative to the receiving node's strongest input
    links = [lk for lk in graph["links"] if lk["source"] in drawn and lk["target"] in drawn]
    top_in: dict[str, float] = {}
    for lk in links:
        top_in[lk["target"]] = max(top_in.get(lk["target"], 0.0), abs(lk["weight"]))
    rel = {id(lk): abs(lk["weight"]) / (top_in[lk["target"]] or 1.0) for lk in links}
    shown = sorted(links, key=lambda lk: (-rel[id(lk)], lk["source"], lk["target"]))[:max_edges]

    width_in = MARGIN_L + GRAPH_W + 0.3
    top = (len(row_indices) - 1) * ROW + NODE / 2 + 1.35  # title, scores, legend
    bottom = -NODE / 2 - 1.05
    fig = Figure(figsize=(width_in, top - bottom), dpi=100)  # 1 data unit = 1 inch
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-MARGIN_L, GRAPH_W + 0.3)
    ax.set_ylim(bottom, top)
    ax.set_aspect("equal")
    ax.axis("off")

    # rows: faint band and the row's name with what is shown
    for li in row_indices:
        y = row_y[li]
        nodes = chosen[li]
        name = _row_name(li, n_layers, layers, nodes)
        kinds = sorted({TYPE_NAMES.get(n["feature_type"], n["feature_type"]) for n in nodes
                        if not n.get("is_target")} - {"input patches"},
                       key=lambda k: (k == "error", k))
        sub = f"{len(nodes)} of {all_rows[li]} nodes" if li not in (0, n_layers + 1) else ""
        if li == 0 and img is not None:
            iw = MARGIN_L - 0.4  # the image at its own aspect, at most a row high
            ih = min(iw * (h_img or img.shape[0]) / (w_img or img.shape[1]), ROW * 0.85)
            iw = ih * (w_img or img.shape[1]) / (h_img or img.shape[0])
            ix0 = -0.3 - iw
            ax.imshow(img, extent=(ix0, -0.3, y - ih / 2, y + ih / 2),
                      interpolation="lanczos", zorder=3, aspect="auto")
            ax.text(ix0 + iw / 2, y - ih / 2 - 0.05, "input image", ha="center",
                    va="top", fontsize=LABEL_PT + 0.5, color=INK, zorder=5)
            if w_img and h_img:  # the drawn patches, outlined on the image
                sx, sy = iw / w_img, ih / h_img
                for n in nodes:
                    if n.get("box"):
                        x0, y0, x1, y1 = n["box"]
                        ax.add_patch(Rectangle((ix0 + x0 * sx, y + ih / 2 - y1 * sy),
                                               (x1 - x0) * sx, (y1 - y0) * sy, fill=False,
                                               edgecolor="#ffd400", lw=0.8, zorder=4))
        else:
            ax.text(-0.2, y + 0.06, name, ha="right", va="bottom", fontsize=LABEL_PT + 2,
                    fontweight="bold", color=INK)
            detail = " · ".join(kinds)
            if sub:
                detail = f"{detail}\n{sub}" if detail else sub
            if detail:
                ax.text(-0.2, y - 0.02, detail, ha="right", va="top", fontsize=LABEL_PT,
                        color=MUTED)
        ax.plot([-0.1, GRAPH_W + 0.2], [y, y], color="#eeeeee", lw=0.6, zorder=0)

    # edges: into a node's label's foot, so that no line crosses a label
    below = {}
    for nid, node in drawn.items():
        first, second = _node_lines(node)
        below[nid] = 0.0 if node.get("is_target") else 0.07 + 0.135 * (1 if second is None else 2)
    for lk in shown:
        (x0, y0), (x1, y1) = pos[lk["source"]], pos[lk["target"]]
        if y1 < y0:  # drawn bottom-up always
            (x0, y0), (x1, y1) = (x1, y1), (x0, y0)
        r = rel[id(lk)]
        upper = lk["target"] if pos[lk["target"]][1] >= pos[lk["source"]][1] else lk["source"]
        line = Line2D([x0, x1], [y0 + NODE / 2, y1 - NODE / 2 - below[upper]],
                      color=RED if lk["weight"] > 0 else BLUE, lw=0.4 + 2.6 * r,
                      alpha=0.25 + 0.55 * r, solid_capstyle="round", zorder=1 + r)
        line.set_gid(f"edge:{lk['source']}->{lk['target']}")
        ax.add_line(line)

    # nodes
    pinned = set(graph.get("qParams", {}).get("pinnedIds", []))
    for nid, (x, y) in pos.items():
        node = drawn[nid]
        kind = node["feature_type"]
        thumb = thumbnails.get(nid)
        if thumb is None and kind == "input_patch" and img is not None and node.get("box"):
            x0, y0, x1, y1 = node["box"]
            sy_ = img.shape[0] / (h_img or img.shape[0])
            sx_ = img.shape[1] / (w_img or img.shape[1])
            crop = img[int(y0 * sy_): max(int(y1 * sy_), int(y0 * sy_) + 1),
                       int(x0 * sx_): max(int(x1 * sx_), int(x0 * sx_) + 1)]
            thumb = crop if crop.size else None
        edge = "#e6a100" if nid in pinned else "#303030"  # pinned: orange, thicker
        lw = 2.0 if nid in pinned else 0.8
        if node.get("is_target"):
            tw = max(1.3, 0.075 * len(_node_lines(node)[0]) + 0.3)
            art = FancyBboxPatch((x - tw / 2, y - NODE / 2), tw, NODE,
                                 boxstyle="round,pad=0.02,rounding_size=0.08",
                                 facecolor="#fff4d6", edgecolor=INK, lw=1.0, zorder=8)
        elif thumb is not None:
            art = ax.imshow(_as_rgb(thumb), extent=(x - NODE / 2, x + NODE / 2, y - NODE / 2,
                                                    y + NODE / 2),
                            interpolation="lanczos", zorder=8)
            ax.add_patch(Rectangle((x - NODE / 2, y - NODE / 2), NODE, NODE, fill=False,
                                   edgecolor=edge, lw=1.6 if nid in pinned else 0.7, zorder=9))
        elif kind == "error":
            art = RegularPolygon((x, y), 4, radius=NODE * 0.42, facecolor="#d0d0d0",
                                 edgecolor=edge, lw=lw, zorder=8)
        elif kind == "sae_feature":
            art = Rectangle((x - NODE * 0.3, y - NODE * 0.3), NODE * 0.6, NODE * 0.6,
                            facecolor="#f2e6c9", edgecolor=edge, lw=lw, zorder=8)
        else:
            art = Circle((x, y), NODE * 0.32, facecolor="#e8e8e8", edgecolor=edge, lw=lw,
                         zorder=8)
        art.set_gid(f"node:{nid}")
        if not hasattr(art, "get_array"):
            ax.add_patch(art)
        first, second = _node_lines(node)
        if node.get("is_target"):
            ax.text(x, y + 0.07, first, ha="center", va="center", fontsize=LABEL_PT + 1.5,
                    fontweight="bold", color=INK, zorder=10)
            ax.text(x, y - 0.12, f"value {second}", ha="center", va="center",
                    fontsize=LABEL_PT, color=MUTED, zorder=10)
            continue
        text = first if second is None else f"{first}\n{second}"
        ax.text(x, y - NODE / 2 - 0.04, text, ha="center", va="top", fontsize=LABEL_PT,
                color=INK, linespacing=1.1, zorder=10,
                bbox={"boxstyle": "square,pad=0.08", "facecolor": "white", "alpha": 0.8,
                      "edgecolor": "none"})

    # title, legend, caption
    target = meta.get("target", {})
    scores = graph.get("scores", {})

    def fmt(v):
        return "–" if v is None or not np.isfinite(v) else f"{v:.2f}"

    title = (f"{meta.get('image_name') or meta.get('image') or 'image'} → "
             f"{target.get('label') or 'target'} "
             f"({target.get('kind', '')}, {target.get('value', 0):.3g}) · {meta.get('model', '')}")
    score_line = (f"replacement {fmt(scores.get('replacement'))} · completeness "
                  f"{fmt(scores.get('completeness'))} · faithfulness "
                  f"{fmt(scores.get('faithfulness'))}"
                  + (f" ({scores['ablation']} ablation)" if scores.get("ablation") else ""))
    ax.text(-MARGIN_L + 0.1, top - 0.12, _short(title, int(width_in * 11)), ha="left",
            va="top", fontsize=10,
            fontweight="bold", color=INK)
    ax.text(-MARGIN_L + 0.1, top - 0.42, score_line, ha="left", va="top", fontsize=8.5,
            color=INK)
    handles = [Line2D([], [], color=RED, lw=2.5, label="excites"),
               Line2D([], [], color=BLUE, lw=2.5, label="inhibits")]
    present = {drawn[n]["feature_type"] for n in drawn}
    marker = {"neuron": ("o", "#e8e8e8", "neuron"), "sae_feature": ("s", "#f2e6c9", "SAE feature"),
              "error": ("D", "#d0d0d0", "error node (what the SAE misses)")}
    for kind, (m, c, name) in marker.items():
        if kind in present:
            handles.append(Line2D([], [], ls="none", marker=m, markersize=7, markerfacecolor=c,
                                  markeredgecolor="#303030", label=name))
    # one line under the scores, so that no title can run into it
    fig.legend(handles=handles, loc="upper left", fontsize=LABEL_PT + 0.5, frameon=False,
               ncol=len(handles), handlelength=1.6, columnspacing=1.4, borderaxespad=0,
               bbox_to_anchor=(0.1 / width_in, (top - 0.68 - bottom) / (top - bottom)))
    n_all, l_all = len(graph["nodes"]), len(graph["links"])
    caption = (f"Drawn: the {len(drawn)} most influential of {n_all} nodes (up to {per_layer} a "
               f"layer) and the {len(shown)} strongest of the {len(links)} links between them "
               f"({l_all} in the graph). Line width ∝ |weight| / the receiving node's strongest "
               f"drawn input; nodes sit at their receptive field's position across the image.")
    fig.text(0.01, 0.008, caption, ha="left", va="bottom", fontsize=LABEL_PT, color=MUTED,
             wrap=True)
    return fig
