"""Benchmark: ``circuits visualize`` against lucent's ``render_vis`` on a GPU (skipped without one).

The core comparison of :mod:`bench_visualize` (same 8 units of googlenet-bvlc's ``inception_4c``,
512 steps, lucent at its defaults one unit at a time, ours in one batch at its defaults, which
on a GPU with bfloat16 means bfloat16 autocast) with the model on ``cuda``. Each side first
runs a short untimed warm-up (CUDA context, cuDNN's algorithm choice, our compiled LRN), so the
times are steady-state. The ablations, profile and FLOP counts of the CPU benchmark are left out:
they explain a CPU step.

Runnable alone: ``python benchmarks/bench_visualize_gpu.py --out outputs/bench [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_visualize import (  # noqa: E402
    CHANNELS,
    LAYER,
    WEIGHTS_ABSENT,
    _model,
    run_lucent,
    run_ours,
    time_to_quality,
)


def main(out_dir: Path, quick: bool = False) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _model("cuda") if torch.cuda.is_available() else None
    if model is None:
        reason = "no CUDA device" if not torch.cuda.is_available() else WEIGHTS_ABSENT
        (out_dir / "visualize_gpu.md").write_text(f"## visualize on a GPU\n\nskipped: {reason}\n")
        return {"skipped": reason}
    channels = CHANNELS[:2] if quick else CHANNELS
    steps = 32 if quick else 512
    thresholds = [steps // 8, steps // 4, steps // 2, steps]
    t0 = time.perf_counter()
    run_ours(model, channels, 16)
    run_lucent(model, channels[:1], 16, [16])
    warm = time.perf_counter() - t0
    ours = run_ours(model, channels, steps)
    lucent = run_lucent(model, channels, steps, thresholds)
    lucent_mean = float(np.mean([u["activation"] for u in lucent["units"]]))
    ours_mean = float(np.mean([u["activation"] for u in ours["units"]]))
    ttq = time_to_quality(ours, lucent_mean)
    result = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "channels": channels, "steps": steps, "warm_up_seconds": warm,
        "lucent_seconds": lucent["seconds"], "ours_seconds": ours["seconds"],
        "wall_time_ratio": lucent["seconds"] / ours["seconds"],
        "mean_activation": {"lucent": lucent_mean, "ours": ours_mean,
                            "ratio": ours_mean / lucent_mean},
        "time_to_quality": {**ttq, "speedup": (lucent["seconds"] / ttq["seconds"]
                                               if ttq["seconds"] else None)},
        "per_unit": [{"channel": c, "lucent": lu["activation"], "ours": o["activation"]}
                     for c, lu, o in zip(channels, lucent["units"], ours["units"], strict=True)],
    }
    (out_dir / "visualize_gpu.md").write_text(markdown(result) + "\n")
    return result


def markdown(r: dict) -> str:
    ttq = r["time_to_quality"]
    return "\n".join([
        f"## visualize on a GPU ({r['device']}, torch {r['torch']}; googlenet-bvlc, "
        f"{len(r['channels'])} units of {LAYER}, {r['steps']} steps, same run, after warm-up)",
        "",
        "| | lucent render_vis | circuits visualize | ratio |",
        "|---|---:|---:|---:|",
        f"| wall time, all units | {r['lucent_seconds']:.1f} s | {r['ours_seconds']:.1f} s | "
        f"**{r['wall_time_ratio']:.2f}x faster** |",
        f"| mean final activation | {r['mean_activation']['lucent']:.1f} | "
        f"{r['mean_activation']['ours']:.1f} | {r['mean_activation']['ratio']:.3f} |",
        f"| time to lucent's {r['steps']}-step activation | {r['lucent_seconds']:.1f} s | "
        + (f"{ttq['seconds']:.1f} s (step {ttq['step']}) | **{ttq['speedup']:.2f}x** |"
           if ttq["seconds"] else "not reached | - |"),
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(main(args.out, args.quick), indent=2, default=str))
