"""``circuits atlas``: a browsable static site of a model's units."""

from __future__ import annotations

from pathlib import Path

import click

from .common import model_options
from .options import activation_cache_option, launcher_options


@click.command()
@model_options
@click.option("--layers", "layers_spec", required=True, metavar="LAYERS",
              help="Comma-separated layers (short names allowed), or 'blocks' for every "
                   "Inception block.")
@click.option("--units", "units_specs", multiple=True, metavar="[LAYER:]LIST",
              help="Channels: 'all' (default) or e.g. '0-63,447' for every listed layer, or "
                   "LAYER:LIST for one layer (repeat the option), e.g. --units 4b:90-110.")
@click.option("--images", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Image folder for dataset examples (without it, pages have none).")
@activation_cache_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None, metavar="SITE",
              help="Site folder  [default: outputs/atlas/MODEL]")
@click.option("--steps", type=click.IntRange(1, 100000), default=512, show_default=True,
              help="Feature visualization steps (renders are shared with 'circuits visualize' "
                   "through the render cache when steps, size and seed agree).")
@click.option("--size", type=click.IntRange(16, 1024), default=None,
              help="Render size in pixels  [default: 128, or the model's input size if smaller]")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--batch", type=click.IntRange(1, 4096), default=None,
              help="Pictures optimised together  [default: 64 for renders of 64 px or less, "
                   "else 16 on CPU, 64 on a GPU]")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True)
@click.option("--kinds", default="channel,negative,diversity", show_default=True,
              metavar="LIST", help="Feature visualizations per unit: channel, negative, "
                                   "diversity (negative is left out where a layer never goes "
                                   "below 0).")
@click.option("--facets", type=click.IntRange(2, 16), default=4, show_default=True,
              help="Pictures of the diversity render.")
