"""The rest of the story after the car circuit, on the toy model: superposition, the features of
the car unit's layer, and steering the car feature; then one page (``report.html`` at the top of
the demo folder) that presents the whole story.

Small settings throughout (the demo must run in a few minutes on 2 CPU cores); every step
writes into its own sub-folder and is resumed from it on a re-run:

- ``superposition/``: the paper's sparsity sweep (n = 20 features in m = 5 dimensions);
- ``sae/``: a TopK sparse autoencoder on the car unit's layer over the demo's scenes;
- ``steer/``: the car feature (the SAE feature most selective for cars) steered both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .units import Unit
from .zoo.base import LoadedModel

#: The demo's settings (seconds each on 2 cores).
SUPERPOSITION_STEPS = 1500
SAE_SETTINGS = {"expansion": 4, "k": 8, "steps": 300}
STEER_STRENGTHS = (-0.5, 0.0, 0.5, 1.0, 2.0)


@dataclass
class Story:
    superposition: dict | None = None
    sae_folder: Path | None = None
    sae_metrics: dict = field(default_factory=dict)
    car_feature: Unit | None = None
    car_feature_dprime: float | None = None
    car_neuron_dprime: float | None = None
    decoder_on_neuron: float | None = None
    steering: dict | None = None
    supported_by_weights: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def class_feature(model: LoadedModel, sae, acts, class_name: str,
                  candidates: int = 10) -> tuple[int, float]:
    """(feature, d') of the SAE's feature for ``class_name``: among the ``candidates`` features
    whose spatial max best separates the images of the class (labelled by file name) from the
    rest (d'), the one whose decoder direction adds most to the class logit (its expanded
    weight, summed over positions): selective for the class *and* writing towards it."""
    from .evidence.find import class_weights
    from .sae.features import feature_activations

    cls = model.labels.index(class_name)
    d = class_dprime(model, acts.paths, feature_activations(sae, acts.maps).max.numpy(),
                     class_name)
    weight = sae.W_dec.detach().double().cpu().numpy() @ class_weights(model, acts.layer, cls)
    top = np.argsort(-np.nan_to_num(d, nan=-np.inf), kind="stable")[:candidates]
    best = int(top[np.argmax(weight[top])])
    return best, float(d[best])


def tell(model: LoadedModel, out: Path, car: Unit, scenes: Path,
         echo: Callable[[str], None] = print, progress: bool = False) -> Story:
    """Superposition, the car layer's SAE and steering its car feature, into ``out``."""
    from .evidence import layer_activations
    from .evidence.steering import dose_response_figure, steer
    from .files import save_figure, write_json
    from .sae.layer import train_layer_sae
    from .sae.train import TrainConfig
    from .superposition.experiments import SweepParams
    from .superposition.run import run_superposition
    from .units import parse_unit

    story = Story()
    echo("[6/8] superposition: the toy models of Elhage et al. (n=20 features, m=5 dimensions)")
    res = run_superposition(out / "superposition", experiments=("sweep",),
                            params={"sweep": SweepParams(steps=SUPERPOSITION_STEPS)})
    story.superposition = res["sweep"]
    story.files["wtw"] = out / "superposition" / "wtw_sweep.png"
    story.files["norms"] = out / "superposition" / "feature_norms.png"

    echo(f"[7/8] a sparse autoencoder on {car.layer} over the scenes (TopK, "
         f"{SAE_SETTINGS['expansion']}x, k={SAE_SETTINGS['k']})")
    trained = train_layer_sae(model, car.layer, scenes, out / "sae", TrainConfig(**SAE_SETTINGS),
                              log=None, bar=False)
    story.sae_folder, story.sae_metrics = out / "sae", trained.metrics
    acts = layer_activations(model, car.layer, scenes)
    index, dprime = class_feature(model, trained.sae, acts, "car")
    story.car_feature = parse_unit(f"{car.layer}@{out / 'sae'}#{index}", model)
    story.car_feature_dprime = dprime
    story.car_neuron_dprime = float(class_dprime(model, acts.paths,
                                                 acts.stats["max"][:, [car.channel]], "car")[0])
    story.decoder_on_neuron = float(story.car_feature.decoder(acts.shape[0])[car.channel])
    story.files["sae_metrics"] = out / "sae" / "metrics.png"

    echo(f"[8/8] steering the car feature {index} (add, strengths {list(STEER_STRENGTHS)})")
    # the hypothesis under test is "this is the car feature": its targeted class is car (the
    # classes its decoder pushes most through the weights are reported beside it)
    from .evidence.steering import supported_classes

    by_weights, _ = supported_classes(model, story.car_feature, 3)
    story.supported_by_weights = [model.labels[i] for i in by_weights]
    result = steer(model, story.car_feature, scenes, mode="add", strengths=STEER_STRENGTHS,
                   supported=[model.labels.index("car")], progress=progress)
    story.steering = result.to_json()
    (out / "steer").mkdir(parents=True, exist_ok=True)
    write_json(out / "steer" / "steer.json", story.steering)
    save_figure(dose_response_figure(result), out / "steer" / "steer.png")
    story.files["steer"] = out / "steer" / "steer.png"
    return story


def class_dprime(model: LoadedModel, paths, values, class_name: str) -> np.ndarray:
    """d' of each column of ``values`` (N, K), a spatial max per image, between the images of
    ``class_name`` (labelled by file name) and the rest."""
    from .evidence.steering import image_labels

    mine = image_labels(model, paths) == model.labels.index(class_name)
    if not mine.any() or mine.all():
        raise ValueError(f"the images hold no contrast for class {class_name!r}")
    values = np.asarray(values, dtype=np.float64)
    a, b = values[mine], values[~mine]
    return (a.mean(0) - b.mean(0)) / np.sqrt(0.5 * (a.var(0) + b.var(0)) + 1e-9)


def sections(demo, story: Story) -> list:
    """The story page's sections from a demo result and a :class:`Story`."""
    from .reports.story import Figure, Section

    s = []
    circuit = Section("circuit", f"The car circuit of {demo.unit}")
    circuit.paragraphs.append(
        f"{demo.unit} is the unit of the model's last mixed block most selective for cars. Its "
        "strongest inputs by expanded weights, with their feature visualizations and the spatial "
        "kernels on the edges (red excites, blue inhibits):")
    circuit.paragraphs += demo.findings
    if demo.circuit_png:
        circuit.figures.append(Figure(demo.circuit_png, "circuit.png: the traced circuit"))
    if demo.sheet:
        circuit.figures.append(Figure(demo.sheet, "every unit of the layer that feeds it"))
    if demo.ablation:
        circuit.paragraphs.append(
            "Ablation tests the weights on the scenes: each group of inputs is zeroed and the "
            "car unit's mean activation compared with zeroing as many random units of the layer "
            "(never one of its traced inputs), where the group can act: the excitatory inputs on "
            "the car unit's best scenes, the inhibitory ones on the scenes where they fire (on "
            "its best scenes they are mostly silent).")
        circuit.paragraphs += [line[0].upper() + line[1:] + "." for line in demo.ablation]
    if demo.report:
        circuit.links.append(("The circuit report: dataset examples, kernels, ablation",
                              demo.report))
    s.append(circuit)

    if demo.graph_png:
        g = Section("graph", "Which units carried one car scene to its answer")
        g.paragraphs.append(
            "An attribution graph (as circuit-tracer builds them for language models): for one "
            "scene the network's ReLU gates and max-pool selections are frozen, so that the car "
            "logit is exactly a sum of what each unit at each position of mixed4a and mixed4b "
            "writes into it through the frozen weights. Nodes are expanded in order of their "
            "influence on the logit and pruned; thumbnails are what each node sees of the scene.")
        g.paragraphs += demo.graph_lines
        g.figures.append(Figure(demo.graph_png, "graph.png: the pruned attribution graph"))
        g.links.append(("The interactive graph: click a node for its inputs, outputs and "
                        "receptive field", demo.graph_html))
        s.append(g)

    if story.superposition is not None:
        sup = Section("superposition", "Why neurons are polysemantic: superposition")
        relu = story.superposition["models"]["relu"]
        lin = story.superposition["models"]["linear"]
        sup.paragraphs.append(
            "Toy models of superposition (Elhage et al. 2022): 20 features of decaying "
            "importance squeezed through 5 dimensions. With dense features the model keeps the "
            "5 most important ones, like PCA; as features get sparser the ReLU model stores more "
            "features than it has dimensions, in superposition. The linear model never does.")
        sup.table = {"header": ["sparsity S"] + [f"{r['sparsity']:g}" for r in relu],
                     "rows": [["features stored, ReLU model"] + [r["represented"] for r in relu],
                              ["features stored, linear model"] + [r["represented"]
                                                                    for r in lin]]}
        sup.figures += [Figure(story.files["wtw"], "WᵀW and the bias b across sparsity"),
                        Figure(story.files["norms"], "feature norms, coloured by superposition")]
        s.append(sup)

    if story.car_feature is not None:
        m = story.sae_metrics
        feat = Section("features", "The features of the car unit's layer")
        feat.paragraphs.append(
            f"A TopK sparse autoencoder on {story.car_feature.layer}: explained variance "
            f"{m.get('explained_variance', float('nan')):.3f}, "
            f"L0 {m.get('l0', float('nan')):.1f}, "
            f"dead latents {m.get('dead_fraction', float('nan')):.1%} (held-out scenes).")
        feat.paragraphs.append(
            "Its car feature: among the ten latents most selective for car scenes, the one "
            "whose decoder direction adds most to the car logit through the weights.")
        feat.paragraphs.append(
            f"It is latent {story.car_feature.index}: "
            f"d′ {story.car_feature_dprime:.2f} "
            f"for car scenes against the rest (the car neuron: {story.car_neuron_dprime:.2f}); its "
            f"decoder writes {story.decoder_on_neuron:+.2f} into the car neuron. As a unit it is "
            f"written {story.car_feature}.")
        feat.figures.append(Figure(story.files["sae_metrics"], "the SAE's metrics"))
        s.append(feat)

    if story.steering is not None:
        st = Section("steering", "Steering the car feature")
        rows = []
        for lv in story.steering["levels"]:
            rows.append([f"{lv['strength']:+g}", _f(lv["supported_prob_on_supported"]),
                         _f(lv["moved_into_supported"]), _f(lv["top1_on_unrelated"]),
                         _f(lv["kl_on_unrelated"])])
        st.paragraphs.append(
            "Adding the feature's decoder direction at every position of its layer, in "
            f"multiples of its largest activation ({story.steering['reference']:.3g}). The "
            "targeted class is car; the classes its decoder pushes most through the weights "
            f"are {', '.join(story.supported_by_weights)}.")
        st.table = {"header": ["strength", "P(supported) on their scenes",
                               "other scenes moved into them", "top-1 on unrelated scenes",
                               "KL on unrelated"], "rows": rows}
        st.figures.append(Figure(story.files["steer"], "dose-response and before/after top-5"))
        s.append(st)
    return s


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"
