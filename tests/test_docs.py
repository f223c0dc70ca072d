"""The documentation site builds offline with strict checks, and what it shows is true.

``mkdocs build --strict`` fails on a page missing from the nav or a nav entry without a page, a
link to a page, anchor or figure that does not exist, and a docstring reference (mkdocstrings)
that does not resolve; the CLI reference is generated from the Click commands (mkdocs-click) and
the notebooks are shown without being executed (tests/test_notebook.py executes them). The
figures are committed (docs/make_figures.py makes them with the tool), so the build does not
render anything.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The generated references hold what they are generated from.
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    for command in ("trace", "visualize", "atlas", "steer", "superposition"):
        assert f"circuits {command}" in cli, command
    assert "--top-k" in cli and "--images" in cli
    api = (site / "api" / "connections.html").read_text(encoding="utf-8")
    assert "expanded_weights" in api and "unit_weights" in api
    notebook = (site / "tutorials" / "car_circuit.html").read_text(encoding="utf-8")
    assert "mixed4b" in notebook
    assert (site / "figures" / "car-circuit.png").is_file()


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}


def test_api_page_example_runs(tmp_path, monkeypatch, capsys, one_torch_thread):
    """The Python API page's example runs as written on the shipped toy model."""
    page = DOCS / "api" / "index.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(page), "exec"), {"__name__": "docs"})
    out = capsys.readouterr().out
    assert "torch.Size([4," in out and ("excites" in out or "inhibits" in out)


def test_readme_and_docs_figures_exist():
    """Every picture the README shows is in the repository (the site's are checked by the build)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "docs/figures/car-circuit.png" in images
    missing = [p for p in images if not (REPO / p).is_file()]
    assert not missing, missing


def test_no_build_history_in_the_text():
    """The README and the docs say what the tool does and what was measured, never how the
    project was organised while it was built."""
    pattern = re.compile(r"\bissues? #?\d+|\bsessions?\b(?![- ]scoped| fixture)|\bbranch `"
                         r"|\bon (?:the )?branch\b", re.I)
    pages = [REPO / "README.md", *DOCS.rglob("*.md")]
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in pages
             for m in pattern.finditer(p.read_text(encoding="utf-8"))]
    assert not found, found
