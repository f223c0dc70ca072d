"""``circuits graph``: the attribution graph of one image — which units and features carried it
to its answer."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import model_options
from .options import json_option, launcher_options, out_option, quiet_option


def _probability(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise ValueError
    return v


class _Fraction(click.ParamType):
    name = "FRACTION"

    def convert(self, value, param, ctx):
        try:
            return _probability(value) if isinstance(value, str) else float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number between 0 and 1", param, ctx)


def _sae_pairs(ctx, param, values):
    out = {}
    for v in values or ():
        layer, sep, folder = v.partition("=")
        if not sep or not layer or not folder:
            raise click.BadParameter(f"{v!r}: write LAYER=FOLDER (an SAE folder from "
                                     "'circuits sae train')", ctx, param)
        out[layer] = Path(folder)
    return out


@click.command()
@click.argument("image", type=click.Path(path_type=Path), required=False)
@model_options
@click.option("--target", default=None, metavar="CLASS|LAYER:UNIT",
              help="What the graph explains: a class (name, wnid or index: its logit) or a unit "
                   "(LAYER:CHANNEL: its mean over positions; LAYER:CHANNEL@Y,X one position).  "
                   "[default: the image's top class]")
@click.option("--layers", default=None, metavar="L1,L2,...",
              help="The graph's layers, in forward order.  [default: every block between the "
                   "input and the target (the mixed blocks of Inception models)]")
@click.option("--sae", "saes", multiple=True, callback=_sae_pairs, metavar="LAYER=FOLDER",
              help="Read LAYER through this SAE (repeatable): its nodes are the SAE's features, "
                   "plus one error node per position for what the SAE misses.")
@click.option("--node-threshold", type=_Fraction(), default=0.8, show_default=True,
              help="Pruning: keep the nodes that carry this share of the influence on the "
                   "target.")
@click.option("--edge-threshold", type=_Fraction(), default=0.98, show_default=True,
              help="Pruning: keep the edges that carry this share of the influence.")
@click.option("--max-nodes", type=click.IntRange(1, 100000), default=200, show_default=True,
              help="Nodes expanded (their inputs computed), in order of influence.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Nodes per batched backward pass.")
@click.option("--patch", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Side of an input patch node, in pixels.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path), default=None,
              metavar="DIR",
              help="Instead of IMAGE: a class-level graph, the unit-level graphs of these "
                   "images averaged (at most --max-images of them).")
@click.option("--max-images", type=click.IntRange(1, 10000), default=16, show_default=True,
              help="With --images: how many images (in sorted order) to average.")
@click.option("--merge-positions", is_flag=True,
              help="One node per unit (its mean over positions) instead of one per unit and "
                   "position.")
@click.option("--reference", "reference_dir", type=click.Path(path_type=Path), default=None,
              metavar="DIR",
              help="Images whose mean activations stand in for ablated nodes when measuring "
                   "faithfulness  [default: zero ablation]")
@click.option("--intervene", "edits", multiple=True, metavar="NODE=VALUE|NODE*FACTOR",
              help="Set or scale a node (LAYER:UNIT@Y,X, or LAYER:UNIT for all positions; an "
                   "SAE feature LAYER:fN) and report how the target moves, in the replacement "
                   "model (frozen) and in the network (free). Repeatable: applied together.")
@click.option("--interventions", "n_recorded", type=click.IntRange(0, 1000), default=10,
              show_default=True,
              help="Record, for this many of the strongest nodes, what zeroing each does to the "
                   "target (shown in the viewer).")
@click.option("--atlas", "atlas_dir", type=click.Path(path_type=Path, file_okay=False),
              default=None, metavar="DIR",
              help="An atlas of this model ('circuits atlas'): nodes link to their unit pages "
                   "and show their feature visualizations from it.")
@out_option("outputs/graph/MODEL/IMAGE-TARGET")
@launcher_options
@json_option
@quiet_option
def graph(image, load_model, target, layers, saes, node_threshold, edge_threshold, max_nodes,
          batch_size, patch, images_dir, max_images, merge_positions, reference_dir, edits,
          n_recorded, atlas_dir, out_dir, launch, as_json, quiet):
    """The attribution graph of IMAGE: which units carried it to its answer.

    For this image the network's nonlinear parts are frozen (ReLU gates, max-pool selections,
    normalisation denominators, an SAE's active set) so that the map between the chosen layers
    is exactly linear; an edge is what a node writes into a later node through that map
    (activation × frozen weight), and a node's incoming edges plus its bias add up to its
    activation. Nodes are expanded in order of influence on the target with batched backward
    passes, then pruned (circuit-tracer's thresholds) and scored: replacement and completeness
    scores, faithfulness by ablation, and what zeroing the strongest nodes does.

    Writes graph.json (circuit-tracer's schema, image positions for token positions),
    graph.png (a layered figure) and graph.html (an interactive viewer that works offline).

    With --images DIR and --launcher local|slurm, the images' unit graphs are computed by
    --jobs array jobs (each image's parts saved in OUT/.graph-parts: a re-run redoes only what
    is missing), then merged here into the class graph one process builds.

    \b
    Examples:
      circuits graph scene.png -m toy --target car --layers mixed4a,mixed4b
      circuits graph photo.jpg -m googlenet-bvlc --layers 4a,4b,4c --max-nodes 200
      circuits graph photo.jpg -m googlenet-bvlc --target "sports car" --merge-positions
      circuits graph scene.png -m toy --target car --intervene mixed4a:37=0
      circuits graph scene.png -m toy --sae mixed4a=SAE_FOLDER --layers mixed4a,mixed4b
    """
    import torch

    from ..errors import CircuitsError
    from ..files import claim_output, output_dir, slug
    from ..graph import build_class_graph, build_graph, default_layers, node_crops
    from ..images import find_images, load_image
    from ..reports.graph_files import GRAPH_FILES, link_atlas, write_graph

    if (image is None) == (images_dir is None):
        raise CircuitsError("name one IMAGE, or a folder of images with --images DIR (a "
                            "class-level graph)")
    if image is not None and not image.exists():
        raise CircuitsError(f"{str(image)!r} does not exist; name an image file")
    if image is not None and image.is_dir():
        raise CircuitsError(f"{str(image)!r} is a folder; name one image file, or use "
                            "--images DIR for a class-level graph")
    if edits and image is None:
        raise CircuitsError("--intervene works on the graph of one IMAGE")
    if launch["launcher"] != "none" and image is not None:
        raise CircuitsError("--launcher spreads the images of a class graph (--images DIR) "
                            "over array jobs; one IMAGE runs here")
    paths = find_images([images_dir])[0][:max_images] if images_dir is not None else [image]
    ref_paths = find_images([reference_dir])[0] if reference_dir is not None else None
    if atlas_dir is not None and not (atlas_dir / "index.html").is_file():
        raise CircuitsError(f"--atlas {str(atlas_dir)!r} is not an atlas (no index.html); "
                            "build one with 'circuits atlas'")
    model = load_model()
    size = model.input_size
    x = torch.stack([load_image(p, size=size, resize=round(size * 256 / 224)) for p in paths])
    tgt = _target(model, target, x)
    names = None
    if layers:
        names = [model.layer(n.strip()).name for n in layers.split(",") if n.strip()]
        order = list(model.layers)
        if [order.index(n) for n in names] != sorted(order.index(n) for n in names):
            raise CircuitsError("--layers must be in forward order "
                                f"({', '.join(sorted(names, key=order.index))})")
        if tgt.layer and order.index(names[-1]) >= order.index(tgt.layer):
            raise CircuitsError(f"the graph's layers must come before the target's layer "
                                f"{tgt.layer!r}")
    names = names or default_layers(model, tgt)
    sae_models = _load_saes(model, saes, names)
    from ..graph.interventions import check_edit

    for e in edits:  # the form and the layer of each intervention, before any work
        check_edit(e, names, model, sae_models)

    stem = image.stem if image is not None else Path(images_dir).resolve().name
    out = Path(out_dir) if out_dir is not None else output_dir(
        "graph", model.name, f"{stem}-{slug(tgt.label or tgt.index)}")
    claim_output(out, "graph", GRAPH_FILES)
    reference = None
    if ref_paths:
        reference = torch.stack([load_image(p, size=size, resize=round(size * 256 / 224))
                                 for p in ref_paths[:256]])
    what = image.name if image is not None else f"{len(paths)} images of {images_dir}"
    if not quiet and not as_json:
        click.echo(f"Attribution graph of {what} for {tgt.label} over "
                   f"{', '.join(names)} ({max_nodes} nodes expanded, batches of "
                   f"{batch_size})...", err=True)
    settings = dict(saes=sae_models, node_threshold=node_threshold,
                    edge_threshold=edge_threshold, max_nodes=max_nodes,
                    batch_size=batch_size, patch=patch, reference01=reference,
                    interventions=n_recorded,
                    metadata={"image_name": what, "slug": out.name})
    if image is not None:
        full, pruned = build_graph(model, x, tgt, names, merge=merge_positions, **settings)
    elif launch["launcher"] != "none":
        from ..reports.graph_jobs import class_graph_on_array

        spec = _array_spec(click.get_current_context().params, model, paths, ref_paths, tgt,
                           names, saes, settings)
        full, pruned = class_graph_on_array(
            model, spec, launcher=launch["launcher"], jobs=launch["jobs"], out=out,
            slurm=launch["slurm"], saes=sae_models,
            log=None if quiet or as_json else (lambda line: click.echo(line, err=True)))
    else:
        full, pruned = build_class_graph(model, x, tgt, names, **settings)
    user = _interventions(full, edits) if edits else []
    data = pruned.to_json()
    if user:
        data["user_interventions"] = user
    if atlas_dir is not None:
        link_atlas(data, atlas_dir, out)
    shown = x[0] if image is not None else x.mean(0)  # a class graph: the images' mean
    write_graph(out, data, shown, node_crops(data, shown) if image is not None else {})
    if launch["launcher"] != "none":
        from ..reports.graph_jobs import remove_parts

        remove_parts(out)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    s = data["scores"]
    click.echo(f"{tgt.label}: {data['metadata']['target']['value']:.4g}; "
               f"{s['pruned_nodes']} nodes kept of {s['expanded_nodes']} expanded; "
               f"replacement {s['replacement']:.3f}, completeness {s['completeness']:.3f}, "
               f"faithfulness {s['faithfulness']:.3f} ({s['ablation']} ablation); "
               f"largest residual {s['max_residual']:.2g}")
    feats = sorted((n for n in data["nodes"] if n["feature_type"] in ("neuron", "sae_feature")),
                   key=lambda n: -n["influence"])
    for n in feats[:8]:
        click.echo(f"  {n['node_id']:<24} activation {n['activation']:8.3f}  "
                   f"influence {n['influence']:.3f}")
    for u in user:
        click.echo(f"Intervention {u['edits']}: target {u['frozen_change']:+.4g} frozen, "
                   f"{u['free_change']:+.4g} free")
    click.echo(f"Wrote {out / 'graph.json'}, {out / 'graph.png'} and {out / 'graph.html'}")


def _array_spec(params: dict, model, paths, ref_paths, tgt, names, saes, settings) -> dict:
    """What each array job of a class graph needs, as plain values (paths absolute)."""
    def absolute(p):  # a path the jobs find from any working directory; a name stays a name
        if p is None:
            return None
        return str(Path(p).resolve()) if Path(p).exists() else str(p)

    return {"model": params.get("model_name"), "weights": absolute(params.get("weights")),
            "weights_id": str(model.weights_id), "device": params.get("device"),
            "output": params.get("output_key"), "labels": absolute(params.get("labels_file")),
            "images": [absolute(p) for p in paths],
            "target": {"kind": tgt.kind, "index": tgt.index, "layer": tgt.layer,
                       "position": list(tgt.position) if tgt.position else None,
                       "label": tgt.label},
            "layers": list(names), "saes": {model.layer(k).name: absolute(v)
                                               for k, v in saes.items()},
            "settings": {k: settings[k] for k in ("max_nodes", "batch_size", "patch")},
            "scoring": {"node_threshold": settings["node_threshold"],
                        "edge_threshold": settings["edge_threshold"],
                        "interventions": settings["interventions"],
                        "reference": [absolute(p) for p in (ref_paths or [])[:256]]},
            "metadata": settings["metadata"]}


def _target(model, spec, x):
    import torch

    from ..errors import CircuitsError
    from ..evidence.find import lookup_class
    from ..graph import Target

    if spec and ":" in spec:
        unit, _, at = spec.partition("@")
        layer, _, ch = unit.rpartition(":")
        info = model.layer(layer)
        try:
            channel = int(ch)
        except ValueError:
            raise CircuitsError(f"--target {spec!r}: the unit must be a channel number "
                                "(LAYER:CHANNEL)") from None
        if not 0 <= channel < info.channels:
            raise CircuitsError(f"--target {spec!r}: layer {info.name!r} has {info.channels} "
                                "channels")
        pos = None
        if at:
            try:
                pos = tuple(int(v) for v in at.split(","))
                assert len(pos) == 2
            except (ValueError, AssertionError):
                raise CircuitsError(f"--target {spec!r}: write the position as @Y,X") from None
        return Target("unit", channel, info.name, pos, f"{info.name}:{channel}"
                      + (f"@{at}" if at else ""))
    if spec is None:  # the top class (of most images)
        index = int(torch.mode(model.logits(x).argmax(1)).values)
    else:
        index = lookup_class(model, spec)
    return Target("logit", index, None, None, model.label(index))


def _load_saes(model, saes: dict, layers: list[str]) -> dict:
    from ..errors import CircuitsError
    from ..sae.model import load_sae

    out = {}
    for layer, folder in saes.items():
        name = model.layer(layer).name
        if name not in layers:
            raise CircuitsError(f"--sae {layer}=...: {name!r} is not one of the graph's layers "
                                f"({', '.join(layers)})")
        sae = load_sae(folder)
        channels = model.layer(name).channels
        if sae.d_in != channels:
            raise CircuitsError(f"the SAE in {str(folder)!r} reads {sae.d_in} channels; layer "
                                f"{name!r} has {channels}")
        out[name] = sae
    return out


def _interventions(full, edits) -> list[dict]:
    from ..graph import intervene_free, intervene_frozen, parse_edit

    att = full.attribution
    parsed = [parse_edit(e, att) for e in edits]
    base = float(att.value[-1])
    frozen, maps = intervene_frozen(att, parsed)
    free = intervene_free(att, parsed)
    moved = []
    for node in full.nodes:
        if node["feature_type"] not in ("neuron", "sae_feature") or node["ctx_idx"] is None:
            continue
        y, x = node["ctx_idx"]
        new = float(maps[node["layer"]][0, node["feature"], y, x])
        if abs(new - node["activation"]) > 1e-6:
            moved.append({"node_id": node["node_id"], "before": node["activation"],
                          "after": new})
    moved.sort(key=lambda m: -abs(m["after"] - m["before"]))
    return [{"edits": list(edits), "target_before": base, "frozen_change": frozen - base,
             "free_change": free - base, "moved_nodes": moved[:50]}]
