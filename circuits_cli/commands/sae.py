"""``circuits sae``: sparse autoencoders (dictionary learning) on a conv layer."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CircuitsError
from .common import model_options
from .options import (
    activation_cache,
    activation_cache_option,
    cache_option,
    images_option,
    render_options_with,
    warnings_to_stderr,
)


@click.group()
def sae():
    """Sparse autoencoders: split a layer's polysemantic neurons into sparse features.

    Every spatial position of LAYER over an image folder is one sample (its channel vector).
    The SAE is saved in SAELens's layout (cfg.json + sae_weights.safetensors) with the model,
    layer, data set and metrics recorded.

    \b
    Example:
      circuits sae train inception_4c -m googlenet-bvlc \\
          --images ../shared/images/imagenet-samples
      circuits sae info outputs/sae/googlenet-bvlc/inception_4c-topk-x8-k32
    """


def _claim(out: Path, cache_dir) -> None:
    """The output rule (circuits_cli.files.claim_output): writable --out and cache, and none
    of the SAE's files a file circuits did not write; before any work."""
    from ..files import claim_output
    from ..sae.layer import OUR_FILES

    claim_output(out, "sae train", OUR_FILES, cache=cache_dir or True)


@sae.command()
@click.argument("layer", metavar="LAYER")
@images_option(required=False)
@click.option("--cache", "from_cache", type=click.Path(path_type=Path), default=None,
              metavar="DIR", help="Train on an activation cache written by 'circuits cache' "
                                  "(streamed from its shards, any size) instead of --images.")
@click.option("--arch", type=click.Choice(["topk", "relu"]), default="topk", show_default=True,
              help="TopK with the AuxK loss against dead latents (Gao et al. 2024), or ReLU + "
                   "L1 (Bricken et al. 2023).")
@click.option("--expansion", type=click.IntRange(min=1), default=8, show_default=True,
              help="Latents per channel: d_sae = expansion x channels.")
@click.option("--k", "k", type=click.IntRange(min=1), default=32, show_default=True,
              help="TopK: active latents per sample.")
@click.option("--l1", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="ReLU: L1 coefficient (inputs scaled to mean squared norm = channels).")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True,
              help="Training steps (each one batch of positions).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Positions per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True, help="Adam learning rate (linear decay over the last 20%).")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              show_default=True, help="Fraction of the images held out of training; the "
                                      "metrics are measured on them.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for training.  [default: torch's]")
@click.option("--no-fidelity", is_flag=True,
              help="Skip downstream fidelity (three forward passes over the held-out images).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of the SAE.  [default: outputs/sae/MODEL/LAYER-ARCH-xEXP-kK]")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
@cache_option
@model_options
def train(layer, images, from_cache, arch, expansion, k, l1, steps, batch_size, lr, holdout, seed,
          threads, no_fidelity, out_dir, batch, as_json, cache_dir, load_model):
    """Train a sparse autoencoder on LAYER over the images, or resume an interrupted one.

    Prints a progress bar with the running loss, explained variance, L0 and dead fraction (plain
    lines when not on a terminal), then the metrics: explained variance, L0, dead and dense
    latents, and the model's top-1 and KL when the layer is replaced by the reconstruction,
    against mean ablation. Writes cfg.json, sae_weights.safetensors, metrics.json and
    metrics.png to --out. Interrupted (Ctrl-C), the same command resumes from the last finished
    step; a finished SAE is reported, not retrained. Nothing not written by this run is
    overwritten.
    """
    from ..evidence import image_set
    from ..files import output_dir
    from ..sae.layer import train_layer_sae
    from ..sae.train import TrainConfig

    cfg = TrainConfig(arch=arch, expansion=expansion, k=k, l1=l1, steps=steps,
                      batch_size=batch_size, lr=lr, seed=seed)
    cfg.check()
    if from_cache is not None or not images:
        res = _train_from_cache(layer, images, from_cache, cfg, holdout, threads, out_dir)
        if as_json:
            click.echo(json.dumps(info_dict(res.sae), indent=2))
        else:
            click.echo(describe(res.sae))
        return
    imgs = image_set(list(images))  # bad folders fail before the model loads
    cfg.check_memory(1)  # absurd sizes before the model loads (the layer's width comes later)
    if out_dir is not None:
        _claim(out_dir, cache_dir)
    model = load_model()
    info = model.layer(layer)
    if out_dir is None:
        name = f"{info.name}-{arch}-x{expansion}" + (f"-k{k}" if arch == "topk" else f"-l1{l1:g}")
        out_dir = output_dir("sae", model.name, name)
        _claim(out_dir, cache_dir)

    def log(line):
        click.echo(line, err=True)

    with warnings_to_stderr():
        res = train_layer_sae(model, info.name, imgs, out_dir, cfg, holdout=holdout,
                              cache_dir=activation_cache(cache_dir), batch_size=batch,
                              fidelity=not no_fidelity, threads=threads, log=log)
    if res.already_done:
        log(f"{out_dir} already holds this SAE (same options and images); not retrained")
    if as_json:
        click.echo(json.dumps(info_dict(res.sae), indent=2))
        return
    click.echo(describe(res.sae))


