"""Image files as they come from the world: every mode Pillow reads (1, L, LA, P, RGB, RGBA,
CMYK, 16-bit I;16, 32-bit I and F), the usual formats, sizes from 1 pixel to over Pillow's pixel
limit, corrupt bytes, and file names that are not valid UTF-8, hold spaces, quotes, ``&``, or are
very long.

The rule: every reader either reads the right values (checked against an independent account of
each mode) or skips the file with one warning line that names it; never a traceback, never
Pillow's own warning. The pixel limit is made small (``PIL.Image.MAX_IMAGE_PIXELS``) so that
"over the limit" costs a few kilobytes.
"""

from __future__ import annotations

import collections
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_clean_error, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from circuits_cli.errors import CircuitsError
from circuits_cli.evidence.activations import ImageSet, check_readable, image_set
from circuits_cli.images import display_name, iter_batches, load_image, load_images, skipped_note

CASES: collections.Counter = collections.Counter()
LIMIT = 64 * 64  # the pixel limit in these tests: a 65 x 64 picture is "too large"


@pytest.fixture(scope="module", autouse=True)
def _report_count():
    yield
    print(f"\nimage-file fault cases: {sum(CASES.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))})")


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LIMIT)


def can_make(folder: Path, name: bytes) -> bool:
    """Whether this file system takes the name (macOS refuses bytes that are not UTF-8)."""
    try:
        (Path(os.fsdecode(os.fsencode(folder) + b"/" + name))).write_bytes(b"")
    except OSError:
        return False
    os.unlink(os.fsencode(folder) + b"/" + name)
    return True


# ---------------------------------------------------------------------------------------------
# Each mode: the picture as Pillow stores it, and the RGB values in [0, 1] it must read as


def expected_rgb(mode: str, array: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float: the right reading of ``array`` stored in ``mode``, worked out without
    Pillow's conversions."""
    a = array.astype(np.float64)
    if mode == "1":
        grey = (a > 0).astype(np.float64)
    elif mode in ("L", "LA"):
        grey = (a if a.ndim == 2 else a[..., 0]) / 255
    elif mode == "I;16":
        grey = a / 65535
    elif mode == "I":
        grey = a / (2 ** 31 - 1)  # a 32-bit signed TIFF
    elif mode == "F":
        grey = a
    elif mode == "P":
        return palette[array].astype(np.float64) / 255
    elif mode in ("RGB", "RGBA"):
        return a[..., :3] / 255
    elif mode == "CMYK":  # white less ink, the black plate scaling the rest (Pillow's rule)
        k = 255 - a[..., 3:4]
        return np.round((255 - a[..., :3]) * k / 255) / 255
    else:
        raise AssertionError(mode)
    return np.repeat(grey[..., None], 3, axis=2)


FORMATS = {  # mode -> lossless formats that store it
    "1": ["png", "bmp", "tiff", "pbm"], "L": ["png", "bmp", "tiff", "pgm", "gif"],
    "LA": ["png", "tiff"], "P": ["png", "bmp", "gif", "tiff"],
    "RGB": ["png", "bmp", "tiff", "ppm", "webp"], "RGBA": ["png", "tiff", "webp"],
    "CMYK": ["tiff"], "I;16": ["png", "tiff"], "I": ["tiff"], "F": ["tiff"],
}
EXT = {"pbm": ".ppm", "pgm": ".pgm", "ppm": ".ppm"}


def make_array(mode: str, h: int, w: int, rng: np.random.Generator):
    """(array Pillow takes for ``mode``, palette or None)."""
    if mode == "1":
        return rng.integers(0, 2, (h, w)).astype(bool), None
    if mode == "L":
        return rng.integers(0, 256, (h, w), dtype=np.uint8), None
    if mode == "LA":
        return rng.integers(0, 256, (h, w, 2), dtype=np.uint8), None
    if mode == "P":
        return rng.integers(0, 16, (h, w), dtype=np.uint8), rng.integers(0, 256, (16, 3),
                                                                         dtype=np.uint8)
    if mode == "RGB":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), None
    if mode in ("RGBA", "CMYK"):
        return rng.integers(0, 256, (h, w, 4), dtype=np.uint8), None
    if mode == "I;16":
        return rng.integers(0, 65536, (h, w), dtype=np.uint16), None
    if mode == "I":
        return rng.integers(0, 2 ** 31 - 1, (h, w), dtype=np.int32), None
    if mode == "F":
        return rng.random((h, w), dtype=np.float32), None
    raise AssertionError(mode)


