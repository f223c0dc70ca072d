"""The whole pipeline on one car detector: the story of "Zoom In", end to end.

:func:`run_demo` finds the model's car unit, traces its circuit, renders the feature
visualizations of the layer that feeds it (a contact sheet), draws the
circuit, and checks it against dataset examples and ablation, writing everything under one folder:

- ``visualize/``: feature visualizations of the layer that feeds the unit (one PNG per unit),
  its contact sheet ``sheet.png`` and ``manifest.json``
- ``trace/``: ``circuit.json``, ``circuit.png``, ``examples/``, ``evidence.json``, ``report.html``
- ``scenes/``: the generated toy-world scenes used as dataset (toy model only)

On the shipped ``toy`` model it runs offline in about a minute on 2 CPU cores. On ``inceptionv1``
(downloaded, or ``--weights``) it traces the papers' car detector ``mixed4c:447``; dataset
examples there need ``images``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CircuitsError

if TYPE_CHECKING:  # `circuits --help` reads this module's constants without importing torch
    from .units import Unit
    from .zoo.base import LoadedModel

#: The papers' car detector ("Zoom In", Lucid InceptionV1 numbering).
PAPER_CAR_UNITS = {"inceptionv1": "mixed4c:447"}
#: Where the toy model's car detector is looked for: the last mixed block's spatial branches.
TOY_CAR_LAYER = "mixed4b"
TOY_SPATIAL_BRANCHES = ("3x3", "5x5")
#: Feature-visualization steps on the toy model (64 px renders converge fast; 512 elsewhere).
TOY_STEPS = 128
#: Units rendered together in one optimisation (small 64 px images: large batches pay off).
TOY_BATCH = 32
#: Inputs traced per unit, hop by hop: five of the car unit, so that its inhibitors stand beside
#: its window and wheel detectors, and two of each of those, so the diagram stays readable.
TOP_K = (5, 2)


@dataclass
class DemoResult:
    out: Path
    unit: Unit
    sheet: Path | None = None
    circuit_png: Path | None = None
    report: Path | None = None
    story: Path | None = None  # the page of the whole story (toy model)
    graph_png: Path | None = None  # the attribution graph of one car scene (toy model)
    graph_html: Path | None = None
    graph_lines: list[str] = field(default_factory=list)  # what the graph shows, in words
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)
    ablation: list[str] = field(default_factory=list)  # what ablating each group did, in words


#: The layers of the demo's attribution graph: the car unit's layer and the one it reads.
GRAPH_LAYERS = ("mixed4a", "mixed4b")


def car_graph(model: LoadedModel, scenes: Path, out: Path, result: DemoResult,
              n_candidates: int = 16) -> None:
    """The attribution graph of the car logit on the car scene (among the first
    ``n_candidates``) the model is surest of, written to ``out``; its numbers go to
    ``result.graph_lines``."""
    import torch

    from .graph import Target, build_graph, node_crops
    from .images import load_image
    from .reports.graph_files import write_graph

    car = model.labels.index("car")
    paths = sorted(scenes.glob("*_car.png"))[:n_candidates]
    xs = torch.stack([load_image(p, size=model.input_size, resize=None) for p in paths])
    best = int(model.logits(xs)[:, car].argmax())
    x, path = xs[best:best + 1], paths[best]
    _, pruned = build_graph(model, x, Target("logit", car, label="car"), list(GRAPH_LAYERS),
                            max_nodes=200, batch_size=64, interventions=8,
                            metadata={"image_name": path.name, "slug": "demo-car-graph"})
    data = pruned.to_json()
    write_graph(out, data, x[0], node_crops(data, x[0]))
    result.graph_png, result.graph_html = out / "graph.png", out / "graph.html"
    s = data["scores"]
    feats = sorted((n for n in data["nodes"] if n["feature_type"] == "neuron"),
                   key=lambda n: -n["influence"])
    top = ", ".join(f"{n['node_id']} ({n['influence']:.2f})" for n in feats[:4])
    lines = [f"Scene {path.name}: car logit {data['metadata']['target']['value']:.2f}. The "
             f"pruned graph keeps {s['pruned_nodes']} of {s['expanded_nodes']} expanded nodes; "
             f"the most influential are {top}. Every node's edges plus its bias equal its "
             f"activation to {s['max_residual']:.1g}; faithfulness {s['faithfulness']:.2f} "
             f"({s['ablation']} ablation of the other active nodes of both layers)."]
    for rec in data["interventions"][:2]:
        lines.append(f"Zeroing {rec['node_id']} moves the car logit by {rec['predicted']:+.2f} "
                     f"in the replacement model and {rec['actual']:+.2f} in the network.")
    result.graph_lines = lines


def car_unit(model: LoadedModel) -> Unit:
    """The car detector: the papers' unit for ``inceptionv1``; for ``toy`` the unit of
    :data:`TOY_CAR_LAYER` most selective for cars on generated scenes."""
    if model.name in PAPER_CAR_UNITS:
        from .units import parse_unit

        return parse_unit(PAPER_CAR_UNITS[model.name], model)
    if model.name == "toy":
        from .toy.analysis import best_class_unit

        return best_class_unit(model, TOY_CAR_LAYER, "car", branches=TOY_SPATIAL_BRANCHES).unit
    raise CircuitsError(f"no known car unit for model {model.name!r}; pass --unit LAYER:CHANNEL "
                        "('circuits find --class \"sports car\" --layer LAYER' finds candidates "
                        "on an ImageNet model)")


def scene_names(n: int, seed: int = 2024) -> list[str]:
    """File names of the demo's ``n`` scenes (the class is part of the name)."""
    from .toy.world import CLASSES, _labels

    labels = _labels(n, seed)
    return [f"{i:04d}_{CLASSES[int(label)]}.png" for i, label in enumerate(labels)]


