"""``make bench``: run every benchmark, each against its anchor in the same run, and write results.

Results go to ``OUT/results.json`` (everything measured) and ``OUT/summary.md`` (the tables the
README summarises). Machines here are noisy: each benchmark reports ratios against an anchor
measured in the same run (lucent's ``render_vis``; a per-unit gradient loop), not absolute times.

    python benchmarks/run.py --out outputs/bench [--quick] [--only visualize,connections]
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

BENCHES = ("connections", "evidence", "visualize", "visualize_gpu", "sae", "scale", "atlas",
           "graph", "discovery")


def machine() -> dict:
    import os

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true", help="fewer units/steps: a smoke run")
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    results = {"machine": machine(), "quick": args.quick}
    summary = [f"# Benchmarks ({results['machine']['date']}, "
               f"{results['machine']['cpu_count']} CPU cores, "
               f"cuda: {results['machine']['cuda']})", ""]
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        print(f"== bench {name}", flush=True)
        module = importlib.import_module(f"bench_{name}")
        started = time.perf_counter()
        result = module.main(args.out, quick=args.quick)
        result["bench_wall_s"] = round(time.perf_counter() - started, 1)
        results[name] = result
        md = args.out / f"{name}.md"
        if md.is_file():
            summary += [md.read_text().strip(), ""]
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "summary.md").write_text("\n".join(summary) + "\n")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
