"""Every command the README shows runs, as written, and does what the README says it does.

The README's ``circuits ...`` lines are read from its ``sh`` blocks and run in-process from a
working folder laid out as a user's checkout is: ``../shared`` beside it (the BVLC weights and the
sample photos) and, for the toy tour, ``outputs/demo/scenes`` (generated toy scenes, which
``make demo`` writes). The commands are run exactly as written; only their defaults for render
steps and ablation draws are lowered, through the documented ``CIRCUITS_<COMMAND>_<OPTION>``
environment variables, so that the tours take seconds. The README's Python block is executed too.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from cli_helpers import run

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GETTING_STARTED = REPO / "docs" / "getting-started.md"

#: Lower defaults for the README's commands (each still runs as written, with its own options).
FAST = {"CIRCUITS_VISUALIZE_STEPS": "16", "CIRCUITS_TRACE_STEPS": "16", "CIRCUITS_TRACE_SIZE": "64",
        "CIRCUITS_TRACE_DRAWS": "10", "CIRCUITS_ABLATE_DRAWS": "10"}


def shown_commands(path: Path) -> list[str]:
    """The ``circuits`` command lines of a Markdown file's ``sh`` blocks (continuations joined,
    comments dropped), in order."""
    text = path.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "circuits":
                commands.append(shlex.join(words))
    return commands


def tour(model: str) -> list[str]:
    return [c for c in shown_commands(README) if f"-m {model}" in c]


def test_every_readme_command_is_in_a_tour_that_the_suite_runs():
    commands = shown_commands(README)
    assert len(commands) >= 10, commands
    untested = [c for c in commands if c not in tour("toy") + tour("googlenet-bvlc")]
    assert not untested, f"README commands no test runs: {untested}"
    assert len(tour("toy")) == 6 and len(tour("googlenet-bvlc")) == 5


def test_getting_started_shows_the_readme_tours():
    """The documentation's first page must not drift from the README's tours."""
    assert shown_commands(GETTING_STARTED) == shown_commands(README)


def _run_tour(commands, workdir: Path, monkeypatch):
    monkeypatch.chdir(workdir)
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    outputs = []
    for command in commands:
        result = run(*shlex.split(command)[1:])
        assert result.exit_code == 0, f"{command}\n{result.output}"
        outputs.append(result.output)
    return outputs


@pytest.fixture(scope="module")
def demo_scenes(tmp_path_factory):
    """The 240 scenes ``make demo`` writes to outputs/demo/scenes (the README names one)."""
    from circuits_cli.demo import write_scenes

    return write_scenes(tmp_path_factory.mktemp("demo") / "scenes", 240)


@pytest.mark.slow  # about 50 s on 2 cores: six commands, renders, an ablation, a graph
def test_readme_toy_tour(tmp_path, monkeypatch, demo_scenes, one_torch_thread):
    work = tmp_path / "checkout"
    (work / "outputs" / "demo").mkdir(parents=True)
    (work / "outputs" / "demo" / "scenes").symlink_to(demo_scenes, target_is_directory=True)
    out = _run_tour(tour("toy"), work, monkeypatch)

    assert "mixed4b" in out[0] and "mixed4a" in out[0]                      # layers
    assert (work / "outputs/visualize/toy/mixed4a/units/mixed4a_37.png").is_file()
    trace_dir = work / "outputs/trace/toy/mixed4b_64"
    circuit = json.loads((trace_dir / "circuit.json").read_text())
    first_two = sorted(circuit["edges"], key=lambda e: e["rank"])[:2]       # what the README says
    assert {e["source"] for e in first_two} == {"mixed4a:37", "mixed4a:63"}
    assert all(e["sign"] == 1 for e in first_two)
    examples = json.loads((work / "outputs/examples/toy/mixed4b_64/toy_mixed4b_64.json")
                          .read_text())
    top = [Path(e["path"]).stem.split("_")[-1] for e in examples["examples"]]
    assert top.count("car") >= 8, top                          # "its nine best scenes are cars"
    assert (trace_dir / "report.html").is_file() and (trace_dir / "circuit.png").is_file()
    evidence = json.loads((trace_dir / "evidence.json").read_text())
    excitatory = next(a for a in evidence["ablation"] if a["group"] == "excitatory")
    assert set(excitatory["inputs"]) == {"mixed4a:37", "mixed4a:63"}
    assert excitatory["relative_drop"] > 0.95 and excitatory["z_score"] > 10  # "silences it"
    graph = json.loads((work / "outputs/graph/toy/0127_car-car/graph.json").read_text())
    units = sorted((n for n in graph["nodes"] if n["layer"] == "mixed4a"),
                   key=lambda n: -n["influence"])
    assert units[0]["label"] == "mixed4a:37"                  # the window unit, where windows are
    wheel = next(n for n in units if n["label"] == "mixed4a:63")
    assert wheel["ctx_idx"][0] > units[0]["ctx_idx"][0]       # the wheel unit below it


@pytest.mark.slow  # about 140 s on 2 cores: five passes over the 500 photos (both threads)
def test_readme_googlenet_bvlc_tour(tmp_path, monkeypatch, shared_dir):
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared_dir, target_is_directory=True)
    out = _run_tour(tour("googlenet-bvlc"), work, monkeypatch)

    assert re.search(r"top-1\D*0\.74", out[0]), out[0][-500:]                # classify: 0.742
    first = re.search(r"inception_4e:(\d+)", out[1])                        # find --class cab
    assert first and first.group(1) == "800", out[1][-800:]
    trace_dir = work / "outputs/trace/googlenet-bvlc/inception_4e_800"
    assert (trace_dir / "report.html").is_file() and (trace_dir / "circuit.png").is_file()
    drop = re.search(r"-ablating .*\(drop [^,]+, ([-\d.]+)%\)", out[4])   # ablate prints it
    assert drop and float(drop.group(1)) > 40, out[4]                       # README: 54%


def test_python_example_runs(tmp_path, monkeypatch, capsys, one_torch_thread):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "torch.Size([4," in out
    assert "mixed4a:37 excites" in out and "mixed4a:63 excites" in out      # the car circuit
