"""No hidden global state: caches live on the model (``LoadedModel.memo``), and library code
never switches matplotlib's backend nor imports pyplot (figures are ``Figure`` objects)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
from planted_nets import inception_net

from circuits_cli.connections import expanded_weights

PACKAGE = Path(__file__).resolve().parents[1] / "circuits_cli"
PYPLOT = re.compile(r"^\s*(import\s+matplotlib\.pyplot|from\s+matplotlib\s+import\s+pyplot|"
                    r"from\s+matplotlib\.pyplot\s+import)", re.M)


def test_connections_cache_on_the_model_not_in_the_module():
    model = inception_net(linear=False, seed=2)
    assert model.memo == {}
    first = expanded_weights(model, "mixed_a", "mixed_b", method="linear")
    assert model.memo["connections.geometry"]  # the receptive-field geometry was kept
    # a copy (e.g. at another input size) starts with its own, empty memo
    assert dataclasses.replace(model, input_size=16).memo == {}
    # another model's results are not read from this one's cache
    other = inception_net(linear=False, seed=3)
    assert other.memo == {}
    assert not torch.allclose(expanded_weights(other, "mixed_a", "mixed_b", method="linear"),
                              first)
    # the cache changes nothing: cleared, the same kernels come back
    model.memo.clear()
    torch.testing.assert_close(expanded_weights(model, "mixed_a", "mixed_b", method="linear"),
                               first, rtol=0, atol=0)


def test_no_module_level_caches_keyed_by_model():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "WeakKeyDictionary" not in text, path.relative_to(PACKAGE)


def test_library_never_switches_the_matplotlib_backend_nor_uses_pyplot():
    """Notebooks (``*.ipynb``) may use pyplot; the package's modules draw on ``Figure``."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "matplotlib.use(" in text or PYPLOT.search(text):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []
    # the pattern does find what it is meant to find
    assert PYPLOT.search("    import matplotlib.pyplot as plt\n")
    assert PYPLOT.search("from matplotlib import pyplot\n")
