"""SAE training from an activation cache: shuffled across shards, resumed to the bit, and the
same SAE from a cache written by 4 jobs as from one written by 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_clean_error, run


@pytest.fixture(scope="module")
def caches(toy, tmp_path_factory):
    """The same 96 toy scenes cached by one job and by four (--shard k/4), 16 images a shard."""
    from circuits_cli.cache import open_source, write_cache
    from circuits_cli.files import release_claims

    root = tmp_path_factory.mktemp("sae_caches")
    src = open_source("toy:96:3")
    kw = {"positions": 8, "shard_images": 16, "batch_size": 40}
    write_cache(toy, ["mixed4b"], src, root / "one", **kw)
    for k in (3, 1, 0, 2):
        write_cache(toy, ["mixed4b"], src, root / "four", shard=(k, 4), **kw)
    release_claims()
    return root / "one", root / "four"


def _cfg(**kw):
    from circuits_cli.sae import TrainConfig

    base = {"expansion": 2, "k": 8, "steps": 30, "batch_size": 64, "chunk_samples": 256,
            "dead_window": 500, "seed": 4}
    return TrainConfig(**{**base, **kw})


def _train(cache, out, **kw):
    from circuits_cli.files import release_claims
    from circuits_cli.sae.cached import train_cache_sae

    try:
        return train_cache_sae(cache, "mixed4b", out, kw.pop("cfg", _cfg()), log=None,
                               checkpoint_every=5, **kw)
    finally:
        release_claims()


def _same_weights(a, b) -> bool:
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("W_enc", "W_dec", "b_enc",
                                                                   "b_dec"))


def test_batches_mix_shards_and_depend_only_on_seed_and_step(caches):
    """A batch draws rows from many shards (not one shard after another), and batch t is the
    same whether read first or after others."""
    from circuits_cli.cache import open_cache
    from circuits_cli.sae.train import PositionStream

    cache = open_cache(caches[0])
    rows = cache.rows("mixed4b")
    all_rows = np.asarray(rows)[:, :, 0, 0]
    shard_of = np.searchsorted(rows.offsets, np.arange(len(rows)), side="right") - 1
    where = {r.tobytes(): s for r, s in zip(all_rows.astype(np.float32), shard_of, strict=True)}
    stream = PositionStream(rows, np.arange(len(rows)), 64, seed=4, chunk_samples=256)
    b0 = stream.batch(0).numpy()
    shards = {where[r.tobytes()] for r in b0 if r.tobytes() in where}
    assert len(shards) >= 4, shards  # 6 shards, 64 rows drawn from a chunk spanning them
    later = PositionStream(rows, np.arange(len(rows)), 64, seed=4, chunk_samples=256)
    later.batch(9)
    assert torch.equal(later.batch(0), stream.batch(0))
    assert not torch.equal(PositionStream(rows, np.arange(len(rows)), 64, seed=5,
                                          chunk_samples=256).batch(0), stream.batch(0))


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_bit(caches, tmp_path):
    """An exception after 13 steps (checkpoints every 5), then the same call: the weights equal
    an uninterrupted run's with torch.equal."""
    full = _train(caches[0], tmp_path / "full")

    class Boom(Exception):
        pass

    def boom(m):
        if m["step"] == 13:
            raise Boom

    with pytest.raises(Boom):
        _train(caches[0], tmp_path / "cut", callback=boom)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    resumed = _train(caches[0], tmp_path / "cut")
    assert resumed.resumed_from == 10
    assert _same_weights(full.sae, resumed.sae)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    # and a finished folder is reported, not retrained
    again = _train(caches[0], tmp_path / "cut")
    assert again.already_done and _same_weights(again.sae, full.sae)
    # the SAE learned something: reconstructing every row by the mean row explains 0
    assert full.metrics["split"] == "held-out images"
    assert full.metrics["explained_variance"] > 0.25


@pytest.mark.slow
def test_four_job_cache_trains_the_same_sae(caches, tmp_path):
    one = _train(caches[0], tmp_path / "one")
    four = _train(caches[1], tmp_path / "four")
    assert _same_weights(one.sae, four.sae)
    assert one.metrics["explained_variance"] == four.metrics["explained_variance"]


def test_cli_sae_train_from_cache(caches, tmp_path, monkeypatch):
    """From a working directory with the default outputs/ folder; running twice reports the SAE;
    bad combinations are one line."""
    monkeypatch.chdir(tmp_path)
    args = ["sae", "train", "mixed4b", "--cache", caches[0], "--steps", "10", "--batch-size",
            "64", "--expansion", "2", "--k", "8"]
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "activation cache" in r.output and "held-out images" in r.output
    folder = Path("outputs/sae/toy/mixed4b-topk-x2-k8-cache")
    assert (folder / "sae_weights.safetensors").is_file()
    r2 = run(*args)
    assert r2.exit_code == 0 and "not retrained" in r2.stderr
    assert_clean_error(run("sae", "train", "mixed4a", "--cache", caches[0]), "mixed4b")
    assert_clean_error(run("sae", "train", "mixed4b", "--cache", tmp_path / "nope"),
                       "does not exist")
    assert_clean_error(run("sae", "train", "mixed4b", "-m", "toy"), "--images", "--cache")
    assert_clean_error(run("sae", "train", "mixed4b", "--cache", caches[0], "--images",
                           tmp_path), "not both")


def test_sparse_decode_matches_the_dense_textbook_decode():
    """The training decoder (embedding_bag forward, sampled / sparse products backward) gives
    the values and gradients of the dense scatter-and-multiply decode, and gradcheck passes."""
    from circuits_cli.sae.train import _decode_sparse

    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 12, dtype=torch.double, generator=g, requires_grad=True)
    pre = torch.randn(9, 64, dtype=torch.double, generator=g)
    v, idx = pre.topk(6, -1)
    v = v.detach().requires_grad_()
    out = _decode_sparse(v, idx, W)
    dense = torch.zeros(9, 64, dtype=torch.double).scatter(-1, idx, v) @ W
    assert torch.allclose(out, dense)
    up = torch.randn(9, 12, dtype=torch.double, generator=g)
    gv, gw = torch.autograd.grad((out * up).sum(), (v, W))
    dv, dw = torch.autograd.grad((dense * up).sum(), (v, W))
    assert torch.allclose(gv, dv) and torch.allclose(gw, dw)
    assert torch.autograd.gradcheck(lambda a, b: _decode_sparse(a, idx, b), (v, W))
