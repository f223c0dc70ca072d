"""Shared fixtures. Data from ``../shared`` (pretrained weights, sample photos) is used where it
exists and skipped with a reason where it does not (a user's fresh clone has no ``../shared``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_helpers import PLANTED_EVIDENCE

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CIRCUITS_SHARED", REPO.parent / "shared"))

# `make test` runs the suite in two pytest-xdist workers, one torch thread each: the two cores
# are both busy without two workers' thread pools contending (which made a two-thread worker
# slower than the serial suite). Run alone (no worker), a test gets two threads.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER")
                      else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test runs against a cache of its own session (renders, activations, receptive
    fields), never the user's ``~/.cache/circuits`` or ``$CIRCUITS_CACHE``; subprocesses inherit
    it. Tests that need an empty cache still pass their own ``tmp_path``."""
    before = os.environ.get("CIRCUITS_CACHE")
    os.environ["CIRCUITS_CACHE"] = str(tmp_path_factory.mktemp("circuits-cache"))
    yield Path(os.environ["CIRCUITS_CACHE"])
    if before is None:
        os.environ.pop("CIRCUITS_CACHE", None)
    else:
        os.environ["CIRCUITS_CACHE"] = before



@pytest.fixture(scope="session")
def planted_evidence_model():
    """tests/planted_evidence_model.py loaded as a user model (its answers are known)."""
    from circuits_cli.zoo import load_model

    return load_model(PLANTED_EVIDENCE)


@pytest.fixture(scope="session")
def planted_world(tmp_path_factory):
    """(image folder, {file name: red square box}): the planted world's 40 scenes, 8 of them
    with a red square (in ``red_square/``)."""
    from planted_evidence_model import make_images

    folder = tmp_path_factory.mktemp("planted_images")
    return folder, make_images(folder)


@pytest.fixture(scope="session")
def toy():
    """The shipped toy model, loaded once for the session."""
    from circuits_cli.zoo import load_model

    return load_model("toy")


@pytest.fixture(scope="session")
def toy_scenes_140(tmp_path_factory):
    """A folder of 140 toy scenes (seed 5, 17 or 18 of each class), read by several test
    modules."""
    from circuits_cli.toy.world import save_scenes

    folder = tmp_path_factory.mktemp("toy_scenes_140")
    save_scenes(folder, 140, seed=5)
    return folder


@pytest.fixture(scope="session")
def toy_scene_cache(tmp_path_factory, toy):
    """(folder of 24 toy scenes (seed 3) in one folder per class (``car/00000_car.png``: the
    layout 'find --class' reads), the activation cache of mixed4a and mixed4b over it with EVERY
    position (``circuits cache --positions 0``), 3 shards): read by the commands that take
    ``--cache`` instead of ``--images`` and must give the same answers."""
    from circuits_cli.cache import open_sources, write_cache
    from circuits_cli.toy.world import save_scenes

    root = tmp_path_factory.mktemp("toy_scene_cache")
    for path in save_scenes(root / "scenes", 24, seed=3):
        label = path.stem.split("_", 1)[1]
        (path.parent / label).mkdir(exist_ok=True)
        path.rename(path.parent / label / path.name)
    write_cache(toy, ["mixed4a", "mixed4b"], open_sources([root / "scenes"]), root / "cache",
                positions=None, shard_images=10)
    return root / "scenes", root / "cache"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "models" / "bvlc_googlenet.npz").is_file():
        pytest.skip(f"{SHARED} with models/bvlc_googlenet.npz is absent (it sits beside the "
                    "repository on developer machines and in CI)")
    return SHARED


@pytest.fixture(scope="session")
def bvlc_weights(shared_dir) -> Path:
    return shared_dir / "models" / "bvlc_googlenet.npz"


@pytest.fixture(scope="session")
def sample_images_dir(shared_dir) -> Path:
    return shared_dir / "images" / "imagenet-samples"


@pytest.fixture(scope="session")
def bvlc_model(bvlc_weights):
    from circuits_cli.zoo import load_model

    return load_model("googlenet-bvlc", weights=bvlc_weights, device="cpu")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of small, many-step computations (rendering): on a shared
    2-core machine two OpenMP threads lose more to contention than they gain (measured 3-10x
    slower for small rendering steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _chromium():
    """Debian's chromium (or $CIRCUITS_CHROMIUM), or None."""
    import os
    import shutil

    for cand in (os.environ.get("CIRCUITS_CHROMIUM"), "chromium", "chromium-browser"):
        if cand and (shutil.which(cand) or Path(cand).is_file()):
            return shutil.which(cand) or cand
    return None


@pytest.fixture(scope="module")
def browser():
    """A headless chromium driven by Playwright, pointed at the system browser (Playwright
    never downloads one here); the test is skipped with a reason where either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium browser installed (apt-get install chromium; .ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()
