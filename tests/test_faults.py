"""Fault injection: every command against the places and inputs that break tools in real use.

The user contract (README): bad input, an unwritable place or a missing file is ONE line on
stderr (``Error: ...``), exit status 2, no traceback, found before the expensive work; nothing a
user wrote is ever replaced; an interrupted long run resumes without redoing finished work.

Cases (each one checks exit status, one stderr line, no traceback, the user's files
byte-identical, nothing written / no temporary files left):

- a read-only ``--out``: a path under a regular FILE (mkdir fails even for root, who ignores
  permission bits), a path in ``/proc`` (not writable by anyone), ``--out`` naming a file, and,
  when not running as root, a folder with mode 0555;
- an unwritable cache (``$CIRCUITS_CACHE`` and ``--cache-dir`` under a regular file);
- a user's file with the name of EACH output of each command: the outputs are found by running
  the command once for real and listing what it wrote, so a new output is covered by
  construction;
- stray hidden files (``.DS_Store``, ``.ipynb_checkpoints/``) in ``--out``: never block a run or
  its resume, and are left alone;
- SIGINT and SIGKILL in the middle of each long pass (rendering, the activation pass, training),
  in a subprocess, followed by a re-run that must skip the finished work (counted from the
  command's own report: units skipped, activation chunks resumed);
- bad values of each option (Hypothesis for unit specs, unit lists and ranges, shard specs and
  integer ranges; a table for the rest).

``CASES`` counts the checks; ``pytest -s tests/test_faults.py`` prints the count at the end.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from circuits_cli.cli import cli

REPO = Path(__file__).resolve().parents[1]
SLOW = f"{Path(__file__).with_name('slow_model.py')}:slow"
CASES: collections.Counter = collections.Counter()
TOY = ["-m", "toy"]
FAST = ["--steps", "4", "--size", "32"]


@pytest.fixture(scope="module", autouse=True)
def _report_count():
    yield
    print(f"\nfault-injection checks: {sum(CASES.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(CASES.items()))})")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny renders: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIRCUITS_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """24 toy-world scenes (cars and others) as PNG files."""
    from circuits_cli.toy.world import CLASSES, make_dataset

    folder = tmp_path_factory.mktemp("images")
    x, labels = make_dataset(24, seed=5)
    for i, (img, label) in enumerate(zip(x, labels, strict=True)):
        array = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:03d}_{CLASSES[int(label)]}.png")
    return folder


# ---------------------------------------------------------------------------------------------
# Running and checking


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def files_under(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def check_error(res, kind: str, *needles: str) -> str:
    """Exit 2, exactly one ``Error:`` line on stderr (naming ``needles``), no traceback."""
    CASES[kind] += 1
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def no_temporaries(folder: Path) -> None:
    """No hidden temporary file or folder of ours is left (user's stray files are allowed)."""
    left = [p for p in folder.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".partial")
            or p.name.startswith(".circuits-probe")]
    assert not left, left


def cache_is_empty(tmp_path: Path) -> bool:
    cache = tmp_path / "cache"
    return not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def commands(images: Path) -> dict[str, list]:
    """Every command that writes, with tiny settings, writing into the folder OUT."""
    return {
        "visualize": ["visualize", "mixed4a", "--units", "0-1", "--batch", "2", *FAST, *TOY,
                      "-q", "--out", "OUT"],
        "weights": ["weights", "mixed4b:1", "--top-k", "2", *FAST, *TOY, "-q", "--out", "OUT"],
        "trace": ["trace", "mixed4b:1", "--depth", "1", "--top-k", "2", *FAST, *TOY,
                  "--images", images, "--draws", "3", "--steer", "0,1", "-q", "--out", "OUT"],
        "examples": ["examples", "mixed4a:0", "--images", images, "--top-k", "3", *TOY, "-q",
                     "--out", "OUT"],
        "ablate": ["ablate", "mixed4b:1", "--inputs", "mixed4a:0,1", "--images", images,
                   "--draws", "3", "--top-images", "0", *TOY, "-q", "--out", "OUT"],
        "demo": ["demo", *TOY, "--unit", "mixed4b:99", "--steps", "4", "-q", "--out", "OUT"],
        "toy train": ["toy", "train", "--n-train", "100", "--epochs", "1", "--threads", "1",
                      "--out", "OUT"],
    }


