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
      circuits toy train --out toy.pt          # about 5 minutes on 2 CPU cores
      circuits layers -m toy --weights toy.pt
    """


@toy.command()
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Where to write the checkpoint (a .pt file).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Passes over the training scenes.  [default: the shipped recipe's, 6]")
@click.option("--seed", type=int, default=None,
              help="Seed of the training scenes, initialisation and batch order.  [default: 0]")
@click.option("--n-train", "n_train", type=click.IntRange(min=100), default=None,
              help="Number of training scenes.  [default: the shipped recipe's, 16000]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for training.  [default: 2]")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def train(out: Path, epochs, seed, n_train, threads, force):
    """Train the toy model from scratch and write a checkpoint that -m toy --weights FILE loads.

    With no options this is the recipe of the shipped weights (recorded inside the checkpoint,
    with the held-out accuracy reached). Progress is shown; the held-out accuracy is printed
    after every epoch.
    """
    if out.exists() and not force:
        raise CircuitsError(f"{str(out)!r} already exists; choose another --out or pass --force "
                            "to overwrite it")
    if out.suffix != ".pt":
        raise CircuitsError(f"--out {str(out)!r} should end in .pt (a PyTorch checkpoint)")
    if out.parent and not out.parent.exists():
        try:
            out.parent.mkdir(parents=True)
        except OSError as err:
            raise CircuitsError(f"cannot create the folder {str(out.parent)!r} ({err.strerror}); "
                                "choose another --out") from None
    from dataclasses import replace

    from ..toy.train import Recipe, save_checkpoint
    from ..toy.train import train as run_training

    recipe = Recipe()
    changes = {k: v for k, v in dict(epochs=epochs, seed=seed, n_train=n_train,
                                     threads=threads).items() if v is not None}
    recipe = replace(recipe, **changes)
    ckpt = run_training(recipe, log=lambda msg: click.echo(msg, err=True))
    save_checkpoint(ckpt, out)
    m = ckpt["metrics"]
    click.echo(f"wrote {out}: held-out accuracy {m['held_out_accuracy']:.3f} "
               f"({m['held_out']}), {m['parameters']:,} parameters, {m['train_seconds']:.0f} s")
