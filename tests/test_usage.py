"""The tool used the way people use it: from a working directory, into the default ``outputs/``
folder or a relative ``--out``, the same command run twice, and a run interrupted then run again.

Every other test writes into an absolute temporary path; a record of our own files keyed on a
path relative to the working directory passed all of them and still refused every second run
into ``outputs/...`` as "not written by circuits". Here each cheap command runs twice from
``tmp_path`` as the working directory, both with its default folder and with ``--out runs/X``:
the second run must succeed, resume where the command resumes (finished units skipped, a finished
SAE not retrained), leave the user's own files alone, and still refuse a file the user changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_clean_error, run

from circuits_cli.files import OUTPUTS_MANIFEST

REPO = Path(__file__).resolve().parents[1]
TOY = ["-m", "toy"]
FAST = ["--steps", "4", "--size", "32"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """24 toy scenes (absolute path: the commands run from another working directory)."""
    from circuits_cli.toy.world import save_scenes

    folder = tmp_path_factory.mktemp("usage_scenes")
    save_scenes(folder, 24, seed=5)
    return folder


@pytest.fixture(autouse=True)
def _in_a_working_directory(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIRCUITS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIRCUITS_MODEL", raising=False)


def commands(scenes: Path) -> dict[str, list]:
    """Each cheap command that writes a folder, with tiny settings; ``RESUMED`` is what its
    second run must print when it resumes instead of redoing the work (None: it recomputes)."""
    return {
        "trace": ["trace", "mixed4b:64", *TOY, "--depth", "1", "--no-render"],
        "weights": ["weights", "mixed4b:1", "--top-k", "2", *FAST, *TOY],
        "visualize": ["visualize", "mixed4a", "--units", "0-1", "--batch", "2", *FAST, *TOY],
        "examples": ["examples", "mixed4a:0", "--images", scenes, "--top-k", "3", *TOY],
        "steer": ["steer", "mixed4b:64", "--images", scenes, "--strengths", "0,1", *TOY],
        "sae train": ["sae", "train", "mixed3b", *TOY, "--images", scenes, "--steps", "5",
                      "--expansion", "2", "--k", "8", "--threads", "1", "--no-fidelity"],
    }


RESUMED = {"visualize": r"0 unit\(s\) to render, 2 already finished",
           "sae train": r"not retrained"}


def our_folders(root: Path) -> list[Path]:
    """Folders circuits wrote (they hold its record), relative to ``root``."""
    return sorted(p.parent.relative_to(root) for p in root.rglob(OUTPUTS_MANIFEST)
                  if "cache" not in p.parts)


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != OUTPUTS_MANIFEST}


@pytest.mark.parametrize("where", ["default", "relative"])
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "steer" else n
                                  for n in commands(Path("x"))])  # steer: 10 s a run
def test_a_second_run_from_the_working_directory_succeeds_and_resumes(name, where, scenes,
                                                                       tmp_path):
    args = commands(scenes)[name] + (["--out", "runs/one"] if where == "relative" else [])
    first = run(*args)
    assert first.exit_code == 0, first.output
    folders = our_folders(tmp_path)
    assert len(folders) == 1, folders
    out = tmp_path / folders[0]
    if where == "default":
        assert folders[0].parts[0] == "outputs", folders
    else:
        assert folders[0] == Path("runs/one"), folders
    written = contents(out)
    assert written
    # the user's own notes beside our files: never touched, never a reason to refuse
    (out / "my notes.txt").write_text("mine")

    second = run(*args)
    assert second.exit_code == 0, second.output
    if name in RESUMED:
        assert re.search(RESUMED[name], second.output), second.output
        assert contents(out) == {**written, "my notes.txt": b"mine"}  # nothing redone
    assert set(contents(out)) == set(written) | {"my notes.txt"}
    assert our_folders(tmp_path) == folders  # the same folder, not a second one

    # a file of ours the user changed is theirs now: the third run refuses to replace it
    victim = sorted(k for k in written if k.endswith((".png", ".json", ".safetensors")))[0]
    (out / victim).write_bytes(b"edited by hand")
    assert_clean_error(run(*args), Path(victim).name, "changed since")
    assert (out / victim).read_bytes() == b"edited by hand"
    assert (out / "my notes.txt").read_text() == "mine"


def test_a_relative_out_names_the_same_folder_from_inside_it(scenes, tmp_path, monkeypatch):
    """``--out .`` from inside the folder a first run wrote (``--out runs/w``) is the same
    folder: its files are ours, not a user's."""
    args = commands(scenes)["weights"]
    assert run(*args, "--out", "runs/w").exit_code == 0
    before = contents(tmp_path / "runs" / "w")
    monkeypatch.chdir(tmp_path / "runs" / "w")
    again = run(*args, "--out", ".")
    assert again.exit_code == 0, again.output
    assert set(contents(tmp_path / "runs" / "w")) == set(before)