def _train_from_cache(layer, images, from_cache, cfg, holdout, threads, out_dir):
    """``sae train --cache DIR``: no model is loaded; the rows come from the cache's shards."""
    from ..cache import open_cache
    from ..files import output_dir
    from ..sae.cached import train_cache_sae

    if from_cache is None:
        raise CircuitsError("give --images (a folder of images) or --cache (an activation cache "
                            "written by 'circuits cache')")
    if images:
        raise CircuitsError("give --images or --cache, not both")
    cache = open_cache(from_cache)
    name = cache.layer_name(layer)
    if out_dir is None:
        tag = f"{name}-{cfg.arch}-x{cfg.expansion}" + (
            f"-k{cfg.k}" if cfg.arch == "topk" else f"-l1{cfg.l1:g}")
        out_dir = output_dir("sae", cache.meta["model"], tag + "-cache")
    res = train_cache_sae(from_cache, name, out_dir, cfg, holdout=holdout, threads=threads,
                          log=lambda line: click.echo(line, err=True))
    if res.already_done:
        click.echo(f"{out_dir} already holds this SAE (same options and cache); not retrained",
                   err=True)
    return res


def info_dict(s) -> dict:
    cfg = dict(s.cfg)
    return {"folder": str(s.folder) if s.folder else None, "architecture": s.arch,
            "d_in": s.d_in, "d_sae": s.d_sae, "k": s.k, "cfg": cfg}


def describe(s) -> str:
    """What an SAE is and how good it is, as a few lines of text."""
    cfg = s.cfg
    arch = f"TopK (k={s.k})" if s.arch == "topk" else "ReLU + L1"
    lines = [f"SAE {s.folder or ''}".rstrip(),
             f"  model        {cfg.get('model_name', '?')}  (weights {cfg.get('weights_id', '?')})",
             f"  layer        {cfg.get('hook_name', '?')}"
             + (f"  {tuple(cfg['layer_shape'])}" if cfg.get("layer_shape") else ""),
             f"  architecture {arch}, {s.d_sae} latents on {s.d_in} channels "
             f"(x{s.d_sae / s.d_in:g})"]
    ds = cfg.get("dataset")
    if isinstance(ds, dict):
        lines.append(f"  data         {ds.get('images')} images from {ds.get('source')} "
                     f"({ds.get('train_images')} trained on, {ds.get('held_out_images')} held "
                     f"out), {ds.get('positions_per_image')} positions each")
    elif cfg.get("dataset_path"):
        lines.append(f"  data         {cfg['dataset_path']}")
    norm = cfg.get("normalisation")
    if isinstance(norm, dict):
        lines.append(f"  input scale  {norm.get('scale', 0):.4g} during training, folded into "
                     "the weights")
    tr = cfg.get("training")
    m = cfg.get("metrics") or {}
    if isinstance(tr, dict) and m.get("training"):
        t = m["training"]
        lines.append(f"  training     {t['steps']} steps x {tr['batch_size']} positions "
                     f"({t['epochs']:.1f} epochs), lr {tr['lr']:g}, seed {tr['seed']}")
    if m:
        lines.append(f"  on {m.get('split', '?')}: explained variance "
                     f"{m.get('explained_variance', float('nan')):.3f} (training images "
                     f"{m.get('explained_variance_train', float('nan')):.3f}), "
                     f"L0 {m.get('l0', float('nan')):.1f}")
        lines.append(f"  latents      dead {100 * m.get('dead_fraction', 0):.1f}% (never fire on "
                     f"any image), dense {100 * m.get('dense_fraction', 0):.1f}% (fire on >10% "
                     "of positions)")
        ds = m.get("downstream") or {}
        if ds.get("skipped"):
            lines.append(f"  downstream   not measured ({ds['skipped']})")
        elif ds:
            rec = ds.get("kl_fraction_recovered")
            lines.append(f"  downstream   {ds['images']} images, top-1 against "
                         f"{ds['against']}: clean {ds['top1_clean']:.3f}, SAE spliced "
                         f"{ds['top1_sae']:.3f}, mean-ablated {ds['top1_mean_ablation']:.3f}")
            lines.append(f"               KL(clean || spliced) {ds['kl_sae']:.4f} nats, "
                         f"mean-ablated {ds['kl_mean_ablation']:.4f}; fraction of KL "
                         "recovered " + (f"{rec:.3f}" if rec is not None else "n/a"))
    else:
        lines.append("  no metrics recorded (not written by 'circuits sae train')")
    return "\n".join(lines)