def save(path: Path, mode: str, array: np.ndarray, palette, fmt: str) -> None:
    if mode == "P":
        im = Image.fromarray(array, mode="L").convert("P")
        im.putpalette(palette.ravel().tolist() + [0] * (768 - palette.size))
        im.putdata(array.ravel().tolist())
    elif mode in ("LA", "RGBA", "CMYK"):
        im = Image.fromarray(array, mode=mode)
    elif mode == "I;16":
        im = Image.fromarray(array)  # uint16 -> I;16
    else:
        im = Image.fromarray(array, mode=None if mode in ("1", "L", "RGB") else mode)
    assert im.mode == mode, (im.mode, mode)
    # lossless WebP keeps the colour under fully transparent pixels only when asked (exact)
    kwargs = {"lossless": True, "exact": True} if fmt == "webp" else {}
    im.save(path, format={"pbm": "PPM", "pgm": "PPM"}.get(fmt, fmt.upper()), **kwargs)


def test_a_16_bit_greyscale_png_is_read_by_its_bit_depth_not_as_white(tmp_path):
    """A grey 16-bit PNG (mode I;16) read as 8 bits clipped to white: now 0..65535 -> 0..1,
    and it reads as the 8-bit version of the same picture does."""
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "eight.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    with Image.open(tmp_path / "sixteen.png") as im:
        assert im.mode == "I;16"
    x16 = load_image(tmp_path / "sixteen.png", size=None, resize=None)
    np.testing.assert_allclose(x16[0].numpy(), grey8 / 255, atol=1e-6)
    assert float(x16.mean()) < 0.6  # not white
    for size, resize in ((224, 256), (32, None), (None, 64)):  # the resized crops agree too
        a = load_image(tmp_path / "eight.png", size=size, resize=resize)
        b = load_image(tmp_path / "sixteen.png", size=size, resize=resize)
        assert a.shape == b.shape
        assert float((a - b).abs().max()) < 2 / 255
    CASES["16-bit greyscale"] += 1


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_greyscale_tiffs_are_scaled_by_their_depth(mode, tmp_path):
    array, _ = make_array(mode, 9, 7, np.random.default_rng(1))
    save(tmp_path / "x.tiff", mode, array, None, "tiff")
    x = load_image(tmp_path / "x.tiff", size=None, resize=None).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(x, expected_rgb(mode, array), atol=1e-6)
    CASES[f"{mode} greyscale"] += 1


# ---------------------------------------------------------------------------------------------
# Files over the pixel limit (decompression bombs) and names that are not UTF-8, per command


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from circuits_cli.toy.world import save_scenes

    folder = tmp_path_factory.mktemp("image_file_scenes")
    save_scenes(folder, 12, seed=3)
    return folder