def test_visualize_interrupted_in_the_default_folder_resumes(tmp_path, monkeypatch):
    """Ctrl-C after the first of three units (injected where the second unit's picture is
    saved), then the same command line: only the two missing units are rendered."""
    from circuits_cli.render import run as render_run

    real = render_run.png_bytes
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    args = ["visualize", "mixed4a", "--units", "0-2", "--batch", "1", *FAST, *TOY]
    monkeypatch.setattr(render_run, "png_bytes", interrupted)
    first = run(*args)
    assert first.exit_code == 130, first.output
    assert "Interrupted; finished units are kept on disk" in first.stderr
    monkeypatch.setattr(render_run, "png_bytes", real)
    [folder] = our_folders(tmp_path)
    assert folder.parts[0] == "outputs"
    assert len(list((tmp_path / folder / "units").glob("*.json"))) == 1
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "2 unit(s) to render, 1 already finished" in again.output
    assert len(list((tmp_path / folder / "units").glob("*.png"))) == 3


def test_sae_training_interrupted_into_a_relative_folder_resumes(toy, scenes, tmp_path):
    """Training stopped at step 6 of 10 into ``runs/sae`` (a relative path, as a user types it)
    continues from its checkpoint when the same command line is run again."""
    from circuits_cli.sae.layer import train_layer_sae
    from circuits_cli.sae.train import TrainConfig

    def stop(m):
        if m["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_layer_sae(toy, "mixed3b", scenes, Path("runs/sae"),
                        TrainConfig(expansion=2, k=8, steps=10), cache_dir=tmp_path / "cache",
                        log=None, callback=stop, checkpoint_every=3)
    assert (tmp_path / "runs" / "sae" / "checkpoint.pt").is_file()
    res = run("sae", "train", "mixed3b", *TOY, "--images", scenes, "--steps", "10",
              "--expansion", "2", "--k", "8", "--threads", "1", "--no-fidelity",
              "--out", "runs/sae")
    assert res.exit_code == 0, res.output
    assert "resuming from step 6/10" in res.stderr
    assert (tmp_path / "runs" / "sae" / "sae_weights.safetensors").is_file()
    assert not (tmp_path / "runs" / "sae" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_visualize_killed_in_the_default_folder_resumes(tmp_path):
    """SIGKILL (no clean-up at all) in the middle of a render into the default folder, from a
    working directory, then the same command line: finished units are skipped."""
    slow = f"{REPO / 'tests' / 'slow_model.py'}:slow"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "CIRCUITS_CACHE": str(tmp_path / "cache"), "SLOW_MODEL_SECONDS": "0.03"}
    args = [sys.executable, "-m", "circuits_cli.cli", "visualize", "conv2", "--units", "0-5",
            "--batch", "1", "--steps", "8", "--size", "32", "--precision", "fp32", "-m", slow,
            "-q"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    units = tmp_path / "outputs" / "visualize"
    import time

    start = time.monotonic()
    while len(list(units.rglob("units/*.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - start < 240, "no unit finished in 4 minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(units.rglob("units/*.json")))
    assert 2 <= done < 6, done
    env["SLOW_MODEL_SECONDS"] = "0"
    again = subprocess.run(args[:-1], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{6 - done} unit(s) to render, {done} already finished" in again.stdout
