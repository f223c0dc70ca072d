"""Writing an attribution graph to disk: graph.json, graph.png, graph.html and the pictures
they show (the image, one thumbnail per node). Nothing here computes the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import save_figure, slug, write_bytes, write_json, write_text

GRAPH_FILES = ("graph.json", "graph.png", "graph.html", "image.png")
THUMBS = "thumbs"


def _png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_graph(out: Path, data: dict, image01, crops: dict[str, np.ndarray]) -> dict:
    """Write the graph's files into ``out``; what each node sees of the image (``crops``: node
    id -> uint8 array) goes to ``thumbs/``, named in the node's ``crop``. Returns ``data``."""
    from .graph_figure import graph_figure
    from .graph_page import graph_page

    out = Path(out)
    image = (image01.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    write_bytes(out / "image.png", _png(image))
    data["metadata"]["image"] = "image.png"
    for node in data["nodes"]:
        crop = crops.get(node["node_id"])
        if crop is not None:
            rel = f"{THUMBS}/{slug(node['node_id'])}.png"
            write_bytes(out / rel, _png(crop))
            node["crop"] = rel
    write_json(out / "graph.json", data)
    fig = graph_figure(data, image, crops)
    save_figure(fig, out / "graph.png", dpi=200)  # a Figure of its own: no pyplot state
    write_text(out / "graph.html", graph_page(data))
    return data


def link_atlas(data: dict, atlas: Path, out: Path) -> int:
    """Point each neuron node of ``data`` at its page of the atlas in ``atlas`` (``atlas``) and
    its feature visualization there (``thumbnail``), where they exist, by paths relative to
    ``out``; returns how many nodes were linked."""
    import os

    linked = 0
    atlas, out = Path(atlas), Path(out)
    for node in data["nodes"]:
        if node["feature_type"] != "neuron":
            continue
        layer, ch = slug(node["layer"]), node["feature"]
        page = atlas / "units" / layer / f"{ch}.html"
        if page.is_file():
            node["atlas"] = os.path.relpath(page, out)
            linked += 1
        fv = atlas / "img" / layer / str(ch) / "fv.png"
        if fv.is_file():
            node["thumbnail"] = os.path.relpath(fv, out)
    return linked
