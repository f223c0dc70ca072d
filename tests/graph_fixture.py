"""A small synthetic attribution graph in the ``circuits-graph/1`` format, for the writers'
tests (``graph.png`` and the ``graph.html`` viewer), with the files a graph folder holds beside
``graph.json``: the input image, feature-visualization thumbnails, a dataset-examples sheet and
one atlas page.

The graph follows the schema exactly: input patches, three layers (``mixed3b`` neurons with an
error node, ``mixed4a`` SAE features with an error node, ``mixed4b`` neurons) and a logit target;
every node's incoming link weights plus its bias sum to its activation, as in a real graph. What
the tests look for is fixed here by name: :data:`INHIBITORY` (the one negative link into the car
unit), :data:`CAR_NODE` (the node with thumbnail, examples and an atlas page), :data:`SKIP` (a
link that skips a layer) and :data:`INTERVENTIONS`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SIZE = (128, 128)  # H, W
LAYERS = ["mixed3b", "mixed4a", "mixed4b"]
GRIDS = {"input": (4, 4), "mixed3b": (8, 8), "mixed4a": (4, 4), "mixed4b": (4, 4)}
RF = {"input": 32, "mixed3b": 40, "mixed4a": 72, "mixed4b": 104}  # receptive field, pixels

CAR_NODE = "mixed4b:64@1,2"
INHIBITORY = ("mixed4a:136@1,2", CAR_NODE, -0.75)  # (source, target, weight)
SKIP = ("mixed3b:5@2,4", CAR_NODE, 0.2)  # a residual-style link over mixed4a
ATLAS_PAGE = "atlas/units/mixed4b/64.html"
THUMBNAIL = "thumbnails/mixed4b_64.png"
EXAMPLES = "examples/mixed4b_64.png"
INTERVENTIONS = [  # node, predicted change of the target when zeroed, actual change
    (CAR_NODE, -3.25, -2.875),
    ("mixed4a:63@2,2", -1.5, -1.125),
    ("mixed4a:136@1,2", 0.625, 0.5),
]
TARGET_LABEL = "sports car"

# (layer, feature, (y, x), feature_type); errors have feature None
_NODES = {
    "input": [(None, (1, 1)), (None, (1, 2)), (None, (2, 1)), (None, (2, 2)), (None, (2, 3)),
              (None, (3, 2))],
    "mixed3b": [(5, (2, 4)), (5, (4, 4)), (17, (3, 3)), (17, (3, 5)), (88, (5, 2)),
                (88, (5, 5)), (203, (2, 2)), ("error", (3, 4))],
    "mixed4a": [(37, (1, 1)), (37, (1, 2)), (63, (2, 1)), (63, (2, 2)), (136, (1, 2)),
                (301, (2, 3)), ("error", (1, 2))],
    "mixed4b": [(64, (1, 2)), (64, (2, 2)), (10, (1, 1)), (402, (2, 1)), (77, (1, 3))],
}
_TYPE = {"mixed3b": "neuron", "mixed4a": "sae_feature", "mixed4b": "neuron"}
_LABELS = {("mixed4a", 37): "window (top of car)", ("mixed4a", 63): "wheel",
           ("mixed4a", 136): "inhibits car", ("mixed4b", 64): "car"}


def node_id(layer: str, feature, pos) -> str:
    y, x = pos
    if layer == "input":
        return f"input@{y},{x}"
    if feature == "error":
        return f"error:{layer}@{y},{x}"
    return f"{layer}:{feature}@{y},{x}"


def _box(layer: str, pos) -> list[int]:
    gh, gw = GRIDS[layer]
    h, w = IMAGE_SIZE
    cy, cx = (pos[0] + 0.5) * h / gh, (pos[1] + 0.5) * w / gw
    r = RF[layer] / 2
    return [int(max(0, cx - r)), int(max(0, cy - r)), int(min(w, cx + r)), int(min(h, cy + r))]


def _image() -> np.ndarray:
    """A car-ish scene: sky, road, a red body with two dark wheels (uint8, H x W x 3)."""
    h, w = IMAGE_SIZE
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (150, 190, 235)
    img[h // 2:] = (90, 90, 95)
    img[50:84, 20:108] = (200, 30, 30)  # body
    img[40:56, 40:88] = (170, 210, 240)  # windows
    yy, xx = np.mgrid[:h, :w]
    for cx in (40, 88):
        img[(yy - 86) ** 2 + (xx - cx) ** 2 < 12 ** 2] = (25, 25, 25)
    return img


def _write_files(folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_image()).save(folder / "image.png")
    rng = np.random.default_rng(1)
    for rel, size in ((THUMBNAIL, (48, 48)), (EXAMPLES, (48, 144))):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        pix = (rng.random(size + (3,)) * 255).astype(np.uint8)
        Image.fromarray(pix).save(folder / rel)
    page = folder / ATLAS_PAGE
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<!doctype html><title>mixed4b:64</title><h1>mixed4b:64</h1>"
                    "<p>car detector</p>\n")


def make_graph(folder: str | Path | None = None, seed: int = 0) -> dict:
    """The graph dict; with ``folder``, also the image, thumbnail, examples and atlas page it
    refers to, written there (graph.json itself is not written)."""
    if folder is not None:
        _write_files(Path(folder))
    rng = np.random.default_rng(seed)
    order = ["input", *LAYERS]
    nodes: list[dict] = []
    by_layer: dict[str, list[dict]] = {}
    for li, layer in enumerate(order):
        for feature, pos in _NODES[layer]:
            nid = node_id(layer, feature, pos)
            if layer == "input":
                ftype, feat = "input_patch", None
            elif feature == "error":
                ftype, feat = "error", None
            else:
                ftype, feat = _TYPE[layer], int(feature)
            label = (f"patch {pos[0]},{pos[1]}" if layer == "input" else
                     f"{layer} error" if ftype == "error" else
                     _LABELS.get((layer, feat), f"{layer}:{feat}"))
            node = {"node_id": nid, "feature": feat, "layer": layer, "layer_index": li,
                    "ctx_idx": [int(pos[0]), int(pos[1])], "feature_type": ftype,
                    "activation": 0.0, "influence": 0.0, "bias": 0.0, "label": label,
                    "box": _box(layer, pos), "thumbnail": None, "examples": None,
                    "atlas": None, "is_target": False}
            nodes.append(node)
            by_layer.setdefault(layer, []).append(node)
    car = next(n for n in nodes if n["node_id"] == CAR_NODE)
    car.update(thumbnail=THUMBNAIL, examples=EXAMPLES, atlas=ATLAS_PAGE)
    target = {"node_id": "target", "feature": 817, "layer": "target",
              "layer_index": len(LAYERS) + 1, "ctx_idx": None, "feature_type": "logit",
              "activation": 0.0, "influence": 1.0, "bias": 0.0,
              "label": f"logit: {TARGET_LABEL}", "box": None, "thumbnail": None,
              "examples": None, "atlas": None, "is_target": True}
    nodes.append(target)
    by_layer["target"] = [target]

    links: list[dict] = []
    fixed = {(INHIBITORY[0], INHIBITORY[1]): INHIBITORY[2], (SKIP[0], SKIP[1]): SKIP[2]}
    for lower, upper in zip(order, [*LAYERS, "target"], strict=True):
        for dst in by_layer[upper]:
            srcs = by_layer[lower]
            k = len(srcs) if upper == "target" else 3
            pick = rng.choice(len(srcs), size=min(k, len(srcs)), replace=False)
            for i in sorted(pick):
                src = srcs[i]["node_id"]
                if (src, dst["node_id"]) in fixed:
                    continue
                w = round(float(rng.uniform(0.05, 1.0)), 4)
                if upper != "target" and rng.random() < 0.2:
                    w = -w  # some inhibition everywhere, as in a real graph
                links.append({"source": src, "target": dst["node_id"], "weight": w})
    for (src, dst), w in fixed.items():
        links.append({"source": src, "target": dst, "weight": w})

    # activations and biases consistent with the links: activation = sum(incoming) + bias
    index = {n["node_id"]: n for n in nodes}
    for n in nodes:
        if n["layer"] == "input":
            n["activation"] = round(float(rng.uniform(0.5, 2.0)), 4)
    for layer in [*LAYERS, "target"]:
        for n in by_layer[layer]:
            n["bias"] = round(float(rng.uniform(-0.2, 0.2)), 4)
            n["activation"] = round(n["bias"] + sum(
                lk["weight"] for lk in links if lk["target"] == n["node_id"]), 6)
    # influence: falls with depth below the target, the car unit the most influential
    for n in nodes:
        if not n["is_target"]:
            n["influence"] = round(float(rng.uniform(0.02, 0.3)) * (n["layer_index"] + 1) / 5, 4)
    index[CAR_NODE]["influence"] = 0.9
    target["activation"] = round(target["activation"], 6)

    return {
        "format": "circuits-graph/1",
        "metadata": {
            "slug": "car-scene-sports-car", "scan": "toy", "model": "toy",
            "weights_id": "toy-fixture", "schema_version": 1, "image": "image.png",
            "image_name": "car_scene.png", "image_size": list(IMAGE_SIZE),
            "target": {"kind": "logit", "label": TARGET_LABEL, "index": 817, "layer": None,
                       "value": target["activation"]},
            "layers": list(LAYERS), "patch_grid": list(GRIDS["input"]),
            "node_threshold": 0.8, "edge_threshold": 0.98, "max_nodes": 50,
            "frozen": ["relu gates", "max-pool selections", "LRN denominators",
                       "SAE active set"],
            "approximations": [],
            "sae": {"mixed4a": "saes/mixed4a"},
        },
        "scores": {"replacement": 0.8125, "completeness": 0.9375, "faithfulness": 0.84,
                   "ablation": "mean", "max_residual": 3.1e-06},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both"},
        "nodes": nodes,
        "links": links,
        "interventions": [{"node_id": nid, "value": 0.0, "predicted": p, "actual": a}
                          for nid, p, a in INTERVENTIONS],
    }
