"""Write the discovery benchmark's cases (seeded; re-running gives the same files).

    python benchmarks/discovery_cases/make_cases.py [--out benchmarks/discovery_cases]

Each case is a folder with ``case.json`` (the model, the target, the layer searched, the known
circuit, the distractors, how the images were made) and ``images.npz`` (``images``: uint8
(N, H, W, 3), the inputs every method is scored on). README.md describes the format.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FORMAT = "circuits-discovery-case/1"


def planted_images(n: int = 64, seed: int = 2026, size: int = 32) -> np.ndarray:
    """Grey scenes with one to four squares of the six colours of the planted world."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("planted_circuit", HERE / "planted_circuit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = np.full((size, size, 3), 0.5) + rng.normal(0, 0.03, (size, size, 3))
        for _ in range(rng.integers(1, 5)):
            colour = np.array(mod.COLOURS[rng.integers(len(mod.COLOURS))], dtype=np.float64)
            s = int(rng.integers(4, 11))
            y, x = (int(v) for v in rng.integers(0, size - s, size=2))
            img[y:y + s, x:x + s] = 0.1 + 0.8 * colour
        out[i] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


def planted_case() -> tuple[dict, np.ndarray]:
    case = {
        "format": FORMAT, "name": "planted",
        "description": "A planted network (planted_circuit.py): the target reads red, green, "
                       "blue (inhibitory) and cyan stored in superposition over two units; "
                       "distractors: a dead unit with the largest weight, the strongest unit "
                       "(never used), a polysemantic unit (red or magenta, unused), two weak "
                       "random units.",
        "model": "planted_circuit.py:build", "target": "target:0", "source": "units",
        "ablation": "mean",
        "known": [{"node": "units:0", "sign": 1, "role": "red"},
                  {"node": "units:1", "sign": 1, "role": "green"},
                  {"node": "units:2", "sign": -1, "role": "blue, inhibitory"},
                  {"node": "units:6", "sign": 1, "role": "cyan + magenta (superposition)"},
                  {"node": "units:7", "sign": 1, "role": "cyan + yellow (superposition)"}],
        "distractors": [{"node": "units:3", "role": "dead unit with the largest weight"},
                        {"node": "units:4", "role": "strongest unit, never used"},
                        {"node": "units:5", "role": "polysemantic (red or magenta), unused"},
                        {"node": "units:8", "role": "weak random"},
                        {"node": "units:9", "role": "weak random"}],
        "ground_truth": "the planted weights (planted_circuit.py)",
        "images": {"file": "images.npz", "generator": "make_cases.planted_images",
                   "n": 64, "seed": 2026},
    }
    return case, planted_images()


def toy_case() -> tuple[dict, np.ndarray]:
    import torch

    from circuits_cli.toy.analysis import part_selectivity
    from circuits_cli.toy.world import render_scenes
    from circuits_cli.zoo import load_model

    torch.set_num_threads(1)
    images, _ = render_scenes(48, seed=2026, classes=["car"])
    model = load_model("toy")
    parts = part_selectivity(model, "mixed4a", n=100)
    d = {c: {p: round(float(parts.dprime[i, c]), 2) for i, p in enumerate(parts.names)}
         for c in (37, 63, 136, 68, 89)}
    case = {
        "format": FORMAT, "name": "toy_car",
        "description": "The toy model's car unit mixed4b:64 on 48 car scenes. Known: the window "
                       "and wheel units of mixed4a, which the training recipe gave targets of "
                       "their own (mark every window / wheel cell), selective on the world's "
                       "part-only images. The inhibitory inputs the weights show (roof 136, "
                       "foliage 68, 89) are reported, not scored: nothing but the weights "
                       "names them.",
        "model": "toy", "target": "mixed4b:64", "source": "mixed4a", "ablation": "mean",
        "known": [{"node": "mixed4a:37", "sign": 1, "role": "windows",
                   "part_dprime": d[37]},
                  {"node": "mixed4a:63", "sign": 1, "role": "wheels", "part_dprime": d[63]}],
        "distractors": [{"node": f"mixed4a:{c}", "role": role, "part_dprime": d[c]}
                        for c, role in ((136, "inhibitory by the weights (roof)"),
                                        (68, "inhibitory by the weights (foliage)"),
                                        (89, "inhibitory by the weights"))],
        "ground_truth": "the world's generator (part-only images, d' on 100 per part, seed "
                        "424242) and the training recipe's unit targets",
        "images": {"file": "images.npz", "generator": "circuits_cli.toy.world.render_scenes"
                   "(48, seed=2026, classes=['car'])", "n": 48, "seed": 2026},
    }
    return case, images


def write(out: Path) -> list[Path]:
    written = []
    for case, images in (planted_case(), toy_case()):
        folder = out / case["name"]
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "images.npz", images=images)
        (folder / "case.json").write_text(json.dumps(case, indent=1) + "\n")
        written.append(folder)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    for folder in write(parser.parse_args().out):
        print(f"wrote {folder}")
