"""``circuits layers``: the model's addressable layers, their shapes and branch splits."""

from __future__ import annotations

import json

import click

from .common import model_options


@click.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--blocks", is_flag=True, help="Only block-level layers (no branch outputs).")
def layers(load_model, as_json, blocks):
    """List the layers a unit can live in.

    A unit is LAYER:CHANNEL, e.g. mixed4c:447, or 4c:447 for Inception models. Inception blocks
    show their branch split (1x1 | 3x3 | 5x5 | pool): the channel ranges of the concatenation.
    A layer "traced as" another holds the same tensor (a stage and its last block) or only its
    BatchNorm/ReLU (conv -> BatchNorm -> ReLU): tracing treats the group as one layer. Token
    layers (transformer blocks, kind "tokens") are read over their patch tokens as a D x h x w
    map; NAME/cls (kind "token") is the class token alone, a D x 1 x 1 map.

    \b
    Examples:
      circuits layers -m googlenet-bvlc --blocks
      circuits layers -m torchvision:resnet50 --json
    """
    model = load_model()
    rows = list(model.layers.values())
    if blocks:  # block-level view: drop branch outputs (models without blocks keep everything)
        rows = [info for info in rows if info.kind != "branch"]
    if as_json:
        click.echo(json.dumps({
            "model": model.name, "weights": model.weights_id, "input_size": model.input_size,
            "layers": [{"name": i.name, "channels": i.channels, "shape": list(i.shape or ()),
                        "kind": i.kind, "branches": [{"name": b, "channels": n}
                                                     for b, n in i.branches],
                        "traced_as": i.alias_of or i.name,
                        "tokens": list(i.tokens) if i.tokens else None} for i in rows]},
            indent=2))
        return
    width = max(len(i.name) for i in rows)
    click.echo(f"{model.name}  ({model.description or model.weights_id}; "
               f"input {model.input_size}x{model.input_size})")
    click.echo(f"{'layer':<{width}}  {'channels x H x W':>16}  {'kind':<6}  notes")
    for info in rows:
        shape = " x ".join(str(s) for s in info.shape) if info.shape else str(info.channels)
        split = ""
        if info.branches:
            ranges, start = [], 0
            for name, size in info.branches:
                ranges.append(f"{name} {start}-{start + size - 1}")
                start += size
            split = " | ".join(ranges)
        note = split
        if info.alias_of:
            note = f"traced as {info.alias_of}"
        elif info.tokens and info.tokens[0] == "patches":
            note = (f"residual stream over {info.shape[1]}x{info.shape[2]} patch tokens"
                    + (f" (after {info.tokens[1]} prefix token(s))" if info.tokens[1] else ""))
        elif info.tokens:
            note = f"the class token (position {info.tokens[1]}) alone"
        click.echo(f"{info.name:<{width}}  {shape:>16}  {info.kind:<6}  {note}".rstrip())
    aliases = ", ".join(f"{k}={v}" for k, v in list(model.aliases.items())[:4])
    if aliases:
        click.echo(f"short names: {aliases}, ...")
