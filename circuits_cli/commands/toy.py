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
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--force", is_flag=True,
              help=f"Replace a {CHECKPOINT} that an earlier 'toy train' wrote in DIR (a file "
                   "circuits did not write is never replaced).")
def train(out: Path, epochs, seed, n_train, threads, quiet, force):
    """Train the toy model from scratch and write DIR/toy.pt, which -m toy --weights loads.

    With no options this is the recipe of the shipped weights (recorded inside the checkpoint,
    with the held-out accuracy reached). Progress is shown; the held-out accuracy is printed
    after every epoch. Training is not resumable: Ctrl-C writes nothing.
    """
    from ..files import claim_output

    if out.suffix in (".pt", ".pth"):
        raise CircuitsError(f"--out {str(out)!r} looks like a file; --out is a folder (the "
                            f"checkpoint is written as DIR/{CHECKPOINT}), e.g. --out runs/toy")
    claim_output(out, "toy train", (CHECKPOINT,))  # unwritable, or a user's file: before work
    path = out / CHECKPOINT
    if path.exists() and not force:
        raise CircuitsError(f"{str(path)!r} already exists; choose another --out or pass --force "
                            "to replace it")
    from dataclasses import replace

    from ..toy.train import Recipe, save_checkpoint
    from ..toy.train import train as run_training

    recipe = Recipe()
    changes = {k: v for k, v in dict(epochs=epochs, seed=seed, n_train=n_train,
                                     threads=threads).items() if v is not None}
    recipe = replace(recipe, **changes)
    ckpt = run_training(recipe, log=(lambda msg: None) if quiet else
                        (lambda msg: click.echo(msg, err=True)), progress=not quiet)
    save_checkpoint(ckpt, path)
    m = ckpt["metrics"]
    click.echo(f"wrote {path}: held-out accuracy {m['held_out_accuracy']:.3f} "
               f"({m['held_out']}), {m['parameters']:,} parameters, {m['train_seconds']:.0f} s")
