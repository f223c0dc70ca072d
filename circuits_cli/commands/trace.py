"""``circuits trace``: the circuit of a unit through the weights, as JSON and a diagram."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import model_options

METHOD_HELP = ("How to compute expanded weights: exact (kernels multiplied out: a conv feeding a "
               "conv, an Inception block's input to its output), linear (the linear "
               "approximation: ReLU as identity, max-pool as average pool; any two layers), "
               "auto (exact where it exists).")


def render_options(func):
    """``--steps``, ``--size``, ``--seed``, ``--param``, ``--no-render``: the feature
    visualizations."""
    func = click.option("--param", type=click.Choice(["fourier", "maco"]), default="fourier",
                        show_default=True,
                        help="Feature visualization parameterization (as in 'circuits "
                             "visualize --param'); renders are cached per parameterization.")(func)
    func = click.option("--no-render", is_flag=True,
                        help="Skip feature visualizations (units drawn as 'no render').")(func)
    func = click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0,
                        show_default=True, help="Seed of the feature visualizations.")(func)
    func = click.option("--size", type=click.IntRange(16, 1024), default=128, show_default=True,
                        help="Feature visualization size in pixels.")(func)
    func = click.option("--steps", type=click.IntRange(1, 100000), default=512,
                        show_default=True,
                        help="Feature visualization steps; renders come from the cache of "
                             "'circuits visualize' (same steps/size/seed), fewer steps for a "
                             "quick look.")(func)
    return func


@click.command()
@click.argument("unit")
@model_options
@click.option("--depth", type=click.IntRange(1, 8), default=2, show_default=True,
              help="Hops back from UNIT (layers of inputs).")
@click.option("--top-k", "top_k", type=click.IntRange(1, 32), default=3, show_default=True,
              help="Strongest inputs kept per unit (by L2 norm of the spatial kernel).")
@click.option("--from", "source", default=None, metavar="LAYER",
              help="Layer of the first hop  [default: the layer UNIT reads, e.g. the input of "
                   "its Inception block]")
@click.option("--method", type=click.Choice(["auto", "exact", "linear"]), default="auto",
              show_default=True, help=METHOD_HELP)
@render_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder  [default: outputs/trace/MODEL/UNIT]")
@click.option("--json", "as_json", is_flag=True, help="Print the circuit as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--images", "image_dirs", multiple=True, type=click.Path(path_type=Path),
              metavar="DIR",
              help="Add evidence from these images (repeatable): dataset examples per unit, "
                   "ablation of the target's traced inputs against random units, in "
                   "report.html and evidence.json.")
@click.option("--draws", type=click.IntRange(0, 10000), default=50, show_default=True,
              help="With --images: random draws of the ablation baseline.")
@click.option("--sae", "saes", multiple=True, type=click.Path(path_type=Path), metavar="FOLDER",
              help="An SAE folder (from 'circuits sae train'; repeatable): hops into its layer "
                   "rank its dictionary features instead of neurons (a feature circuit).")
def trace(unit, load_model, depth, top_k, source, method, steps, size, seed, param, no_render,
          out_dir, as_json, quiet, image_dirs, draws, saes):
    """Trace the circuit of UNIT (LAYER:CHANNEL) back through the weights.

    From UNIT, find its TOP-K strongest inputs in the previous layer by expanded weights (L2
    norm of each input's spatial kernel, sign kept), then theirs, over DEPTH hops. Writes
    circuit.json (nodes, edges with signed strengths and spatial kernels, the method of each
    hop) and circuit.png: feature visualizations as nodes, edges coloured by sign (red excites,
    blue inhibits), as wide as their strength, each carrying its spatial weights.

    \b
    Examples:
      circuits trace inception_4c:447 -m googlenet-bvlc
      circuits trace 4c:447 --depth 1 --top-k 6 --steps 128 -m googlenet-bvlc
      circuits trace mixed4c:447 --from mixed4a --method linear
      circuits trace mixed4b@SAE_4B#12 --sae SAE_4A -m toy     # a feature circuit
    """
    from ..trace import attach_renders, check_out_dir, default_out_dir, render_tree
    from ..trace import trace as trace_circuit
    from ..units import parse_unit

    model = load_model()
    target = parse_unit(unit, model)
    if source is not None:
        model.layer(source)
    out = Path(out_dir) if out_dir is not None else default_out_dir(model, "trace", target.slug)
    check_out_dir(out, ("circuit.json", "circuit.png", "evidence.json"))
    from ..reports.html import check_report_path

    check_report_path(out / "report.html")
    image_set = None
    if image_dirs:
        from ..evidence import image_set as find_image_set

        image_set = find_image_set(list(image_dirs))  # a bad folder fails before any writing

    from ..units import sae_features

    features = dict(sae_features(model, folder) for folder in saes)
    circuit = trace_circuit(model, target, depth=depth, top_k=top_k, source=source,
                            method=method, features=features)
    images = {}
    if not no_render:
        if not quiet and not as_json:
            click.echo(f"Feature visualizations of {len(circuit.nodes)} units "
                       f"({steps} steps, cached)...", err=True)
        images = attach_renders(circuit, model, steps=steps, size=size, seed=seed, param=param,
                                progress=not quiet and not as_json)
    from ..reports.diagrams import draw_circuit

    out.mkdir(parents=True, exist_ok=True)
    circuit.save(out / "circuit.json")
    draw_circuit(circuit, out / "circuit.png", images)
    from .examples import trace_evidence

    trace_evidence(out, model, image_set, draws=draws, quiet=quiet or as_json)
    if as_json:
        click.echo(json.dumps(circuit.to_json(), indent=2))
        return
    click.echo(render_tree(circuit))
    click.echo(f"Wrote {out / 'circuit.json'} and {out / 'circuit.png'}")
