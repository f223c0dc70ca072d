"""The sharded activation cache (``circuits cache``): rows against the network itself, the same
bytes from 1 job or 4, from any source kind or worker count, and resuming after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_clean_error, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    """Byte-for-byte comparisons between runs that batch images differently (one job against
    four, a killed job's subprocess against an in-process run): measured equal with two torch
    threads, the default of a command run alone; with one thread the convolution's batched
    kernels give last-bit differences between batch sizes (the suite's xdist workers run on
    one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _files(folder: Path) -> dict[str, bytes]:
    """Every data file of a cache (shards and their index, shard JSON, parts, metadata) by
    relative path; the manifest of our writes is not data."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and p.name != "circuits-outputs.jsonl":
            out[str(rel)] = p.read_bytes()
    return out


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".submitit" not in p.parts]


def test_rows_are_the_layer_at_the_sampled_positions(toy, toy_scenes_140, tmp_path):
    """Each row is the float16 channel vector of its image at its recorded position, computed
    by an independent forward pass; positions are the seeded sample of that image."""
    from circuits_cli.cache import open_cache, sample_positions
    from circuits_cli.hooks import capture
    from circuits_cli.images import load_image

    out = tmp_path / "c"
    res = run("cache", "mixed4a,mixed4b", "-m", "toy", "--images", toy_scenes_140, "--out", out,
              "--shard-images", "50", "--positions", "5", "--workers", "0", "--quiet")
    assert res.exit_code == 0, res.output
    cache = open_cache(out)
    assert cache.complete and cache.n_images == 140 and len(cache.shards) == 3
    ids = cache.image_ids()
    assert ids == sorted(p.name for p in toy_scenes_140.glob("*.png"))
    for layer in ("mixed4a", "mixed4b"):
        rows = cache.rows(layer)
        assert rows.shape == (140 * 5, toy.layer(layer).channels, 1, 1)
        img_of_row = cache.row_images(layer)
        assert np.array_equal(img_of_row, np.repeat(np.arange(140), 5))
        pick = [0, 3, 57, 99, 139]  # across all three shards
        x = torch.stack([load_image(toy_scenes_140 / ids[i], size=64, resize=73) for i in pick])
        with torch.no_grad():
            a = capture(toy, x, [layer])[layer]
        w = a.shape[-1]
        for j, i in enumerate(pick):
            pos = sample_positions(ids[i], layer, a.shape[-1] * a.shape[-2], 5, 0)
            shard = i // 50
            index = rows.index(shard)
            assert np.array_equal(index[(i % 50) * 5:(i % 50 + 1) * 5, 1], pos)
            want = a[j].reshape(a.shape[1], -1)[:, pos].T.to(torch.float16).numpy()
            got = rows[np.arange(i * 5, i * 5 + 5)][:, :, 0, 0]
            assert np.array_equal(got, want), (layer, i)
            assert pos.tolist() == sorted(set(pos.tolist())) and all(0 <= p < w * w for p in pos)
    # another seed samples other positions of the same images
    assert not np.array_equal(sample_positions(ids[0], "mixed4b", 64, 5, 0),
                              sample_positions(ids[0], "mixed4b", 64, 5, 1))


def test_four_jobs_write_the_cache_one_job_writes(toy_scenes_140, tmp_path, monkeypatch):
    """--shard 0/4 .. 3/4 (in any order) write byte for byte the files of one job; the last one
    to finish merges; reading gives the same rows in the same order."""
    from circuits_cli.cache import open_cache

    monkeypatch.chdir(tmp_path)
    common = ["cache", "mixed4b", "-m", "toy", "--images", toy_scenes_140, "--shard-images",
              "24", "--positions", "4", "--workers", "0", "--quiet"]
    one = run(*common, "--out", "one")
    assert one.exit_code == 0, one.output
    for k in (2, 0, 3):
        r = run(*common, "--out", "four", "--shard", f"{k}/4")
        assert r.exit_code == 0, r.output
        assert "complete once every --shard job has run" in r.stderr
        assert not open_cache("four").complete
    r = run(*common, "--out", "four", "--shard", "1/4")
    assert r.exit_code == 0 and "140 images" in r.output, r.output
    assert _files(Path("one")) == _files(Path("four"))
    a, b = open_cache("one"), open_cache("four")
    assert b.complete and a.image_ids() == b.image_ids()
    assert np.array_equal(np.asarray(a.rows("mixed4b")), np.asarray(b.rows("mixed4b")))
    # running a job again does nothing: every shard is there
    again = run(*common, "--out", "four", "--shard", "1/4")
    assert again.exit_code == 0 and "wrote 0 shard(s)" in again.stderr
    assert _files(Path("one")) == _files(Path("four"))


def test_sources_folder_list_and_tar_give_the_same_rows(toy_scenes_140, tmp_path):
    """A file list and WebDataset-style tar shards of the same images give the rows of the
    folder (every position: ids differ by kind, rows must not); workers decode the same bytes."""
    from circuits_cli.cache import open_cache

    names = sorted(p.name for p in toy_scenes_140.glob("*.png"))[:40]
    (tmp_path / "list.txt").write_text("# some scenes\n" + "\n".join(
        str(toy_scenes_140 / n) for n in names) + "\n\n")
    for t in range(2):  # two shards of 20: shards-000000.tar, shards-000001.tar
        with tarfile.open(tmp_path / f"shards-{t:06d}.tar", "w") as tf:
            for n in names[t * 20:(t + 1) * 20]:
                tf.add(toy_scenes_140 / n, arcname=f"{Path(n).stem}.png")
                info = tarfile.TarInfo(f"{Path(n).stem}.cls")
                info.size = 1
                import io

                tf.addfile(info, io.BytesIO(b"3"))
    sub = tmp_path / "folder"
    sub.mkdir()
    for n in names:
        (sub / n).symlink_to(toy_scenes_140 / n)
    outs = {}
    for kind, src, workers in [("folder", sub, "0"), ("list", tmp_path / "list.txt", "2"),
                               ("tar", str(tmp_path / "shards-{000000..000001}.tar"), "2"),
                               ("targlob", str(tmp_path / "shards-*.tar"), "0")]:
        out = tmp_path / kind
        r = run("cache", "mixed4b", "-m", "toy", "--images", src, "--out", out,
                "--positions", "0", "--shard-images", "16", "--workers", workers, "--quiet")
        assert r.exit_code == 0, r.output
        outs[kind] = open_cache(out)
    base = np.asarray(outs["folder"].rows("mixed4b"))
    assert base.shape == (40 * 64, 192, 1, 1)
    for kind in ("list", "tar", "targlob"):
        assert np.array_equal(np.asarray(outs[kind].rows("mixed4b")), base), kind
    assert outs["tar"].image_ids()[0] == f"shards-000000.tar/{Path(names[0]).stem}.png"
    assert outs["list"].image_ids() == [str(toy_scenes_140 / n) for n in names]


@pytest.mark.slow
def test_a_killed_job_resumes_without_duplicates_or_leftovers(tmp_path):
    """SIGKILL in the middle of a run, then the same command: every row once, the same bytes
    as an uninterrupted run, no temporary left; a temporary of a dead process is removed."""
    out, ref = tmp_path / "killed", tmp_path / "ref"
    args = ["cache", "mixed4b", "-m", "toy", "--images", "toy:240", "--shard-images", "24",
            "--positions", "3", "--workers", "0", "--batch", "16"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "circuits_cli.cli", *args, "--out", out,
                             "--quiet"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "shards").glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.3)  # into the next shard
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from circuits_cli.cache.store import finished_shards

    n_before = len(finished_shards(out))
    assert 2 <= n_before < 10
    # what a process killed mid-write leaves: a temporary under the temp-prefix of a dead pid
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import socket

    planted = out / "mixed4b" / f".x.tmp-{socket.gethostname()}-{dead}-abc.bin"
    planted.write_bytes(b"half a shard")
    r = run(*args, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert f"{10 - n_before} shard(s)" in r.stderr and f"{n_before} already there" in r.stderr
    assert not planted.exists() and _leftovers(out) == []
    r = run(*args, "--out", ref, "--quiet")
    assert _files(out) == _files(ref)


def test_interrupt_mid_shard_keeps_finished_shards(toy, tmp_path):
    """An interrupt (Ctrl-C) inside a shard keeps the finished ones and writes nothing of the
    cut one; the re-run completes the same cache as an uninterrupted run."""
    from circuits_cli.cache import open_cache, open_source, write_cache
    from circuits_cli.files import release_claims

    src = open_source("toy:48")
    kw = {"positions": 2, "shard_images": 16, "batch_size": 8}
    with pytest.raises(KeyboardInterrupt):
        write_cache(toy, ["mixed4b"], src, tmp_path / "a", stop_after=20, **kw)
    release_claims()
    # the interrupt came in the second shard: the first is finished, nothing else is there
    assert [s["index"] for s in open_cache(tmp_path / "a").shards] == [0]
    assert _leftovers(tmp_path / "a") == []
    res = write_cache(toy, ["mixed4b"], src, tmp_path / "a", **kw)
    assert res["skipped"] == 1 and len(res["written"]) == 2 and res["merged"]
    write_cache(toy, ["mixed4b"], src, tmp_path / "b", **kw)
    release_claims()
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_append_adds_a_part_and_refuses_other_rows(toy_scenes_140, tmp_path):
    from circuits_cli.cache import open_cache

    names = sorted(p.name for p in toy_scenes_140.glob("*.png"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for n in names[:30]:
        (a / n).symlink_to(toy_scenes_140 / n)
    for n in names[30:50]:
        (b / n).symlink_to(toy_scenes_140 / n)
    out = tmp_path / "cache"
    common = ["cache", "mixed4b", "-m", "toy", "--out", out, "--positions", "2",
              "--shard-images", "16", "--workers", "0", "--quiet"]
    assert run(*common, "--images", a).exit_code == 0
    assert open_cache(out).complete
    # an append that is interrupted leaves a cache that says it is not complete
    from circuits_cli.cache import open_source, write_cache
    from circuits_cli.files import release_claims
    from circuits_cli.zoo import load_model

    with pytest.raises(KeyboardInterrupt):
        write_cache(load_model("toy"), ["mixed4b"], open_source(b), out, positions=2,
                    shard_images=16, stop_after=3)
    release_claims()
    assert not open_cache(out).complete
    r = run(*common, "--images", b)
    assert r.exit_code == 0 and "50 images" in r.output, r.output
    c = open_cache(out)
    assert c.image_ids() == names[:50] and c.rows("mixed4b").shape[0] == 100
    # the same images again would be cached twice
    twice = tmp_path / "twice"
    twice.mkdir()
    (twice / names[0]).symlink_to(toy_scenes_140 / names[0])
    assert_clean_error(run(*common, "--images", twice), "already in the cache")
    # other positions, another layer or another model are another cache
    bad = ["cache", "mixed4b", "-m", "toy", "--out", out, "--images", b, "--quiet"]
    assert_clean_error(run(*bad, "--positions", "3", "--shard-images", "16"), "positions")
    assert_clean_error(run(*bad[:1], "mixed4a", *bad[2:], "--positions", "2",
                           "--shard-images", "16"), "layers")


def test_bad_input_is_one_line_before_any_work(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing\n")
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    (tmp_path / "user.json").write_text("{}")
    cases = [
        (["--images", tmp_path / "missing"], "does not exist"),
        (["--images", tmp_path / "empty.txt"], "names no image"),
        (["--images", tmp_path / "bad.tar"], "uncompressed tar"),
        (["--images", str(tmp_path / "s-{0..3}.tar")], "does not exist"),
        (["--images", "toy:0"], "at least one"),
        (["--images", "toy:10", "--shard", "4/4"], "out of range"),
        (["--images", "toy:10", "--launcher", "local", "--shard", "0/2"], "--jobs"),
    ]
    for extra, needle in cases:
        assert_clean_error(run("cache", "mixed4b", "-m", "toy", "--out", tmp_path / "o", *extra),
                           needle)
    assert_clean_error(run("cache", "mixed4b", "-m", "toy", "--images", "toy:4", "--out",
                           tmp_path / "user.json"), "is a file")
    # a user's metadata.json is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metadata.json").write_text('{"mine": 1}')
    assert_clean_error(run("cache", "mixed4b", "-m", "toy", "--images", "toy:4", "--out", mine),
                       "not written by circuits")
    assert (mine / "metadata.json").read_text() == '{"mine": 1}'
    assert_clean_error(run("cache", "mixed4z", "-m", "toy", "--images", "toy:4", "--out",
                           tmp_path / "o2"), "mixed4")


@pytest.mark.slow
def test_launcher_local_runs_the_array_on_processes(tmp_path):
    """--launcher local: submitit's LocalExecutor starts one process per --shard, then the
    merge; the cache equals the one a single job writes."""
    from circuits_cli.cache import open_cache

    common = ["cache", "mixed4b", "-m", "toy", "--images", "toy:64", "--shard-images", "16",
              "--positions", "2", "--workers", "0", "--quiet"]
    r = run(*common, "--out", tmp_path / "arr", "--launcher", "local", "--jobs", "2")
    assert r.exit_code == 0, r.output
    assert "64 images" in r.output
    logs = list((tmp_path / "arr" / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # two real jobs ran
    assert run(*common, "--out", tmp_path / "one").exit_code == 0
    assert _files(tmp_path / "arr") == _files(tmp_path / "one")
    assert open_cache(tmp_path / "arr").complete


def test_launch_options_are_stripped_from_the_jobs_command_line():
    from circuits_cli.launch import strip_launch_options

    argv = ["atlas", "-m", "toy", "--launcher", "local", "--jobs=3", "--slurm-partition", "gpu",
            "--layers", "4b", "--slurm-time", "9", "--out", "site"]
    assert strip_launch_options(argv) == ["atlas", "-m", "toy", "--layers", "4b", "--out",
                                          "site"]


@pytest.mark.slow
def test_launcher_local_visualize_runs_shards_then_gathers(tmp_path, monkeypatch):
    """visualize --launcher local --jobs 2: two processes render every other unit (their logs
    say which), then this run finds all four finished and writes the sheet."""
    monkeypatch.chdir(tmp_path)
    r = run("visualize", "mixed4b", "-m", "toy", "--units", "0-3", "--steps", "4", "--size",
            "32", "--out", "v", "--launcher", "local", "--jobs", "2")
    assert r.exit_code == 0, r.output
    assert "0 unit(s) to render, 4 already finished" in r.output + r.stderr
    logs = sorted(Path("v/.submitit").rglob("*_log.err"))
    assert len(logs) == 2
    assert Path("v/sheet.png").is_file() and len(list(Path("v/units").rglob("*.png"))) >= 4
    assert_clean_error(run("visualize", "mixed4b", "-m", "toy", "--launcher", "local",
                           "--shard", "0/2"), "--jobs")