CHEAP = ("visualize", "weights", "trace", "examples", "ablate")  # run for real in these tests
USES_CACHE = ("visualize", "weights", "trace", "examples", "ablate", "demo")


def with_out(args: list, out) -> list:
    return [out if a == "OUT" else a for a in args]


@pytest.fixture(scope="module")
def outputs(images, tmp_path_factory) -> dict[str, list[str]]:
    """What each cheap command writes, found by running it once (the manifest excluded)."""
    found = {}
    root = tmp_path_factory.mktemp("real")
    for name in CHEAP:
        out = root / name.replace(" ", "-")
        res = run(*with_out(commands(images)[name], out),
                  env={"CIRCUITS_CACHE": str(root / "cache")})
        assert res.exit_code == 0, (name, res.output)
        found[name] = sorted(k for k in files_under(out) if k != "circuits-outputs.jsonl")
        assert found[name], name
        no_temporaries(out)
    return found


def demo_outputs() -> list[str]:
    """A file of each kind the toy demo writes (its car unit is mixed4b:99, fed by mixed4a)."""
    from circuits_cli.demo import scene_names

    return ["trace/circuit.json", "trace/circuit.png", "trace/evidence.json",
            "trace/report.html", "trace/examples/mixed4b_99.png", "visualize/sheet.png",
            "visualize/manifest.json", "visualize/units/mixed4a_0.png",
            f"scenes/{scene_names(240)[0]}"]


# ---------------------------------------------------------------------------------------------
# Unwritable places


NAMES = ["visualize", "weights", "trace", "examples", "ablate", "demo", "toy train"]


@pytest.mark.parametrize("name", NAMES)
def test_unwritable_out_is_one_line_before_any_work(name, images, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"user data")
    places = [(blocker / "out", "is a file"),                # mkdir fails, also for root
              (Path("/proc/circuits-fault-test/out"), "not writable"),  # nobody writes /proc
              (blocker, "is a file")]                        # --out names a file
    if os.geteuid() != 0:  # permission bits only bind a non-root user
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        places.append((ro, "not writable"))
    for out, why in places:
        res = run(*with_out(commands(images)[name], out))
        check_error(res, "unwritable --out", why)
        assert blocker.read_bytes() == b"user data"
        assert cache_is_empty(tmp_path), f"{name} worked before refusing {out}"
        assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("name", USES_CACHE)
def test_unwritable_cache_is_one_line_before_any_work(name, images, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"user data")
    out = tmp_path / "out"
    args = with_out(commands(images)[name], out)
    res = run(*args, env={"CIRCUITS_CACHE": str(blocker / "cache")})
    check_error(res, "unwritable cache", "cache folder", "CIRCUITS_CACHE")
    assert not out.exists() and blocker.read_bytes() == b"user data"
    if name in ("trace", "examples", "ablate", "demo"):  # they read images: --cache-dir
        res = run(*args, "--cache-dir", blocker / "cache")
        check_error(res, "unwritable cache", "cache folder")
        assert not out.exists() and cache_is_empty(tmp_path)


