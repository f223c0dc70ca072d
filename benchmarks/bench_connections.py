"""Benchmark: all expanded weights inception_4b -> inception_4c (512 x 512 spatial kernels).

Times, on 2 torch threads, in the same run:

- ``exact``: :func:`circuits_cli.connections.expanded_weights` with the exact method (kernels of
  each Inception branch multiplied out);
- ``linear (batched)``: the same call with the linearized method (all 512 targets in batched
  backward passes on a zero source shrunk to the receptive field);
- the anchor, a **per-unit gradient loop**: the textbook way, one backward pass per target unit
  through the linearized network at the full 14 x 14 map (the forward pass is shared through
  ``retain_graph``, which only helps the loop).

Each method gets a warm-up call, then the median of repeats. The kernels of all three are checked
against each other. Goal: exact < 2 s and >= 20x faster than the per-unit loop.

Model: googlenet-bvlc from ``../shared/models`` when it is there, else lucent's InceptionV1
architecture with random weights (same 512 -> 512 block shapes; the timing does not depend on the
weight values). Runnable alone: ``python benchmarks/bench_connections.py --out DIR [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
THREADS = 2


def _model():
    from circuits_cli.zoo import load_model

    weights = REPO.parent / "shared" / "models" / "bvlc_googlenet.npz"
    if weights.is_file():
        return load_model("googlenet-bvlc", weights=weights), "inception_4b", "inception_4c"
    from circuits_cli.zoo.base import LoadedModel
    from circuits_cli.zoo.inceptionv1 import InceptionV1, describe, preprocess

    torch.manual_seed(0)
    module = InceptionV1().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    layers, blocks = describe(module)
    model = LoadedModel("inceptionv1 (random weights)", module, layers, preprocess,
                        blocks=blocks)
    return model, "mixed4b", "mixed4c"


def _timed(fn, repeats: int) -> tuple[float, list[float], object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def per_unit_loop(model, source: str, target: str, channels: list[int]) -> torch.Tensor:
    """One backward pass per target unit: d target[j, centre] / d source at a zero source, in
    the linearized network, cropped to the 5 x 5 receptive field."""
    from circuits_cli.connections import linearized
    from circuits_cli.hooks import run_with_cache

    src, tgt = model.layer(source), model.layer(target)
    state = {}

    def on_source(out, _hook):
        state["src"] = torch.zeros_like(out, requires_grad=True)
        return state["src"]

    image = model.preprocess(torch.full((1, 3, model.input_size, model.input_size), 0.5))
    with linearized(model), torch.enable_grad():
        _, acts = run_with_cache(model, image, [tgt.name], fwd_hooks=[(src.name, on_source)],
                                 preprocess=False)
    state["tgt"] = acts[tgt.name]
    out = state["tgt"]
    cy, cx = out.shape[2] // 2, out.shape[3] // 2
    kernels = []
    for j in channels:
        (g,) = torch.autograd.grad(out[0, j, cy, cx], state["src"], retain_graph=True)
        kernels.append(g[0, :, cy - 2:cy + 3, cx - 2:cx + 3])
    return torch.stack(kernels)


def main(out_dir: Path, quick: bool = False) -> dict:
    from circuits_cli.connections import expanded_weights

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        model, source, target = _model()
        n = model.layer(target).channels
        repeats = 3 if quick else 5

        t_exact, exact_times, exact = _timed(
            lambda: expanded_weights(model, source, target, method="exact"), repeats)
        t0 = time.perf_counter()
        expanded_weights(model, source, target, [0], method="linear")  # includes the probe
        t_probe = time.perf_counter() - t0
        t_linear, linear_times, linear = _timed(
            lambda: expanded_weights(model, source, target, method="linear"), repeats)

        loop_units = list(range(64)) if quick else list(range(n))
        loop_repeats = 1
        t_loop_part, loop_times, loop = _timed(
            lambda: per_unit_loop(model, source, target, loop_units), loop_repeats)
        t_loop = t_loop_part * n / len(loop_units)

        scale = float(exact.abs().max())
        agree_linear = float((linear - exact).abs().max()) / scale
        agree_loop = float((loop - exact[loop_units]).abs().max()) / scale
        result = {
            "model": model.name, "source": source, "target": target,
            "kernels": list(exact.shape), "torch_threads": THREADS,
            "exact_s": round(t_exact, 4), "exact_runs_s": [round(t, 4) for t in exact_times],
            "linear_batched_s": round(t_linear, 4),
            "linear_runs_s": [round(t, 4) for t in linear_times],
            "linear_first_call_probe_s": round(t_probe, 4),
            "per_unit_loop_s": round(t_loop, 3),
            "per_unit_loop_units_timed": len(loop_units),
            "per_unit_loop_extrapolated": len(loop_units) != n,
            "per_unit_loop_ms_per_unit": round(1000 * t_loop_part / len(loop_units), 2),
            "speedup_exact_vs_loop": round(t_loop / t_exact, 1),
            "speedup_linear_vs_loop": round(t_loop / t_linear, 1),
            "max_rel_diff_linear_vs_exact": agree_linear,
            "max_rel_diff_loop_vs_exact": agree_loop,
            "goal_exact_under_2s": t_exact < 2.0,
            "goal_20x_vs_loop": t_loop / t_exact >= 20.0,
            "quick": quick,
        }
    finally:
        torch.set_num_threads(threads_before)

    loop_note = (f" (timed on {len(loop_units)} units, scaled to {n})"
                 if result["per_unit_loop_extrapolated"] else "")
    md = [
        f"## Expanded weights {source} -> {target} ({result['kernels'][0]} x "
        f"{result['kernels'][1]} kernels of {result['kernels'][2]}x{result['kernels'][3]}), "
        f"{model.name}, {THREADS} torch threads",
        "",
        "| method | time (median) | vs per-unit loop |",
        "|---|---|---|",
        f"| exact (kernels multiplied out) | {t_exact:.3f} s | "
        f"{result['speedup_exact_vs_loop']}x faster |",
        f"| linearized, batched | {t_linear:.3f} s | {result['speedup_linear_vs_loop']}x faster |",
        f"| per-unit gradient loop (anchor){loop_note} | {t_loop:.2f} s | 1x |",
        "",
        f"Agreement with the exact kernels (max |diff| / max |weight|): linearized "
        f"{agree_linear:.1e}, per-unit loop {agree_loop:.1e}. First linearized call (receptive "
        f"field probe) {t_probe:.2f} s. Goals: exact < 2 s "
        f"{'met' if result['goal_exact_under_2s'] else 'MISSED'}, >= 20x faster than the loop "
        f"{'met' if result['goal_20x_vs_loop'] else 'MISSED'}.",
    ]
    (out_dir / "connections.md").write_text("\n".join(md) + "\n")
    (out_dir / "connections.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    res = main(args.out, quick=args.quick)
    print((args.out / "connections.md").read_text())
