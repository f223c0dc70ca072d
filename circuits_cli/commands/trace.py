"""``circuits trace``: the circuit of a unit through the weights, as JSON and a diagram."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import model_options
from .options import (
    LAYER,
    METHOD_HELP,
    STEER_MODE_HELP,
    TOP_K,
    UNIT,
    cache_option,
    json_option,
    out_option,
    parse_strengths,
    quiet_option,
    render_options,
    warnings_to_stderr,
)


@click.command()
@click.argument("unit", type=UNIT)
@model_options
@click.option("--depth", type=click.IntRange(1, 8), default=2, show_default=True,
              help="Hops back from UNIT (layers of inputs).")
@click.option("--top-k", "top_k", type=TOP_K, default="3", show_default=True,
              help="Strongest inputs kept per unit (by L2 norm of the spatial kernel); one "
                   "number per hop with commas (5,2: five inputs of UNIT, two of each of "
                   "those).")
@click.option("--from", "source", default=None, type=LAYER,
              help="Layer of the first hop  [default: the layer UNIT reads, e.g. the input of "
                   "its Inception block]")
@click.option("--method", type=click.Choice(["auto", "exact", "linear"]), default="auto",
              show_default=True, help=METHOD_HELP)
@render_options
@out_option("outputs/trace/MODEL/UNIT")
@json_option
@quiet_option
@click.option("--images", "image_dirs", multiple=True, type=click.Path(path_type=Path),
              metavar="DIR",
              help="Add evidence from these images (repeatable): dataset examples per unit, "
                   "ablation of the target's traced inputs against random units, in "
                   "report.html and evidence.json.")
@click.option("--draws", type=click.IntRange(0, 10000), default=50, show_default=True,
              help="With --images: random draws of the ablation baseline.")
@click.option("--quality-images", type=click.IntRange(min=0), default=16, show_default=True,
              help="With --images: measure the circuit's faithfulness, completeness and "
                   "minimality on the N images where UNIT is most active (0: skip).")
@click.option("--ablation", "quality_ablation", type=click.Choice(["mean", "zero", "resample"]),
              default="mean", show_default=True,
              help="With --images: what the units outside the circuit become when its quality "
                   "is measured (mean over the images, zero, or their value on another image).")
@click.option("--sae", "saes", multiple=True, type=click.Path(path_type=Path), metavar="FOLDER",
              help="An SAE folder (from 'circuits sae train'; repeatable): hops into its layer "
                   "rank its dictionary features instead of neurons (a feature circuit).")
@click.option("--steer", "steer_strengths", callback=parse_strengths, default=None,
              metavar="S,S,...",
              help="With --images: steer UNIT at these strengths (multiples of its largest "
                   "activation on the images, as 'circuits steer --strengths') and add a "
                   "Steering section to report.html (steer.json, steer.png).")
@click.option("--steer-mode", type=click.Choice(["add", "clamp"]), default="add",
              show_default=True, help="With --steer: " + STEER_MODE_HELP)
@cache_option
def trace(unit, load_model, depth, top_k, source, method, steps, size, seed, param, no_render,
          out_dir, as_json, quiet, image_dirs, draws, quality_images, quality_ablation, saes,
          steer_strengths, steer_mode, cache_dir):
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
      circuits trace 4c:447 --top-k 5,2 -m googlenet-bvlc       # wider at the first hop
      circuits trace mixed4c:447 --from mixed4a --method linear
      circuits trace mixed4b@SAE_4B#12 --sae SAE_4A -m toy     # a feature circuit
      circuits trace mixed4b:64 -m toy --images SCENES --steer=-1,0,2   # and steer it
    """
    from ..errors import CircuitsError
    from ..files import claim_output, output_dir
    from ..trace import attach_renders, hop_top_k, render_tree
    from ..trace import trace as trace_circuit
    from ..units import parse_unit
    from .options import activation_cache, render_cache

    top_k = hop_top_k(top_k, depth)  # more numbers than hops: before any work
    if steer_strengths is not None and not image_dirs:
        raise CircuitsError("--steer needs --images DIR: the images the steered predictions "
                            "are measured on")
    image_set = None
    if image_dirs:
        from ..evidence import image_set as find_image_set

        image_set = find_image_set(list(image_dirs))  # bad or unreadable images: before all work
    model = load_model()
    target = parse_unit(unit, model)
    if source is not None:
        model.layer(source)
    out = Path(out_dir) if out_dir is not None else output_dir("trace", model.name, target.slug)
    names = ("circuit.json", "circuit.png", "evidence.json", "report.html")
    if steer_strengths is not None:
        from ..reports.html import STEER_JSON, STEER_PNG

        names += (STEER_JSON, STEER_PNG)
    claim_output(out, "trace", names,
                 cache=cache_dir if cache_dir is not None else (not no_render or bool(image_dirs)))

    from ..units import sae_features

    features = dict(sae_features(model, folder) for folder in saes)
    operating = None
    if image_set is not None and any(i.tokens is not None for i in model.layers.values()):
        from ..images import load_images  # attention is frozen on the first images given

        operating = load_images(image_set.paths[:4], size=model.input_size,
                                resize=round(model.input_size * 256 / 224))[0]
    circuit = trace_circuit(model, target, depth=depth, top_k=top_k, source=source,
                            method=method, features=features, images=operating)
    if image_set is not None:  # examples/UNIT.png of every node: checked before the renders
        from ..evidence import check_evidence_outputs

        check_evidence_outputs(out, circuit, model,
                               cache_dir=activation_cache(cache_dir) if cache_dir else None)
    images = {}
    if not no_render:
        if not quiet and not as_json:
            click.echo(f"Feature visualizations of {len(circuit.nodes)} units "
                       f"({steps} steps, cached)...", err=True)
        images = attach_renders(circuit, model, steps=steps, size=size, seed=seed, param=param,
                                cache_dir=render_cache(cache_dir) if cache_dir else None,
                                progress=not quiet and not as_json)
    from ..reports.diagrams import draw_circuit

    out.mkdir(parents=True, exist_ok=True)
    circuit.save(out / "circuit.json")
    draw_circuit(circuit, out / "circuit.png", images)
    steering = None
    if steer_strengths is not None:
        steering = trace_steering(out, model, target, image_set, strengths=steer_strengths,
                                  mode=steer_mode, quiet=quiet or as_json,
                                  cache_dir=activation_cache(cache_dir) if cache_dir else None)
    ev = trace_evidence(out, model, image_set, draws=draws, quiet=quiet or as_json,
                   cache_dir=activation_cache(cache_dir) if cache_dir else None,
                   steered=steering is not None, quality_images=quality_images,
                   quality_ablation=quality_ablation)
    if as_json:
        data = circuit.to_json()
        if steering is not None:
            data["steering"] = steering.to_json()
        if ev is not None and ev.quality is not None:
            data["quality"] = ev.quality.to_json()
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(render_tree(circuit))
    click.echo(f"Wrote {out / 'circuit.json'} and {out / 'circuit.png'}"
               + (f"; steering: {out / 'steer.json'}, {out / 'steer.png'}" if steering else ""))


