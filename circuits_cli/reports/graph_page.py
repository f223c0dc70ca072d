"""``graph.html``: the interactive viewer of an attribution graph (``circuits-graph/1``).

One page from the Jinja2 template ``templates/graph.html``, with the graph's JSON embedded in it
and its own script (plain JavaScript and SVG, no library, nothing fetched), so it works opened
from ``file://`` with no server and no network. It sits beside ``graph.json``: the image, the
thumbnails, dataset-example sheets and atlas links in the graph are relative paths from there.

What a reader can do (the page's help line says the same):

- **read the layered graph**: input patches at the bottom (cut from the image), the target at
  the top, one row per layer, each node at its receptive field's position across the image; red
  links excite, blue inhibit, width proportional to |weight| relative to the receiving node's
  strongest input;
- **click a node**: a panel with its activation, influence and bias, its receptive field drawn on
  the image, its feature visualization and dataset examples, a link to its atlas page, its
  inputs and outputs sorted by |weight| (click one to go there), and what zeroing it does to the
  target when that was recorded; the node's own links are highlighted (inputs, outputs or both);
- **hover a link**: its source, target and weight;
- **pin nodes** (kept in ``qParams.pinnedIds`` and in the page's address, so a reload or a shared
  link keeps them), drawn highlighted and listed;
- **group nodes into a supernode** (shift-click to select, name it, group): the members collapse
  into one node whose links are the sums of theirs; ungroup from its panel
  (``qParams.supernodes``, circuit-tracer's ``[name, id, ...]`` lists);
- **interventions**: for the recorded nodes, the target's change when the node is zeroed,
  predicted by the frozen replacement model and measured in the real network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from markupsafe import Markup

from .graph_figure import check_graph

PAGE_TEMPLATE = "graph.html"
GRAPH_HTML = "graph.html"


def _finite(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _plain(value):
    """numpy scalars and arrays (a graph built in Python may hold them) as JSON values."""
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    raise TypeError(f"{type(value).__name__} in the graph is not JSON data")


def embedded_json(graph: Mapping) -> Markup:
    """The graph as JSON safe inside ``<script type="application/json">``: no ``</script>``
    (nor any ``<``) can end the element early."""
    text = json.dumps(_finite(graph), ensure_ascii=False, separators=(",", ":"),
                      default=_plain)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def graph_page(graph: Mapping) -> str:
    """The viewer page's HTML for ``graph`` (see the module docstring)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    check_graph(graph)
    meta = graph["metadata"]
    target = meta.get("target", {})
    scores = graph.get("scores", {})
    title = (f"{meta.get('image_name') or meta.get('image') or 'image'} → "
             f"{target.get('label') or 'target'} · {meta.get('model', '')}")
    score_rows = [("replacement", _fmt(scores.get("replacement"))),
                  ("completeness", _fmt(scores.get("completeness"))),
                  ("faithfulness", _fmt(scores.get("faithfulness"))
                   + (f" ({scores['ablation']} ablation)" if scores.get("ablation") else "")),
                  ("max residual", _fmt(scores.get("max_residual")))]
    env = Environment(loader=PackageLoader("circuits_cli.reports", "templates"),
                      autoescape=select_autoescape(["html"]))
    return env.get_template(PAGE_TEMPLATE).render(
        title=title, meta=meta, target=target, scores=score_rows, fmt=_fmt,
        n_nodes=len(graph["nodes"]), n_links=len(graph["links"]), data=embedded_json(graph))


def write_graph_page(folder: str | Path, graph: Mapping) -> Path:
    """``graph.html`` in ``folder`` (beside ``graph.json`` and the files it refers to)."""
    from ..files import write_text

    return write_text(Path(folder) / GRAPH_HTML, graph_page(graph))
