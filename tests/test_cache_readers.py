"""``examples``, ``find`` and ``atlas`` reading an activation cache (``--cache DIR``) instead of
an image folder: with every position cached, the same answers as ``--images`` on the cache's
images (to float16's precision); with sampled positions, what is ranked is said; directions
and SAE features without maps are read from the rows shard by shard and equal the rows read at
once; a missing picture is said, never a crash; a cache of another model, weights or layer is
one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_clean_error, run

F16 = 2e-3  # float16 keeps ~3 significant digits: relative tolerance for cached values


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _same_ranking(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    """The same items in the same order with values equal to float16's precision; two items
    may only trade places where their values are within that precision of each other."""
    assert len(a) == len(b)
    va, vb = dict(a), dict(b)
    assert sorted(va) == sorted(vb), (a, b)
    for k in va:
        np.testing.assert_allclose(va[k], vb[k], rtol=F16, atol=1e-3)
    for (ka, xa), (kb, _) in zip(a, b, strict=True):
        if ka != kb:
            assert abs(xa - va[kb]) <= F16 * max(1.0, abs(xa)), (a, b)


def test_examples_from_a_cache_of_every_position_equal_the_folders(toy_scene_cache, tmp_path,
                                                                    monkeypatch):
    scenes, cache = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    ref = _json(run("examples", "mixed4b:64", "-m", "toy", "--images", scenes, "--top-k", "8",
                    "--json", "--out", "ref"))
    got = _json(run("examples", "mixed4b:64", "-m", "toy", "--cache", cache, "--top-k", "8",
                    "--json"))  # default outputs/ under the working directory
    assert Path("outputs/examples/toy").is_dir()
    assert got["n_images"] == ref["n_images"] == 24
    assert got["ranking"] == ref["ranking"] == "highest spatial max of the unit in the image"
    _same_ranking([(e["file"], e["activation"]) for e in got["examples"]],
                  [(e["file"], e["activation"]) for e in ref["examples"]])
    # the pictures come from where the cache read them: the same crops, positions and paths
    by_file = {e["file"]: e for e in ref["examples"]}
    assert all(e["path"] == by_file[e["file"]]["path"] for e in got["examples"])
    assert sum(e["position"] == by_file[e["file"]]["position"] for e in got["examples"]) >= 7
    assert not any("picture" in e for e in got["examples"])
    # ground truth of the toy world: the car unit's strongest scenes are cars
    assert sum(e["file"].endswith("_car.png") for e in got["examples"][:3]) == 3


def test_find_from_a_cache_ranks_the_units_the_folder_ranks(toy_scene_cache, tmp_path,
                                                           monkeypatch):
    scenes, cache = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    args = ("find", "--class", "car", "--layer", "mixed4b", "-m", "toy", "--top-k", "8",
            "--json")
    ref = _json(run(*args, "--images", scenes))
    got = _json(run(*args, "--cache", cache))
    assert got["class_images"] == ref["class_images"] and len(ref["class_images"]) >= 3
    assert got["ranking"] == ref["ranking"]
    _same_ranking([(u["unit"], u["score"]) for u in got["units"]],
                  [(u["unit"], u["score"]) for u in ref["units"]])
    for g, r in zip(got["units"], ref["units"], strict=True):
        assert g["weight"] == r["weight"]  # weights do not depend on the images
        if g["unit"] == r["unit"]:
            assert g["top_examples"][:1] == r["top_examples"][:1]
    assert "mixed4b:64" in [u["unit"] for u in got["units"]]  # the toy's car unit


def _examples_of(page: Path) -> list[tuple[str, str, float]]:
    text = page.read_text(encoding="utf-8")
    return [(k, f, float(a)) for k, f, a in re.findall(
        r'data-kind="(\w+)" data-file="([^"]+)" data-activation="([^"]+)"', text)]


def test_atlas_from_a_cache_lists_the_examples_the_folder_gives(toy_scene_cache, tmp_path,
                                                               monkeypatch):
    scenes, cache = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    base = ("atlas", "-m", "toy", "--layers", "mixed4b", "--units", "63-65", "--steps", "1",
            "--kinds", "channel", "--size", "16", "--top-examples", "4", "--classes-for",
            "none", "-q")
    r = run(*base, "--images", scenes, "--out", "ref")
    assert r.exit_code == 0, r.output
    r = run(*base, "--cache", cache, "--out", "got")
    assert r.exit_code == 0, r.output
    assert "the activation cache" in Path("got/index.html").read_text(encoding="utf-8")
    for ch in (63, 64, 65):
        got = _examples_of(Path("got/units/mixed4b") / f"{ch}.html")
        ref = _examples_of(Path("ref/units/mixed4b") / f"{ch}.html")
        assert len(got) == len(ref) == 8
        for kind in ("top", "negative"):
            _same_ranking([(f, a) for k, f, a in got if k == kind],
                          [(f, a) for k, f, a in ref if k == kind])
    # each example's crop was cut from the picture the cache points to: the folder's crop
    for ch in (63, 64, 65):
        got, ref = _examples_of(Path(f"got/units/mixed4b/{ch}.html")), \
            _examples_of(Path(f"ref/units/mixed4b/{ch}.html"))
        if [f for _, f, _ in got] == [f for _, f, _ in ref]:  # no near-tie swapped places
            for crop in Path(f"ref/img/mixed4b/{ch}").glob("top-*.png"):
                assert (Path("got") / crop.relative_to("ref")).read_bytes() == crop.read_bytes()


def test_sampled_positions_rank_by_the_max_over_the_cached_ones(toy, toy_scene_cache, tmp_path,
                                                                 monkeypatch):
    """A cache of 5 sampled positions per image: each image's value is the max of its cached
    rows (read independently from the shards) and the ranking says so."""
    from circuits_cli.cache import open_cache

    scenes, _ = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    r = run("cache", "mixed4b", "-m", "toy", "--images", scenes, "--out", "c5", "--positions",
            "5", "--shard-images", "10", "--workers", "0", "--quiet")
    assert r.exit_code == 0, r.output
    got = _json(run("examples", "mixed4b:64", "-m", "toy", "--cache", "c5", "--top-k", "24",
                    "--json"))
    assert got["ranking"] == ("highest max over the 5 cached positions (of 64) of the unit "
                              "in the image")
    c = open_cache("c5")
    rows = np.asarray(c.rows("mixed4b").rows(slice(None))[:, 64], dtype=np.float32)
    img = c.row_images("mixed4b")
    names = [Path(i).name for i in c.image_ids()]
    want = {names[i]: float(rows[img == i].max()) for i in range(len(names))}
    assert len(got["examples"]) == 24
    for e in got["examples"]:
        assert e["activation"] == round(want[e["file"]], 6)
    values = [e["activation"] for e in got["examples"]]
    assert values == sorted(values, reverse=True)
    # a direction of a sampled cache is read from its rows: each image's max over its 5
    np.save("d.npy", np.eye(192, dtype=np.float32)[[64]])
    d = _json(run("examples", "mixed4b@d.npy#0", "-m", "toy", "--cache", "c5", "--top-k", "24",
                  "--json"))
    assert d["ranking"] == got["ranking"]
    assert [(e["file"], e["activation"]) for e in d["examples"]] == \
        [(e["file"], e["activation"]) for e in got["examples"]]


def _cache_rows_by_image(cache, layer: str):
    """Every row of ``layer`` in ``cache`` read in one go, independently of the readers under
    test: (values (R, C) float64, image row (R,), flat position (R,))."""
    rows = cache.rows(layer)
    values = np.asarray(rows.rows(slice(None)), dtype=np.float64)
    pos = np.concatenate([rows.index(i)[:, 1] for i in range(len(cache.shards))])
    return values, cache.row_images(layer), pos


def _per_image(values: np.ndarray, image: np.ndarray, n: int):
    """Each image's max, mean and the rows of its max, from (R,) values."""
    mx = np.array([values[image == i].max() for i in range(n)])
    mean = np.array([values[image == i].mean() for i in range(n)])
    return mx, mean