@click.option("--top-inputs", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--top-outputs", type=click.IntRange(1, 1000), default=8, show_default=True)
@click.option("--top-examples", type=click.IntRange(1, 100), default=9, show_default=True)
@click.option("--top-classes", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--classes-for", "classes_spec", default=None, metavar="LAYERS",
              help="Layers whose pages list the classes each unit contributes to  [default: the "
                   "last two Inception blocks; 'none' for no class lists]")
@click.option("--features", "features_file", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="JSON of dictionary (SAE) features per unit "
                                   "(format circuits-atlas-features/1) for the 'Features of "
                                   "this unit' section.")
@click.option("--sae", "sae_dirs", multiple=True, type=click.Path(path_type=Path),
              metavar="DIR", help="SAE folder ('circuits sae train') of one of the layers: its "
                                  "units' pages list the features writing most into them "
                                  "(repeat for several layers; reads --images or --cache).")
@click.option("--shard", "shard_spec", default=None, metavar="K/N",
              help="Write only every N-th unit page, from the K-th (K = 0..N-1): a Slurm array "
                   "job's part. Every run writes the index for the pages that exist.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="torch CPU threads  [default: torch's]; 1 is often fastest on a busy machine.")
@launcher_options
@click.option("--quiet", "-q", is_flag=True, help="No progress.")
def atlas(load_model, layers_spec, units_specs, images, activation_cache_dir, out_dir, steps,
          size, seed, batch, precision, kinds, facets, top_inputs, top_outputs, top_examples,
          top_classes, classes_spec, features_file, sae_dirs, shard_spec, threads, launch, quiet):
    """Write a browsable static site of a model's units (the Microscope for your own model).

    An index of the layers (shapes, branch splits); per layer, a grid of every unit's feature
    visualization with a search box; per unit, its feature visualizations (channel, negative,
    diversity), dataset examples with receptive-field crops, strongest inputs with their
    spatial weights, strongest outputs and, for late layers, the classes it feeds. Every unit
    named on a page links to its own page when it is in the atlas. Open SITE/index.html in a
    browser (file:// works) or put the folder on any static host.

    Dataset examples come from --images, or from an activation cache (--cache DIR, written by
    'circuits cache' over every layer of the atlas) without a forward pass.

    Everything comes from the caches: a re-run skips finished pages and renders nothing twice,
    so an interrupted run resumes where it stopped.

    \b
    Examples:
      circuits atlas -m toy --layers blocks --images scenes/ --steps 128 --out atlas/
      circuits atlas -m googlenet-bvlc --layers 4c --units 0-63 --images photos/ --steps 64
      # Slurm array job, 16 machines (#SBATCH --array=0-15), then any run writes the index:
      circuits atlas -m googlenet-bvlc --layers blocks --images photos/ --out site \\
          --shard $SLURM_ARRAY_TASK_ID/16
    """
    from ..atlas import AtlasSettings, build_atlas, plan_atlas
    from ..atlas.build import parse_shard
    from ..errors import CircuitsError
    from ..files import claim_output, output_dir

    shard = parse_shard(shard_spec)
    from .options import images_or_cache

    # dataset examples from --images or from an activation cache (either, or none at all)
    cache = images_or_cache([images] if images else [], activation_cache_dir, required=False)
    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    if features_file is not None and not features_file.is_file():
        why = ("is a folder; --features takes a JSON file (format circuits-atlas-features/1)"
               if features_file.is_dir() else "does not exist")
        raise CircuitsError(f"features file {str(features_file)!r} {why}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from .options import launch_array

    # --launcher: the same command as array jobs (one --shard each); this run then writes the
    # index over every page they wrote
    if launch_array(launch, shard, Path(out_dir or "outputs/atlas") / ".submitit",
                    "circuits-atlas", quiet):
        shard = None
    model = load_model()
    settings = AtlasSettings(steps=steps, size=size, seed=seed, precision=precision, batch=batch,
                             kinds=kind_list, facets=facets, top_inputs=top_inputs,
                             top_outputs=top_outputs, top_examples=top_examples,
                             top_classes=top_classes)
    class_layers = None
    if classes_spec is not None:
        class_layers = [] if classes_spec.strip().lower() == "none" else [
            s.strip() for s in classes_spec.split(",") if s.strip()]
    out = out_dir or output_dir("atlas", model.name, "site")
    claim_output(out, "atlas", cache=True)  # writable --out and cache before any work; a
    # user's file is never replaced (checked at each write into the claimed folder)
    units = _units(units_specs, layers_spec, model)
    plan = plan_atlas(model, out, layers_spec, units=units, images=images, settings=settings,
                      shard=shard, class_layers=class_layers, features=features_file,
                      saes=sae_dirs, cache=cache)
    n = len(plan.mine)
    click.echo(f"atlas of {model.name}: {n} unit page(s) in {', '.join(plan.layers)}"
               + (f" (shard {shard[0]}/{shard[1]})" if shard else "") + f" -> {out}", err=True)
    result = build_atlas(plan, progress=not quiet, echo=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {result.written} unit page(s), {result.skipped} already current; "
               f"{result.in_site} in the site; rendered {result.rendered} picture(s)")
    for what, s in (("time", result.seconds), ("CPU time", result.cpu_seconds)):
        click.echo(f"{what}: {s['total']:.1f} s (rendering {s['rendering']:.1f}, activation "
                   f"pass {s['activations']:.1f}, weights {s['weights']:.1f}, pages "
                   f"{s['pages']:.1f})")
    click.echo(f"size on disk: {result.size_bytes / 1e6:.1f} MB in {result.n_files} files")
    if result.missing:
        click.echo(f"{len(result.missing)} planned unit page(s) not written yet (other shards?): "
                   f"{', '.join(result.missing[:5])}{', ...' if len(result.missing) > 5 else ''}")
    click.echo(f"open {result.index}")


def _units(specs: tuple[str, ...], layers_spec: str, model):
    """``--units`` values -> what :func:`plan_atlas` takes: one list for every layer, or a dict
    {layer: list} (layers without their own list get the plain one, default all)."""
    from ..atlas import parse_layers
    from ..errors import CircuitsError

    plain = [s for s in specs if ":" not in s]
    if len(plain) > 1:
        raise CircuitsError("--units without a layer was given twice; join the lists with ','")
    per = [s for s in specs if ":" in s]
    if not per:
        return plain[0] if plain else None
    layers = parse_layers(model, layers_spec)
    out = {n: plain[0] if plain else "all" for n in layers}
    for s in per:
        name, _, spec = s.partition(":")
        layer = model.layer(name.strip()).name
        if layer not in out:
            raise CircuitsError(f"--units {s!r} names layer {layer!r}, which is not in --layers")
        out[layer] = spec
    return out
