"""``circuits demo``: the whole pipeline on a car detector, offline on the toy model."""

from __future__ import annotations

from pathlib import Path

import click

from ..demo import TOY_STEPS
from .common import model_options
from .options import UNIT, cache_option, quiet_option


@click.command()
@model_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), metavar="DIR",
              default=Path("outputs/demo"), show_default=True, help="Output folder.")
@click.option("--unit", default=None, type=UNIT,
              help="Trace this unit instead of the model's car detector.")
@click.option("--images", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Images for dataset examples and ablation [default for toy: generated "
                   "scenes].")
@click.option("--steps", type=click.IntRange(1, 100000), default=None,
              help=f"Feature visualization steps  [default: {TOY_STEPS} for toy, 512 "
                   "otherwise]")
@quiet_option
@cache_option
def demo(load_model, out_dir, unit, images, steps, quiet, cache_dir):
    """Trace a car detector end to end, as "Zoom In" does.

    Finds the model's car unit (the papers' mixed4c:447 on inceptionv1; on toy, the unit of
    mixed4b most selective for cars), traces its circuit over two layers, renders the layer that
    feeds it (contact sheet), draws the circuit, and checks it against dataset examples and
    ablation of its inputs. Everything lands in --out: visualize/sheet.png,
    trace/circuit.png, trace/examples/, trace/report.html.

    Run it with -m toy for a fully offline demo (what `make demo` does).

    \b
    Examples:
      circuits demo -m toy
      circuits demo -m inceptionv1 --images ~/imagenet/val    # downloads the papers' model
      circuits demo -m googlenet-bvlc --unit 4c:12 --images ../shared/images/imagenet-samples
    """
    from ..demo import run_demo
    from ..units import parse_unit
    from .common import set_interrupt_note

    model = load_model()
    target = parse_unit(unit, model) if unit else None
    set_interrupt_note("finished renders and activation chunks are kept on disk; re-run to "
                       "resume")
    result = run_demo(model, out_dir, unit=target, images=images, steps=steps,
                      cache_dir=cache_dir, progress=not quiet,
                      echo=lambda msg: click.echo(msg, err=True))
    if result.findings:
        click.echo(f"What the inputs of {result.unit} detect:")
        for line in result.findings:
            click.echo(f"  {line}")
    if result.ablation:
        click.echo(f"What ablating them does to {result.unit}:")
        for line in result.ablation:
            click.echo(f"  {line}")
    click.echo(f"Done in {result.seconds:.0f} s. Open:")
    for path in (result.sheet, result.circuit_png, result.report):
        if path is not None:
            click.echo(f"  {path}")