@pytest.fixture(scope="module")
def planted_readers():
    """A direction with bias and ReLU, and an SAE of 16 TopK features on mixed4b (seeded)."""
    import torch

    from circuits_cli.sae import SAE
    from circuits_cli.units import Direction

    enc = np.random.default_rng(4).standard_normal(192)
    enc /= np.linalg.norm(enc)
    d = Direction("mixed4b", tuple(enc.tolist()), tuple(enc.tolist()), "mixed4b@d.npy#0",
                  bias=-0.05, relu=True)
    sae = SAE(192, 16, "topk", 3).init_weights(torch.Generator().manual_seed(6))
    return d, sae


@pytest.mark.parametrize("positions", [5, None])
def test_directions_and_sae_features_from_cache_rows_equal_the_rows_read_at_once(
        toy, toy_scene_cache, planted_readers, positions, tmp_path):
    """Directions and SAE features of a cache without maps (5 sampled positions per image, or
    every position with maps too large to keep) are read from the shards' rows one shard at a
    time: each image's max, the position of its max, its mean, and each feature's frequency
    equal those computed here from all the rows at once; with every position they also equal
    what the stored maps give."""
    import torch

    from circuits_cli.cache import open_cache, open_sources, write_cache
    from circuits_cli.evidence import cache_activations
    from circuits_cli.evidence.activations import unit_activations, units_spatial_means
    from circuits_cli.sae.features import feature_activations, layer_feature_activations

    scenes, full = toy_scene_cache
    d, sae = planted_readers
    if positions is None:
        c = open_cache(full)
    else:
        write_cache(toy, ["mixed4b"], open_sources([scenes]), tmp_path / "c", positions=positions,
                    shard_images=10)
        c = open_cache(tmp_path / "c")
    acts = cache_activations(toy, ["mixed4b"], c, cache_dir=tmp_path / "a",
                             max_map_bytes=0)["mixed4b"]
    assert acts.maps is None and acts.sampled_positions == positions
    values, image, pos = _cache_rows_by_image(c, "mixed4b")
    n = acts.n_images
    assert n == 24 and len(values) == 24 * (positions or 64)

    # the direction: relu(rows . enc + bias)
    ref = np.maximum(values @ np.asarray(d.enc) + d.bias, 0)
    mx, mean = _per_image(ref, image, n)
    ua = unit_activations(toy, d, acts)
    np.testing.assert_allclose(ua.column("max"), mx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ua.column("mean"), mean, rtol=1e-5, atol=1e-6)
    for i in range(n):  # the position named is one where the image reaches its max
        at = ref[(image == i) & (pos == ua.column("argmax")[i])]
        assert len(at) == 1 and abs(at[0] - mx[i]) <= 1e-5 * max(1, mx[i])
    np.testing.assert_allclose(units_spatial_means(acts, [d])[:, 0], mean, rtol=1e-5, atol=1e-6)
    assert (ua.maps is None) == (positions is not None)

    # the SAE's features: encode every row, then each image's max and the overall frequency
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(values.astype(np.float32))).double().numpy()
    fa = layer_feature_activations(sae, acts)
    for j in range(16):
        mx, _ = _per_image(f[:, j], image, n)
        np.testing.assert_allclose(fa.max[:, j].numpy(), mx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fa.frequency.numpy(), (f > 0).mean(0), rtol=1e-6)
    np.testing.assert_allclose(fa.mean.numpy(), f.mean(0), rtol=1e-5, atol=1e-7)
    assert fa.max.max() > 0 and (fa.frequency > 0).sum() >= 3  # features that do fire
    # too many images x features for per-image maxima: each feature's 16 strongest images,
    # merged block by block, are the 16 largest of the per-image maxima, strongest first
    top = layer_feature_activations(sae, acts, per_image_bytes=0)
    assert top.max is None and top.top_rows.shape == (16, 16)
    np.testing.assert_array_equal(top.frequency.numpy(), fa.frequency.numpy())
    for j in range(16):
        want = fa.strongest(j, 16)
        got = top.strongest(j, 16)
        assert [r for r, _, _ in got] == [r for r, _, _ in want], j
        np.testing.assert_allclose([v for _, v, _ in got], [v for _, v, _ in want], rtol=1e-6)
        assert [a for _, _, a in got] == [a for _, _, a in want]
        mx, _ = _per_image(f[:, j], image, n)
        np.testing.assert_allclose([v for _, v, _ in got], np.sort(mx)[::-1][:16], rtol=1e-5,
                                   atol=1e-6)
    # a page asking for more images than 16 keeps as many (sae features --top-images 20)
    wide = layer_feature_activations(sae, acts, per_image_bytes=0, keep=20)
    assert wide.top_rows.shape == (20, 16)
    for j in range(16):
        assert [r for r, _, _ in wide.strongest(j, 20)] == [r for r, _, _ in fa.strongest(j, 20)]

    if positions is None:  # the stored maps (float16 too) give the same
        kept = cache_activations(toy, ["mixed4b"], c, cache_dir=tmp_path / "b")["mixed4b"]
        assert kept.maps is not None
        ref_ua = unit_activations(toy, d, kept)
        for stat in ("max", "mean", "min"):
            np.testing.assert_allclose(ua.column(stat), ref_ua.column(stat), rtol=1e-5,
                                       atol=1e-6)
        np.testing.assert_allclose(ua.maps, ref_ua.maps, rtol=1e-5, atol=1e-6)
        ref_fa = feature_activations(sae, kept.maps)
        np.testing.assert_allclose(fa.max.numpy(), ref_fa.max.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fa.frequency.numpy(), ref_fa.frequency.numpy())