def bomb_folder(scenes: Path, tmp_path: Path) -> Path:
    """The scenes, with two pictures over the (small) pixel limit sorted first: one between the
    limit and twice it (Pillow warns) and one over twice it (Pillow raises)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in scenes.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    Image.new("L", (80, 60)).save(folder / "000 warns.png")    # 4800 px: 1x-2x the limit
    Image.new("L", (100, 100)).save(folder / "000 raises.png")  # 10000 px: over 2x
    return folder


@pytest.mark.parametrize("command", ["examples", "sae train", "classify",
                                     pytest.param("steer", marks=pytest.mark.slow)])
def test_pictures_over_the_pixel_limit_are_skipped_with_one_named_line(command, scenes,
                                                                      tmp_path, monkeypatch,
                                                                      small_limit):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    folder = bomb_folder(scenes, tmp_path)
    args = {"examples": ["examples", "mixed4a:0", "--images", folder, "--top-k", "2"],
            "sae train": ["sae", "train", "mixed3b", "--images", folder, "--steps", "3",
                          "--expansion", "2", "--k", "4", "--threads", "1", "--no-fidelity"],
            "classify": ["classify", folder, "-q"],
            "steer": ["steer", "mixed4b:64", "--images", folder, "--strengths", "0,1"]}[command]
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # none may escape
        res = run(*args, "-m", "toy")
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and "DecompressionBomb" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if "000 warns.png" in ln]
    assert len(lines) == 1 and lines[0].startswith("Warning: skipped"), res.stderr
    assert "000 raises.png" in lines[0] and "pixel limit" in lines[0], lines[0]
    CASES["over the pixel limit"] += 1


def test_a_folder_of_only_bombs_is_one_error_line(tmp_path, monkeypatch, small_limit):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    assert_clean_error(run("examples", "mixed4a:0", "--images", tmp_path, "-m", "toy",
                           "--out", tmp_path / "out"), "none of the 1 image file(s)")
    with pytest.raises(CircuitsError, match="pixel"):
        load_image(tmp_path / "bomb.png")  # --from-image: an error naming the file
    CASES["over the pixel limit"] += 1


NON_UTF8 = b"caf\xe9 \xff photo.png"  # Latin-1 bytes from another system


@pytest.mark.parametrize("command", ["examples", "sae train", "classify",
                                     pytest.param("steer", marks=pytest.mark.slow),
                                     pytest.param("trace", marks=pytest.mark.slow)])
def test_file_names_that_are_not_utf8(command, scenes, tmp_path, monkeypatch):
    """UnicodeEncodeError in the folder's fingerprint and in figures: now the files are read,
    and the name is shown with its odd bytes as \\xNN."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    if not can_make(folder, NON_UTF8):
        pytest.skip("this file system refuses names that are not UTF-8")
    for i, p in enumerate(sorted(scenes.iterdir())):  # every name odd: each figure shows one
        name = os.fsencode(p.stem) + b" caf\xe9 \xff & 'q'.png"
        Path(os.fsdecode(os.fsencode(folder) + b"/" + name)).write_bytes(p.read_bytes())
        if i == 0:
            (Path(os.fsdecode(os.fsencode(folder) + b"/zz" + NON_UTF8))).write_bytes(b"junk")
    args = {"examples": ["examples", "mixed4b:64", "--images", folder, "--top-k", "3"],
            "steer": ["steer", "mixed4b:64", "--images", folder, "--strengths", "0,1"],
            "sae train": ["sae", "train", "mixed3b", "--images", folder, "--steps", "3",
                          "--expansion", "2", "--k", "4", "--threads", "1", "--no-fidelity"],
            "classify": ["classify", folder, "--json"],
            "trace": ["trace", "mixed4b:64", "--depth", "1", "--no-render", "--images", folder,
                      "--draws", "2"]}[command]
    res = run(*args, "-m", "toy")
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("Warning: skipped")]
    assert len(warn) == 1 and "zzcaf\\xe9 \\xff photo.png" in warn[0], res.stderr
    if command == "classify":
        assert len(json.loads(res.stdout)) == 12
    assert not list(tmp_path.rglob(".*.tmp-*"))
    CASES["names not UTF-8"] += 1


# ---------------------------------------------------------------------------------------------
# Hypothesis: folders of every kind of file