def test_unwritable_cache_for_commands_without_out(images, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    env = {"CIRCUITS_CACHE": str(blocker / "c")}
    for args in (["find", "--class", "car", "--layer", "mixed4b", "--images", images, *TOY],
                 ["ablate", "mixed4b:1", "--inputs", "mixed4a:0", "--images", images, *TOY]):
        check_error(run(*args, env=env), "unwritable cache", "cache folder")


# ---------------------------------------------------------------------------------------------
# A user's file with the name of each output


@pytest.mark.parametrize("name", CHEAP)
def test_a_users_file_named_like_any_output_is_never_replaced(name, images, outputs, tmp_path):
    for i, rel in enumerate(outputs[name]):
        out = tmp_path / f"out{i}"
        mine = out / rel
        mine.parent.mkdir(parents=True)
        data = f"my own {rel} {i}".encode()
        mine.write_bytes(data)
        before = files_under(out)
        res = run(*with_out(commands(images)[name], out))
        check_error(res, "user's file", Path(rel).name, "not written by circuits")
        assert files_under(out) == before, f"{name} wrote into {out} before refusing {rel}"
        assert mine.read_bytes() == data
    assert cache_is_empty(tmp_path)


@pytest.mark.parametrize("name,rels", [("demo", None), ("toy train", ["toy.pt"])])
def test_a_users_file_in_the_demo_or_training_folder_is_never_replaced(name, rels, images,
                                                                        tmp_path):
    for i, rel in enumerate(rels or demo_outputs()):
        out = tmp_path / f"out{i}"
        mine = out / rel
        mine.parent.mkdir(parents=True)
        mine.write_bytes(b"mine")
        res = run(*with_out(commands(images)[name], out))
        check_error(res, "user's file", Path(rel).name, "not written by circuits")
        assert files_under(out) == {rel: b"mine"}
        assert not [p for p in (tmp_path / "cache").rglob("*.npy")]  # no activation pass ran
        assert not [p for p in (tmp_path / "cache").rglob("*.png")]  # no render ran


def test_our_own_files_are_resumed_and_a_changed_one_is_the_users(images, tmp_path):
    out = tmp_path / "out"
    args = with_out(commands(images)["weights"], out)
    assert run(*args).exit_code == 0
    first = files_under(out)
    res = run(*args)  # our own outputs: replaced as before
    assert res.exit_code == 0, res.output
    CASES["own files replaced"] += 1
    assert set(files_under(out)) == set(first)
    (out / "weights.png").write_bytes(b"edited by hand")
    check_error(run(*args), "user's file", "weights.png", "changed since")
    assert (out / "weights.png").read_bytes() == b"edited by hand"


def test_ablate_out_never_overwrites_a_json_file(images, tmp_path):
    mine = tmp_path / "x.json"
    mine.write_text('{"mine": true}')
    args = ["ablate", "mixed4b:1", "--inputs", "mixed4a:0", "--images", images, "--draws", "2",
            *TOY, "--out", mine]
    check_error(run(*args), "user's file", "--out is a folder")
    assert mine.read_text() == '{"mine": true}'


# ---------------------------------------------------------------------------------------------
# Stray hidden files


@pytest.mark.parametrize("name", CHEAP)
def test_stray_hidden_files_never_block_a_run_or_its_resume(name, images, tmp_path):
    out = tmp_path / "out"
    (out / ".ipynb_checkpoints").mkdir(parents=True)
    (out / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (out / ".ipynb_checkpoints" / "notes-checkpoint.ipynb").write_text("{}")
    stray = files_under(out)
    args = with_out(commands(images)[name], out)
    for _ in range(2):  # the first run, then the resume
        res = run(*args)
        CASES["stray hidden files"] += 1
        assert res.exit_code == 0, res.output
        assert {k: v for k, v in files_under(out).items() if k in stray} == stray
        no_temporaries(out)


def test_visualize_resume_survives_stray_files(tmp_path):
    out = tmp_path / "out"
    args = ["visualize", "mixed4a", "--batch", "2", *FAST, *TOY, "--out", out]
    assert run(*args, "--units", "0-1", "-q").exit_code == 0
    (out / ".DS_Store").write_bytes(b"Bud1")
    (out / "units" / ".DS_Store").write_bytes(b"Bud1")
    res = run(*args, "--units", "0-3")
    CASES["stray hidden files"] += 1
    assert res.exit_code == 0 and "2 unit(s) to render, 2 already finished" in res.output


# ---------------------------------------------------------------------------------------------
# Interrupts: SIGINT and SIGKILL in the middle of each long pass, then a re-run


def spawn(args: list, tmp_path: Path, tag: str, env_extra: dict | None = None):
    env = {**os.environ, "CIRCUITS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "CIRCUITS_PROGRESS_SECONDS": "0", **(env_extra or {})}
    env.pop("CIRCUITS_MODEL", None)
    out_f = open(tmp_path / f"{tag}.stdout", "w")  # noqa: SIM115 - closed by finish()
    err_f = open(tmp_path / f"{tag}.stderr", "w")  # noqa: SIM115
    # a shell's background job starts with SIGINT ignored, and children inherit that: give the
    # command the SIGINT of an interactive terminal (Python then raises KeyboardInterrupt)
    proc = subprocess.Popen([sys.executable, "-m", "circuits_cli.cli", *map(str, args)],
                            cwd=REPO, env=env, stdout=out_f, stderr=err_f,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc.files = (out_f, err_f, tmp_path / f"{tag}.stdout", tmp_path / f"{tag}.stderr")
    return proc


def finish(proc, timeout: float = 300) -> tuple[int, str, str]:
    code = proc.wait(timeout=timeout)
    for f in proc.files[:2]:
        f.close()
    return code, proc.files[2].read_text(), proc.files[3].read_text()


def wait_for(proc, condition, what: str, timeout: float = 240) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            code, out, err = finish(proc)
            pytest.fail(f"the run ended ({code}) before {what}: {out[-800:]} {err[-800:]}")
        if time.monotonic() - start > timeout:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def interrupt(proc, sig) -> tuple[int, str, str]:
    proc.send_signal(sig)
    return finish(proc)


def check_interrupted(code: int, err: str, sig, note: str) -> None:
    CASES[f"{signal.Signals(sig).name} mid-pass"] += 1
    assert "Traceback" not in err, err
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    assert code == 130, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == f"Interrupted; {note}.", err
    assert len([ln for ln in lines if ln.startswith(("Interrupted", "Error"))]) == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_visualize_interrupted_mid_render_resumes_without_redoing_units(sig, tmp_path):
    out = tmp_path / "out"
    args = ["visualize", "conv2", "--units", "0-5", "--batch", "1", "--steps", "8", "--size",
            "32", "--precision", "fp32", "-m", SLOW, "--out", out]
    proc = spawn([*args, "-q"], tmp_path, "first", {"SLOW_MODEL_SECONDS": "0.03"})
    wait_for(proc, lambda: len(list((out / "units").glob("*.json"))) >= 2, "two units finished")
    code, _, err = interrupt(proc, sig)
    check_interrupted(code, err, sig, "finished units are kept on disk; re-run to resume")
    done = len(list((out / "units").glob("*.json")))
    assert 2 <= done < 6, done
    proc = spawn(args, tmp_path, "again", {"SLOW_MODEL_SECONDS": "0"})
    code, stdout, err = finish(proc)
    assert code == 0, err
    todo, skipped = map(int, re.search(r"(\d+) unit\(s\) to render, (\d+) already finished",
                                       stdout).groups())
    assert skipped == done and todo == 6 - done, stdout
    rendered, cached = map(int, re.search(r"rendered (\d+), from cache (\d+)", stdout).groups())
    assert rendered + cached == 6 - done  # finished units were not optimised again
    assert json.loads((out / "manifest.json").read_text())["complete"]
    no_temporaries(out)
    no_temporaries(tmp_path / "cache")


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(96):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_activation_pass_interrupted_resumes_from_its_chunks(sig, many_images, tmp_path):
    out = tmp_path / "out"
    args = ["examples", "relu2:0", "--images", many_images, "--batch", "4", "-m", SLOW, "-q",
            "--out", out]
    env = {"CIRCUITS_ACTIVATION_CHUNK": "8", "SLOW_MODEL_SECONDS": "0.1"}
    acts = tmp_path / "cache" / "activations"
    chunks = lambda: list(acts.rglob(".*.partial/chunk-*.npz"))  # noqa: E731
    proc = spawn(args, tmp_path, "first", env)
    wait_for(proc, lambda: len(chunks()) >= 2, "two activation chunks")
    code, _, err = interrupt(proc, sig)
    check_interrupted(code, err, sig, "finished chunks of the activation pass are kept in the "
                                      "cache; re-run to resume")
    kept = len(chunks())
    assert 2 <= kept < 12, kept
    assert not out.exists() or not files_under(out)  # nothing half-written in --out
    proc = spawn(args, tmp_path, "again", {**env, "SLOW_MODEL_SECONDS": "0"})
    code, stdout, err = finish(proc)
    assert code == 0, err
    meta = json.loads(next(acts.rglob("meta.json")).read_text())
    assert meta["chunks"]["total"] == 12 and meta["chunks"]["resumed"] >= kept
    assert meta["chunks"]["computed"] == 12 - meta["chunks"]["resumed"]
    assert len(meta["paths"]) == 96
    no_temporaries(acts)
    no_temporaries(out)


def test_activations_of_a_resumed_pass_equal_an_uninterrupted_one(many_images, tmp_path,
                                                                  monkeypatch):
    """Chunks assembled after an interruption give the same arrays as one whole pass."""
    from circuits_cli.evidence import activations as A
    from circuits_cli.zoo import load_model

    model = load_model(SLOW)
    monkeypatch.setenv("SLOW_MODEL_SECONDS", "0")
    monkeypatch.setenv(A.CHUNK_ENV, "16")
    whole = A.layer_activations(model, "relu2", many_images, cache_dir=tmp_path / "a")
    real = A._save_chunk
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(A, "_save_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        A.layer_activations(model, "relu2", many_images, cache_dir=tmp_path / "b")
    monkeypatch.setattr(A, "_save_chunk", real)
    resumed = A.layer_activations(model, "relu2", many_images, cache_dir=tmp_path / "b")
    meta = json.loads((resumed.directory / "meta.json").read_text())
    assert meta["chunks"]["resumed"] == 2 and meta["chunks"]["computed"] == 4
    for stat in A.STATS:
        np.testing.assert_array_equal(whole.stats[stat], resumed.stats[stat])
    np.testing.assert_array_equal(whole.maps, resumed.maps)
    CASES["resumed equals whole"] += 1


def test_dead_runs_temporaries_are_removed_and_live_ones_kept(tmp_path):
    from circuits_cli.files import clean_dead_temporaries, temp_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / (temp_prefix("entry") + "abc")
    mine.mkdir()
    other = tmp_path / temp_prefix("x").replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    other = other.with_name(other.name + "q1.png")
    other.write_bytes(b"half")
    folder = tmp_path / (temp_prefix("e").replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "z")
    folder.mkdir()
    (folder / "maps.npy").write_bytes(b"0" * 1000)
    removed = clean_dead_temporaries(tmp_path)
    assert sorted(removed) == sorted([other, folder]) and mine.exists()
    CASES["dead temporaries"] += 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_training_interrupted_says_nothing_is_kept_and_leaves_nothing(sig, tmp_path):
    out = tmp_path / "out"
    # a run of about a minute, interrupted a moment after it starts: a signal that arrives a few
    # seconds late (a busy machine) must still find it running (100 scenes took 5 s, and once
    # the whole run ended before the SIGINT came)
    proc = spawn(["toy", "train", "--n-train", "4000", "--epochs", "3", "--threads", "1",
                  "--out", out], tmp_path, "train")
    wait_for(proc, lambda: "rendering" in proc.files[3].read_text(), "training to start")
    code, _, err = interrupt(proc, sig)
    check_interrupted(code, err, sig, "nothing was written")
    assert not out.exists() or not files_under(out)
    no_temporaries(tmp_path)


# ---------------------------------------------------------------------------------------------
# Bad values of each option


HYP = settings(max_examples=15, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])


def _nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists() and cache_is_empty(tmp_path)


bad_token = st.sampled_from(["", "-3", "3-", "a", "1..2", "1-2-3", "0x1", "1 2", "+1", "½",
                             "1;2", "all,1"])


@st.composite
def bad_unit_lists(draw):
    """Unit lists for mixed4a (160 channels) that are wrong: a malformed token, a reversed
    range, or a channel out of range, among good items."""
    good = draw(st.lists(st.integers(0, 159).map(str), max_size=3))
    kind = draw(st.sampled_from(["token", "reversed", "range"]))
    if kind == "token":
        bad = draw(bad_token)
    elif kind == "reversed":
        lo = draw(st.integers(1, 159))
        bad = f"{lo}-{draw(st.integers(0, lo - 1))}"
    else:
        bad = str(draw(st.integers(160, 10**6)))
    items = good + [bad]
    return ",".join(draw(st.permutations(items)))


@HYP
@given(spec=bad_unit_lists())
def test_bad_unit_lists(spec, tmp_path):
    res = run("visualize", "mixed4a", "--units", spec, *FAST, *TOY, "--out", tmp_path / "out")
    check_error(res, "bad option value")
    _nothing_written(tmp_path)


@st.composite
def bad_shards(draw):
    k, n = draw(st.integers(0, 50)), draw(st.integers(0, 50))
    kind = draw(st.sampled_from(["k>=n", "form"]))
    if kind == "k>=n":
        return f"{max(k, n)}/{min(k, n)}"
    return draw(st.sampled_from([f"{k}", f"{k}/", f"/{n}", f"{k}/{n}/1", f"-{k}/{n + 1}",
                                 f"{k}:{n}", f"{k}of{n}", "half", ""]))


@HYP
@given(spec=bad_shards())
def test_bad_shards(spec, tmp_path):
    res = run("visualize", "mixed4a", "--shard", spec, *FAST, *TOY, "--out", tmp_path / "out")
    check_error(res, "bad option value", "--shard")
    _nothing_written(tmp_path)


@st.composite
def bad_units(draw):
    kind = draw(st.sampled_from(["channel", "layer", "form"]))
    if kind == "channel":
        return f"mixed4b:{draw(st.integers(256, 10**9))}"
    if kind == "layer":
        return f"{draw(st.from_regex(r'[a-z][a-z0-9_]{0,12}', fullmatch=True))}x9:0"
    return draw(st.sampled_from(["mixed4b", "mixed4b:", ":1", "mixed4b:-1", "mixed4b:1:2",
                                 "mixed4b:one", "", "mixed 4b:1", "mixed4b:1.5"]))


@HYP
@given(unit=bad_units(), command=st.sampled_from(["weights", "trace", "examples", "ablate"]))
def test_bad_units(unit, command, images, tmp_path):
    extra = {"weights": ["--no-render"], "trace": ["--no-render"],
             "examples": ["--images", images],
             "ablate": ["--inputs", "mixed4a:0", "--images", images]}[command]
    res = run(command, unit, *extra, *TOY, "--out", tmp_path / "out")
    check_error(res, "bad option value")
    _nothing_written(tmp_path)


@HYP
@given(inputs=st.one_of(
    st.builds(lambda c: f"mixed4a:{c}", st.integers(160, 10**6)),
    st.builds(lambda lo, d: f"mixed4a:{lo},{lo + d}-{lo}", st.integers(0, 100),
              st.integers(1, 50)),
    st.sampled_from(["1,2", "", ",", "mixed4a:", "mixed4a:x", "nolayer:1", "mixed4a:1,b:"])))
def test_bad_input_units(inputs, images, tmp_path):
    res = run("ablate", "mixed4b:1", "--inputs", inputs, "--images", images, *TOY,
              "--out", tmp_path / "out")
    check_error(res, "bad option value")
    _nothing_written(tmp_path)


# integer options out of their range, per command (the option, its smallest/largest allowed)
INT_OPTIONS = [
    ("visualize", "--steps", 1, 100000), ("visualize", "--size", 16, 1024),
    ("visualize", "--batch", 1, 4096), ("visualize", "--seed", 0, 2**31 - 1),
    ("visualize", "--facets", 2, 16),
    ("weights", "--top-k", 1, 64), ("weights", "--steps", 1, 100000),
    ("trace", "--depth", 1, 8), ("trace", "--top-k", 1, 32), ("trace", "--draws", 0, 10000),
    ("examples", "--top-k", 1, None), ("examples", "--batch", 1, None),
    ("ablate", "--draws", 0, None), ("ablate", "--seed", 0, 2**32 - 1),
    ("ablate", "--top-images", 0, None), ("find", "--top-k", 1, None),
    ("classify", "--top-k", 1, None), ("classify", "--batch", 1, None),
    ("demo", "--steps", 1, 100000),
    ("toy train", "--epochs", 1, None), ("toy train", "--n-train", 100, None),
    ("toy train", "--seed", 0, 2**32 - 1),
]


def base_args(command: str, images: Path, tmp_path: Path) -> list:
    out = tmp_path / "out"
    return {"visualize": ["visualize", "mixed4a", *TOY, "--out", out],
            "weights": ["weights", "mixed4b:1", *TOY, "--out", out],
            "trace": ["trace", "mixed4b:1", *TOY, "--out", out],
            "examples": ["examples", "mixed4a:0", "--images", images, *TOY, "--out", out],
            "ablate": ["ablate", "mixed4b:1", "--inputs", "mixed4a:0", "--images", images, *TOY,
                       "--out", out],
            "find": ["find", "--class", "car", "--layer", "mixed4b", *TOY],
            "classify": ["classify", images, *TOY],
            "demo": ["demo", *TOY, "--out", out],
            "toy train": ["toy", "train", "--out", out],
            "sae train": ["sae", "train", "mixed3b", "--images", images, *TOY, "--out", out],
            "steer": ["steer", "mixed4b:1", "--images", images, *TOY, "--out", out],
            "superposition": ["superposition", "--out", out],
            "atlas": ["atlas", "--layers", "mixed4b", *TOY, "--out", out]}[command]


@HYP
@given(case=st.sampled_from(INT_OPTIONS), data=st.data())
def test_integer_options_out_of_range(case, data, images, tmp_path):
    command, option, lo, hi = case
    below = st.integers(-(10**12), lo - 1)
    value = data.draw(below if hi is None else st.one_of(below, st.integers(hi + 1, 10**15)))
    res = run(*base_args(command, images, tmp_path), option, value)
    check_error(res, "bad option value", option)
    _nothing_written(tmp_path)


OTHER_BAD = [
    ("visualize", ["--objective", "dream"], "--objective"),
    ("visualize", ["--precision", "fp8"], "--precision"),
    ("visualize", ["--objective", "direction"], "--direction"),
    ("visualize", ["--objective", "direction", "--direction", "missing.npy"], "does not exist"),
    ("visualize", ["--steps", "many"], "--steps"),
    ("weights", ["--method", "magic"], "--method"),
    ("weights", ["--from", "nope"], "nope"),
    ("trace", ["--from", "mixed4c"], "mixed4c"),
    ("trace", ["--images", "missing-folder"], "does not exist"),
    ("trace", ["--steer=1,nan", "--images", "junk"], "finite"),
    ("trace", ["--steer", "0,1"], "--steer needs --images"),
    ("examples", ["--box", "round"], "--box"),
    ("examples", ["--images", "empty"], "no images"),
    ("examples", ["--images", "junk"], "none of the 2 image file(s)"),
    ("ablate", ["--mode", "half"], "--mode"),
    ("ablate", ["--reduce", "median"], "--reduce"),
    ("find", ["--class", "zebra"], "zebra"),
    ("find", ["--layer", "mixed9"], "mixed9"),
    ("classify", ["--device", "tpu"], "--device"),
    ("demo", ["--images", "junk"], "none of the 2 image file(s)"),
    ("demo", ["--unit", "mixed4b:9999"], "out of range"),
    ("layers", ["--device", "tpu"], "--device"),
    ("layers", ["-m", "resnet9000"], "resnet9000"),
    ("layers", ["-m", "broken.py:factory"], "broken.py"),
    ("layers", ["-m", "raises.py:factory"], "raised ZeroDivisionError"),
    ("layers", ["-m", "googlenet-bvlc", "--weights", "empty.npz"], "empty.npz"),
    ("layers", ["-m", "toy", "--weights", "empty.npz"], "toy-model checkpoint"),
    ("layers", ["-m", "raises.py:ok", "--weights", "junk.pth"], "state dict of ok()"),
    # extreme values: refused before the work, never a NaN file or the kernel's OOM killer
    ("sae train", ["--lr", "inf"], "--lr must be a finite positive number"),
    ("sae train", ["--lr", "nan"], "--lr must be a finite positive number"),
    ("sae train", ["--l1", "inf", "--arch", "relu"], "--l1 must be a finite number"),
    ("sae train", ["--expansion", "100000"], "lower --expansion or --batch-size"),
    ("sae train", ["--batch-size", "100000000"], "lower --expansion or --batch-size"),
    ("steer", ["--strengths", "0,1e308"], "out of range"),
    ("steer", ["--strengths", "-1e5,1"], "out of range"),
    ("trace", ["--steer", "0,1e308"], "out of range"),
    ("superposition", ["--steps", "99999999999999999999"], "--steps"),
    # messages that name what the user named
    ("atlas", ["--sae", "empty.npz"], "'empty.npz' is a file, not an SAE folder"),
    ("atlas", ["--features", "empty"], "'empty' is a folder; --features takes a JSON file"),
]


@pytest.mark.parametrize("command,extra,needle", OTHER_BAD,
                         ids=[f"{c}-{' '.join(e)}" for c, e, _ in OTHER_BAD])
def test_other_bad_values(command, extra, needle, images, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    (tmp_path / "junk" / "b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    (tmp_path / "raises.py").write_text(
        "import torch\n\ndef factory():\n    return 1 / 0\n\n"
        "def ok():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    args = [] if command == "layers" else base_args(command, images, tmp_path)
    if "--images" in extra and "--images" in args:  # --images adds up: replace the good one
        i = args.index("--images")
        del args[i:i + 2]
    res = run(*(["layers"] if command == "layers" else args), *extra)
    check_error(res, "bad option value", needle)
    _nothing_written(tmp_path)


def test_a_diverging_sae_training_is_one_line_and_saves_nothing(images, tmp_path):
    """--lr 1e30 (finite, so accepted) blows the weights up at once: the NaN is caught, the
    run stops with one line, and no SAE (nor a checkpoint full of NaN) is written."""
    out = tmp_path / "out"
    res = run("sae", "train", "mixed3b", "--images", images, *TOY, "--steps", "60",
              "--expansion", "2", "--k", "4", "--threads", "1", "--no-fidelity", "--lr", "1e30",
              "--out", out)
    check_error(res, "extreme value", "diverged", "lower --lr")
    left = set(files_under(out)) - {"circuits-outputs.jsonl"}
    assert not left, left
    no_temporaries(tmp_path)


def test_classify_names_the_files_it_skips(images, tmp_path):
    """"skipped 1 file(s)" said which one only in examples: classify names them too."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(images.iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken photo.jpg").write_bytes(b"\xff\xd8 not really")
    res = run("classify", folder, *TOY, "-q")
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("Warning")]
    assert warn == ["Warning: skipped 1 file(s): 1 unreadable ('broken photo.jpg')."], res.stderr
    CASES["skipped files named"] += 1


def test_usage_errors_are_one_line(tmp_path):
    for args, needle in ((["visualize"], "Missing argument"), (["layers", "--bogus"], "--bogus"),
                         (["vizualize"], "visualize"), (["trace", "mixed4b:1", "--depth"],
                                                        "--depth")):
        check_error(run(*args), "usage error", needle)


def test_json_output_stays_clean_of_progress(images, tmp_path):
    """--json prints JSON on stdout only (progress and warnings go to stderr)."""
    res = run("examples", "mixed4a:0", "--images", images, *TOY, "--json", "--out",
              tmp_path / "out", env={"CIRCUITS_PROGRESS_SECONDS": "0"})
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unit"] == "mixed4a:0"
    CASES["json clean"] += 1


def test_plain_progress_lines_off_a_terminal(many_images, tmp_path):
    """A pass in a log (not a terminal) prints periodic plain-text progress on stderr."""
    proc = spawn(["classify", many_images, "-m", SLOW, "--batch", "8"], tmp_path, "classify",
                 {"SLOW_MODEL_SECONDS": "0.02"})
    code, stdout, err = finish(proc)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("classify: ")]
    assert len(lines) >= 3 and re.match(r"classify: \d+/96 img \(\d+%\)", lines[0]), err
    CASES["plain progress"] += 1


def test_torchvision_download_message_stays_off_stdout_and_user_weights_are_named(tmp_path,
                                                                                 monkeypatch):
    """torch hub prints 'Downloading: ...' on stdout, which would break --json; a model loaded
    from --weights is described by that file, not as the ImageNet weights."""
    import torch
    import torchvision.models as tvm

    state = tvm.resnet18(weights=None).state_dict()

    def fake_download(self, progress=True, check_hash=False):
        print(f'Downloading: "{self.url}" to cache')  # what torch.hub does, on stdout
        return state

    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", fake_download)
    res = run("layers", "-m", "torchvision:resnet18", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == "torchvision:resnet18"
    assert "Downloading" in res.stderr
    torch.save(state, tmp_path / "mine.pth")
    res = run("layers", "-m", "torchvision:resnet18", "--weights", tmp_path / "mine.pth")
    assert res.exit_code == 0, res.output
    assert "with weights from mine.pth" in res.stdout.splitlines()[0]
    res = run("layers", "-m", "torchvision:resnet18", "--weights", tmp_path / "mine.pth.bad")
    check_error(res, "bad option value", "does not exist")
    (tmp_path / "bad.pth").write_bytes(b"junk")
    res = run("layers", "-m", "torchvision:resnet18", "--weights", tmp_path / "bad.pth")
    line = check_error(res, "bad option value", "torchvision's resnet18")
    assert "inception5h" not in line
    CASES["torchvision"] += 1


def test_options_from_the_environment(tmp_path):
    """CIRCUITS_<COMMAND>_<OPTION> sets any option (a bad one is the same one-line error);
    $CIRCUITS_MODEL still picks the model."""
    check_error(run("visualize", "mixed4a", *TOY, "--out", tmp_path / "out",
                    env={"CIRCUITS_VISUALIZE_STEPS": "0"}), "bad option value", "--steps")
    check_error(run("layers", env={"CIRCUITS_MODEL": "nope"}), "bad option value", "'nope'")
    res = run("layers", "--json", env={"CIRCUITS_MODEL": "toy"})
    assert res.exit_code == 0 and json.loads(res.stdout)["model"] == "toy"
    res = run("classify", tmp_path, *TOY, env={"CIRCUITS_CLASSIFY_TOP_K": "0"})
    check_error(res, "bad option value", "--top-k")
    _nothing_written(tmp_path)