def trace_steering(out: Path, model, target, images, *, strengths, mode: str, quiet: bool,
                   cache_dir: Path | None = None):
    """For ``circuits trace --steer``: steer the target over the images into the output folder
    (steer.json, steer.png) and print the per-strength table; returns the SteeringResult."""
    from ..reports.evidence import add_steering

    if not quiet:
        click.echo(f"Steering {target} ({mode}, strengths {', '.join(f'{s:g}' for s in strengths)})"
                   f" over {len(images.paths)} image file(s)...", err=True)
    with warnings_to_stderr():
        result = add_steering(out, model, target, images, mode=mode, strengths=strengths,
                              cache_dir=cache_dir, progress=not quiet)
    if not quiet:
        for line in result.table():
            click.echo(line, err=True)
    return result


def trace_evidence(out: Path, model, images, *, draws: int = 50, quiet: bool = False,
                   cache_dir: Path | None = None, steered: bool = False,
                   quality_images: int = 16, quality_ablation: str = "mean"):
    """For ``circuits trace``: add dataset examples and the ablation of the target's traced inputs
    to the output folder when ``images`` (an ImageSet) is given, and write ``report.html`` (with
    the steering section when ``steered``); returns the Evidence (None without images)."""
    if images is None:
        from ..reports.html import write_report

        path = write_report(out, steering=steered)
        if not quiet:
            click.echo(f"Report: {path} (add --images DIR for dataset examples and ablation)",
                       err=True)
        return None
    from ..reports.evidence import add_evidence

    if not quiet:
        click.echo(f"Dataset examples and ablation over {len(images.paths)} image file(s)...",
                   err=True)
    with warnings_to_stderr():
        ev = add_evidence(out, model, images, draws=draws, progress=not quiet,
                          cache_dir=cache_dir, steering=steered,
                          quality_images=quality_images or None,
                          quality_ablation=quality_ablation)
    if quiet:
        return ev
    for a in ev.ablations:
        r = a.result
        names = ", ".join(str(u) for u in r.inputs)
        click.echo(f"Ablation of {r.target}'s {a.group} inputs ({names}): "
                   f"{100 * r.relative_drop:+.1f}% drop vs random "
                   f"{100 * r.random_relative_mean:+.1f}% (z = {r.z_score:.1f}, "
                   f"p = {a.p_expected:.3g}): weights predict a {a.expected}; "
                   f"{'agrees' if a.agrees else 'not shown'}", err=True)
    if ev.quality is not None:
        click.echo(ev.quality.summary(), err=True)
    elif ev.quality_note:
        click.echo(f"Circuit quality not measured: {ev.quality_note}", err=True)
    click.echo(f"Report: {ev.html}", err=True)
    return ev