NAMES = st.sampled_from([b"plain", b"with spaces", b"quote's \"double\"", b"a&b;c", b"x" * 200,
                         b"caf\xe9", b"\xff\xfe", "日本語 é".encode(), b"-dash", b"#hash%"])


@st.composite
def image_files(draw):
    """(name bytes, mode, format, (h, w), corruption) of one file."""
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    h = draw(st.integers(1, 72))  # up to 72 x 72 = 5184 pixels, over the limit of 4096
    w = draw(st.integers(1, 72))
    corrupt = draw(st.sampled_from([None, None, None, "truncate", "flip", "garbage"]))
    return draw(NAMES), mode, fmt, (h, w), corrupt


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=st.lists(image_files(), min_size=1, max_size=4), seed=st.integers(0, 2 ** 16))
def test_any_folder_reads_right_or_skips_by_name(files, seed, tmp_path_factory, small_limit):
    folder = tmp_path_factory.mktemp("hyp")
    rng = np.random.default_rng(seed)
    truth = {}  # path -> expected (H, W, 3), or None when the file must be skipped
    for i, (name, mode, fmt, (h, w), corrupt) in enumerate(files):
        raw = os.fsencode(folder) + b"/" + b"%d " % i + name + EXT.get(fmt, "." + fmt).encode()
        if not can_make(folder, raw.rsplit(b"/", 1)[1]):
            continue
        path = Path(os.fsdecode(raw))
        array, palette = make_array(mode, h, w, rng)
        save(path, mode, array, palette, fmt)
        if corrupt == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[:int(rng.integers(0, max(1, len(data) // 2)))])
        elif corrupt == "flip":
            data = bytearray(path.read_bytes())
            for j in rng.integers(0, len(data), 8):
                data[j] ^= 0xFF
            path.write_bytes(bytes(data))
        elif corrupt == "garbage":
            path.write_bytes(rng.integers(0, 256, int(rng.integers(0, 300)),
                                          dtype=np.uint8).tobytes())
        over = h * w > LIMIT
        truth[path] = None if (over or corrupt) else expected_rgb(mode, array, palette)
    if not truth:
        return
    for path, want in truth.items():
        try:
            got = load_image(path, size=None, resize=None).permute(1, 2, 0).numpy()
        except CircuitsError as err:
            assert display_name(path) in str(err)  # named, odd bytes and all
            assert want is None or max(want.shape[:2]) == 0, (path, err)
            CASES["skipped by name"] += 1
            continue
        if want is None:  # a corrupt file that still decodes: in range, right shape
            assert got.min() >= 0 and got.max() <= 1 and got.shape[2] == 3
            assert path.stat().st_size and not (got.shape[0] * got.shape[1] > LIMIT)
            CASES["corrupt but readable"] += 1
            continue
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=str(path))
        assert load_image(path).shape == (3, 224, 224)  # the evaluation crop too
        CASES[f"read right: {path.suffix[1:]}"] += 1
    # the batch reader, the folder's fingerprint, the header check and the one warning line
    failed: list[Path] = []
    read = [p for _, ok, _ in iter_batches(sorted(truth), batch=2, size=32, resize=None,
                                           failed=failed) for p in ok]
    assert len(read) + len(failed) == len(truth)
    assert {p for p, want in truth.items() if want is not None} <= set(read)
    note = skipped_note(0, failed)
    assert (note is None) == (not failed)
    for p in failed[:3]:
        assert f"'{display_name(p.name)}'" in note, note
    assert len(ImageSet(sorted(truth)).fingerprint) == 64  # names of any bytes
    if read:
        check_readable(image_set(folder))  # headers only: passes when any file can be read
        _, ok, skipped = load_images([folder], size=32, resize=None)
        assert len(ok) == len(read) and skipped == len(failed)
    else:
        with pytest.raises(CircuitsError, match="could be read|can be read"):
            image_set(folder)  # a header that parses may still hide a broken file: then
            load_images([folder], size=32, resize=None)  # the pass finds nothing to read
