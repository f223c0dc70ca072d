"""``circuits visualize``: outputs, manifest, resume, shards, bad inputs (on the planted model)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run as cli_run
from click.testing import CliRunner
from PIL import Image

from circuits_cli.cli import cli

PLANTED = f"{Path(__file__).with_name('planted_render_model.py')}:detectors"
QUICK = ["--steps", "6", "--size", "32", "--precision", "fp32", "-q", "-m", PLANTED]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small rendering steps: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIRCUITS_MODEL", raising=False)


@pytest.fixture
def count_optimisations(monkeypatch):
    """Count batched optimisations (and let a test make the n-th one fail)."""
    import circuits_cli.render as render_mod

    real = render_mod.optimize
    calls = {"n": 0, "fail_at": None, "exc": KeyboardInterrupt}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["fail_at"] == calls["n"]:
            raise calls["exc"]()
        return real(*args, **kwargs)

    monkeypatch.setattr(render_mod, "optimize", counting)
    return calls


def run(*args):
    return cli_run("visualize", *args)


def test_writes_unit_pngs_contact_sheet_and_manifest(tmp_path):
    out = tmp_path / "out"
    res = run("relu", "--units", "0-2,5", "--out", out, "--seed", "7", *QUICK)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == PLANTED and manifest["layer"] == "relu"
    assert manifest["weights_id"] and manifest["objective"] == "channel"
    assert (manifest["steps"], manifest["size"], manifest["seed"]) == (6, 32, 7)
    assert manifest["complete"] and manifest["requested"] == 4
    assert [u["unit"] for u in manifest["units"]] == ["relu:0", "relu:1", "relu:2", "relu:5"]
    for entry in manifest["units"]:
        assert isinstance(entry["activation"], float) and entry["seconds"] >= 0
        with Image.open(out / entry["png"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.width >= 4 * 32 and sheet.height > 32
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind


def test_plain_progress_lines_in_a_log(tmp_path, monkeypatch):
    """Off a terminal (CliRunner's stderr is not one) rendering reports plain lines with the
    steps done and the time left, not a tqdm bar's carriage returns."""
    monkeypatch.setenv("CIRCUITS_PROGRESS_SECONDS", "0")
    res = run("relu", "--units", "0-1", "--out", tmp_path / "out",
              *[a for a in QUICK if a != "-q"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("rendering 2 units of relu: ")]
    assert lines and re.match(r"rendering 2 units of relu: \d+/6 step \(\d+%\), \d+ s", lines[0])
    assert "\r" not in res.stderr


def test_rerun_skips_finished_units_and_extends_the_sheet(tmp_path, count_optimisations):
    out = tmp_path / "out"
    assert run("relu", "--units", "0-1", "--out", out, *QUICK).exit_code == 0
    first = (out / "units" / "relu_0.png").read_bytes()
    assert count_optimisations["n"] == 1
    res = run("relu", "--units", "0-1", "--out", out, *QUICK)
    assert res.exit_code == 0 and "0 unit(s) to render, 2 already finished" in res.output
    assert count_optimisations["n"] == 1  # nothing optimised again
    assert (out / "units" / "relu_0.png").read_bytes() == first
    res = run("relu", "--units", "0-3", "--out", out, *QUICK)
    assert "2 unit(s) to render, 2 already finished" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [u["channel"] for u in manifest["units"]] == [0, 1, 2, 3]
    # other settings are a different render: not skipped, and kept apart for --negative
    res = run("relu", "--units", "0", "--out", out, "--negative", *QUICK)
    assert "1 unit(s) to render" in res.output
    assert (out / "units" / "relu_0-neg.png").is_file() and (out / "sheet-neg.png").is_file()
    assert (out / "units" / "relu_0.png").read_bytes() == first


def test_interrupted_run_keeps_finished_batches_and_resumes(tmp_path, count_optimisations):
    out = tmp_path / "out"
    count_optimisations["fail_at"] = 2  # Ctrl-C during the second batch
    res = run("relu", "--units", "0-3", "--batch", "2", "--out", out, *QUICK)
    assert res.exit_code == 130 and "re-run to resume" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and [u["channel"] for u in manifest["units"]] == [0, 1]
    res = run("relu", "--units", "0-3", "--batch", "2", "--out", out, *QUICK)
    assert res.exit_code == 0 and "2 unit(s) to render, 2 already finished" in res.output
    assert count_optimisations["n"] == 3
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_shards_split_the_units_and_merge_into_one_sheet(tmp_path, count_optimisations):
    out = tmp_path / "out"
    res0 = run("relu", "--units", "0-4", "--shard", "0/2", "--out", out, *QUICK)
    assert res0.exit_code == 0 and "3 unit(s) to render" in res0.output
    part = json.loads((out / "manifest.json").read_text())
    assert [u["channel"] for u in part["units"]] == [0, 2, 4] and not part["complete"]
    res1 = run("relu", "--units", "0-4", "--shard", "1/2", "--out", out, *QUICK)
    assert res1.exit_code == 0 and "2 unit(s) to render" in res1.output
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["complete"] and [u["channel"] for u in merged["units"]] == [0, 1, 2, 3, 4]
    assert count_optimisations["n"] == 2


def test_same_seed_gives_identical_png_bytes_without_any_cache(tmp_path, monkeypatch):
    outs = []
    for i in range(2):
        monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / f"cache{i}"))
        outs.append(tmp_path / f"out{i}")
        # the default precision (bfloat16 where the CPU has it) must be deterministic too
        res = run("relu", "--units", "0,4", "--out", outs[-1], *QUICK, "--precision", "auto")
        assert res.exit_code == 0
    for name in ("relu_0.png", "relu_4.png"):
        assert (outs[0] / "units" / name).read_bytes() == (outs[1] / "units" / name).read_bytes()


