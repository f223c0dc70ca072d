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
    """Write the graph's files into ``out``; node thumbnails (``crops``: node id -> uint8
    array) go to ``thumbs/`` and are named in each node's ``thumbnail``. Returns ``data``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .graph_figure import graph_figure
    from .graph_page import graph_page

    out = Path(out)
    image = (image01.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    write_bytes(out / "image.png", _png(image))
    data["metadata"]["image"] = "image.png"
    for node in data["nodes"]:
        crop = crops.get(node["node_id"])
        if crop is not None and node.get("thumbnail") is None:
            rel = f"{THUMBS}/{slug(node['node_id'])}.png"
            write_bytes(out / rel, _png(crop))
            node["thumbnail"] = rel
    write_json(out / "graph.json", data)
    fig = graph_figure(data, image, crops)
    save_figure(fig, out / "graph.png", dpi=200)
    plt.close(fig)
    write_text(out / "graph.html", graph_page(data))
    return data
