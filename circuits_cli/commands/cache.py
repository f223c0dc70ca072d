"""``circuits cache``: a sharded activation cache on disk, for data sets that do not fit in
memory (written by one process, ``--shard K/N`` jobs, or an array on Slurm)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import model_options, set_interrupt_note
from .options import SHARD, launcher_options, warnings_to_stderr


@click.command()
@click.argument("layers", metavar="LAYER[,LAYER...]")
@click.option("--images", "images", required=True, multiple=True, metavar="SOURCE",
              help="A folder tree (ImageNet train layout), a file list (.txt, one path a line), "
                   "WebDataset tar shards (a.tar, 'shards-{000..099}.tar', a folder of .tar) or "
                   "toy:N[:SEED] (toy scenes made on the fly); repeatable.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="The cache folder (created; an existing cache of the same rows is resumed "
                   "or appended to).")
@click.option("--positions", type=click.IntRange(min=0), default=16, show_default=True,
              help="Spatial positions sampled per image (seeded by the image), one row each; "
                   "0 = every position.")
@click.option("--shard", type=SHARD, default=None,
              help="Write only every N-th shard from the K-th (one job of N; e.g. --shard "
                   "$SLURM_ARRAY_TASK_ID/N). The last job to finish merges.")
@click.option("--shard-images", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Images per shard file.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampled positions.")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader processes decoding images while the network runs (0: decode "
                   "in the main process). They pay where the CPU has cores the forward pass "
                   "leaves free (a GPU job); with 1-2 cores, 0 is faster.")
@launcher_options
@click.option("--quiet", is_flag=True, help="No progress.")
@model_options
def cache(layers, images, out_dir, positions, shard, shard_images, seed, batch, workers, launch,
          quiet, load_model):
    """Write the activations of LAYER (or several, comma-separated) over SOURCE into a
    sharded cache: fixed-size shards of raw float16 rows (np.memmap-able) and JSON metadata,
    one row per sampled position of each image. Interrupted or killed, the same command
    resumes (finished shards are kept, half-written ones redone); with another SOURCE into the
    same DIR it appends. 'circuits sae train --cache DIR' trains on it.

    \b
    Examples:
      circuits cache mixed4b -m toy --images toy:100000 --out cache/toy-4b
      circuits cache inception_4c -m googlenet-bvlc --images imagenet/train \\
          --out /scratch/cache-4c --shard $SLURM_ARRAY_TASK_ID/64
      circuits cache inception_4c -m googlenet-bvlc --images imagenet/train \\
          --out /scratch/cache-4c --launcher slurm --jobs 64 --slurm-partition gpu
    """
    from ..cache import open_sources, write_cache
    from ..cache.write import merge
    from ..errors import CircuitsError
    from ..files import claim_output

    names = [n.strip() for n in layers.split(",") if n.strip()]
    if not names:
        raise CircuitsError("give at least one LAYER, e.g. mixed4b or mixed4a,mixed4b")
    launcher = launch["launcher"]
    if launcher != "none" and shard is not None:
        raise CircuitsError("--shard is one job of an array; with --launcher the jobs are "
                            "started for you (use --jobs)")
    source = open_sources(images)  # a bad source fails before the model loads
    claim_output(out_dir, "cache", ["metadata.json"])
    options = {"positions": positions or None, "seed": seed, "shard_images": shard_images,
               "batch_size": batch, "workers": workers}
    set_interrupt_note("finished shards are kept; re-run the same command to resume")
    if launcher != "none":
        _launch(click.get_current_context(), names, images, out_dir, options, launcher,
                launch["jobs"], launch["slurm"], quiet)
        merged = merge(out_dir)
    else:
        model = load_model()
        with warnings_to_stderr():
            res = write_cache(model, names, source, out_dir, shard=shard or (0, 1),
                              progress=not quiet, **options)
        click.echo(f"wrote {len(res['written'])} shard(s), {res['rows']} rows "
                   f"({res['images_per_s'] or 0:.0f} images/s); {res['skipped']} already "
                   "there", err=True)
        merged = merge(out_dir, missing_ok=True)
        if merged is None:
            click.echo(f"{out_dir}: this job's shards are written; the cache is complete "
                       "once every --shard job has run", err=True)
            return
    rows = ", ".join(f"{k} {v}" for k, v in merged["rows"].items())
    click.echo(f"{out_dir}: {merged['images']} images ({merged['failed']} unreadable), "
               f"{len(merged['shards'])} shards, rows: {rows}")


def _launch(ctx, names, images, out_dir, options, launcher, jobs, slurm, quiet):
    from ..cache.jobs import cache_job
    from ..launch import run_array

    params = ctx.params
    weights = params.get("weights")
    spec = {"model": params.get("model_name"), "weights": str(weights) if weights else None,
            "device": params.get("device"), "layers": names,
            "images": [str(i) for i in images], "out": str(Path(out_dir).resolve()),
            "options": options}
    log = None if quiet else (lambda line: click.echo(line, err=True))
    run_array(cache_job, [(spec, k, jobs) for k in range(jobs)], launcher=launcher,
              folder=Path(out_dir) / ".submitit", slurm=slurm, name="circuits-cache", log=log)
