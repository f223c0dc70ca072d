"""``circuits trace --steer``: the trace report gains a steering section whose numbers are
those of :func:`circuits_cli.evidence.steering.steer` called directly with the same arguments
(the same JSON, to the bit), on the planted network: relu3:1 copies the red-square detector and
the 'red square' logit reads it, so boosting it must move other scenes into 'red square'."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import PLANTED_EVIDENCE, assert_clean_error, run

SPEC = PLANTED_EVIDENCE
STRENGTHS = [-1.0, 0.0, 2.0]


def _cells(html: str) -> list[list[str]]:
    """The rows of the steering table (strength first), cell texts."""
    section = html[html.index("id='steering'"):]
    table = section[section.index("<table>"):section.index("</table>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table)[1:]  # after the header
    return [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]


@pytest.fixture(scope="module")
def steered(planted_world, tmp_path_factory):
    """The trace command with --steer, and steer() called directly with the same arguments."""
    from circuits_cli.evidence.steering import steer
    from circuits_cli.units import parse_unit
    from circuits_cli.zoo import load_model

    world = planted_world[0]
    tmp = tmp_path_factory.mktemp("trace_steer")
    env = {"CIRCUITS_CACHE": str(tmp / "cache")}
    out = tmp / "t"
    r = run("trace", "relu3:1", "-m", SPEC, "--from", "relu2", "--depth", "1", "--top-k", "2",
            "--no-render", "--images", world, "--draws", "5", "--steer", "-1,0,2", "--json",
            "--out", out, env=env)
    assert r.exit_code == 0, r.output
    model = load_model(SPEC)
    direct = steer(model, parse_unit("relu3:1", model), world, mode="add", strengths=STRENGTHS,
                   cache_dir=tmp / "direct-cache")
    return out, json.loads(r.stdout), direct, world, env


def test_the_steering_section_equals_steer_called_directly(steered):
    out, data, direct, _world, _env = steered
    expected = direct.to_json()
    # the same numbers by both paths: the JSON output, steer.json and the direct call
    assert json.dumps(data["steering"], sort_keys=True) == json.dumps(expected, sort_keys=True)
    saved = json.loads((out / "steer.json").read_text())
    assert json.dumps(saved, sort_keys=True) == json.dumps(expected, sort_keys=True)
    # ground truth: the 'red square' logit is 5 x mean(relu3:1), so the red copy supports it
    # first and boosting moves images there (the planted net has 3 classes, all 'supported' by
    # default, so the class shifts are what tell)
    assert expected["supported_classes"][0] == "red square"
    boost = expected["levels"][2]
    assert list(boost["changed_to"]) == ["red square"] and boost["changed_top1"] >= 20
    assert boost["class_shift"][0]["class"] == "red square"
    assert boost["class_shift"][0]["shift"] > 0.3
    assert expected["levels"][1]["changed_top1"] == 0  # strength 0 adds nothing
    # the report's table: one row per strength (after the clean row), its cells the numbers
    html = (out / "report.html").read_text()
    rows = _cells(html)
    assert rows[0][0] == "clean" and len(rows) == 1 + len(STRENGTHS)
    keys = ("supported_prob_all", "moved_into_supported", "supported_prob_on_supported",
            "top1_on_unrelated", "kl_on_unrelated")
    for row, lv in zip(rows[1:], expected["levels"], strict=True):
        assert float(row[0]) == lv["strength"]
        assert row[1:6] == ["–" if lv[k] is None else f"{lv[k]:.3f}" for k in keys]
        assert int(row[6]) == lv["changed_top1"]
    # the dose-response figure and the before/after top-5 of the sample images
    assert "alt='dose-response of relu3:1'" in html
    for s in expected["samples"]:
        assert Path(s["path"]).name in html
        assert f"{s['after'][0]['prob']:.3f}" in html
    assert html.count("<table><tr><th colspan='2'>") == len(expected["samples"]) > 0
    # the diagram section shows the circuit, not the steering figure a second time
    diagram = html[html.index("<h2>Circuit diagram</h2>"):html.index("id='steering'")]
    assert "circuit.png" in diagram and "steer.png" not in diagram


def test_no_section_without_steer_and_bad_input(steered, tmp_path):
    out, _data, _direct, world, env = steered
    base = ["trace", "relu3:1", "-m", SPEC, "--from", "relu2", "--depth", "1", "--top-k", "2",
            "--no-render"]
    # the same folder traced again without --steer: its steer.json stays, the report has no
    # steering section
    r = run(*base, "--images", world, "--draws", "5", "--out", out, env=env)
    assert r.exit_code == 0, r.output
    assert (out / "steer.json").is_file()
    html = (out / "report.html").read_text()
    assert "id='steering'" not in html and "Steering" not in html
    # --steer needs images; malformed strengths; both before anything is written
    assert_clean_error(run(*base, "--steer", "0,2", "--out", tmp_path / "a", env=env),
                       "--steer needs --images")
    r = run(*base, "--images", world, "--steer", "0,x", "--out", tmp_path / "b", env=env)
    assert r.exit_code == 2 and "comma-separated list of numbers" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