def write_scenes(out: Path, n: int, seed: int = 2024) -> Path:
    """``n`` generated toy-world scenes as PNGs (kept if already there): the demo's dataset."""
    import io

    from PIL import Image

    from .files import write_bytes
    from .toy.world import CLASSES, make_dataset

    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("*.png"))
    if len(existing) >= n:
        return out
    images, labels = make_dataset(n, seed=seed)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        path = out / f"{i:04d}_{CLASSES[int(label)]}.png"
        if not path.exists():
            array = (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            write_bytes(path, buf.getvalue())
    return out


#: A unit is labelled with a part in the toy's diagrams when its d' for it reaches this.
TOY_LABEL_DPRIME = 1.0


def _toy_label(model: LoadedModel, circuit) -> list[str]:
    """Label every node of ``circuit`` with what it detects, measured on generated images: the
    target with its class (d' against the other classes on scenes), the others with the part
    they are most selective for (d' on part-only images); returns the findings, one line per
    traced input of the target: its part, and where in the car unit's receptive field it
    excites and inhibits (mean expanded weight of the rows above and below the centre)."""
    from .connections import expanded_weights
    from .toy.analysis import (
        CAR_LAYOUT,
        at_initialisation,
        class_selectivity,
        describe_layout,
        part_selectivity,
        same_signs,
        vertical_profile,
    )

    tables: dict = {}
    for node in circuit.nodes:
        if node.id == circuit.target:
            table = class_selectivity(model, node.layer)
        else:
            if node.layer not in tables:
                tables[node.layer] = part_selectivity(model, node.layer)
            table = tables[node.layer]
        col = table.dprime[:, node.channel]
        best = table.entry(table.names[int(col.argmax())], node.channel)
        node.label = (f"{best.what} (d′ {best.dprime:.1f})" if best.dprime >= TOY_LABEL_DPRIME
                      else f"no clear part (d′ < {TOY_LABEL_DPRIME:g})")
    lines = []
    target = circuit.node(circuit.target)
    start = at_initialisation(model)
    edges = circuit.inputs(circuit.target)
    initial = (expanded_weights(start, circuit.node(edges[0].source).layer, target.layer,
                                [target.channel])[0].cpu() if start is not None and edges
               else None)
    for edge in edges:
        node = circuit.node(edge.source)
        table = tables[node.layer]
        col = table.dprime[:, node.channel]
        best = table.entry(table.names[int(col.argmax())], node.channel)
        top, bottom = vertical_profile(edge.kernel_array())
        effect = "excites" if edge.sign > 0 else "inhibits"
        detects = (f"most selective for {best.what} (d'={best.dprime:.2f})"
                   if best.dprime >= TOY_LABEL_DPRIME else
                   f"no clear part (at best {best.what}, d'={best.dprime:.2f})")
        line = (f"{edge.source} (rank {edge.rank}, {effect}): {detects}; "
                f"mean weight above the centre {top:+.3g}, below "
                f"{bottom:+.3g}: {describe_layout(top, bottom)}")
        where = CAR_LAYOUT.get(best.what)
        if where is not None and best.dprime >= TOY_LABEL_DPRIME:
            on, off = (top, bottom) if where == "top" else (bottom, top)
            line += (f", as a car has its {best.what} at the {where}" if on > 0 > off
                     else f", not as a car has its {best.what} (at the {where})")
        if initial is not None:  # was the layout learned, or there from the random start?
            t0, b0 = vertical_profile(initial[node.channel])
            grown = (abs(top) + abs(bottom)) / max(abs(t0) + abs(b0), 1e-12)
            line += (f"; before training {t0:+.3g} and {b0:+.3g} "
                     + (("(the same signs: training did not set them)" if grown < 2 else
                         f"(the same signs, {grown:.0f} times weaker: training made them strong)")
                        if same_signs((top, bottom), (t0, b0))
                        else "(training changed the signs)"))
        lines.append(line)
    return lines


def ablation_line(a) -> str:
    """One group's ablation (a :class:`circuits_cli.evidence.CircuitAblation`) in words."""
    from .units import is_neuron

    r = a.result
    ins = (f"{r.inputs[0].layer}:" + ", ".join(str(u.channel) for u in r.inputs)
           if all(is_neuron(u) for u in r.inputs) else ", ".join(str(u) for u in r.inputs))
    where = (f"the {r.n_images} images where they are most active" if r.top_by == "inputs"
             else f"its {r.n_images} best images")
    verdict = (f"as the weights say ({'a drop' if a.expected == 'drop' else 'a rise'})"
               if a.agrees else "not shown")
    return (f"zeroing the {a.group} inputs {ins} changes it by "
            f"{-r.relative_drop * 100:+.1f}% over {where}, against "
            f"{-r.random_relative_mean * 100:+.1f}% ± {r.random_relative_std * 100:.1f}% for "
            f"{len(r.inputs)} random "
            f"units of {r.inputs[0].layer} ({r.draws} draws): z {r.z_score:.1f}, {verdict}")


def run_demo(model: LoadedModel, out: str | Path, *, unit: Unit | None = None,
             images: str | Path | None = None, steps: int | None = None,
             size: int | None = None, depth: int = 2,
             top_k: int | tuple[int, ...] = TOP_K, n_scenes: int = 240,
             cache_dir: str | Path | None = None, progress: bool = True,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the pipeline on ``model``'s car unit (or ``unit``) into ``out``; see module doc.

    Every output folder (``trace/``, ``visualize/``, ``scenes/``) and the cache (root
    ``cache_dir``, default ``$CIRCUITS_CACHE``) are checked before any work
    (:func:`circuits_cli.files.claim_output`)."""
    from .evidence import check_evidence_outputs, image_set
    from .files import cache_dir as cache_sub
    from .files import claim_output
    from .render.run import visualize_layer
    from .reports.diagrams import draw_circuit
    from .reports.evidence import add_evidence
    from .trace import attach_renders, breadth, render_tree, trace
    from .units import Unit, parse_unit

    started = time.perf_counter()
    out = Path(out)
    toy = model.name == "toy"
    steps = steps or (TOY_STEPS if toy else 512)
    size = size or (model.input_size if toy else 128)
    claim_output(out / "trace", "demo", ("circuit.json", "circuit.png", "evidence.json",
                                         "report.html"), cache=cache_dir or True)
    images_given = image_set(images) if images is not None else None  # fail before writing
    if images_given is None and toy:  # an earlier run's scenes are kept as they are
        kept = len(list((out / "scenes").glob("*.png"))) >= n_scenes
        claim_output(out / "scenes", "demo", [] if kept else scene_names(n_scenes))
    if toy:
        from .reports.graph_files import GRAPH_FILES

        claim_output(out / "graph", "demo", GRAPH_FILES)
    renders, activations = cache_sub("renders", cache_dir), cache_sub("activations", cache_dir)
    unit = unit or car_unit(model)
    result = DemoResult(out=out, unit=unit)
    n_steps = 8 if toy else 4

    circuit = trace(model, unit, depth=depth, top_k=top_k)  # cheap: before the checks
    source = circuit.hops[0].source
    # The whole layer that feeds the unit on toy; elsewhere (512 steps on big models) only the
    # unit's traced inputs, which is what the diagram needs.
    channels = (None if toy else
                sorted({parse_unit(e.source, model).channel for e in circuit.inputs(str(unit))}))
    if images_given is not None or toy:
        check_evidence_outputs(out / "trace", circuit, model, cache_dir=activations)
    units = [Unit(source, c) for c in (channels if channels is not None
                                       else range(model.layer(source).channels))]
    claim_output(out / "visualize", "demo", ["manifest.json", "sheet.png"]
                 + [f"units/{u.slug}{ext}" for u in units for ext in (".png", ".json")],
                 cache=renders)
    echo(f"[1/{n_steps}] traced {unit} through the weights (depth {depth}, {breadth(top_k)})")
    echo(f"[2/{n_steps}] feature visualizations of {source} "
         f"({'all units' if channels is None else f'{len(channels)} units'}, {steps} steps)")
    visualize_layer(model, source, channels=channels, steps=steps, size=size,
                    batch=TOY_BATCH if toy else None, out_dir=out / "visualize",
                    cache_dir=renders, progress=progress, echo=echo)
    sheets = sorted((out / "visualize").glob("sheet*.png"))
    result.sheet = sheets[0] if sheets else None

    echo(f"[3/{n_steps}] circuit diagram of {unit} ({len(circuit.nodes)} units)")
    pictures = attach_renders(circuit, model, steps=steps, size=size, cache_dir=renders,
                              progress=progress)
    if toy:  # what each unit detects, measured on generated images, under it in the diagram
        result.findings = _toy_label(model, circuit)
        circuit.note = "italic: what each unit detects best (d′ on generated images)"
    (out / "trace").mkdir(parents=True, exist_ok=True)
    circuit.save(out / "trace" / "circuit.json")
    draw_circuit(circuit, out / "trace" / "circuit.png", pictures)
    result.circuit_png = out / "trace" / "circuit.png"
    echo(render_tree(circuit))

    if images_given is None and toy:
        images = write_scenes(out / "scenes", n_scenes)
        images_given = image_set(images)
    if images_given is not None:
        echo(f"[4/{n_steps}] dataset examples and ablation over {images}")
        evidence = add_evidence(out / "trace", model, images_given, cache_dir=activations,
                                progress=progress)
        result.report = evidence.html
        result.ablation = [ablation_line(a) for a in evidence.ablations]
    else:
        echo(f"[4/{n_steps}] no images given: skipping dataset examples and ablation "
             "(pass --images DIR)")
    if toy:
        from .reports.story import write_story
        from .story import sections, tell

        echo(f"[5/{n_steps}] attribution graph of one car scene (the car logit through "
             f"{', '.join(GRAPH_LAYERS)})")
        car_graph(model, Path(images), out / "graph", result)
        story = tell(model, out, unit, Path(images), echo=echo, progress=progress)
        result.story = write_story(out, f"The car circuit, superposition, features and steering "
                                   f"on the {model.name} model", model.name,
                                   sections(result, story), time.perf_counter() - started,
                                   atlas=out / "atlas" / "index.html")
    result.seconds = time.perf_counter() - started
    return result
