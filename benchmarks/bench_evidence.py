"""Benchmark: the activation store behind dataset examples, and batched ablation.

Measured on googlenet-bvlc with the 500 photos of ``../shared/images/imagenet-samples`` (skipped
when they are absent), on 2 torch threads, in the same run:

- ``store (cold)``: the first pass of ``inception_4e`` over the photos (decode, forward, write the
  memory-mapped entry), in images per second;
- ``query (warm)``: a later query: open the entry and rank the dataset examples of one unit
  (``dataset_examples(load=False)``), median over 20 random units. Goal: well under a second;
- ``ablation``: inception_4e:800 with 3 of its inputs ablated plus N random draws, over the
  photos where it is most active. The stacked pass (all variants of an image in one forward
  pass after the input layer) against the anchor, the textbook loop (one full forward pass of the
  network per variant), with identical numbers checked.

Runnable alone: ``python benchmarks/bench_evidence.py --out DIR [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
THREADS = 2


def main(out: Path, quick: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    weights = SHARED / "models" / "bvlc_googlenet.npz"
    photos = SHARED / "images" / "imagenet-samples"
    if not weights.is_file() or not photos.is_dir():
        return {"skipped": f"{SHARED} with the BVLC weights and sample photos is absent"}
    from circuits_cli.evidence import ablate, dataset_examples, image_set, layer_activations
    from circuits_cli.evidence import ablation as ablation_module
    from circuits_cli.units import Unit
    from circuits_cli.zoo import load_model

    model = load_model("googlenet-bvlc", weights=weights)
    images = image_set(photos)
    if quick:
        images.paths = images.paths[:100]
    layer = "inception_4e"
    result: dict = {"model": model.name, "layer": layer, "n_images": len(images.paths),
                    "threads": THREADS}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        t0 = time.perf_counter()
        acts = layer_activations(model, layer, images, cache_dir=cache, batch_size=25)
        cold = time.perf_counter() - t0
        result["store_cold_s"] = round(cold, 2)
        result["store_images_per_s"] = round(acts.n_images / cold, 1)
        result["store_mb"] = round(sum(f.stat().st_size for f in acts.directory.iterdir())
                                   / 2**20, 1)

        rng = random.Random(0)
        units = [Unit(layer, rng.randrange(acts.shape[0])) for _ in range(20)]
        dataset_examples(model, units[0], images, cache_dir=cache, load=False)  # rf warm-up
        times = []
        for u in units:
            t0 = time.perf_counter()
            dataset_examples(model, u, images, cache_dir=cache, load=False)
            times.append(time.perf_counter() - t0)
        result["query_warm_median_ms"] = round(1000 * statistics.median(times), 1)
        result["query_warm_max_ms"] = round(1000 * max(times), 1)

        draws = 4 if quick else 12
        top = 8 if quick else 16
        inputs = [Unit("inception_4d", c) for c in (203, 302, 483)]
        kwargs = dict(draws=draws, top_images=top, cache_dir=cache, seed=0)
        ablate(model, Unit(layer, 800), inputs, images, **kwargs)  # warm-up
        t0 = time.perf_counter()
        stacked = ablate(model, Unit(layer, 800), inputs, images, **kwargs)
        t_stacked = time.perf_counter() - t0

        original = ablation_module._forward

        def loop(model_, x, t_layer, channel, chunk, state, *rest):
            state["stack"] = False  # one full forward pass per variant
            return original(model_, x, t_layer, channel, chunk, state, *rest)

        ablation_module._forward = loop
        try:
            t0 = time.perf_counter()
            looped = ablate(model, Unit(layer, 800), inputs, images, **kwargs)
            t_loop = time.perf_counter() - t0
        finally:
            ablation_module._forward = original
        same = bool(np.allclose(stacked.random_drops, looped.random_drops, rtol=1e-3, atol=1e-4)
                    and abs(stacked.baseline - looped.baseline) <= 1e-4 * abs(looped.baseline))
        result["ablation"] = {"target": "inception_4e:800", "inputs": [str(u) for u in inputs],
                              "images": top, "variants": draws + 2,
                              "stacked_s": round(t_stacked, 2), "loop_s": round(t_loop, 2),
                              "speedup": round(t_loop / t_stacked, 2), "same_numbers": same,
                              "relative_drop": round(stacked.relative_drop, 4),
                              "random_relative_mean": round(stacked.random_relative_mean, 4)}
    a = result["ablation"]
    md = [f"## Dataset examples and ablation ({model.name}, {layer}, {result['n_images']} photos, "
          f"{THREADS} threads)", "",
          "| measure | value |", "|---|---|",
          f"| activation store, first pass | {result['store_cold_s']} s "
          f"({result['store_images_per_s']} images/s, {result['store_mb']} MB on disk) |",
          f"| dataset examples of a unit, warm | {result['query_warm_median_ms']} ms median, "
          f"{result['query_warm_max_ms']} ms max (20 units) |",
          f"| ablation, {a['variants']} variants x {a['images']} images, stacked | "
          f"{a['stacked_s']} s |",
          f"| same, one forward pass per variant (anchor) | {a['loop_s']} s "
          f"({a['speedup']}x slower; same numbers: {a['same_numbers']}) |", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.md").write_text("\n".join(md))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(main(args.out, quick=args.quick), indent=2))
