"""``circuits toy``: the toy world and its model (``toy train`` redoes the shipped weights)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import CircuitsError


@click.group()
def toy():
    """The toy world: procedural scenes whose classes share parts, and the small InceptionV1
    trained on them that ships as the zoo model 'toy'.

    \b
    Example:
      circuits toy train --out runs/toy        # about 5 minutes on 2 CPU cores
      circuits layers -m toy --weights runs/toy/toy.pt
    """


CHECKPOINT = "toy.pt"


@toy.command()
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help=f"Output folder; the checkpoint is written as DIR/{CHECKPOINT}.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Passes over the training scenes.  [default: the shipped recipe's, 6]")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=None,
              help="Seed of the training scenes, initialisation and batch order.  "
                   "[default: the shipped recipe's, 1]")
@click.option("--n-train", "n_train", type=click.IntRange(min=100), default=None,
              help="Number of training scenes.  [default: the shipped recipe's, 16000]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for training; another count than the recipe's rounds "
                   "differently, so the weights differ bit for bit.  [default: 1]")
@click.option("--unit-target", "unit_targets", multiple=True, metavar="UNIT=WHAT",
              help="Give UNIT (a mixed block's 'layer:channel') a target of its own: a part "
                   "(wheels, windows, ...: mark every cell it covers), a class (a dot at each "
                   "object's centre) or CLASS@box (every cell of the object's box). Repeat it; "
                   "it replaces the recipe's three, and the channel dropout of mixed4a then "
                   "spares the mixed4a units named here. This plants the car circuit at units "
                   "you choose, e.g. --unit-target mixed4a:12=wheels --unit-target "
                   "mixed4a:100=windows --unit-target mixed4b:30=car@box.  [default: the "
                   "shipped recipe's mixed4b:99=car@box, mixed4a:63=wheels, mixed4a:37=windows]")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--force", is_flag=True,
              help=f"Replace a {CHECKPOINT} that an earlier 'toy train' wrote in DIR (a file "
                   "circuits did not write is never replaced).")
def train(out: Path, epochs, seed, n_train, threads, unit_targets, quiet, force):
    """Train the toy model from scratch and write DIR/toy.pt, which -m toy --weights loads.

    With no options this is the recipe of the shipped weights (recorded inside the checkpoint,
    with the held-out accuracy reached). Progress is shown; the held-out accuracy is printed
    after every epoch. Training is not resumable: Ctrl-C writes nothing.
    """
    from ..files import claim_output

    if out.suffix in (".pt", ".pth"):
        raise CircuitsError(f"--out {str(out)!r} looks like a file; --out is a folder (the "
                            f"checkpoint is written as DIR/{CHECKPOINT}), e.g. --out runs/toy")
    from dataclasses import replace

    from ..toy.train import Recipe, save_checkpoint, with_unit_targets
    from ..toy.train import train as run_training

    recipe = Recipe()
    if unit_targets:
        targets = {}
        for item in unit_targets:
            unit, sep, what = item.partition("=")
            if not sep or not unit.strip() or not what.strip():
                raise CircuitsError(f"--unit-target {item!r}: expected UNIT=WHAT, e.g. "
                                    "mixed4a:12=wheels")
            targets[unit.strip()] = what.strip()
        try:
            recipe = with_unit_targets(recipe, targets)
        except ValueError as e:
            raise CircuitsError(f"--unit-target: {e}") from None
    claim_output(out, "toy train", (CHECKPOINT,))  # unwritable, or a user's file: before work
    path = out / CHECKPOINT
    if path.exists() and not force:
        raise CircuitsError(f"{str(path)!r} already exists; choose another --out or pass --force "
                            "to replace it")
    changes = {k: v for k, v in dict(epochs=epochs, seed=seed, n_train=n_train,
                                     threads=threads).items() if v is not None}
    recipe = replace(recipe, **changes)
    ckpt = run_training(recipe, log=(lambda msg: None) if quiet else
                        (lambda msg: click.echo(msg, err=True)), progress=not quiet)
    save_checkpoint(ckpt, path)
    m = ckpt["metrics"]
    click.echo(f"wrote {path}: held-out accuracy {m['held_out_accuracy']:.3f} "
               f"({m['held_out']}), {m['parameters']:,} parameters, {m['train_seconds']:.0f} s")