def test_a_missing_picture_is_listed_and_said(toy_scene_cache, tmp_path, monkeypatch):
    """The cache outlives its images: the examples still list the image and its value, the
    JSON and the table say the picture is missing, the sheet draws the gap; nothing crashes."""
    scenes, _ = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    shutil.copytree(scenes, "scenes")
    r = run("cache", "mixed4b", "-m", "toy", "--images", "scenes", "--out", "c", "--positions",
            "0", "--workers", "0", "--quiet")
    assert r.exit_code == 0, r.output
    ref = _json(run("examples", "mixed4b:64", "-m", "toy", "--cache", "c", "--top-k", "3",
                    "--json", "--out", "before"))
    gone = ref["examples"][0]["file"]
    Path(ref["examples"][0]["path"]).unlink()
    r = run("examples", "mixed4b:64", "-m", "toy", "--cache", "c", "--top-k", "3", "--out",
            "after")
    assert r.exit_code == 0, r.output
    assert re.search(rf"1\. .*{re.escape(Path(gone).stem)}.*\(picture missing\)", r.stdout)
    data = json.loads(next(Path("after").glob("*.json")).read_text())
    assert data["examples"][0]["file"] == gone and data["examples"][0]["picture"] == "missing"
    assert data["examples"][0]["activation"] == ref["examples"][0]["activation"]
    assert "picture" not in data["examples"][1]
    assert next(Path("after").glob("*.png")).stat().st_size > 1000


