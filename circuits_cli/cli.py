"""The ``circuits`` command line: a thin layer over the Python API.

Commands load lazily (``circuits --help`` does not import torch), and every
:class:`~circuits_cli.errors.CircuitsError` becomes a one-line ``Error: ...`` with exit status 2.
"""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .commands.common import ARGV_KEY, INTERRUPT_NOTE
from .errors import CircuitsError

# command name -> "module:attribute" (a click.Command), in the order of the pipeline.
COMMANDS = {
    "layers": "circuits_cli.commands.layers:layers",
    "classify": "circuits_cli.commands.classify:classify",
    "visualize": "circuits_cli.commands.visualize:visualize",
    "weights": "circuits_cli.commands.weights:weights",
    "trace": "circuits_cli.commands.trace:trace",
    "graph": "circuits_cli.commands.graph:graph",
    "examples": "circuits_cli.commands.examples:examples",
    "ablate": "circuits_cli.commands.ablate:ablate",
    "find": "circuits_cli.commands.find:find",
    "superposition": "circuits_cli.commands.superposition:superposition",
    "cache": "circuits_cli.commands.cache:cache",
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
        # the command line as typed (command name first): --launcher re-runs it as array jobs
        ctx.meta[ARGV_KEY] = [str(a) for a in args]
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
        from .files import release_claims

        try:
            # numpy imports numpy.random on first use, and a Ctrl-C that lands while its Cython
            # modules initialise is lost (the interrupt is cleared, the import succeeds): seen
            # as 'toy train' running on after Ctrl-C right after it started rendering. Importing
            # it here, before any command's work, closes that window.
            import numpy.random  # noqa: F401

            return super().invoke(ctx)
        except CircuitsError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            # Each command says what an interrupt keeps (set_interrupt_note); by default nothing.
            note = ctx.meta.get(INTERRUPT_NOTE, "nothing was written")
            click.echo(f"Interrupted; {note}.", err=True)
            ctx.exit(130)
        finally:
            release_claims()

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's main, with every error as ONE line on stderr: ``Error: ...``, exit status 2
        (usage errors included, which Click prints as four lines by default)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as err:
            message = " ".join(err.format_message().split())
            if isinstance(err, click.exceptions.NoArgsIsHelpError):
                click.echo(err.ctx.get_help())
                sys.exit(0)
            if (isinstance(err, click.UsageError) and err.ctx is not None
                    and "--help" not in message):
                message += f" (see '{err.ctx.command_path} --help')"
            click.echo(f"Error: {message}", err=True)
            sys.exit(2)
        except CircuitsError as err:  # raised while parsing, before invoke
            click.echo(f"Error: {err}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Interrupted; nothing was written.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"],
                                              "max_content_width": 100,
                                              "auto_envvar_prefix": "CIRCUITS"})
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
    $CIRCUITS_MODEL), --weights FILE for local weights, --device auto|cpu|cuda|mps. The same
    option means the same everywhere: --top-k N, --out DIR (always a folder), --json, --quiet,
    --cache-dir DIR (default $CIRCUITS_CACHE or ~/.cache/circuits). Any option can be set as
    CIRCUITS_<COMMAND>_<OPTION>, e.g. CIRCUITS_VISUALIZE_STEPS=128.
    """


def main(argv=None):
    # a file name that is not valid UTF-8 prints with its odd bytes as \xNN, never a crash
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    cli.main(args=argv, prog_name="circuits")


if __name__ == "__main__":
    main()
