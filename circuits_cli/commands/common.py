"""Options every command shares, so that every command takes the model the same way."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..zoo import DEFAULT_MODEL, MODEL_ENV

INTERRUPT_NOTE = "circuits.interrupt_note"  # ctx.meta key the CLI reads on Ctrl-C
ARGV_KEY = "circuits.argv"  # ctx.meta key: the command line as typed (command name first)


def set_interrupt_note(note: str) -> None:
    """What Ctrl-C keeps in the running command, e.g. 'finished units are kept on disk; re-run
    to resume' (the CLI prints it after 'Interrupted; '; by default 'nothing was written')."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[INTERRUPT_NOTE] = note


def model_options(func):
    """Add ``--model/-m``, ``--weights`` and ``--device``; the command receives ``load_model``,
    a function of no arguments that builds the chosen model (errors come out as one line)."""

    @click.option("--model", "-m", "model_name", envvar=MODEL_ENV, default=DEFAULT_MODEL,
                  show_default=True, metavar="NAME",
                  help="Zoo model (inceptionv1, googlenet-bvlc, toy, torchvision:NAME, "
                       f"timm:NAME) or FILE.py:FACTORY for your own. Env: ${MODEL_ENV}.")
    @click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  metavar="FILE", help="Local weights file instead of the model's default "
                                       "(needed offline for inceptionv1); 'random' for the "
                                       "model's random initialisation (seeded).")
    @click.option("--output", "output_key", default=None, metavar="KEY|INDEX",
                  help="For a model returning a tuple or dict: the element holding the class "
                       "logits (default: element 0 of a tuple, 'logits' of a dict).")
    @click.option("--labels", "labels_file", type=click.Path(dir_okay=False, path_type=Path),
                  default=None, metavar="FILE",
                  help="Class names, one per line in output order (or a JSON list).")
    @click.option("--device", default="auto", show_default=True,
                  type=click.Choice(["auto", "cpu", "cuda", "mps"], case_sensitive=False),
                  help="Where to run.")
    @functools.wraps(func)
    def wrapper(*args, model_name, weights, device, output_key, labels_file, **kwargs):
        from ..zoo import RANDOM, load_model

        if weights is not None and str(weights) == RANDOM and not weights.exists():
            weights = RANDOM

        def loader():
            return load_model(model_name, weights=weights, device=device, output=output_key,
                              labels=labels_file)

        return func(*args, load_model=loader, **kwargs)

    return wrapper
