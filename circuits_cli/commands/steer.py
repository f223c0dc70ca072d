"""``circuits steer``: write a unit into the forward pass and watch the predictions move."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import model_options
from .options import (
    STEER_MODE_HELP,
    activation_cache,
    cache_option,
    images_option,
    parse_strengths,
    warnings_to_stderr,
)

OUTPUTS = ("steer.json", "steer.png")


@click.command()
@click.argument("unit", metavar="UNIT")
@images_option()
@click.option("--mode", type=click.Choice(["add", "clamp"]), default="add", show_default=True,
              help=STEER_MODE_HELP)
@click.option("--strengths", callback=parse_strengths, default=None, metavar="S,S,...",
              help="The sweep, in multiples of the unit's largest activation on the images "
                   "[default: add -2,-1,0,1,2,4; clamp 0,0.5,1,2,4].")
@click.option("--classes", "classes", default=None, metavar="NAME,...",
              help="The classes the unit supports (default: the top --n-supported by its "
                   "expanded weight to the logits).")
@click.option("--n-supported", default=3, show_default=True, type=click.IntRange(min=1),
              help="How many supported classes to take from the weights.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for steer.json and steer.png [default: outputs/steer/MODEL/UNIT].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass.")
@cache_option
@model_options
def steer(unit, images, mode, strengths, classes, n_supported, out_dir, as_json, batch,
          cache_dir, load_model):
    """Steer UNIT (a neuron, direction or dictionary feature) and report what changes.

    For each strength, UNIT is written into its layer at every position and the class
    probabilities of every image are compared with the clean model's: the classes whose
    probability moves, the images whose top-1 changes, the targeted effect (images moving into
    the classes UNIT supports; those classes' probability on their own images when suppressing)
    and the side effects (top-1 accuracy and KL on images of unrelated classes).

    \b
    Example:
      circuits steer mixed4b:64 -m toy --images outputs/demo/toy/scenes
    """
    from ..errors import CircuitsError
    from ..evidence import image_set
    from ..evidence.find import lookup_class
    from ..evidence.steering import steer as run_steer
    from ..files import claim_output, output_dir
    from ..reports.evidence import write_steering
    from ..units import parse_unit

    imgs = image_set(list(images))
    model = load_model()
    model.require_logits()
    target = parse_unit(unit, model)
    supported = None
    if classes is not None:
        supported = [lookup_class(model, c.strip()) for c in classes.split(",") if c.strip()]
        if not supported:
            raise CircuitsError("--classes is empty; give class names or indices")
    out = Path(out_dir) if out_dir is not None else output_dir("steer", model.name, target.slug)
    claim_output(out, "steer", OUTPUTS, cache=cache_dir or True)
    with warnings_to_stderr():
        result = run_steer(model, target, imgs, mode=mode, strengths=strengths,
                           supported=supported, n_supported=n_supported,
                           cache_dir=activation_cache(cache_dir),
                           batch_size=batch, progress=not as_json)
    data = write_steering(out, result)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for line in result.table():
        click.echo(line)
    click.echo(f"Wrote {out / 'steer.json'} and {out / 'steer.png'}")