def test_direction_and_diversity_objectives(tmp_path):
    directions = np.zeros((2, 7), dtype=np.float32)
    directions[0, 0] = directions[1, 4] = 1.0
    np.save(tmp_path / "dirs.npy", directions)
    out = tmp_path / "out"
    res = run("relu", "--objective", "direction", "--direction", tmp_path / "dirs.npy",
              "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest-direction.json").read_text())
    assert [u["channel"] for u in manifest["units"]] == [0, 1] and manifest["directions"]
    res = run("poly", "--objective", "diversity", "--facets", "3", "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest-diversity.json").read_text())
    assert len(manifest["units"][0]["facet_activations"]) == 3
    with Image.open(out / manifest["units"][0]["png"]) as im:
        assert im.size == (3 * 32, 32)


@pytest.mark.parametrize("args,message", [
    (["nope", "--units", "0"], "unknown layer 'nope'"),
    (["relu", "--units", "0-9"], "out of range"),
    (["relu", "--units", "3-1"], "empty range"),
    (["relu", "--units", "x"], "malformed unit list"),
    (["relu", "--shard", "2/2"], "K must be 0..N-1"),
    (["relu", "--shard", "half"], "malformed --shard"),
    (["relu", "--objective", "direction"], "needs --direction"),
    (["relu", "--direction", "dirs.npy"], "only used with --objective direction"),
    (["relu", "--objective", "direction", "--direction", "missing.npy"], "does not exist"),
    (["relu", "--objective", "direction", "--direction", "bad.npy"], "7 channels"),
    (["relu", "--steps", "0"], "--steps"),
    (["relu", "--param", "pixels"], "--param"),
    (["relu", "--from-image", "nope.png"], "does not exist"),
    (["relu", "--from-image", "dirs.npy"], "cannot read"),
    (["relu", "--keep-layer", "detect"], "only used with --from-image"),
    (["relu", "--from-image", "photo.png", "--keep-layer", "nope"], "unknown layer"),
    (["relu", "--from-image", "photo.png", "--keep-layer", "poly"], "comes after"),
    (["relu", "--images", "nowhere"], "does not exist"),
])
def test_bad_inputs_exit_2_with_one_line_and_touch_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "dirs.npy", np.eye(7, dtype=np.float32))
    np.save(tmp_path / "bad.npy", np.ones((2, 5), dtype=np.float32))
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "photo.png")
    res = run(*QUICK, "--out", tmp_path / "out", *args)  # later options win
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_never_replaces_someone_elses_files_and_keeps_earlier_settings(tmp_path):
    out = tmp_path / "paper"
    (out / "units").mkdir(parents=True)
    (out / "draft.tex").write_text("mine")
    (out / "units" / "relu_0.png").write_bytes(b"my own picture")
    res = run("relu", "--units", "0", "--out", out, *QUICK)
    assert res.exit_code == 2 and "relu_0.png' was not written by circuits" in res.output
    assert (out / "units" / "relu_0.png").read_bytes() == b"my own picture"
    assert sorted(p.name for p in out.rglob("*")) == ["draft.tex", "relu_0.png", "units"]
    # files of other names are the user's business: rendered beside them, left alone
    res = run("relu", "--units", "1", "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    assert (out / "draft.tex").read_text() == "mine" and (out / "units" / "relu_1.png").is_file()
    # other settings for a unit already there: refused, the earlier render kept
    before = (out / "units" / "relu_1.png").read_bytes()
    res = run("relu", "--units", "1", "--out", out, *QUICK, "--steps", "7")
    assert res.exit_code == 2 and "other settings (steps 6 -> 7)" in res.output
    assert (out / "units" / "relu_1.png").read_bytes() == before
    # another layer would replace the manifest and sheet: refused
    res = run("poly", "--units", "0", "--out", out, *QUICK)
    assert res.exit_code == 2 and "holds renders of layer 'relu'" in res.output


def test_contact_sheet_labels_every_cell_and_wraps_a_long_title():
    from circuits_cli.reports.sheets import SheetEntry, contact_sheet

    cells = [SheetEntry(np.full((32, 32, 3), i / 10, dtype=np.float32), f"layer:{i}", f"act {i}")
             for i in range(10)]
    short = contact_sheet(cells, "t", cell=32, columns=4)
    long = contact_sheet(cells, "a long title " * 12, cell=32, columns=4)
    assert short.width == long.width == 6 + 4 * (32 + 6)
    assert long.height > short.height  # wrapped onto more lines, nothing cut off
    grid = np.asarray(short)
    # the cell images are pasted where expected: first and last cell colours
    assert tuple(grid[40 + 16, 6 + 16]) == (0, 0, 0)
    assert np.abs(grid[-(32 + 34 + 6) + 16, 6 + 16 + 38].astype(int) - 230).max() <= 1


def test_help_lists_the_options():
    res = CliRunner().invoke(cli, ["visualize", "--help"])
    assert res.exit_code == 0
    for option in ("--units", "--objective", "--shard", "--steps", "--batch", "--seed", "--out",
                   "--negative", "--device", "--param", "--from-image", "--keep-layer",
                   "--keep-weight", "--images"):
        assert option in res.output


def test_maco_writes_transparency_maps_and_a_faded_sheet_beside_the_fourier_renders(tmp_path):
    out = tmp_path / "out"
    assert run("relu", "--units", "0,4", "--out", out, *QUICK).exit_code == 0
    res = run("relu", "--units", "0,4", "--out", out, "--param", "maco", *QUICK)
    assert res.exit_code == 0, res.output
    fourier = json.loads((out / "manifest.json").read_text())
    maco = json.loads((out / "manifest-maco.json").read_text())
    assert fourier["param"] == "fourier" and maco["param"] == "maco"
    assert maco["optimizer"]["name"] == "nadam" and maco["spectrum"]
    assert [t["name"] for t in maco["transforms"]] == ["crop", "noise"]
    for entry in maco["units"]:
        with Image.open(out / entry["transparency_png"]) as im:
            assert im.mode == "L" and im.size == (32, 32)
        assert (out / entry["png"]).read_bytes() != (out / entry["png"].replace(
            "-maco", "")).read_bytes()
    with Image.open(out / maco["transparency_sheet"]) as sheet:
        assert sheet.width >= 2 * 32


def test_quality_scores_against_the_best_dataset_example(tmp_path):
    """--images: each render's activation over the unit's best mean activation on the photos,
    checked against a capture of the same photos done here."""
    import torch

    from circuits_cli.evidence.activations import default_resize
    from circuits_cli.hooks import capture
    from circuits_cli.images import load_images
    from circuits_cli.zoo import load_model

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(
            photos / f"p{i}.png")
    out = tmp_path / "out"
    res = run("relu", "--units", "0,4", "--out", out, "--images", photos, *QUICK)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    model = load_model(PLANTED)
    images, _, _ = load_images([photos], size=model.input_size,
                               resize=default_resize(model.input_size))
    with torch.no_grad():
        best = capture(model, images, "relu")["relu"].mean(dim=(2, 3)).max(dim=0).values
    for entry in manifest["units"]:
        ref = float(best[entry["channel"]])
        assert entry["best_example_activation"] == pytest.approx(ref, rel=1e-4)
        assert entry["relative_to_best_example"] == pytest.approx(entry["activation"] / ref,
                                                                  rel=1e-4)
    assert manifest["mean_relative_to_best_example"] == pytest.approx(
        np.mean([e["relative_to_best_example"] for e in manifest["units"]]))


def test_diversity_facet_similarity_and_accentuation_distance_are_recorded(tmp_path):
    out = tmp_path / "out"
    res = run("poly", "--objective", "diversity", "--facets", "2", "--out", out, *QUICK)
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "manifest-diversity.json").read_text())["units"][0]
    assert -1 <= entry["facet_similarity"] <= 1
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "photo.png")
    res = run("relu", "--units", "0", "--from-image", tmp_path / "photo.png", "--out", out,
              *QUICK)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest-accent.json").read_text())
    assert manifest["from_image"]["keep_layer"] == "detect"
    assert manifest["from_image"]["name"] == "photo.png"
    entry = manifest["units"][0]
    assert entry["distance"] >= 0 and entry["activation"] >= entry["start_activation"]


# the planted model's poly unit sees the whole of relu's small map: the tool says so, rightly
@pytest.mark.filterwarnings("ignore:the receptive field of poly reaches the border")
def test_weights_takes_the_parameterization_and_keeps_renders_apart(tmp_path):
    args = ["--from", "relu", "--method", "linear", "--top-k", "2", "--steps", "4", "--size",
            "32", "-q", "--json", "-m", PLANTED]
    maco = cli_run("weights", "poly:0", *args, "--param", "maco", "--out", tmp_path / "m")
    assert maco.exit_code == 0, maco.output
    fourier = cli_run("weights", "poly:0", *args, "--out", tmp_path / "f")
    assert fourier.exit_code == 0, fourier.output
    m, f = json.loads(maco.stdout), json.loads(fourier.stdout)
    assert m["render"]["param"] == "maco" and "param" not in f["render"]
    assert "-maco-" in Path(m["render"]["path"]).name and "-maco" not in f["render"]["path"]
    assert all(i["render"] != j["render"] for i, j in zip(m["inputs"], f["inputs"], strict=True))
