"""A polysemantic neuron made visible: the neuron beside the SAE features that write into it.

Bricken et al. (2023) show a polysemantic neuron as the sum of several monosemantic dictionary
features. :func:`polysemantic_neuron` puts that picture on one page for a neuron of a layer with
an SAE: on top the neuron itself (its diversity facets, as ``visualize --objective diversity``
renders them, and its top dataset examples), then one row per feature with the largest decoder
weight ``W_dec[f, neuron]`` into it (:func:`circuits_cli.sae.features.neuron_features`): the
weight, the feature's share of what the SAE writes into the neuron, its feature visualization
(the objective is the feature's activation) and its dataset examples, each as the receptive-field
crop where it fires most beside the whole image with that box drawn.

Written into the output folder (``STEM`` = ``neuron-N``): ``STEM.json`` (the numbers and every
file), ``STEM.png`` (one figure), ``STEM.html`` (the page, from ``templates/polysemantic.html``)
and ``STEM_files/`` (the page's pictures, linked relative to it, so the folder can be moved).
Renders go through the render cache, so a second run renders nothing.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..files import write_bytes, write_json, write_text

PAGE_TEMPLATE = "polysemantic.html"


def output_names(neuron: int) -> list[str]:
    """The files of one neuron's page, for :func:`circuits_cli.files.claim_output`."""
    stem = f"neuron-{neuron}"
    return [f"{stem}.json", f"{stem}.png", f"{stem}.html"]


def polysemantic_neuron(model, sae, acts, neuron: int, out_dir: str | Path, *,
                        top_features: int = 6, top_images: int = 6, render: bool = True,
                        steps: int = 128, size: int = 128, seed: int = 0, facets: int = 4,
                        param: str = "fourier", render_cache: str | Path | None = None,
                        cache_dir: str | Path | None = None, progress: bool = False,
                        fa=None) -> dict:
    """Compute and write the page of channel ``neuron`` of the SAE's layer (see the module
    docstring); ``acts`` is the layer's activation store over the images, ``render_cache`` the
    render cache (None: the default), ``cache_dir`` the activation cache (receptive fields).
    Returns the :func:`~circuits_cli.sae.features.neuron_features` result with the boxes,
    renders and ``files`` added (what ``STEM.json`` holds)."""
    from ..sae.features import (
        add_receptive_fields,
        layer_feature_activations,
        neuron_features,
        render_neuron_features,
    )

    fa = fa if fa is not None else layer_feature_activations(sae, acts)
    result = neuron_features(sae, acts, neuron, top_features=top_features,
                             top_images=top_images, fa=fa)
    pre = acts.preprocessing
    input_size = int(pre.get("size", model.input_size))
    add_receptive_fields(result, model, size=input_size, cache_dir=cache_dir)
    renders = {}
    if render:
        renders = render_neuron_features(model, sae, result, steps=steps, size=size, seed=seed,
                                         facets=facets, param=param, cache_dir=render_cache,
                                         progress=progress)
        result["render_settings"] = {"steps": steps, "size": size, "seed": seed,
                                     "param": param, "facets": facets}
    result["sae"] = str(getattr(sae, "folder", "") or "")
    return write_page(result, renders, out_dir, size=input_size, resize=pre.get("resize", 256),
                      picture=acts.picture)


def write_page(result: dict, renders: dict, out_dir: str | Path, *, size: int = 224,
               resize: int | None = 256, picture=None) -> dict:
    """Write ``neuron-N.{json,png,html}`` and ``neuron-N_files/`` for a result with boxes
    (:func:`~circuits_cli.sae.features.add_receptive_fields`) and renders (may be empty).
    ``picture(row, size, resize)`` (a layer's ``LayerActivations.picture``: files, tar members
    or generated scenes of an activation cache) gives the examples' pictures by their ``row``;
    without it they are read from their paths. A picture that is gone is drawn grey."""
    from ..images import load_image
    from ..render.cache import png_bytes
    from ..sae.figures import neuron_features_figure

    out = Path(out_dir)
    stem = f"neuron-{result['neuron']}"
    assets = out / f"{stem}_files"
    loaded: dict[str, np.ndarray] = {}
    rows = {ex["path"]: ex.get("row") for ex in result["neuron_top_images"]}
    rows.update({ex["path"]: ex.get("row") for f in result["features"]
                 for ex in f["top_images"]})

    def loader(path):
        if path not in loaded:
            if picture is not None and rows.get(path) is not None:
                img = picture(rows[path], size, resize)
                loaded[path] = img if img is not None else np.full((size, size, 3), 0.5,
                                                                    np.float32)
            else:
                loaded[path] = load_image(path, size=size,
                                          resize=resize).permute(1, 2, 0).numpy()
        return loaded[path]

    def rel(p: Path) -> str:
        return p.relative_to(out).as_posix()

    def examples(prefix: str, items: list[dict]) -> None:
        for i, ex in enumerate(items):
            img = loader(ex["path"])
            x0, y0, x1, y1 = ex["box"]
            crop = assets / f"{prefix}-ex{i}.png"
            full = assets / f"{prefix}-ex{i}-full.jpg"
            write_bytes(crop, png_bytes(img[y0:y1, x0:x1]))
            write_bytes(full, _jpeg_with_box(img, ex["box"]))
            ex["crop"], ex["image"] = rel(crop), rel(full)

    examples("neuron", result["neuron_top_images"])
    neuron_render = renders.get("neuron")
    if neuron_render is not None:
        k = len(neuron_render.facet_activations) or 1
        w = neuron_render.image.shape[1] // k
        pngs = []
        for i in range(k):
            p = assets / f"facet{i}.png"
            write_bytes(p, png_bytes(neuron_render.image[:, i * w:(i + 1) * w]))
            pngs.append(rel(p))
        result["neuron_render"] = {"facets": pngs, "activation": neuron_render.activation,
                                   "facet_activations": list(neuron_render.facet_activations),
                                   "facet_similarity": neuron_render.facet_similarity,
                                   "cached": neuron_render.cached}
    for f in result["features"]:
        examples(f"feature{f['feature']}", f["top_images"])
        r = renders.get(f["feature"])
        if r is not None:
            p = assets / f"feature{f['feature']}.png"
            write_bytes(p, png_bytes(r.image))
            f["render"] = {"png": rel(p), "activation": r.activation, "cached": r.cached}
    png = neuron_features_figure(result, loader, out / f"{stem}.png", renders=renders or None)
    html = write_text(out / f"{stem}.html", render_page(result, figure=rel(png)))
    result["files"] = {"json": str(out / f"{stem}.json"), "png": str(png), "html": str(html),
                       "assets": str(assets)}
    write_json(out / f"{stem}.json", result)
    return result


def render_page(result: dict, figure: str | None = None) -> str:
    """The page's HTML (``templates/polysemantic.html``); picture paths as in ``result``."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("circuits_cli.reports", "templates"),
                      autoescape=select_autoescape(["html"]))
    return env.get_template(PAGE_TEMPLATE).render(r=result, figure=figure, stem=Path)


def _jpeg_with_box(image: np.ndarray, box, width: int = 2) -> bytes:
    """The whole image as the model saw it, with the receptive-field box drawn in yellow."""
    from PIL import Image, ImageDraw

    im = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    if min(im.size) < 128:  # the planted 64 px world: scale up so the box stays visible
        f = int(np.ceil(128 / min(im.size)))
        im = im.resize((im.width * f, im.height * f), Image.NEAREST)
        box = [v * f for v in box]
    x0, y0, x1, y1 = box
    ImageDraw.Draw(im).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 214, 0), width=width)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
