"""Circuit quality on a real pretrained network: the car unit that ``find`` names in
googlenet-bvlc's inception_4c, traced two hops back, measured on the vehicle photos of
``../shared`` (skipped with a reason where they are absent).

Measured (2 CPU cores, docs/guides/circuit-quality.md): ``find --class "sports car" --layer
inception_4c`` ranks inception_4c:176 first; ``trace inception_4c:176 --depth 2`` (top 3 per unit,
11 inputs) keeps faithfulness 0.043 on the 24 land-vehicle photos with mean ablation (means over
every tenth of the 500 photos), 0.147 when cut after inception_4b; with zero ablation 0.324.
"""

from __future__ import annotations

import pytest
import torch

from circuits_cli.quality import evaluator, faithfulness, unit_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def car_case(bvlc_model, sample_images_dir):
    from test_evidence_bvlc import VEHICLES

    from circuits_cli.evidence import find_units
    from circuits_cli.images import find_images, load_images, wnid_of
    from circuits_cli.trace import circuit_node_set, trace

    car = find_units(bvlc_model, "sports car", "inception_4c", top=1).units[0].unit
    circuit = trace(bvlc_model, car, depth=2)
    files = sorted(find_images([sample_images_dir])[0])
    vehicles, _, _ = load_images([p for p in files if wnid_of(p) in VEHICLES])
    reference, _, _ = load_images(files[::10])
    return car, circuit_node_set(bvlc_model, circuit), vehicles, reference


def test_the_traced_car_circuit_is_far_from_faithful(bvlc_model, car_case):
    car, (nodes, order), vehicles, reference = car_case
    assert str(car) == "inception_4c:176" and len(order) == 11 and len(vehicles) == 24
    target = unit_target(car)
    ev = evaluator(bvlc_model, vehicles, target, nodes, ablation="mean", reference=reference)
    f = faithfulness(bvlc_model, vehicles, target, nodes, evaluator_=ev)
    assert f == pytest.approx(0.043, abs=0.02)
    # cut after inception_4b: the first hop alone (inception_4a kept whole)
    whole_4a = torch.ones_like(nodes["inception_4a"])
    first = {"inception_4b": nodes["inception_4b"], "inception_4a": whole_4a}
    fm, f_first, f_empty = ev.F([None, first, {"inception_4b": torch.zeros_like(
        nodes["inception_4b"]), "inception_4a": whole_4a}])
    f1 = (f_first - f_empty) / (fm - f_empty)
    assert f1 == pytest.approx(0.147, abs=0.03) and f1 > f
    fz = faithfulness(bvlc_model, vehicles, target, nodes, ablation="zero")
    assert fz == pytest.approx(0.324, abs=0.05)
