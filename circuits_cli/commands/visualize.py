"""``circuits visualize``: feature visualizations of whole layers, batched and resumable."""

from __future__ import annotations

from pathlib import Path

import click

from .common import model_options
from .options import CHANNELS, LAYER, SHARD, launcher_options, out_option, quiet_option

OBJECTIVE_CHOICES = ["channel", "neuron", "direction", "diversity"]


@click.command()
@click.argument("layer", type=LAYER)
@model_options
@click.option("--units", "units_spec", default="all", show_default=True, type=CHANNELS,
              help="Channels to render: 'all' or e.g. '0-63,447'. For --objective direction: "
                   "rows of the --direction file.")
@click.option("--objective", type=click.Choice(OBJECTIVE_CHOICES), default="channel",
              show_default=True,
              help="channel: mean over positions; neuron: centre position; direction: a vector "
                   "over the layer's channels (--direction); diversity: --facets pictures per "
                   "unit that differ from each other (a polysemantic unit's facets).")
@click.option("--direction", "direction_file", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="Directions for --objective direction: .npy, .txt/.csv or "
                                   ".json holding one vector (C,) or rows (K, C).")
@click.option("--facets", type=click.IntRange(2, 16), default=4, show_default=True,
              help="Pictures per unit for --objective diversity.")
@click.option("--negative", is_flag=True, help="Minimise instead: what the unit responds to "
                                               "least (negative feature visualization).")
@click.option("--steps", type=click.IntRange(1, 100000), default=512, show_default=True,
              help="Optimisation steps per unit (Lucid's 512).")
@click.option("--size", type=click.IntRange(16, 1024), default=128, show_default=True,
              help="Picture size in pixels (upsampled to the model's input size, as Lucid).")
@click.option("--batch", type=click.IntRange(1, 4096), default=None,
              help="Pictures optimised together  [default: 16 on CPU, 64 on a GPU]")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="Seed of the initial images and the transforms: the same seed on the same "
                   "machine with the same number of torch threads gives the same PNG bytes "
                   "(another thread count changes float rounding, and the pictures slightly).")
@click.option("--param", type=click.Choice(["fourier", "maco"]), default="fourier",
              show_default=True,
              help="Image parameterization: fourier (Lucid's: decorrelated Fourier image, jitter/"
                   "scale/rotate, Adam) or maco (Fel et al. 2023: only the Fourier phase is "
                   "optimised, the magnitude is a natural-image spectrum shipped with the "
                   "package; random crops and noise; also writes a transparency map).")
@click.option("--from-image", "from_image", type=click.Path(dir_okay=False, path_type=Path),
              default=None, metavar="FILE",
              help="Feature accentuation (Hamblin et al. 2024): start from this photo and push "
                   "the unit into it while --keep-layer's activations stay close to the photo's.")
@click.option("--keep-layer", default=None, metavar="LAYER",
              help="With --from-image: the earlier layer kept close to the photo  [default: the "
                   "layer halfway between the input and LAYER]")
@click.option("--keep-weight", type=click.FloatRange(0, 1e6), default=1.0, show_default=True,
              help="With --from-image: strength of the penalty, per unit of relative squared "
                   "distance, as a multiple of the unit's activation.")
@click.option("--images", "image_dirs", multiple=True, type=click.Path(path_type=Path),
              metavar="DIR",
              help="Score each render against the unit's strongest activation over these photos "
                   "(repeatable; 'N.Nx best ex.' on the sheet, relative_to_best_example in the "
                   "manifest).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True,
              help="Arithmetic of the forward/backward pass: auto = bfloat16 where the hardware "
                   "has it natively, else float32.")
@click.option("--shard", "shard", default=None, type=SHARD,
              help="Render only every N-th unit, starting at the K-th (K = 0..N-1), to split a "
                   "layer across processes or machines; shards writing to the same --out merge "
                   "into one manifest and contact sheet.")
