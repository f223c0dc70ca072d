"""The job a cluster array runs: one ``--shard K/N`` of ``circuits cache`` (picklable: a module
function of plain values, so submitit can ship it to Slurm or to a local process)."""

from __future__ import annotations

from pathlib import Path


def cache_job(spec: dict, k: int, n: int) -> dict:
    """Load the model named in ``spec`` and write shard ``k`` of ``n`` of the cache."""
    from ..zoo import load_model
    from .sources import open_sources
    from .write import write_cache

    model = load_model(spec["model"], weights=spec.get("weights"), device=spec.get("device",
                                                                                  "auto"))
    source = open_sources(spec["images"])
    result = write_cache(model, spec["layers"], source, Path(spec["out"]), shard=(k, n),
                         **spec["options"])
    return {k2: v for k2, v in result.items() if k2 != "written"} | {
        "written": len(result["written"])}
