"""Circuit diagrams and weight figures, drawn as in the Circuits thread ("Zoom In").

Conventions (both figures): spatial weights are diverging heatmaps, **red = excitation, blue =
inhibition, white = 0**, each normalised by the target unit's largest |weight| (over all its
inputs), so that a full red square is the target's strongest weight. Units are shown by their
feature visualizations; a unit without a render is a grey square marked "no render".

- :func:`draw_circuit` (``circuit.png``): layers as columns, earliest at the left, the target at
  the right; each edge is a line from an input to the unit it feeds, coloured by sign, as wide
  as the input's strength relative to the unit's strongest input, with the spatial kernel drawn
  on it.
- :func:`draw_weights` (``weights.png``): one unit's strongest inputs, each with its feature
  visualization and its spatial kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..files import save_figure

RED = "#c0392b"
BLUE = "#2166ac"
CMAP = "RdBu_r"
INK = "#202020"
MUTED = "#606060"


def _load(path: str | None) -> np.ndarray | None:
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except OSError:
        return None


def _thumb(ax, image, x, y, size, label_lines=(), fontsize=10):
    """A feature-visualization thumbnail with its lower-left corner at (x, y), labels below."""
    from matplotlib.patches import Rectangle

    if image is not None:
        ax.imshow(image, extent=(x, x + size, y, y + size), interpolation="lanczos", zorder=3)
    else:
        ax.add_patch(Rectangle((x, y), size, size, facecolor="#e4e4e4", edgecolor="none",
                               zorder=3))
        ax.text(x + size / 2, y + size / 2, "no render", ha="center", va="center",
                fontsize=fontsize, color=MUTED, style="italic", zorder=4)
    ax.add_patch(Rectangle((x, y), size, size, fill=False, edgecolor="#303030", lw=0.8,
                           zorder=4))
    for i, (text, weight) in enumerate(label_lines):  # weight "italic": a measured label
        italic = weight == "italic"
        ax.text(x + size / 2, y - 0.06 - i * 0.2, text, ha="center", va="top",
                fontsize=fontsize - (1.5 if i else 0), fontweight="normal" if italic else weight,
                style="italic" if italic else "normal",
                color=INK if i == 0 or italic else MUTED, zorder=5)


def _heatmap(ax, kernel, x, y, size, vmax, zorder=6):
    """A spatial kernel as a diverging heatmap, square, lower-left corner at (x, y)."""
    from matplotlib.patches import Rectangle

    k = np.asarray(kernel, dtype=np.float64)
    vmax = float(vmax) if vmax and vmax > 0 else max(float(np.abs(k).max()), 1e-12)
    h, w = k.shape
    cell = size / max(h, w)
    width, height = w * cell, h * cell
    x0, y0 = x + (size - width) / 2, y + (size - height) / 2
    ax.add_patch(Rectangle((x0 - 0.03, y0 - 0.03), width + 0.06, height + 0.06, facecolor="white",
                           edgecolor="#404040", lw=0.7, zorder=zorder))
    ax.imshow(k, cmap=CMAP, vmin=-vmax, vmax=vmax, extent=(x0, x0 + width, y0, y0 + height),
              interpolation="nearest", zorder=zorder + 0.5)
    if 1 < max(h, w) <= 15:  # cell grid: shows the kernel's resolution, e.g. a uniform 3x3
        ax.vlines([x0 + i * cell for i in range(1, w)], y0, y0 + height, colors="#9a9a9a",
                  lw=0.35, alpha=0.7, zorder=zorder + 0.6)
        ax.hlines([y0 + i * cell for i in range(1, h)], x0, x0 + width, colors="#9a9a9a",
                  lw=0.35, alpha=0.7, zorder=zorder + 0.6)


def _colorbar(fig, rect, label):
    import matplotlib as mpl

    cax = fig.add_axes(rect)
    norm = mpl.colors.Normalize(-1, 1)
    cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=CMAP), cax=cax,
                      orientation="horizontal", ticks=[-1, -0.5, 0, 0.5, 1])
    cb.ax.set_xticklabels(["-1\ninhibits", "-0.5", "0", "0.5", "1\nexcites"], fontsize=9)
    cb.set_label(label, fontsize=9.5)
    return cb


def _columns(circuit) -> list[list[str]]:
    """Node ids per depth, ordered so that each unit's inputs sit together, strongest first."""
    by_depth: dict[int, list[str]] = {}
    placed: set[str] = set()
    by_depth[0] = [circuit.target]
    placed.add(circuit.target)
    depth = 0
    while True:
        nxt = []
        for node_id in by_depth[depth]:
            for edge in circuit.inputs(node_id):
                if edge.source not in placed and circuit.node(edge.source).depth == depth + 1:
                    placed.add(edge.source)
                    nxt.append(edge.source)
        if not nxt:
            break
        depth += 1
        by_depth[depth] = nxt
    return [by_depth[d] for d in range(depth + 1)]


