"""Evidence on a real pretrained network: BVLC GoogLeNet and the 500 ImageNet sample photos of
``../shared`` (skipped with a reason where they are absent).

Ground truth for "is this a car detector?" is the class of the photos a unit likes best. The
vehicle classes below are the land vehicles among the 1000 ImageNet classes (wheeled or tracked,
rail included, human- or animal-drawn included; boats and aircraft not), read off
``imagenet_synsets.txt``; 24 of the 500 sample photos are of these classes (4.8 %), so a unit
whose top 9 photos hold 6 or more vehicles is far from chance (0.43 expected).

Measured on this data (2 CPU cores): ``find --class "sports car" --layer inception_4e`` ranks
inception_4e:736, 714, 147 first, whose top 9 photos hold 7, 4 and 4 vehicles (15 of 27);
``find --class cab`` with the photos ranks inception_4e:800 first (8 of 9). The control class
tench gets units with 1 vehicle in 27 top photos. Ablating the three strongest excitatory inputs
of inception_4e:800 in inception_4d (by expanded weights) lowers its mean activation by 54 % over
the 100 photos where it is most active; 3 random inception_4d units lower it by 0.7 % +- 4.0 %
(50 draws).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from circuits_cli.cli import cli
from circuits_cli.units import Unit

pytestmark = pytest.mark.slow

VEHICLES = {
    "n02701002": "ambulance", "n02704792": "amphibian", "n02814533": "beach wagon",
    "n02835271": "bicycle-built-for-two", "n02917067": "bullet train", "n02930766": "cab",
    "n03100240": "convertible", "n03272562": "electric locomotive", "n03345487": "fire engine",
    "n03384352": "forklift", "n03393912": "freight car", "n03417042": "garbage truck",
    "n03444034": "go-kart", "n03445924": "golfcart", "n03478589": "half track",
    "n03496892": "harvester", "n03538406": "horse cart", "n03594945": "jeep",
    "n03599486": "jinrikisha", "n03670208": "limousine", "n03769881": "minibus",
    "n03770679": "minivan", "n03777568": "Model T", "n03785016": "moped",
    "n03791053": "motor scooter", "n03792782": "mountain bike", "n03796401": "moving van",
    "n03868242": "oxcart", "n03895866": "passenger car", "n03930630": "pickup",
    "n03977966": "police van", "n04037443": "racer", "n04065272": "recreational vehicle",
    "n04146614": "school bus", "n04252077": "snowmobile", "n04252225": "snowplow",
    "n04285008": "sports car", "n04310018": "steam locomotive", "n04335435": "streetcar",
    "n04389033": "tank", "n04428191": "thresher", "n04461696": "tow truck",
    "n04465501": "tractor", "n04467665": "trailer truck", "n04482393": "tricycle",
    "n04487081": "trolleybus", "n04509417": "unicycle",
}
LAYERS = ["inception_4e"]
TOP = 9


@pytest.fixture(scope="session")
def evidence_cache(tmp_path_factory):
    """$CIRCUITS_CACHE for this session: activations are computed once for all tests here."""
    return tmp_path_factory.mktemp("bvlc_cache")


@pytest.fixture(scope="session")
def bvlc_acts(bvlc_model, sample_images_dir, evidence_cache):
    """inception_4e over the 500 photos, one forward pass, cached on disk (zero ablation of
    inception_4d units needs no stored inception_4d activations)."""
    from circuits_cli.evidence import layers_activations

    return layers_activations(bvlc_model, LAYERS, sample_images_dir,
                              cache_dir=evidence_cache / "activations", batch_size=25)


def _vehicles_in_top(acts, channel: int, top: int = TOP) -> int:
    from circuits_cli.images import wnid_of

    order = np.argsort(-acts.column("max", channel), kind="stable")[:top]
    return sum(wnid_of(acts.paths[i]) in VEHICLES for i in order)


def test_vehicle_classes_match_the_synsets(bvlc_model, bvlc_acts):
    from circuits_cli.images import wnid_of

    for wnid, label in VEHICLES.items():
        assert bvlc_model.labels[bvlc_model.class_ids.index(wnid)] == label
    assert bvlc_acts["inception_4e"].n_images == 500
    assert sum(wnid_of(p) in VEHICLES for p in bvlc_acts["inception_4e"].paths) == 24


def test_find_car_classes_returns_units_whose_examples_are_vehicles(bvlc_model, bvlc_acts,
                                                                     sample_images_dir,
                                                                     evidence_cache):
    from circuits_cli.evidence import find_units

    acts = bvlc_acts["inception_4e"]
    # no photo of a sports car among the samples: ranked by expanded weights to the logit alone
    res = find_units(bvlc_model, "sports car", "inception_4e", top=3)
    counts = [_vehicles_in_top(acts, s.unit.channel) for s in res.units]
    assert counts[0] >= 6, counts  # measured 7 of 9 (inception_4e:736)
    assert sum(counts) >= 12, counts  # measured 15 of 27; chance: 1.3
    # cab has one photo: weights x (its activation on the cab photo - the mean)
    res = find_units(bvlc_model, "cab", "inception_4e", top=3, images=sample_images_dir,
                     cache_dir=evidence_cache / "activations")
    assert res.class_image_files == ["n02930766_cab.JPEG"]
    assert _vehicles_in_top(acts, res.units[0].unit.channel) >= 6  # measured 8 (4e:800)
    # control: a fish class finds no vehicle units
    res = find_units(bvlc_model, "tench", "inception_4e", top=3)
    assert sum(_vehicles_in_top(acts, s.unit.channel) for s in res.units) <= 3  # measured 1


def test_ablating_the_traced_inputs_of_a_vehicle_unit(bvlc_model, bvlc_acts, sample_images_dir,
                                                      evidence_cache):
    from circuits_cli.connections import expanded_weights, rank_inputs
    from circuits_cli.evidence import ablate

    kernels = expanded_weights(bvlc_model, "inception_4d", "inception_4e", [800])[0]
    inputs = [Unit("inception_4d", c.channel) for c in rank_inputs(kernels, 20)
              if c.sign > 0][:3]
    res = ablate(bvlc_model, Unit("inception_4e", 800), inputs, sample_images_dir, draws=20,
                 top_images=24, cache_dir=evidence_cache / "activations")
    assert res.n_images == 24 and res.draws == 20
    assert res.relative_drop > 0.3, res.summary()  # measured 0.54 (top 100 images)
    assert res.random_relative_mean < 0.1, res.summary()  # measured 0.007
    assert res.z_score > 4 and max(res.random_drops) < res.drop, res.summary()


def test_cli_examples_and_ablate_end_to_end(bvlc_weights, sample_images_dir, evidence_cache,
                                            bvlc_acts, tmp_path):
    env = {"CIRCUITS_CACHE": str(evidence_cache)}
    common = ["-m", "googlenet-bvlc", "--weights", str(bvlc_weights), "--images",
              str(sample_images_dir)]
    runner = CliRunner()
    r = runner.invoke(cli, ["examples", "inception_4e:800", *common, "--out", str(tmp_path),
                            "--json"], env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    files = [e["file"] for e in data["examples"]]
    assert len(files) == TOP and sum(f[:9] in VEHICLES for f in files) >= 6  # measured 8
    assert (tmp_path / "googlenet-bvlc_inception_4e_800.png").exists()
    box = data["examples"][0]["box"]
    assert 0 <= box[0] < box[2] <= 224 and 0 <= box[1] < box[3] <= 224

    r = runner.invoke(cli, ["ablate", "inception_4e:800", "--inputs", "inception_4d:203,302",
                            *common, "--draws", "5", "--top-images", "8", "--json"], env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["n_images"] == 8 and data["random"]["draws"] == 5
    assert data["relative_drop"] > data["random"]["mean_relative_drop"]
