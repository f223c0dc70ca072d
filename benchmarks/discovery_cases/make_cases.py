"""Write the discovery benchmark's cases (seeded; re-running gives the same files).

    python benchmarks/discovery_cases/make_cases.py [--out benchmarks/discovery_cases] [--retrain]

Each case is a folder with ``case.json`` (the model, the target, the layer searched, the known
circuit, the distractors, how the images were made) and ``images.npz`` (``images``: uint8
(N, H, W, 3), the inputs every method is scored on). README.md describes the format.

The retrained cases (``RETRAINED``) also hold the toy model they were trained to: ``toy.pt``,
written by ``circuits toy train`` with the recipe given here (about 10 minutes of one CPU
thread each). ``--retrain`` trains them again; without it the stored checkpoints are read.
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


#: Toy models retrained so that their car circuit is known by construction: the recipe gives a
#: wheel unit and a window unit of mixed4a targets of their own and spares them from the
#: channel dropout that hits the rest of mixed4a, so whatever of mixed4b reads parts reads them.
#: ``toy_car_seed2`` is the shipped recipe at another seed; ``toy_car_moved`` moves both part
#: units (and the car-box unit) to other channels and branches. If a discovery method finds
#: the part units because of what the network learned and not because of where they sit, it
#: finds 12 and 100 in the moved model where it found 63 and 37 in the others.
RETRAINED = {
    "toy_car_seed2": {"seed": 2, "unit_targets": None},
    "toy_car_moved": {"seed": 2, "unit_targets": {"mixed4a:12": "wheels",
                                                  "mixed4a:100": "windows",
                                                  "mixed4b:30": "car@box"}},
}


def retrained_recipe(name: str):
    """The :class:`~circuits_cli.toy.train.Recipe` of a retrained case."""
    from dataclasses import replace

    from circuits_cli.toy.train import Recipe, with_unit_targets

    spec = RETRAINED[name]
    recipe = replace(Recipe(), seed=spec["seed"])
    if spec["unit_targets"]:
        recipe = with_unit_targets(recipe, spec["unit_targets"])
    return recipe


def retrained_case(name: str, folder: Path, retrain: bool = False) -> tuple[dict, np.ndarray]:
    """A case on a retrained toy: the known circuit is the recipe's two part units; the target
    is the car unit as the demo picks it (best d' for cars among mixed4b's 3x3 and 5x5 units);
    the distractors are its three strongest inhibitory inputs by the weights."""
    import torch

    from circuits_cli.toy.analysis import best_class_unit, part_selectivity, trace_parts
    from circuits_cli.toy.train import load_checkpoint, save_checkpoint, train
    from circuits_cli.toy.world import render_scenes
    from circuits_cli.zoo import load_model

    recipe = retrained_recipe(name)
    weights = folder / "toy.pt"
    if retrain or not weights.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(train(recipe), weights)
    ckpt = load_checkpoint(weights)
    torch.set_num_threads(1)
    model = load_model("toy", weights=weights)
    parts = part_selectivity(model, "mixed4a", n=100)
    car = best_class_unit(model, "mixed4b", "car", branches=("3x3", "5x5"))
    part_units = {int(u.split(":")[1]): what for u, what in recipe.unit_targets.items()
                  if u.startswith(recipe.dropout_layer + ":")}
    known = []
    for c, part in sorted(part_units.items(), key=lambda kv: kv[1] != "windows"):
        row = parts.row(part)
        best = int(parts.dprime[row].argmax())
        known.append({"node": f"mixed4a:{c}", "sign": 1, "role": part,
                      "part_dprime": round(float(parts.dprime[row, c]), 2),
                      "best_for_its_part": best == c})
    inhibitors = [i for i in trace_parts(model, car.unit, "mixed4a", top_k=20, parts=parts)
                  if i.sign < 0 and i.channel not in part_units][:3]
    images, _ = render_scenes(48, seed=2026, classes=["car"])
    targets = ", ".join(f"{u}={w}" for u, w in recipe.unit_targets.items())
    case = {
        "format": FORMAT, "name": name,
        "description": f"A toy model retrained with seed {recipe.seed} and the unit targets "
                       f"{targets} (channel dropout sparing mixed4a:"
                       f"{','.join(str(c) for c in recipe.dropout_keep)}); its car unit "
                       f"mixed4b:{car.unit.channel} (d' {car.dprime:.1f} for cars, the demo's "
                       "rule) on 48 car scenes. Known: the recipe's wheel and window units.",
        "model": "toy", "weights": "toy.pt",
        "recipe": {"seed": recipe.seed, "unit_targets": recipe.unit_targets,
                   "dropout_keep": list(recipe.dropout_keep),
                   "held_out_accuracy": ckpt["metrics"]["held_out_accuracy"],
                   "command": "circuits toy train --out DIR --seed "
                              f"{recipe.seed}" + "".join(f" --unit-target {u}={w}" for u, w in
                                                          (RETRAINED[name]["unit_targets"]
                                                           or {}).items())},
        "target": f"mixed4b:{car.unit.channel}", "source": "mixed4a", "ablation": "mean",
        "known": known,
        "distractors": [{"node": f"mixed4a:{i.channel}",
                         "role": f"inhibitory by the weights ({i.part}, d' {i.dprime:.2f})"}
                        for i in inhibitors],
        "ground_truth": "retraining: the recipe gave these two units of mixed4a targets of "
                        "their own (mark every wheel / window cell) and spared them from the "
                        "channel dropout on the rest of the layer; the world's part-only "
                        "images confirm what they detect (d' on 100 per part, seed 424242)",
        "images": {"file": "images.npz", "generator": "circuits_cli.toy.world.render_scenes"
                   "(48, seed=2026, classes=['car'])", "n": 48, "seed": 2026},
    }
    return case, images


def write(out: Path, retrain: bool = False) -> list[Path]:
    written = []
    cases = [planted_case(), toy_case()]
    cases += [retrained_case(name, out / name, retrain) for name in RETRAINED]
    for case, images in cases:
        folder = out / case["name"]
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / "images.npz", images=images)
        (folder / "case.json").write_text(json.dumps(case, indent=1) + "\n")
        written.append(folder)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--retrain", action="store_true",
                        help="train the retrained cases' toy models again (about 10 minutes of "
                             "one CPU thread each) instead of reading their toy.pt")
    args = parser.parse_args()
    for folder in write(args.out, args.retrain):
        print(f"wrote {folder}")