def display_crop(kernels: Sequence[np.ndarray], vmax: float | None = None) -> tuple[slice, slice]:
    """The centred window that holds every non-zero weight of ``kernels`` (one target's inputs):
    a 1x1-branch unit read through a 3x3 pool shows 3x3, not the 11x11 of its layer. Centred, so
    positions keep their meaning; values below 1e-5 of ``vmax`` count as zero."""
    arrs = [np.abs(np.asarray(k, dtype=np.float64)) for k in kernels]
    if not arrs:
        return slice(None), slice(None)
    h, w = arrs[0].shape
    if h % 2 == 0 or w % 2 == 0 or any(a.shape != (h, w) for a in arrs):
        return slice(None), slice(None)
    top = max(float(vmax or 0), max(float(a.max()) for a in arrs))
    support = np.zeros((h, w), bool)
    for a in arrs:
        support |= a > 1e-5 * top
    if not support.any():
        return slice(None), slice(None)
    ys, xs = np.nonzero(support)
    cy, cx = h // 2, w // 2
    ry = int(np.abs(ys - cy).max())
    rx = int(np.abs(xs - cx).max())
    return slice(cy - ry, cy + ry + 1), slice(cx - rx, cx + rx + 1)


def _overlap(a, b) -> float:
    """Overlap area of two (x, y, w, h) boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def _branch_text(node) -> str:
    return f"{node.branch} branch" if node.branch else ""


STRENGTH_LEGEND = "width, label: strength (L2 norm) / unit's strongest input"


def _text_width(text: str, fontsize: float) -> float:
    """Width in inches of ``text`` in the default font at ``fontsize`` points."""
    from matplotlib.textpath import TextPath

    return TextPath((0, 0), text, size=fontsize).get_extents().width / 72


def draw_circuit(circuit, path: Path, images: Mapping[str, np.ndarray] | None = None,
                 title: str | None = None, dpi: int = 110) -> Path:
    """Draw ``circuit`` (a :class:`~circuits_cli.trace.Circuit`) to ``path`` (PNG)."""
    images = dict(images or {})
    columns = _columns(circuit)  # depth 0 (target) first
    n_cols = len(columns)
    tallest = max(len(c) for c in columns)
    # inches: thumbnail side, vertical room per node (smaller for very tall columns)
    thumb = max(0.95, 1.45 * min(1.0, 9 / tallest))
    slot = thumb + 0.7
    col_gap = 3.3 if n_cols > 1 else 0  # horizontal room for the edges and their heatmaps
    heat = 0.72                         # edge heatmap side
    margin_x, top, bottom = 0.5, 1.25, 1.45
    bottom += 0.15 * max(0, len(circuit.note) // 80)  # a long note wraps onto more lines
    width = max(2 * margin_x + n_cols * thumb + (n_cols - 1) * col_gap, 7.5)
    # the legend's last line must fit: widen the figure for it (it was cut at the right edge)
    bar_w = min(3.2, width * 0.34)
    legend_w = 0.5 + bar_w + 0.6 + 1.5 + _text_width(STRENGTH_LEGEND, 9) + 0.3
    width = max(width, legend_w)
    height = top + bottom + tallest * slot
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")

    x_left = (width - (n_cols * thumb + (n_cols - 1) * col_gap)) / 2
    pos: dict[str, tuple[float, float]] = {}  # node id -> lower-left corner of its thumbnail
    area_top = height - top
    for d, ids in enumerate(columns):
        x = x_left + (n_cols - 1 - d) * (thumb + col_gap)
        block = len(ids) * slot
        y_top = area_top - (tallest * slot - block) / 2
        for i, node_id in enumerate(ids):
            y = y_top - i * slot - thumb - 0.12
            pos[node_id] = (x, y)

    # column headers: layer, and the method of each hop
    layers = circuit.layers()
    for d, ids in enumerate(columns):
        x = x_left + (n_cols - 1 - d) * (thumb + col_gap) + thumb / 2
        layer = circuit.node(ids[0]).layer if ids else (layers[d] if d < len(layers) else "")
        ax.text(x, height - top + 0.32, layer, ha="center", va="bottom", fontsize=11,
                fontweight="bold", color=INK)
    for d, hop in enumerate(circuit.hops[:n_cols - 1]):
        x = x_left + (n_cols - 1 - d) * (thumb + col_gap) - col_gap / 2
        text = {"exact": "exact weights", "frozen": "attention frozen"}.get(
            hop.method, "linear approximation")
        ax.text(x, height - top + 0.32, text, ha="center", va="bottom", fontsize=9,
                color=MUTED, style="italic")

    # edges first (under the nodes), each with its kernel placed where it overlaps nothing
    taken = [(x - 0.1, y - 0.5, thumb + 0.2, thumb + 0.6) for x, y in pos.values()]
    crops = {node.id: display_crop([e.kernel_array() for e in circuit.inputs(node.id)],
                                   node.max_weight) for node in circuit.nodes}
    order = sorted(circuit.edges, key=lambda e: (circuit.node(e.target).depth, e.rank))
    for edge in order:
        if edge.source not in pos or edge.target not in pos:
            continue
        (sx, sy), (tx, ty) = pos[edge.source], pos[edge.target]
        x0, y0 = sx + thumb, sy + thumb / 2
        x1, y1 = tx, ty + thumb / 2
        colour = RED if edge.sign > 0 else BLUE
        lw = 1.0 + 6.0 * max(0.0, min(1.0, edge.relative))
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=lw, alpha=0.8,
                                    shrinkA=0, shrinkB=2, mutation_scale=10 + 2 * lw))
        best = None
        for t in (0.42, 0.3, 0.54, 0.2, 0.64, 0.12, 0.74):
            hx, hy = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            box = (hx - heat / 2 - 0.05, hy - heat / 2 - 0.3, heat + 0.1, heat + 0.35)
            overlap = sum(_overlap(box, other) for other in taken)
            if best is None or overlap < best[0] - 1e-9:
                best = (overlap, hx, hy, box)
            if overlap == 0:
                break
        _, hx, hy, box = best
        taken.append(box)
        vmax = circuit.node(edge.target).max_weight
        crop = crops[edge.target]
        _heatmap(ax, edge.kernel_array()[crop], hx - heat / 2, hy - heat / 2, heat, vmax)
        ax.text(hx, hy - heat / 2 - 0.06, f"{'+' if edge.sign > 0 else '−'}{edge.relative:.2f}",
                ha="center", va="top", fontsize=8, color=colour, zorder=7,
                bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none",
                          alpha=0.85))

    for node in circuit.nodes:
        if node.id not in pos:
            continue
        x, y = pos[node.id]
        image = images.get(node.id)
        if image is None:
            image = _load(node.render)
        lines = [(node.id, "bold")]
        if node.branch:
            lines.append((_branch_text(node), "normal"))
        if node.label:
            lines.append((node.label, "italic"))
        _thumb(ax, image, x, y, thumb, lines, fontsize=10 if len(node.layer) < 16 else 9)

    head = title or f"Circuit of {circuit.target}"
    sub = (f"{circuit.model} · expanded weights, {circuit.breadth()}, "
           f"{len(circuit.hops)} hop{'s' if len(circuit.hops) != 1 else ''}")
    if circuit.render_settings:
        sub += f" · feature visualizations: {circuit.render_settings['steps']} steps"
    ax.text(width / 2, height - 0.22, head, ha="center", va="top", fontsize=14,
            fontweight="bold", color=INK)
    ax.text(width / 2, height - 0.55, sub, ha="center", va="top", fontsize=9.5, color=MUTED)

    # legend: weight colour scale, line colour and width
    _colorbar(fig, (0.5 / width, (0.62 + bottom - 1.45) / height, bar_w / width, 0.16 / height),
              "weight / target unit's largest |weight|")
    lx = 0.5 + bar_w + 0.6
    ly = 0.98 + (bottom - 1.45)
    for dy, colour, text in ((0.0, RED, "excites (kernel sum > 0)"),
                             (-0.3, BLUE, "inhibits (kernel sum < 0)")):
        ax.plot([lx, lx + 0.5], [ly + dy, ly + dy], color=colour, lw=3, alpha=0.8)
        ax.text(lx + 0.6, ly + dy, text, va="center", fontsize=9, color=INK)
    ax.plot([lx, lx + 0.5], [ly - 0.6, ly - 0.6], color=MUTED, lw=1.0)
    ax.plot([lx + 0.9, lx + 1.4], [ly - 0.6, ly - 0.6], color=MUTED, lw=7.0)
    ax.text(lx + 1.5, ly - 0.6, STRENGTH_LEGEND, va="center", fontsize=9, color=INK)
    if circuit.note:
        # under the legend's lines, where it cannot run into them
        import textwrap

        ax.text(lx, ly - 0.75, "\n".join(textwrap.wrap(circuit.note, 80)), ha="left",
                va="top", fontsize=8, color=MUTED)
    return save_figure(fig, path, dpi)


def draw_weights(target, inputs: Sequence, path: Path, *, source_layer: str, method: str,
                 max_weight: float, images: Mapping[str, np.ndarray] | None = None,
                 model_name: str = "", columns: int = 4, dpi: int = 110) -> Path:
    """One unit's strongest inputs. ``target`` is the unit (``layer:channel``); ``inputs`` are
    :class:`~circuits_cli.connections.Connection` objects (strongest first) from
    ``source_layer``; ``images`` maps ``layer:channel`` to feature visualizations."""
    images = dict(images or {})
    n = len(inputs)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    thumb, gap = 1.45, 0.35
    cell_w, cell_h = thumb + gap, 2 * thumb + 0.95
    left = 0.5 + thumb + 1.0  # target column
    width = left + columns * cell_w + 0.3
    top, bottom = 1.0, 1.6
    height = top + bottom + rows * cell_h
    fig = Figure(figsize=(max(width, 7.0), height))
    width = max(width, 7.0)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.text(width / 2, height - 0.2, f"Strongest inputs of {target} from {source_layer}",
            ha="center", va="top", fontsize=14, fontweight="bold", color=INK)
    sub = (f"{model_name} · " if model_name else "") + (
        "exact expanded weights" if method == "exact" else "expanded weights, linear approximation")
    ax.text(width / 2, height - 0.52, sub + " · ranked by L2 norm of the spatial kernel",
            ha="center", va="top", fontsize=9.5, color=MUTED)

    crop = display_crop([c.kernel for c in inputs], max_weight)
    ty = height - top - thumb - 0.2
    _thumb(ax, images.get(str(target)), 0.5, ty, thumb,
           [(str(target), "bold"), ("target", "normal")])
    for i, conn in enumerate(inputs):
        r, c = divmod(i, columns)
        x = left + c * cell_w
        y_img = height - top - r * cell_h - thumb - 0.2
        unit_id = f"{source_layer}:{conn.channel}"
        colour = RED if conn.sign > 0 else BLUE
        _thumb(ax, images.get(unit_id), x, y_img, thumb, [])
        _heatmap(ax, np.asarray(conn.kernel)[crop], x, y_img - thumb - 0.12, thumb, max_weight)
        ax.text(x + thumb / 2, y_img - thumb - 0.2, unit_id, ha="center", va="top",
                fontsize=9.5 if len(unit_id) < 20 else 8.5, fontweight="bold", color=INK)
        ax.text(x + thumb / 2, y_img - thumb - 0.42,
                f"#{i + 1} {'excites' if conn.sign > 0 else 'inhibits'} · "
                f"{conn.strength:.3g}", ha="center", va="top", fontsize=8.5, color=colour)
    _colorbar(fig, (0.5 / width, 0.85 / height, min(3.2, width * 0.4) / width, 0.15 / height),
              f"weight / largest |weight| into {target} ({max_weight:.3g})")
    return save_figure(fig, path, dpi)
