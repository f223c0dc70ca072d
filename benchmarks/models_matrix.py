"""Every command on the models people study, with random weights: the commands x models matrix.

For each model (torchvision resnet50, convnext_tiny and vit_b_16; timm resnet50 and
vit_small_patch16_224, all built with ``--weights random``, nothing downloaded) each command runs
in-process with small settings on a few seeded noise images, and its outcome is recorded: ``ok``,
``refused`` (exit status 2 with its one ``Error:`` line: a refusal that says why) or ``CRASH`` (a
traceback, or any other exit status: a defect). Seconds per command are wall-clock on this
machine, model loading included.

    python benchmarks/models_matrix.py --out outputs/models-matrix [--models tv-resnet50,...]

Writes ``OUT/matrix.json`` and ``OUT/matrix.md``. tests/test_models_matrix.py runs a
representative part of the same table (:data:`MODELS`, :func:`commands`) in the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

#: name -> (--model, a layer, an earlier layer (ablate's inputs), a layer for find)
MODELS = {
    "tv-resnet50": ("torchvision:resnet50", "layer3", "layer2", "layer4"),
    "tv-convnext_tiny": ("torchvision:convnext_tiny", "features.5", "features.3", "features.7"),
    "tv-vit_b_16": ("torchvision:vit_b_16", "encoder.layers.encoder_layer_6",
                    "encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_11"),
    "timm-resnet50": ("timm:resnet50", "layer3", "layer2", "layer4"),
    "timm-vit_small_patch16_224": ("timm:vit_small_patch16_224", "blocks.6", "blocks.5",
                                   "blocks.11"),
}

#: Commands that take no model, or only the toy world's: they do not apply to these models.
NOT_APPLICABLE = {"superposition": "toy models of superposition: no vision model",
                  "toy": "the toy world's own model and scenes",
                  "demo": "the toy model's car circuit, end to end"}


def commands(layer: str, earlier: str, last: str, images: Path, out: Path) -> dict[str, list]:
    """The arguments of each command for one model (small settings)."""
    unit = f"{layer}:1"
    return {
        "layers": ["layers"],
        "classify": ["classify", images, "-q"],
        "visualize": ["visualize", layer, "--units", "0-1", "--steps", "4", "--size", "64",
                      "--out", out / "visualize"],
        "weights": ["weights", unit, "--no-render", "--top-k", "3"],
        "trace": ["trace", unit, "--depth", "2", "--top-k", "2", "--no-render",
                  "--out", out / "trace"],
        "examples": ["examples", unit, "--images", images, "-k", "2", "--out", out / "examples"],
        "ablate": ["ablate", unit, "--inputs", f"{earlier}:0,1", "--images", images,
                   "--draws", "2", "--out", out / "ablate"],
        "find": ["find", "--class", "class 1", "--layer", last, "-k", "3"],
        "sae train": ["sae", "train", layer, "--images", images, "--steps", "5", "--expansion",
                      "1", "--k", "4", "--threads", "1", "--out", out / "sae"],
        "steer": ["steer", unit, "--images", images, "--strengths", "0,2", "--out", out / "steer"],
        "atlas": ["atlas", "--layers", layer, "--units", f"{layer}:0-1", "--images", images,
                  "--steps", "4", "--kinds", "channel", "--out", out / "atlas"],
    }


@dataclass
class Outcome:
    model: str
    command: str
    status: str  # ok | refused | CRASH
    seconds: float
    message: str = ""


def noise_images(folder: Path, n: int = 6, side: int = 256) -> Path:
    """``n`` seeded noise pictures with a few coloured blocks (the models have random weights:
    what matters is that every command reads real files)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.uniform(0.3, 0.7, (side, side, 3))
        for _ in range(3):
            y, x = rng.integers(0, side - 64, 2)
            img[y:y + 64, x:x + 64] = rng.uniform(0, 1, 3)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"noise{i}.png")
    return folder


def run_one(model: str, args: list, env: dict) -> tuple[str, str]:
    from click.testing import CliRunner

    from circuits_cli.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args] + ["-m", model, "--weights", "random"],
                                env=env, catch_exceptions=True)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(result.exception))
        return "CRASH", tb.strip().splitlines()[-1]
    if result.exit_code == 0:
        return "ok", ""
    if result.exit_code == 2 and lines and lines[-1].startswith("Error: ") \
            and "Traceback" not in result.output:
        return "refused", lines[-1][len("Error: "):]
    return "CRASH", f"exit {result.exit_code}: {(lines or [''])[-1]}"


def run_matrix(names: list[str], out: Path, only: list[str] | None = None,
               log=print) -> list[Outcome]:
    images = noise_images(out / "images")
    env = {"CIRCUITS_CACHE": str(out / "cache")}
    outcomes = []
    for name in names:
        model, layer, earlier, last = MODELS[name]
        for command, args in commands(layer, earlier, last, images, out / name).items():
            if only and command not in only:
                continue
            t = time.perf_counter()
            status, message = run_one(model, args, env)
            outcomes.append(Outcome(name, command, status, round(time.perf_counter() - t, 1),
                                    message))
            log(f"{name:28s} {command:10s} {status:8s} {outcomes[-1].seconds:6.1f}s  {message}")
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    models = list(dict.fromkeys(o.model for o in outcomes))
    cmds = list(dict.fromkeys(o.command for o in outcomes))
    cell = {(o.model, o.command): o for o in outcomes}
    rows = ["| command | " + " | ".join(models) + " |",
            "|---|" + "---|" * len(models)]
    for c in cmds:
        parts = []
        for m in models:
            o = cell.get((m, c))
            parts.append("" if o is None else f"{o.status} ({o.seconds:.0f} s)")
        rows.append(f"| {c} | " + " | ".join(parts) + " |")
    notes = [f"- {o.model} {o.command}: {o.status}: {o.message}" for o in outcomes
             if o.status != "ok"]
    na = [f"- {c}: does not apply ({why})" for c, why in NOT_APPLICABLE.items()]
    return "\n".join(rows + [""] + notes + na) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/models-matrix"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--commands", default=None, help="comma-separated subset")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    only = [c.strip() for c in args.commands.split(",")] if args.commands else None
    outcomes = run_matrix(names, args.out, only)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=2))
    (args.out / "matrix.md").write_text(markdown(outcomes))
    print(markdown(outcomes))
    return 1 if any(o.status == "CRASH" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