@launcher_options
@out_option("outputs/visualize/MODEL/LAYER")
@quiet_option
def visualize(layer, load_model, units_spec, objective, direction_file, facets, negative, steps,
              size, batch, seed, param, from_image, keep_layer, keep_weight, image_dirs,
              precision, shard, launch, out_dir, quiet):
    """Render feature visualizations of the units of LAYER.

    Activation maximization as in Lucid: a decorrelated Fourier image, random jitter, scale and
    rotation, Adam at 0.1; the picture is the moving average of the iterates. Many units are
    optimised together in one batch and the forward pass stops at LAYER. Writes one PNG per unit
    (units/), a labelled contact sheet (sheet*.png) and a manifest (manifest*.json: model,
    weights, settings, each unit's final activation and time).

    Finished units are kept as they complete: a re-run with the same settings skips them (resume
    after Ctrl-C or a crash), and renders are also cached across commands ($CIRCUITS_CACHE/renders).
    Another layer, or other settings for units already in --out, is refused (nothing of the
    earlier run is replaced): give each its own --out. --negative and other objectives have
    their own file names and share a folder. A file in --out that circuits did not write is
    never replaced.

    \b
    Examples:
      circuits visualize inception_4c --units 0-15 -m googlenet-bvlc
      circuits visualize 4c --units 447 --objective diversity -m googlenet-bvlc
      circuits visualize 4c --units 447 --negative --steps 256 -m googlenet-bvlc
      circuits visualize 4c --objective direction --direction dirs.npy -m googlenet-bvlc
      circuits visualize 5b --units 0-7 --param maco -m googlenet-bvlc
      circuits visualize 4c --units 447 --from-image dog.jpg -m googlenet-bvlc
      # Slurm array job, 8 machines:  #SBATCH --array=0-7
      circuits visualize 4c --shard $SLURM_ARRAY_TASK_ID/8 --out runs/4c -m googlenet-bvlc
    """
    from ..errors import CircuitsError
    from .common import set_interrupt_note

    if direction_file is not None and objective != "direction":
        raise CircuitsError("--direction is only used with --objective direction")
    if objective == "direction" and direction_file is None:
        raise CircuitsError("--objective direction needs --direction FILE (a .npy, .txt/.csv or "
                            ".json vector over the layer's channels, or rows of them)")

    if from_image is not None and not from_image.is_file():
        raise CircuitsError(f"--from-image {str(from_image)!r} does not exist")
    if keep_layer is not None and from_image is None:
        raise CircuitsError("--keep-layer is only used with --from-image")
    for folder in image_dirs:
        if not Path(folder).exists():
            raise CircuitsError(f"--images {str(folder)!r} does not exist")

    from ..render.run import accentuation, visualize_layer
    from ..units import load_directions, parse_channels
    from .options import launch_array

    # --launcher: the same command as array jobs (one --shard each), then this run gathers
    if launch_array(launch, shard, Path(out_dir or "outputs/visualize") / ".submitit",
                    "circuits-visualize", quiet):
        shard = None
    model = load_model()
    if "@" in layer:  # LAYER@FILE: the rows of a direction file or the features of an SAE
        return _visualize_file_units(model, layer, units_spec, objective, facets, negative,
                                     steps, size, batch, seed, param, precision, shard,
                                     out_dir, quiet)
    info = model.layer(layer)
    accent = None
    if from_image is not None:
        accent = accentuation(model, info.name, from_image, keep_layer, keep_weight, size)
    directions = None
    if objective == "direction":
        directions = load_directions(direction_file, info.channels, info.name)
    n = directions.shape[0] if directions is not None else info.channels
    what = "directions in the file" if directions is not None else info.name
    channels = parse_channels(units_spec, n, what)
    set_interrupt_note("finished units are kept on disk; re-run to resume")
    if image_dirs:  # an activation pass runs before visualize_layer claims --out: claim first
        from ..files import claim_output
        from ..render.run import default_out_dir

        claim_output(out_dir or default_out_dir(model, info.name), "visualize", cache=True)
    best = best_examples(model, info.name, list(image_dirs), objective, negative) \
        if image_dirs else None
    visualize_layer(model, info.name, channels=channels, objective=objective,
                    directions=directions, facets=facets, negative=negative,
                    from_image=accent, best=best, steps=steps, size=size,
                    batch=batch, seed=seed, param=param, precision=precision, shard=shard,
                    out_dir=out_dir, progress=not quiet, echo=click.echo)


def _visualize_file_units(model, spec, units_spec, objective, facets, negative, steps, size,
                          batch, seed, param, precision, shard, out_dir, quiet):
    """``visualize LAYER@FILE --units LIST``: rows of a direction file, or features of an SAE
    folder, rendered by their own read-out."""
    from ..errors import CircuitsError
    from ..render.run import visualize_layer
    from ..units import parse_channels, units_from_file

    layer, _, path = spec.partition("@")
    path = path.split("#", 1)[0]
    if objective == "direction":
        raise CircuitsError("LAYER@FILE already names directions; drop --objective direction")
    every = units_from_file(model, layer, path)
    if every and every[0].kind == "feature" and units_spec == "all":
        raise CircuitsError(f"the SAE in {path} has {len(every)} features; choose some with "
                            "--units, e.g. --units 0-15")
    rows = parse_channels(units_spec, len(every), path)
    units = [every[r] for r in rows]
    return visualize_layer(model, units[0].layer, units=units, objective=objective, facets=facets,
                           negative=negative, steps=steps, size=size, batch=batch, seed=seed,
                           param=param, precision=precision, shard=shard, out_dir=out_dir,
                           progress=not quiet, echo=click.echo)


def best_examples(model, layer: str, images, objective: str,
                  negative: bool) -> dict | None:
    """Per channel, the strongest activation over an image set, in the render's own measure
    (channel and diversity: the spatial mean; neuron: the spatial max, i.e. the neuron at its
    best position); from the activation store (computed once, cached). None for directions
    and negative renders, which have no such reference."""
    if objective == "direction" or negative:
        return None
    import numpy as np

    from ..evidence.activations import layer_activations

    acts = layer_activations(model, layer, images)
    stat = "max" if objective == "neuron" else "mean"
    table = np.asarray(acts.stats[stat])
    rows = table.argmax(axis=0)
    return {"images": acts.n_images, "stat": stat,
            "value": table.max(axis=0).astype(float).tolist(),
            "path": [str(acts.paths[r]) for r in rows]}
