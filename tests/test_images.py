"""Images from disk: finding, the ImageNet evaluation crop, skipping unreadable files, and the
errors of the ``classify`` command for bad paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from circuits_cli.commands.classify import classify
from circuits_cli.errors import CircuitsError
from circuits_cli.images import find_images, load_image, load_images, wnid_of


def gradient_image(path, width, height):
    """RGB image whose red channel is the column index and green the row index (mod 256)."""
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    array = np.stack([cols % 256, rows % 256, np.full_like(cols, 7)], axis=-1).astype(np.uint8)
    Image.fromarray(array).save(path)
    return array


@pytest.fixture
def folder(tmp_path):
    """Two images at the top, one nested, a text file, a hidden file and a corrupt JPEG."""
    gradient_image(tmp_path / "n01440764_a.png", 300, 260)
    gradient_image(tmp_path / "b.jpg", 260, 300)
    (tmp_path / "sub").mkdir()
    gradient_image(tmp_path / "sub" / "c.PNG", 256, 256)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 truncated nonsense")
    return tmp_path


def test_find_images_recurses_and_counts_non_images(folder):
    files, skipped = find_images([folder])
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "b.jpg", "corrupt.jpg", "n01440764_a.png", "sub/c.PNG"]
    assert skipped == 1                                   # notes.txt; hidden files are ignored
    files2, _ = find_images([folder / "b.jpg", folder, folder / "b.jpg"])
    assert len(files2) == 4                               # duplicates dropped


def test_find_images_errors(tmp_path):
    with pytest.raises(CircuitsError, match="does not exist"):
        find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CircuitsError, match="no images found"):
        find_images([tmp_path / "empty"])


def test_load_image_is_the_centre_crop_without_resize_when_the_short_side_is_256(tmp_path):
    array = gradient_image(tmp_path / "wide.png", 448, 256)
    x = load_image(tmp_path / "wide.png")
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = array[16:240, 112:336].astype(np.float32) / 255
    assert torch.equal(x, torch.from_numpy(expected).permute(2, 0, 1))


def test_load_image_resizes_the_shorter_side(tmp_path):
    gradient_image(tmp_path / "tall.png", 128, 300)       # -> 256 x 600, crop the centre
    x = load_image(tmp_path / "tall.png")
    assert x.shape == (3, 224, 224)
    assert 0.0 <= x.min() and x.max() <= 1.0
    # red encodes the column: upscaled 2x to 256 wide, the centre 224 are columns 8..119.75
    red = x[0, 112] * 255
    assert abs(red[0].item() - 8) <= 1 and abs(red[-1].item() - 119.75) <= 1
    assert load_image(tmp_path / "tall.png", size=None, resize=None).shape == (3, 300, 128)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    Image.fromarray(np.full((240, 240), 200, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((240, 240, 4), 100, np.uint8)).save(tmp_path / "rgba.png")
    assert torch.allclose(load_image(tmp_path / "g.png"), torch.tensor(200 / 255))
    assert load_image(tmp_path / "rgba.png").shape == (3, 224, 224)


def test_load_images_skips_and_counts_unreadable_files(folder):
    x, ok, skipped = load_images([folder])
    assert x.shape == (3, 3, 224, 224)
    assert [p.name for p in ok] == ["b.jpg", "n01440764_a.png", "c.PNG"]
    assert skipped == 2                                   # notes.txt and corrupt.jpg
    with pytest.raises(CircuitsError, match="cannot read"):
        load_image(folder / "corrupt.jpg")
    with pytest.raises(CircuitsError, match="could be read"):
        load_images([folder / "corrupt.jpg"])


def test_wnid_of():
    assert wnid_of("a/n03594945_jeep.JPEG") == "n03594945"
    assert wnid_of("n03594945.jpg") == "n03594945"
    assert wnid_of("jeep.jpg") is None
    assert wnid_of("n035949451_x.jpg") is None


def test_classify_bad_paths_exit_2_with_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(classify, ["-m", "googlenet-bvlc", str(tmp_path / "missing.jpg")])
    assert isinstance(result.exception, CircuitsError)    # the group turns it into exit 2
    (tmp_path / "empty").mkdir()
    from circuits_cli.cli import cli

    for args in (["classify", str(tmp_path / "missing.jpg")],
                 ["classify", str(tmp_path / "empty")]):
        result = runner.invoke(cli, [*args, "-m", "googlenet-bvlc"])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "does not exist" in runner.invoke(cli, ["classify", str(tmp_path / "x.jpg")]).stderr
    assert "no images found" in runner.invoke(cli, ["classify", str(tmp_path / "empty")]).stderr


def test_classify_skips_a_corrupt_file_with_a_count(bvlc_weights, sample_images_dir, tmp_path):
    from circuits_cli.cli import cli

    for name in ("n01440764_tench.JPEG", "n01530575_brambling.JPEG"):
        (tmp_path / name).write_bytes((sample_images_dir / name).read_bytes())
    (tmp_path / "n01440764_corrupt.jpg").write_bytes(b"\xff\xd8 truncated")
    args = ["classify", "-m", "googlenet-bvlc", "--weights", str(bvlc_weights),
            "--device", "cpu", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--json", "--top", "3"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["image"].rsplit("/", 1)[1] for r in records] == [
        "n01440764_tench.JPEG", "n01530575_brambling.JPEG"]
    assert [t["label"] for t in records[0]["top"]][0] == "tench"
    assert len(records[0]["top"]) == 3
    assert "skipped 1 file" in result.stderr
    assert "top-1 1.000" in result.stderr                 # both photos are classified right

    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0
    assert "tench" in table.stdout and "*" in table.stdout
    assert "Accuracy on 2 image(s)" in table.stdout
