"""``circuits superposition``: the toy models of "Toy Models of Superposition", reproduced."""

from __future__ import annotations

import json
from pathlib import Path

import click

EXPERIMENT_NAMES = ("sweep", "phase", "dimensionality")


@click.command()
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Folder for the figures, results.json and the trained weights.  "
                   "[default: outputs/superposition/toy-models/seedS]")
@click.option("--only", "only", multiple=True, type=click.Choice(EXPERIMENT_NAMES),
              help="Run only this experiment (repeat for several).  [default: all three]")
@click.option("--steps", type=click.IntRange(min=1, max=1_000_000), default=None, metavar="N",
              help="Training steps of every experiment.  [default: each experiment's own: "
                   "sweep 5000, phase 2000, dimensionality 2500]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initialisation and the synthetic data.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads (the matrices are small: one thread is usually fastest).")
@click.option("--json", "as_json", is_flag=True, help="Print results.json's numbers (without "
              "the weight matrices) to stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def superposition(out, only, steps, seed, threads, as_json, quiet):
    """Reproduce "Toy Models of Superposition" (Elhage et al., 2022) on synthetic sparse features.

    Trains many small models at once (h = W x, x' = ReLU(WᵀW x + b); W of shape
    [instances, m, n]) and writes, in DIR:

    \b
      wtw_sweep.png       WᵀW and b over sparsity, n=20 features, m=5, importance 0.7^i
                          (ReLU output model above, linear model below)
      feature_norms.png   ‖W_i‖ per feature, coloured by superposition Σ_{j≠i}(Ŵ_i·W_j)²
      phase_diagram.png   2 features in 1 dimension: density × relative importance, trained
                          against the analytic theory
      dimensionality.png  feature dimensionality D_i against 1/(1−S), with the paper's bands
      results.json        every number behind the figures
      runs/*.json         the trained weights (a re-run with the same settings reuses them)
      manifest.json       the files this command wrote (others in DIR are never overwritten)

    About 2 minutes of CPU time at the defaults (1 thread).

    \b
    Example:
      circuits superposition --out sup/
      circuits superposition --only phase --steps 1000 --json
    """
    from ..files import claim_output
    from ..superposition.run import default_out_dir, run_superposition, summary_line

    if out is None:
        out = default_out_dir(seed)
    claim_output(out, "superposition")  # writable before training; a user's file never replaced
    experiments = list(only) or list(EXPERIMENT_NAMES)

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    log = None if quiet else (lambda msg: click.echo(msg, err=True))
    try:
        results = run_superposition(out, experiments=experiments, steps=steps, seed=seed,
                                    log=log)
    finally:
        torch.set_num_threads(before)  # a caller in the same process keeps its setting
    if as_json:
        click.echo(json.dumps(_without_matrices(results), indent=2))
    else:
        for name, res in results.items():
            click.echo(f"{name}: {summary_line(name, res)}")
        click.echo(f"wrote {out}")


def _without_matrices(results: dict) -> dict:
    """The headline numbers: results without the per-model weight matrices."""
    drop = {"WtW", "b", "W", "D", "norms", "superposition", "expected_loss"}

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in drop}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(results)
