"""``circuits find``: the units of a layer that build a class (e.g. the car detector)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import model_options
from .options import (
    LAYER,
    activation_cache_option,
    cache_option,
    images_option,
    json_option,
    quiet_option,
    top_k_option,
    warnings_to_stderr,
)


@click.command()
@click.option("--class", "class_name", required=True, metavar="NAME",
              help="Class name ('sports car'; a unique part of a name works), wnid "
                   "(n04285008) or index (817).")
@click.option("--layer", "-l", required=True, type=LAYER, help="Layer whose units to rank.")
@top_k_option(10, "How many units.")
@images_option(required=False)
@activation_cache_option
@click.option("--examples", "n_examples", default=3, show_default=True,
              type=click.IntRange(min=0),
              help="With --images, list each unit's top N dataset examples (file names).")
@click.option("--sae", "sae", default=None, type=click.Path(path_type=Path), metavar="FOLDER",
              help="Rank the dictionary features of this SAE (trained on LAYER) instead of "
                   "its neurons.")
@json_option
@quiet_option
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass when computing activations.")
@cache_option
@model_options
def find(class_name, layer, top_k, images, activation_cache_dir, n_examples, sae, as_json,
         quiet, batch, cache_dir, load_model):
    """Rank the units of LAYER by their contribution to a class logit.

    Without images: by the expanded weight of each unit to the class logit (linear
    approximation, summed over positions). With --images: weight x (the unit's mean activation
    on the images of the class, known by the wnid at the start of the file name or a folder
    named after it, minus its mean over all images). Check the result with the units' dataset
    examples (listed with --images) and 'circuits examples'. --cache DIR reads the activations
    from an activation cache ('circuits cache') instead of --images: the mean over the positions
    it holds of each image (all of them with --positions 0: the same as --images).

    \b
    Example:
      circuits find --class "sports car" --layer inception_4e -m googlenet-bvlc \\
          --images ../shared/images/imagenet-samples
    """
    import numpy as np

    from ..evidence import cache_activations, find_units, image_set, layer_activations
    from ..files import check_cache_writable
    from .common import set_interrupt_note
    from .options import activation_cache, images_or_cache

    cache = images_or_cache(images, activation_cache_dir, required=False)
    imgs = image_set(list(images)) if images else None
    model = load_model()
    model.require_logits()
    if cache is not None:
        cache.check_model(model, [layer])
    if imgs is not None or cache is not None:
        check_cache_writable(cache_dir)
        set_interrupt_note("finished chunks of the activation pass are kept in the cache; "
                           "re-run to resume")
    cache_dir = activation_cache(cache_dir)
    acts = None
    if cache is not None:
        acts = cache_activations(model, [layer], cache, cache_dir=cache_dir,
                                 progress=not quiet and not as_json)[model.layer(layer).name]
    candidates = None
    if sae is not None:
        from ..errors import CircuitsError
        from ..units import sae_features

        sae_layer, candidates = sae_features(model, sae)
        if sae_layer != model.layer(layer).name:
            raise CircuitsError(f"the SAE in {str(sae)!r} was trained on {sae_layer!r}, not "
                                f"{model.layer(layer).name!r}; pass --layer {sae_layer}")
    with warnings_to_stderr():
        res = find_units(model, class_name, layer, top=top_k,
                         images=imgs if acts is None else acts, cache_dir=cache_dir,
                         batch_size=batch, progress=not quiet and not as_json, units=candidates)
    tops: dict[str, list[str]] = {}
    if (imgs is not None or acts is not None) and n_examples:
        from ..evidence.activations import unit_activations

        if acts is None:
            acts = layer_activations(model, res.layer, imgs, cache_dir=cache_dir, warn=False)
        for s in res.units:
            column = unit_activations(model, s.unit, acts).column("max")
            order = np.argsort(-column, kind="stable")[:n_examples]
            tops[str(s.unit)] = [acts.paths[i].name for i in order]
    data = res.to_json()
    if tops:
        for entry, s in zip(data["units"], res.units, strict=True):
            entry["top_examples"] = tops[str(s.unit)]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    wn = f", {res.wnid}" if res.wnid else ""
    click.echo(f"Class {res.class_index} {res.label!r}{wn}; units of {res.layer} ranked by "
               f"{res.ranking}")
    has_act = res.units[0].class_activation is not None
    head = f"  {'rank':>4}  {'unit':<{len(res.layer) + 6}} {'score':>10} {'weight':>10}"
    if has_act:
        head += f" {'class act':>10} {'mean act':>10}"
    click.echo(head)
    for i, s in enumerate(res.units, 1):
        line = (f"  {i:>4}  {str(s.unit):<{len(res.layer) + 6}} {s.score:10.4g} "
                f"{s.weight:10.4g}")
        if has_act:
            line += f" {s.class_activation:10.4g} {s.mean_activation:10.4g}"
        if tops:
            line += "  " + ", ".join(tops[str(s.unit)])
        click.echo(line)
