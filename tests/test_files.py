"""files.py: the output rule (claim, ownership by manifest, refusal), writable checks, slugs."""

from __future__ import annotations

import pytest

from circuits_cli import files
from circuits_cli.errors import CircuitsError


@pytest.fixture(autouse=True)
def _release():
    yield
    files.release_claims()


def test_our_files_are_replaced_a_users_never(tmp_path):
    out = tmp_path / "out"
    files.claim_output(out, "test", ["a.txt"])
    assert not out.exists()  # claiming creates nothing
    files.write_text(out / "a.txt", "one")
    files.write_text(out / "a.txt", "two")  # ours: replaced
    assert (out / "a.txt").read_text() == "two"
    (out / "b.txt").write_text("user")
    with pytest.raises(CircuitsError, match="b.txt' was not written by circuits"):
        files.write_text(out / "b.txt", "ours")
    assert (out / "b.txt").read_text() == "user"
    (out / "a.txt").write_text("edited by the user")
    with pytest.raises(CircuitsError, match="changed since"):
        files.claim_output(out, "test", ["a.txt"])
    assert (out / "a.txt").read_text() == "edited by the user"


def test_every_version_we_wrote_stays_ours_and_cut_lines_are_skipped(tmp_path):
    out = tmp_path / "out"
    folder = files.claim_output(out, "test", ["a.txt"])
    files.write_text(out / "a.txt", "v1")
    # a run killed after recording v2 but before its rename: the file on disk is still v1
    folder.record(out / "a.txt", "0" * 64)
    with open(folder.manifest_path, "a") as f:
        f.write('{"path": "x.txt", "sha2')  # a line cut by SIGKILL
    other = files.OutputFolder(out, "shard")  # a second process appending
    files.write_text(out / "c.txt", "c")
    other.record(out / "d.txt", "1" * 64)
    files.claim_output(out, "test", ["a.txt", "c.txt"])  # v1 is ours, c too: no error
    assert set(folder.written()) == {"a.txt", "c.txt", "d.txt"}
    assert "x.txt" not in other.written()


def test_hidden_files_never_block_and_folders_are_refused(tmp_path):
    out = tmp_path / "out"
    (out / ".ipynb_checkpoints").mkdir(parents=True)
    (out / ".DS_Store").write_bytes(b"x")
    (out / "sheet.png").mkdir()
    files.claim_output(out, "test", [".DS_Store", "a.png"])
    with pytest.raises(CircuitsError, match="sheet.png' is a folder"):
        files.claim_output(out, "test", ["sheet.png"])


def test_unwritable_places_are_found_without_creating_anything(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CircuitsError, match="is a file"):
        files.claim_output(blocker / "a" / "b", "test")
    with pytest.raises(CircuitsError, match="--out .* is a file"):
        files.claim_output(blocker, "test")
    with pytest.raises(CircuitsError, match="not writable"):
        files.check_writable("/proc/circuits-test", "output folder", "choose another")
    with pytest.raises(CircuitsError, match=r"cache folder .* \$CIRCUITS_CACHE"):
        files.check_cache_writable(blocker / "cache")
    files.check_cache_writable(tmp_path / "new" / "cache")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_one_slug_rule():
    assert files.slug("inception_4c/5x5") == "inception_4c-5x5"
    assert files.slug("torchvision:resnet50") == "torchvision-resnet50"
    assert files.slug("/a b/x.py:f") == "a-b-x.py-f"
    assert files.slug("") == "x"
    assert files.output_dir("trace", "torchvision:resnet50", "layer1/0:3") == \
        files.Path("outputs/trace/torchvision-resnet50/layer1-0-3")


def test_an_old_output_folder_without_manifest_is_adopted_once(tmp_path):
    """Folders circuits wrote before the manifest existed (a circuits JSON at the top) resume;
    a folder of only PNGs is nobody's we can tell: refused."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "circuit.json").write_text('{"format": "circuits-circuit/1"}')
    (old / "circuit.png").write_bytes(b"png from an old run")
    files.claim_output(old, "trace", ["circuit.json", "circuit.png"])
    files.write_bytes(old / "circuit.png", b"new")
    (old / "notes.png").write_bytes(b"added by the user after the manifest")
    with pytest.raises(CircuitsError, match="notes.png"):
        files.claim_output(old, "trace", ["notes.png"])
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    (pngs / "circuit.png").write_bytes(b"user")
    with pytest.raises(CircuitsError, match="circuit.png' was not written"):
        files.claim_output(pngs, "trace", ["circuit.png"])
