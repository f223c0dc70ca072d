"""A small atlas of the toy model, shared by the atlas tests (built once per test module; the
renders and activations come from one cache per test session, so later builds only write pages).

The site holds the toy car unit mixed4b:64 (d' 7.2 for cars, tests/test_toy.py), two of its
neighbours, and its eight strongest inputs in mixed4a, so that following an input is following
a link; its outputs in mixed4c are outside the site and must appear unlinked.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CAR = "mixed4b:64"
TOP_INPUTS = 8


@dataclass
class ToyAtlas:
    model: object
    out: Path
    images: Path
    cache: Path
    units: dict
    result: object
    settings_kwargs: dict

    def plan(self, out=None, **kw):
        from circuits_cli.atlas import AtlasSettings, plan_atlas

        args = {"units": self.units, "images": self.images,
                "settings": AtlasSettings(**self.settings_kwargs)}
        args.update(kw)
        return plan_atlas(self.model, out or self.out, ["mixed4a", "mixed4b"], **args)

    def build(self, out=None, **kw):
        import torch

        from circuits_cli.atlas import build_atlas

        # the thread count the shared renders were made with: it is part of the render key
        # (another count rounds differently, so it is another picture)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with cache_env(self.cache):
                return build_atlas(self.plan(out, **kw), progress=False, echo=lambda m: None)
        finally:
            torch.set_num_threads(before)


@contextmanager
def cache_env(cache: Path):
    before = os.environ.get("CIRCUITS_CACHE")
    os.environ["CIRCUITS_CACHE"] = str(cache)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CIRCUITS_CACHE", None)
        else:
            os.environ["CIRCUITS_CACHE"] = before


def build_toy_atlas(base: Path) -> ToyAtlas:
    import torch

    from circuits_cli.toy.world import save_scenes
    from circuits_cli.trace import trace
    from circuits_cli.units import Unit
    from circuits_cli.zoo import load_model

    cache = base.parent / "atlas-cache"  # shared by the modules of one session
    images = base.parent / "atlas-scenes"
    if not images.exists():
        save_scenes(images, 48, seed=7)
    model = load_model("toy", device="cpu")
    circuit = trace(model, Unit("mixed4b", 64), depth=1, top_k=TOP_INPUTS)
    inputs = sorted(int(e.source.split(":")[1]) for e in circuit.inputs(CAR))
    units = {"mixed4a": ",".join(map(str, inputs)), "mixed4b": "63-65"}
    kwargs = {"steps": 4, "kinds": ("channel", "negative", "diversity"), "facets": 2,
              "top_examples": 4, "top_inputs": TOP_INPUTS, "top_outputs": 6}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        atlas = ToyAtlas(model, base / "site", images, cache, units, None, kwargs)
        atlas.result = atlas.build()
    finally:
        torch.set_num_threads(before)
    return atlas


def toy_atlas_fixture():
    @pytest.fixture(scope="module")
    def toy_atlas(tmp_path_factory):
        return build_toy_atlas(tmp_path_factory.mktemp("atlas"))

    return toy_atlas
