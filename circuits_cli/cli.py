"""The ``circuits`` command line: a thin layer over the Python API.

Commands load lazily (``circuits --help`` does not import torch), and every
:class:`~circuits_cli.errors.CircuitsError` becomes a one-line ``Error: ...`` with exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import CircuitsError

# command name -> "module:attribute" (a click.Command), in the order of the pipeline.
COMMANDS = {
    "layers": "circuits_cli.commands.layers:layers",
    "classify": "circuits_cli.commands.classify:classify",
    "visualize": "circuits_cli.commands.visualize:visualize",
    "weights": "circuits_cli.commands.weights:weights",
    "trace": "circuits_cli.commands.trace:trace",
    "examples": "circuits_cli.commands.examples:examples",
    "ablate": "circuits_cli.commands.ablate:ablate",
    "find": "circuits_cli.commands.find:find",
    "superposition": "circuits_cli.commands.superposition:superposition",
    "sae": "circuits_cli.commands.sae:sae",
    "steer": "circuits_cli.commands.steer:steer",
    "atlas": "circuits_cli.commands.atlas:atlas",
    "toy": "circuits_cli.commands.toy:toy",
    "demo": "circuits_cli.commands.demo:demo",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used (Click's documented lazy pattern)."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name):
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as err:
            if args and args[0] not in COMMANDS and not args[0].startswith("-"):
                import difflib

                close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise click.UsageError(f"No such command {args[0]!r}.{hint} "
                                       "'circuits --help' lists them.", ctx) from err
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CircuitsError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished work is kept on disk, re-run to resume.", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="circuits")
def cli():
    """Circuit discovery in vision models.

    Render what units respond to, find the units that build them through the weights, and draw
    the circuit, as in the Distill Circuits thread ("Zoom In").

    \b
    Typical session:
      circuits layers -m googlenet-bvlc
      circuits visualize inception_4c --units 0-7 -m googlenet-bvlc
      circuits trace inception_4c:12 -m googlenet-bvlc

    Every command takes the model the same way: --model/-m NAME (default inceptionv1, or
    $CIRCUITS_MODEL), --weights FILE for local weights, --device auto|cpu|cuda|mps.
    """


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="circuits", standalone_mode=True)
    except CircuitsError as err:  # raised while parsing, before invoke
        click.echo(f"Error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
