"""``circuits examples``: dataset examples of a unit (top images and receptive-field crops)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import model_options
from .options import (
    UNIT,
    activation_cache_option,
    cache_option,
    images_option,
    json_option,
    out_option,
    quiet_option,
    top_k_option,
    warnings_to_stderr,
)


@click.command()
@click.argument("unit", type=UNIT)
@images_option(required=False)
@activation_cache_option
@top_k_option(9, "How many images.", legacy=("--top", "-n"))
@click.option("--negative", is_flag=True,
              help="The most negative examples instead (lowest min; for a non-negative layer "
                   "after a ReLU, the images where the unit stays quietest).")
@click.option("--box", type=click.Choice(["effective", "support"]), default="effective",
              show_default=True, help="Crop: effective receptive field (90% of the gradient "
                                      "mass) or its full theoretical support.")
@out_option("outputs/examples/MODEL/UNIT")
@json_option
@quiet_option
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass when computing activations.")
@cache_option
@model_options
def examples(unit, images, activation_cache_dir, top_k, negative, box, out_dir, as_json, quiet,
             batch, cache_dir, load_model):
    """Dataset examples of UNIT (LAYER:CHANNEL): the images that activate it most.

    For each image: the unit's strongest activation (spatial max), where it is, and the crop of
    the image under the unit's receptive field there. Writes a PNG sheet (crop, and the whole
    image with the box) and a JSON file to --out, and prints a table (or --json).
    Unreadable and non-image files are skipped with a warning. With --cache DIR instead of
    --images, the activations come from an activation cache ('circuits cache'): with every
    position cached (--positions 0) the same ranking as --images on its images; with K sampled
    positions per image, images are ranked by the max over those K. Pictures are read from where
    the cache found the images; one that is gone is listed and marked 'picture missing'.

    \b
    Examples:
      circuits examples inception_4e:800 -m googlenet-bvlc \\
          --images ../shared/images/imagenet-samples
      circuits examples mixed4b:64 -m toy --cache cache/toy-4b
    """
    from ..evidence import cache_activations, dataset_examples, examples_sheet, image_set
    from ..files import claim_output, output_dir, slug, write_text
    from ..units import parse_unit
    from .common import set_interrupt_note
    from .options import activation_cache, images_or_cache

    cache = images_or_cache(images, activation_cache_dir)
    imgs = image_set(list(images)) if cache is None else None  # bad folders fail before the
    model = load_model()  # model loads
    u = parse_unit(unit, model)
    if cache is not None:
        cache.check_model(model, [u.layer])
    stem = f"{slug(model.name)}_{u.slug}" + ("_negative" if negative else "")
    out_dir = Path(out_dir) if out_dir is not None else output_dir("examples", model.name, u.slug)
    claim_output(out_dir, "examples", (f"{stem}.png", f"{stem}.json"),
                 cache=cache_dir if cache_dir is not None else True)
    set_interrupt_note("finished chunks of the activation pass are kept in the cache; re-run "
                       "to resume")
    with warnings_to_stderr():
        source = imgs if cache is None else cache_activations(
            model, [u.layer], cache, cache_dir=activation_cache(cache_dir),
            progress=not quiet and not as_json)[u.layer]
        exs = dataset_examples(model, u, source, top=top_k, negative=negative, box=box,
                               cache_dir=activation_cache(cache_dir), batch_size=batch,
                               progress=not quiet and not as_json)
    png = examples_sheet(exs, out_dir / f"{stem}.png")
    data = exs.to_json()
    data["sheet"] = str(png)
    write_text(out_dir / f"{stem}.json", json.dumps(data, indent=1))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    kind = "negative dataset examples" if negative else "dataset examples"
    click.echo(f"{u} ({model.name}): {kind} from {exs.n_images} images, ranked by "
               f"{exs.ranking}")
    from ..images import display_name

    width = max(len(display_name(e.path.name)) for e in exs.examples)
    for e in exs.examples:
        x0, y0, x1, y1 = e.box
        click.echo(f"  {e.rank:>3}. {e.activation:10.4g}  {display_name(e.path.name):<{width}}  "
                   f"at ({e.position[0]}, {e.position[1]})  crop x {x0}-{x1}, y {y0}-{y1}"
                   + ("  (picture missing)" if e.missing else ""))
    click.echo(f"Sheet: {png}")
