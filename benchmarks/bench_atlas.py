"""Benchmark: ``circuits atlas`` on the toy model, against rendering the same pictures alone.

In the same run, on 1 torch thread (the atlas's shards are 1-thread processes, one per core):

- ``anchor``: :func:`~circuits_cli.render.render_units` of the pictures an atlas page shows
  (channel and diversity renders; the toy's blocks follow a ReLU, so no negative render), with no
  cache: the least any atlas must spend;
- ``cold``: the atlas of the same units from empty caches, split into rendering, the activation
  pass over 240 toy scenes, expanded weights and page writing (wall and CPU seconds);
- ``warm``: the same command again: every page is current, nothing is rendered or computed.

The whole toy atlas (every mixed layer, all 768 units) is extrapolated from the cold run's CPU
seconds per unit of each phase, for 2 shards on 2 cores.

Runnable alone: ``python benchmarks/bench_atlas.py --out DIR [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

THREADS = 1
LAYER = "mixed4b"
STEPS = 64
KINDS = ("channel", "negative", "diversity")


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - w, 2), round(time.process_time() - c, 2)


def main(out: Path, quick: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    from circuits_cli.atlas import AtlasSettings, build_atlas, plan_atlas
    from circuits_cli.demo import write_scenes
    from circuits_cli.render import render_units
    from circuits_cli.units import Unit
    from circuits_cli.zoo import load_model

    n_units = 16 if quick else 64
    model = load_model("toy", device="cpu")
    units = [Unit(LAYER, c) for c in range(n_units)]
    result: dict = {"model": "toy", "layer": LAYER, "units": n_units, "steps": STEPS,
                    "threads": THREADS}
    before = os.environ.get("CIRCUITS_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CIRCUITS_CACHE"] = str(Path(tmp) / "cache")
        try:
            scenes = write_scenes(Path(tmp) / "scenes", 240)

            def anchor():
                for objective in ("channel", "diversity"):
                    render_units(model, units, steps=STEPS, size=64, batch=64,
                                 objective=objective, progress=False, cache_dir=False)

            _, result["anchor_wall_s"], result["anchor_cpu_s"] = _timed(anchor)
            settings = AtlasSettings(steps=STEPS, kinds=KINDS)

            def atlas():
                plan = plan_atlas(model, Path(tmp) / "site", [LAYER], units=f"0-{n_units - 1}",
                                  images=scenes, settings=settings)
                return build_atlas(plan, progress=False, echo=lambda m: None)

            cold, result["cold_wall_s"], result["cold_cpu_s"] = _timed(atlas)
            warm, result["warm_wall_s"], result["warm_cpu_s"] = _timed(atlas)
        finally:
            if before is None:
                os.environ.pop("CIRCUITS_CACHE", None)
            else:
                os.environ["CIRCUITS_CACHE"] = before
    result["cold_split_wall_s"] = cold.seconds
    result["cold_split_cpu_s"] = cold.cpu_seconds
    result["warm_written"], result["warm_rendered"] = warm.written, warm.rendered
    result["site_mb"] = round(cold.size_bytes / 1e6, 2)
    result["site_files"] = cold.n_files
    result["overhead_vs_anchor"] = round(result["cold_cpu_s"] / result["anchor_cpu_s"], 2)
    # the whole toy atlas: 768 units; rendering costs scale with the units and the layer's
    # depth (mixed4b is among the deeper, so this errs high); the activation pass is one pass
    # for all layers (to mixed4c instead of mixed4b: about the same)
    per_unit = (cold.cpu_seconds["rendering"] + cold.cpu_seconds["pages"]
                + cold.cpu_seconds["weights"]) / n_units
    whole = 768 * per_unit / 2 + cold.cpu_seconds["activations"]
    result["whole_toy_estimate_2_cores_min"] = round(whole / 60, 1)
    c = result["cold_split_cpu_s"]
    md = [f"## Atlas (toy, {LAYER} units 0-{n_units - 1}, {STEPS} steps, channel + diversity, "
          f"{THREADS} thread)", "",
          "| measure | wall s | CPU s |", "|---|---:|---:|",
          f"| anchor: the same renders alone, no cache | {result['anchor_wall_s']} | "
          f"{result['anchor_cpu_s']} |",
          f"| atlas from empty caches | {result['cold_wall_s']} | {result['cold_cpu_s']} |",
          f"| - rendering / activation pass / weights / pages (CPU) | | {c['rendering']} / "
          f"{c['activations']} / {c['weights']} / {c['pages']} |",
          f"| atlas again (all current: {result['warm_written']} pages written, "
          f"{result['warm_rendered']} renders) | {result['warm_wall_s']} | "
          f"{result['warm_cpu_s']} |", "",
          f"Atlas CPU / anchor CPU: {result['overhead_vs_anchor']}x. Site: "
          f"{result['site_mb']} MB in {result['site_files']} files. Whole toy atlas (768 units, "
          f"2 shards on 2 cores), extrapolated: {result['whole_toy_estimate_2_cores_min']} min.",
          ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "atlas.md").write_text("\n".join(md))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(main(args.out, quick=args.quick), indent=2))
