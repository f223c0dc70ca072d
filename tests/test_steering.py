"""Steering: writing a unit into the forward pass moves the predictions the way its weights say,
on the planted network (known logit weights) and on the toy model (the car unit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import PLANTED_EVIDENCE, assert_clean_error, run

from circuits_cli.units import Unit, direction

SPEC = PLANTED_EVIDENCE


@pytest.fixture(scope="module")
def planted(planted_evidence_model):
    return planted_evidence_model


@pytest.fixture(scope="module")
def world(planted_world):
    return planted_world[0]


def test_unit_to_logits_is_the_planted_readout(planted):
    """logit 'red square' = 5 x mean(relu3:1): writing relu3:1's decoder (one per position)
    adds exactly 5 to it and nothing to the green-square logit."""
    from circuits_cli.connections import unit_to_logits
    from circuits_cli.evidence.steering import supported_classes

    scores = unit_to_logits(planted, Unit("relu3", 1))
    assert scores[0].item() == pytest.approx(5.0, rel=1e-3)
    assert abs(scores[1].item()) < 1e-3
    top, _ = supported_classes(planted, Unit("relu3", 1), top=1)
    assert top == [0]
    # a direction mixing the red and green copies supports both, equally
    mix = unit_to_logits(planted, direction("relu3", [0, 1, 1, 0, 0, 0, 0, 0]))
    assert mix[0].item() == pytest.approx(mix[1].item(), rel=1e-3) and mix[0] > 3


def test_boosting_and_suppressing_the_red_copy(planted, world, tmp_path):
    from circuits_cli.evidence.steering import steer

    res = steer(planted, Unit("relu3", 1), world, mode="add", strengths=[0.0, 2.0],
                cache_dir=tmp_path / "c")
    assert res.supported[0] == 0
    # all three classes are "supported" by default: no other image can move into them
    assert res.measures(res.levels[1])["moved_into_supported"] is None
    res = steer(planted, Unit("relu3", 1), world, mode="add", strengths=[0.0, 2.0],
                supported=[0], cache_dir=tmp_path / "c")
    red = np.flatnonzero(res.true == 0)
    assert len(red) == 8  # the planted red-square scenes, labelled by their folder
    clean, boosted = (res.measures(lv) for lv in res.levels)
    assert clean["changed_top1"] == 0
    others = np.setdiff1d(np.arange(len(res.paths)), red)
    p_red_clean = res.clean[others, 0].mean()
    p_red_boost = res.levels[1].probs[others, 0].mean()
    assert p_red_boost > p_red_clean + 0.2, (p_red_clean, p_red_boost)
    assert boosted["moved_into_supported"] > 0.5
    off = steer(planted, Unit("relu3", 1), world, mode="clamp", strengths=[0.0],
                supported=[0], cache_dir=tmp_path / "c")
    # clamped to 0, the red-square logit (5 x mean relu3:1, positive on a red scene) is 0:
    # P(red) falls on every red scene
    assert (off.levels[0].probs[red, 0] < res.clean[red, 0] - 1e-3).all()


def test_top5_share_counts_the_supported_classes_among_the_top_5():
    """Per image, the share of its 5 most probable classes that are supported, on a result
    built by hand; measures() averages it over the images not of the supported classes and
    over those of them."""
    from circuits_cli.evidence.steering import DoseLevel, SteeringResult

    probs = np.array([[0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05],   # top-5: classes 0-4
                      [0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30]])  # top-5: classes 2-6
    res = SteeringResult(unit="u", mode="add", reference=1.0,
                         labels=[f"c{i}" for i in range(7)], paths=[Path("a"), Path("b")],
                         true=np.array([0, 3]), supported=[0, 1, 6], clean=probs,
                         levels=[DoseLevel(1.0, probs)])
    lv = res.levels[0]
    np.testing.assert_array_equal(res.top5_share(lv), [0.4, 0.2])   # {0, 1}; {6}
    np.testing.assert_array_equal(res.top5_share(lv, classes=[5]), [0.0, 0.2])
    np.testing.assert_array_equal(res.top5_share(lv, k=1), [1.0, 1.0])
    m = res.measures(lv)
    assert m["top5_share_on_supported"] == 0.4 and m["top5_share_others"] == 0.2


def test_a_fixed_reference_sets_what_strength_1_means(planted, world, tmp_path):
    """reference=R with strength s writes s x R: the same forward pass as the default reference
    (the unit's largest activation) at the strength that gives the same product."""
    from circuits_cli.errors import CircuitsError
    from circuits_cli.evidence.steering import steer

    unit, cache = Unit("relu3", 1), tmp_path / "c"
    default = steer(planted, unit, world, strengths=[2.0], cache_dir=cache)
    fixed = steer(planted, unit, world, strengths=[1.0], reference=2.0 * default.reference,
                  cache_dir=cache)
    assert fixed.reference == 2.0 * default.reference
    np.testing.assert_array_equal(fixed.levels[0].probs, default.levels[0].probs)
    half = steer(planted, unit, world, strengths=[2.0], reference=0.5 * default.reference,
                 cache_dir=cache)
    assert not np.allclose(half.levels[0].probs, default.levels[0].probs)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CircuitsError, match="reference"):
            steer(planted, unit, world, strengths=[1.0], reference=bad, cache_dir=cache)


@pytest.mark.slow
def test_steering_the_toy_car_unit_both_ways(toy, toy_scenes_140, tmp_path):
    """Boosting the car unit turns non-car scenes into cars; suppressing it lowers the car
    classes on their own scenes while unrelated classes keep most of their accuracy.

    Measured on mixed4b:64 (supported classes car, truck, bicycle): at +2, 51% of the other
    scenes move into them, 48 to car; at -1, the supported classes' probability on their own
    scenes falls from 0.91 to 0.67 (8 cars become scrap) and 93% of the unrelated scenes keep
    their class (3 trees become wagons, 2 houses and a wagon scrap)."""
    from circuits_cli.evidence.steering import steer
    from circuits_cli.toy.analysis import best_class_unit

    car = best_class_unit(toy, "mixed4b", "car").unit
    res = steer(toy, car, toy_scenes_140, mode="add", strengths=[-1.0, 0.0, 2.0],
                cache_dir=tmp_path / "c")
    assert toy.labels[res.supported[0]] == "car"
    down, clean, up = (res.measures(lv) for lv in res.levels)
    assert up["moved_into_supported"] >= 0.25, up
    assert up["changed_to"] and next(iter(up["changed_to"])) == "car"
    assert down["supported_prob_on_supported"] < clean["supported_prob_on_supported"] - 0.1
    assert down["top1_on_unrelated"] >= clean["top1_on_unrelated"] - 0.1, down


def test_steer_command_writes_and_refuses_bad_input(planted, world, tmp_path):
    env = {"CIRCUITS_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "steer"
    r = run("steer", "relu3:1", "--images", world, "-m", SPEC, "--strengths", "0,2", "--out",
            out, "--json", env=env)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["supported_classes"][0] == "red square"
    assert [lv["strength"] for lv in data["levels"]] == [0.0, 2.0]
    assert (out / "steer.png").stat().st_size > 10_000 and (out / "steer.json").is_file()
    assert_clean_error(run("steer", "relu3:1", "--images", world, "-m", SPEC, "--strengths",
                           "a,b", env=env), "strengths")
    assert_clean_error(run("steer", "relu3:99", "--images", world, "-m", SPEC, env=env),
                       "out of range")
    assert_clean_error(run("steer", "relu3:1", "--images", world, "-m", SPEC, "--classes",
                           "no such class", env=env), "class")
