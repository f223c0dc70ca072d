"""``circuits ablate``: does ablating a unit's inputs lower it more than random units would?"""

from __future__ import annotations

import json

import click

from .common import model_options
from .options import (
    INPUT_UNITS,
    UNIT,
    cache_option,
    images_option,
    json_option,
    out_option,
    quiet_option,
    warnings_to_stderr,
)


@click.command()
@click.argument("unit", type=UNIT)
@click.option("--inputs", "inputs", required=True, type=INPUT_UNITS,
              help="Input units to ablate, all of one earlier layer: 'inception_4d:203,302' "
                   "(a bare channel or range belongs to the layer named before it).")
@images_option()
@click.option("--ablation", "--mode", "mode", type=click.Choice(["zero", "mean", "resample"]),
              default="zero", show_default=True,
              help="Replace the inputs by zero, by their mean over the images, or by their "
                   "activation on another image of the set (resample, seeded by --seed).")
@click.option("--draws", default=50, show_default=True, type=click.IntRange(min=0),
              help="Random draws of as many units of the same layer, for the baseline.")
@click.option("--top-images", default=100, show_default=True, type=click.IntRange(min=0),
              help="Measure on the N images where UNIT (or, with --top-by inputs, the inputs) "
                   "is most active (0: all images).")
@click.option("--top-by", type=click.Choice(["target", "inputs"]), default="target",
              show_default=True,
              help="Which images --top-images keeps: where UNIT is most active, or where the "
                   "--inputs are (for inhibitors, mostly silent where UNIT fires most).")
@click.option("--exclude", "exclude", default=None, type=INPUT_UNITS,
              help="Units of the inputs' layer never drawn as random units, e.g. UNIT's other "
                   "traced inputs, whose own effects would blur the baseline.")
@click.option("--reduce", type=click.Choice(["mean", "max", "center"]), default="mean",
              show_default=True, help="UNIT's activation in an image: spatial mean, max, or the "
                                      "centre position.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seed of the random draws.")
@json_option
@out_option("none; with --out DIR the result is also written to DIR/ablate_UNIT.json")
@quiet_option
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass when computing activations.")
@cache_option
@model_options
def ablate(unit, inputs, images, mode, draws, top_images, top_by, exclude, reduce, seed, as_json,
           out_dir, quiet, batch, cache_dir, load_model):
    """Ablate --inputs and report the drop of UNIT against random units of the same layer.

    The inputs (units of one layer before UNIT's) are set to zero (or their mean) through a
    forward hook, and UNIT's activation is averaged over the images. The same is done for
    --draws random sets of as many other units of that layer: their mean and spread say how much
    any such ablation lowers UNIT; z and p (share of random draws dropping UNIT at least as much)
    say whether the traced inputs matter more.

    \b
    Examples:
      circuits ablate inception_4e:800 --inputs inception_4d:203,302,483,205,171 \\
          -m googlenet-bvlc --images ../shared/images/imagenet-samples
      circuits ablate mixed4b:64 --inputs mixed4a:136,68,89 --top-by inputs \\
          --exclude mixed4a:37,63 -m toy --images outputs/demo/scenes   # inhibitors
      circuits ablate mixed4b:64 --inputs mixed4a:37,63 --ablation resample \\
          -m toy --images outputs/demo/scenes   # each image takes another's inputs
    """
    from ..errors import CircuitsError
    from ..evidence import ablate as run_ablation
    from ..evidence import image_set, parse_inputs
    from ..files import claim_output, write_json
    from ..units import parse_unit
    from .common import set_interrupt_note
    from .options import activation_cache

    if out_dir is not None and out_dir.suffix.lower() == ".json":
        raise CircuitsError(f"--out {str(out_dir)!r} looks like a file; --out is a folder "
                            "(the result goes to DIR/ablate_UNIT.json): give a folder")
    imgs = image_set(list(images))
    model = load_model()
    target = parse_unit(unit, model)
    ins = parse_inputs(inputs, model)
    excluded = parse_inputs(exclude, model) if exclude else []
    name = f"ablate_{target.slug}.json"
    if out_dir is not None:
        claim_output(out_dir, "ablate", (name,), cache=cache_dir if cache_dir else True)
    else:
        from ..files import check_cache_writable

        check_cache_writable(cache_dir)
    set_interrupt_note("finished chunks of the activation pass are kept in the cache; re-run "
                       "to resume")
    with warnings_to_stderr():
        result = run_ablation(model, target, ins, imgs, mode=mode, draws=draws, seed=seed,
                              reduce=reduce, top_images=top_images or None, top_by=top_by,
                              exclude=excluded,
                              cache_dir=activation_cache(cache_dir), batch_size=batch,
                              progress=not quiet and not as_json)
    data = result.to_json()
    if out_dir is not None:
        write_json(out_dir / name, data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(result.summary())
