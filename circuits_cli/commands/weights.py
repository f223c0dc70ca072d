"""``circuits weights``: one unit's strongest inputs from an earlier layer, with their kernels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import model_options
from .options import (
    LAYER,
    METHOD_HELP,
    UNIT,
    json_option,
    out_option,
    quiet_option,
    render_options,
)


@click.command()
@click.argument("unit", type=UNIT)
@model_options
@click.option("--from", "source", default=None, type=LAYER,
              help="Layer of the inputs  [default: the layer UNIT reads, e.g. the input of its "
                   "Inception block]")
@click.option("--top-k", "top_k", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Strongest inputs shown (by L2 norm of the spatial kernel).")
@click.option("--method", type=click.Choice(["auto", "exact", "linear"]), default="auto",
              show_default=True, help=METHOD_HELP)
@render_options
@out_option("outputs/weights/MODEL/UNIT_from_LAYER")
@json_option
@quiet_option
def weights(unit, load_model, source, top_k, method, steps, size, seed, param, no_render,
            out_dir, as_json, quiet):
    """Show the strongest inputs of UNIT (LAYER:CHANNEL) from an earlier layer.

    Expanded weights from every unit of the --from layer to UNIT, ranked by the L2 norm of
    their spatial kernels. weights.png shows each input's feature visualization above its
    spatial kernel (red excites, blue inhibits, white 0, normalised by UNIT's largest |weight|);
    weights.json holds the numbers.

    \b
    Examples:
      circuits weights inception_4c:447 -m googlenet-bvlc
      circuits weights 4c:447 --from inception_4a --top-k 12 --steps 128 -m googlenet-bvlc
    """
    from ..connections import rank_inputs, resolve_method, unit_weights
    from ..errors import CircuitsError
    from ..files import claim_output, output_dir, slug
    from ..trace import previous_layer
    from ..units import Unit, parse_unit

    model = load_model()
    target = parse_unit(unit, model)
    if source is None:
        source = previous_layer(model, target.layer)
        if source is None:
            raise CircuitsError(f"{target.layer!r} reads the network's input; it has no earlier "
                                "layer of units")
    source = model.layer(source).name
    if model.layer_index(source) >= model.layer_index(target.layer):
        raise CircuitsError(f"--from layer {source!r} does not come before {target.layer!r}; "
                            "choose an earlier layer")
    used = resolve_method(model, source, target.layer, method)
    name = f"{target.slug}_from_{slug(source)}"
    out = Path(out_dir) if out_dir is not None else output_dir("weights", model.name, name)
    claim_output(out, "weights", ("weights.json", "weights.png"), cache=not no_render)

    kernels = unit_weights(model, source, target, method=used)
    kernels = kernels.detach().cpu().double()
    max_weight = float(kernels.abs().max())
    inputs = rank_inputs(kernels, top_k)
    images, paths = {}, {}
    if not no_render:
        from ..render import render_units

        units = [target] + [Unit(source, c.channel) for c in inputs]
        for render in render_units(model, units, steps=steps, size=size, seed=seed, param=param,
                                   progress=not quiet and not as_json):
            images[str(render.unit)] = render.image
            paths[str(render.unit)] = str(render.path) if render.path else None

    result = {
        "format": "circuits-weights/1", "model": model.name, "weights_id": model.weights_id,
        "target": str(target), "source": source, "method": used,
        "kernel_size": list(kernels.shape[-2:]), "max_weight": max_weight,
        "render": None if no_render else {"steps": steps, "size": size, "seed": seed,
                                          **({"param": param} if param != "fourier" else {}),
                                          "path": paths.get(str(target))},
        "inputs": [{"unit": f"{source}:{c.channel}", **c.to_dict(), "rank": i + 1,
                    "relative": c.strength / inputs[0].strength if inputs[0].strength else 0.0,
                    "render": paths.get(f"{source}:{c.channel}")}
                   for i, c in enumerate(inputs)],
    }
    from ..files import write_json
    from ..reports.diagrams import draw_weights

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "weights.json", result)
    draw_weights(str(target), inputs, out / "weights.png", source_layer=source, method=used,
                 max_weight=max_weight, images=images, model_name=model.name)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"Strongest inputs of {target} from {source} ({used} expanded weights, kernels "
               f"{kernels.shape[-2]}x{kernels.shape[-1]}):")
    info = model.layer(source)
    for i, c in enumerate(inputs, 1):
        branch = info.branch_of(c.channel)
        tag = f" [{branch[0]}]" if branch else ""
        click.echo(f"  {i:>2}. {source}:{c.channel}{tag}  "
                   f"{'excites ' if c.sign > 0 else 'inhibits'}  strength {c.strength:.4g}")
    click.echo(f"Wrote {out / 'weights.json'} and {out / 'weights.png'}")