def test_images_or_cache_and_a_cache_of_other_weights_are_one_line(toy_scene_cache, tmp_path,
                                                                   monkeypatch):
    scenes, cache = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    ex = ("examples", "mixed4b:64", "-m", "toy")
    assert_clean_error(run(*ex, "--images", scenes, "--cache", cache), "not both")
    assert_clean_error(run(*ex), "--images", "--cache")
    assert_clean_error(run(*ex, "--cache", "nowhere"), "does not exist")
    assert_clean_error(run(*ex, "--cache", scenes), "not an activation cache")
    assert_clean_error(run("examples", "mixed4c:1", "-m", "toy", "--cache", cache),
                       "mixed4a, mixed4b", "not 'mixed4c'")
    assert_clean_error(run("find", "--class", "car", "--layer", "mixed4c", "-m", "toy",
                           "--cache", cache), "not 'mixed4c'")
    for key, value, needle in (("weights_id", "0123456789abcdef", "other weights"),
                               ("model", "googlenet-bvlc", "of model 'googlenet-bvlc'")):
        other = Path(f"other-{key}")
        shutil.copytree(cache, other)
        meta = json.loads((other / "metadata.json").read_text())
        meta[key] = value
        (other / "metadata.json").write_text(json.dumps(meta))
        assert_clean_error(run(*ex, "--cache", other), needle)
        assert_clean_error(run("atlas", "-m", "toy", "--layers", "mixed4b", "--cache", other,
                               "--out", "site"), needle)
    assert not Path("outputs").exists() and not Path("site").exists()  # before any work


def test_pictures_come_from_tar_members_and_toy_scenes(toy, toy_scene_cache, tmp_path,
                                                       monkeypatch):
    """A cache of tar shards or of toy scenes made on the fly has no file per image: the
    pictures are read from the tar member / rendered again, the same pixels the cache saw."""
    import tarfile

    import torch

    from circuits_cli.cache import open_cache
    from circuits_cli.cache.sources import decode, open_source
    from circuits_cli.evidence import cache_activations

    scenes, cache = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    with tarfile.open("scenes.tar", "w") as tf:
        for p in sorted(scenes.rglob("*.png")):
            tf.add(p, arcname=str(p.relative_to(scenes)))
    for name, images in (("tar", "scenes.tar"), ("toy", "toy:14")):
        r = run("cache", "mixed4b", "-m", "toy", "--images", images, "--out", name,
                "--positions", "0", "--workers", "0", "--quiet")
        assert r.exit_code == 0, r.output
        got = _json(run("examples", "mixed4b:64", "-m", "toy", "--cache", name, "--top-k", "3",
                        "--json"))
        assert not any("picture" in e for e in got["examples"])
        acts = cache_activations(toy, ["mixed4b"], open_cache(name))["mixed4b"]
        src = open_source(images)
        for row in (0, len(src) - 1):
            want = decode(src.where[row], 64, 73).permute(1, 2, 0).numpy()
            assert torch.equal(torch.from_numpy(acts.picture(row)), torch.from_numpy(want))
    # the tar's images are the folder's: the same examples as the folder's own cache
    ref = _json(run("examples", "mixed4b:64", "-m", "toy", "--cache", cache, "--top-k", "3",
                    "--json"))
    tar = _json(run("examples", "mixed4b:64", "-m", "toy", "--cache", "tar", "--top-k", "3",
                    "--json"))
    _same_ranking([(e["file"], e["activation"]) for e in tar["examples"]],
                  [(e["file"], e["activation"]) for e in ref["examples"]])


