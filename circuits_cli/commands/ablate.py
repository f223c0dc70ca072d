"""``circuits ablate``: does ablating a unit's inputs lower it more than random units would?"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..files import write_json
from .common import model_options
from .examples import cache_option, images_option, warnings_to_stderr


@click.command()
@click.argument("unit", metavar="UNIT")
@click.option("--inputs", "inputs", required=True, metavar="LAYER:C,...",
              help="Input units to ablate, all of one earlier layer: 'inception_4d:203,302' "
                   "(a bare channel or range belongs to the layer named before it).")
@images_option()
@click.option("--mode", type=click.Choice(["zero", "mean"]), default="zero", show_default=True,
              help="Replace the inputs by zero, or by their mean over the images.")
@click.option("--draws", default=50, show_default=True, type=click.IntRange(min=0),
              help="Random draws of as many units of the same layer, for the baseline.")
@click.option("--top-images", default=100, show_default=True, type=click.IntRange(min=0),
              help="Measure on the N images where UNIT is most active (0: all images).")
@click.option("--reduce", type=click.Choice(["mean", "max", "center"]), default="mean",
              show_default=True, help="UNIT's activation in an image: spatial mean, max, or the "
                                      "centre position.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random draws.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write the JSON result to this file.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass when computing activations.")
@cache_option
@model_options
def ablate(unit, inputs, images, mode, draws, top_images, reduce, seed, as_json, out_file,
           batch, cache_dir, load_model):
    """Ablate --inputs and report the drop of UNIT against random units of the same layer.

    The inputs (units of one layer before UNIT's) are set to zero (or their mean) through a
    forward hook, and UNIT's activation is averaged over the images. The same is done for
    --draws random sets of as many other units of that layer: their mean and spread say how much
    any such ablation lowers UNIT; z and p (share of random draws dropping UNIT at least as much)
    say whether the traced inputs matter more.

    \b
    Example:
      circuits ablate inception_4e:800 --inputs inception_4d:203,302,483,205,171 \\
          -m googlenet-bvlc --images ../shared/images/imagenet-samples
    """
    from ..evidence import ablate as run_ablation
    from ..evidence import image_set, parse_inputs
    from ..units import parse_unit

    if out_file is not None and out_file.exists() and out_file.suffix.lower() != ".json":
        from ..errors import CircuitsError

        raise CircuitsError(f"--out {str(out_file)!r} exists and is not a .json file; choose a "
                            "new file name ending in .json")
    imgs = image_set(list(images))
    model = load_model()
    target = parse_unit(unit, model)
    ins = parse_inputs(inputs, model)
    with warnings_to_stderr():
        result = run_ablation(model, target, ins, imgs, mode=mode, draws=draws, seed=seed,
                              reduce=reduce, top_images=top_images or None,
                              cache_dir=cache_dir, batch_size=batch, progress=True)
    data = result.to_json()
    if out_file is not None:
        write_json(out_file, data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(result.summary())