@sae.command()
@click.argument("path", metavar="FILE_OR_DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def info(path, as_json):
    """What an SAE file is and how good it is: model, layer, data set, architecture, and the
    metrics recorded when it was trained (explained variance, L0, dead latents, downstream
    fidelity). FILE_OR_DIR is the SAE folder or its cfg.json / sae_weights.safetensors."""
    from ..sae import load_sae

    s = load_sae(path)
    if as_json:
        click.echo(json.dumps(info_dict(s), indent=2))
        return
    click.echo(describe(s))


@sae.command()
@click.argument("path", metavar="SAE_DIR", type=click.Path(path_type=Path))
@images_option(required=False)
@activation_cache_option
@click.option("--neuron", "neuron", type=click.IntRange(min=0), default=None,
              help="Channel of the layer.  [default: the most polysemantic one: the "
                   "most live features with W_dec[f, neuron] >= 0.3]")
@click.option("--top-features", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--top-images", type=click.IntRange(min=1), default=6, show_default=True)
@render_options_with(steps=128)
@click.option("--facets", type=click.IntRange(min=2), default=4, show_default=True,
              help="Diversity facets of the neuron (pictures that each maximise it while "
                   "differing from each other).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Folder for the page, PNG and JSON.  [default: "
                                 "SAE_DIR/features]")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Images per forward pass when computing activations.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@cache_option
@model_options
def features(path, images, activation_cache_dir, neuron, top_features, top_images, steps, size,
             seed, param, no_render, facets, out_dir, batch, as_json, cache_dir, load_model):
    """A polysemantic neuron made visible: the SAE features that write most into one neuron
    (largest W_dec[f, neuron]) beside the neuron itself.

    Writes neuron-N.html (a page), neuron-N.png (the same as one figure), neuron-N.json and
    neuron-N_files/: on top the neuron's diversity facets and its top dataset examples; then
    per feature its decoder weight into the neuron, its share of what the SAE writes there,
    its feature visualization (the objective is the feature's activation) and its dataset
    examples as receptive-field crops. Renders are cached (CACHE/renders); --no-render skips
    them. Use the model the SAE was trained on.

    \b
    Example:
      circuits sae features outputs/sae/toy/mixed4b-topk-x8-k32 -m toy \\
          --images outputs/demo/toy/scenes --neuron 64 --steps 64
      circuits sae features runs/sae-4b -m toy --cache cache/toy-4b --no-render
    """
    from ..evidence import cache_activations, image_set, layer_activations
    from ..files import claim_output
    from ..reports.polysemantic import output_names, polysemantic_neuron
    from ..sae import load_sae
    from ..sae.features import TOP_IMAGES, layer_feature_activations, polysemantic_neurons
    from .options import images_or_cache, render_cache

    s = load_sae(path)
    cache = images_or_cache(images, activation_cache_dir)
    imgs = image_set(list(images)) if cache is None else None
    model = load_model()
    layer = s.cfg.get("hook_name")
    if not layer:
        raise CircuitsError(f"{str(path)!r} does not record its layer (cfg.json hook_name)")
    if s.cfg.get("model_name") not in (None, model.name):
        raise CircuitsError(f"this SAE was trained on {s.cfg['model_name']!r}, not "
                            f"{model.name!r}; pass -m {s.cfg['model_name']}")
    info = model.layer(layer)
    if info.channels != s.d_in:
        raise CircuitsError(f"layer {info.name!r} has {info.channels} channels but the SAE "
                            f"reads {s.d_in}")
    if cache is not None:
        cache.check_model(model, [info.name])
    if neuron is not None and neuron >= s.d_in:
        raise CircuitsError(f"--neuron {neuron} is out of range; {info.name} has {s.d_in} "
                            f"channels (0-{s.d_in - 1})")
    out_dir = out_dir or (s.folder / "features")
    # writable, and a user's file there never replaced: before the activation pass
    claim_output(out_dir, "sae features", output_names(neuron) if neuron is not None else (),
                 cache=cache_dir or True)
    with warnings_to_stderr():
        if cache is None:
            acts = layer_activations(model, info.name, imgs,
                                     cache_dir=activation_cache(cache_dir), batch_size=batch,
                                     progress=not as_json)
        else:
            acts = cache_activations(model, [info.name], cache,
                                     cache_dir=activation_cache(cache_dir),
                                     progress=not as_json)[info.name]
    fa = layer_feature_activations(s, acts, keep=max(top_images, TOP_IMAGES))
    if neuron is None:
        neuron = polysemantic_neurons(s, fa, top=1)[0]["neuron"]
        claim_output(out_dir, "sae features", output_names(neuron), cache=cache_dir or True)
    with warnings_to_stderr():
        result = polysemantic_neuron(
            model, s, acts, neuron, out_dir, top_features=top_features, top_images=top_images,
            render=not no_render, steps=steps, size=size, seed=seed, facets=facets,
            param=param, render_cache=render_cache(cache_dir) if cache_dir else None,
            cache_dir=activation_cache(cache_dir), progress=not as_json, fa=fa)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{info.name}:{neuron} ({result['strong_features']} live features with "
               f"W_dec >= 0.3 onto it; rank {result['polysemanticity_rank']} of {s.d_in}): "
               "the features writing most into it")
    for f in result["features"]:
        tops = ", ".join(Path(e["path"]).stem for e in f["top_images"][:3])
        click.echo(f"  feature {f['feature']:>5}  W_dec {f['weight']:.3f}  share "
                   f"{f['share']:.2f}  fires {100 * f['frequency']:.2f}%  top: {tops}")
    click.echo(f"Page: {result['files']['html']}")
    click.echo(f"Figure: {result['files']['png']}")