def _planted_car_sae(toy, folder: Path) -> None:
    """An SAE of 8 latents on mixed4b: feature 5 writes 0.8 of its unit vector into the car
    unit (64), feature 3 writes 0.6, no other feature writes into it; each reads where it
    writes (W_enc = W_dec^T)."""
    import torch

    from circuits_cli.sae import SAE

    sae = SAE(192, 8, arch="topk", k=2, cfg={"model_name": "toy", "hook_name": "mixed4b",
                                            "weights_id": toy.weights_id})
    sae.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        dec = sae.W_dec.clone()
        dec[:, 64] = 0
        dec[5], dec[3] = 0, 0
        dec[5, 64], dec[5, 65] = 0.8, 0.6
        dec[3, 64], dec[3, 63] = 0.6, 0.8
        sae.W_dec.copy_(dec / dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    sae.save(folder)


def test_atlas_sae_features_from_a_cache_of_sampled_positions(toy, toy_scene_cache, tmp_path,
                                                              monkeypatch):
    """``atlas --sae --cache``: an SAE on mixed4b whose feature 5 writes 0.8 of its unit vector
    into the car unit and feature 3 writes 0.6 (planted) is read from a cache of 4 sampled
    positions per image; the car unit's page lists 5 then 3, each with the crop of its
    strongest cached position, and says the frequencies are over the cached positions."""
    from circuits_cli.cache import open_sources, write_cache

    scenes, _ = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    write_cache(toy, ["mixed4b"], open_sources([scenes]), Path("c4"), positions=4,
                shard_images=10)
    _planted_car_sae(toy, Path("sae"))
    r = run("atlas", "-m", "toy", "--layers", "mixed4b", "--units", "64", "--steps", "1",
            "--kinds", "channel", "--size", "16", "--top-examples", "2", "--classes-for",
            "none", "-q", "--cache", "c4", "--sae", "sae", "--out", "site")
    assert r.exit_code == 0, r.output
    text = Path("site/units/mixed4b/64.html").read_text(encoding="utf-8")
    feats = re.findall(r'data-feature="([^"]+)"', text)
    assert feats[:2] == ["feature 5", "feature 3"], feats
    assert "of the cached positions" in text and "picture missing" not in text
    crop = Path("site/img/mixed4b/64/sae-0.png")
    assert crop.is_file()
    from PIL import Image

    pixels = np.asarray(Image.open(crop))
    assert pixels.std() > 5  # a crop of a scene, not a blank


def test_sae_features_page_from_a_cache_of_sampled_positions(toy, toy_scene_cache, tmp_path,
                                                             monkeypatch):
    """``sae features SAE --cache DIR``: the planted SAE's features 5 and 3 are the ones
    writing into the car unit, in that order, each with its strongest scenes (cars, by the
    generator's file names), pictures from where the cache read them, and the page says the
    numbers are over the cached positions; --images with --cache is one line."""
    from circuits_cli.cache import open_sources, write_cache

    scenes, _ = toy_scene_cache
    monkeypatch.chdir(tmp_path)
    write_cache(toy, ["mixed4b"], open_sources([scenes]), Path("c4"), positions=4,
                shard_images=10)
    _planted_car_sae(toy, Path("sae"))
    got = _json(run("sae", "features", "sae", "-m", "toy", "--cache", "c4", "--neuron", "64",
                    "--no-render", "--top-images", "3", "--json", "--out", "page"))
    assert [f["feature"] for f in got["features"]] == [5, 3]
    assert got["images"] == 24 and got["sampled_positions"] == 4
    for f in got["features"]:
        assert f["top_images"] and Path(f["top_images"][0]["path"]).name.endswith("_car.png")
        for ex in f["top_images"]:
            assert (Path("page") / ex["crop"]).is_file()
    assert "4 sampled positions each" in Path("page/neuron-64.html").read_text(encoding="utf-8")
    assert_clean_error(run("sae", "features", "sae", "-m", "toy", "--cache", "c4",
                           "--images", scenes), "give --images or --cache, not both")
