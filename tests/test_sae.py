"""Sparse autoencoders: recovery of planted features, the file format, resumable training, the
command line, the toy model's parts and GoogLeNet's inception_4c."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuits_cli.sae import SAE, TrainConfig, load_sae, train
from tests.cli_helpers import assert_clean_error, run


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_maps(n_samples: int, d: int = 64, n_dirs: int = 256, active: float = 4.0,
                 seed: int = 0, grid: int = 8):
    """Samples that are sparse non-negative combinations of ``n_dirs`` known unit directions
    in ``d`` dimensions (each direction present with probability active / n_dirs, coefficient
    uniform in [0.5, 2]), laid out as conv maps (N, d, grid, grid) float16 like the store's."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    mask = torch.rand(n_samples, n_dirs, generator=g) < active / n_dirs
    coef = torch.rand(n_samples, n_dirs, generator=g) * 1.5 + 0.5
    x = (mask * coef) @ dirs
    maps = x.reshape(-1, grid, grid, d).permute(0, 3, 1, 2).numpy().astype(np.float16)
    return dirs, maps


def recovered_share(dirs: torch.Tensor, sae: SAE, threshold: float = 0.9) -> float:
    best = (dirs @ sae.W_dec.T).max(dim=1).values
    return float((best >= threshold).float().mean())


# --------------------------------------------------------------------- planted superposition


@pytest.mark.parametrize("arch, cfg", [
    # measured: TopK 256/256 directions at cosine >= 0.9 (median best cosine 0.998), 6 s
    ("topk", dict(expansion=4, k=4, steps=300, batch_size=512)),
    # measured: ReLU + L1 256/256 (median 0.98, L0 52), 9 s
    ("relu", dict(expansion=4, l1=1.0, steps=600, batch_size=512)),
])
def test_planted_directions_are_recovered(arch, cfg):
    """256 directions in 64 dimensions (4x more features than dimensions), about 4 active per
    sample: the SAE's decoder rows recover at least 90% of them at cosine >= 0.9, and none of
    that comes from chance (random unit vectors in 64-d reach cosine ~0.5 at best)."""
    dirs, maps = planted_maps(64 * 1024)
    sae, info = train(maps, np.arange(len(maps)), TrainConfig(arch=arch, dead_window=10_000,
                                                              **cfg))
    share = recovered_share(dirs, sae)
    print(f"{arch}: recovered {share:.3f} of 256 planted directions at cosine >= 0.9")
    assert share >= 0.9
    chance = SAE(64, 256, "topk", 4).init_weights(torch.Generator().manual_seed(5))
    assert recovered_share(dirs, chance) == 0.0
    # decoder rows stay unit norm; the saved SAE works on raw (unscaled) activations
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae), atol=1e-4)
    x = torch.from_numpy(maps[:50].astype(np.float32)).flatten(2).transpose(1, 2).reshape(-1, 64)
    fvu = (x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.6, float(fvu)


# ------------------------------------------------------------------------------ file format


def test_files_are_saelens_layout_and_round_trip(tmp_path):
    from safetensors import safe_open

    sae = SAE(24, 96, "topk", 5, cfg={"model_name": "m", "hook_name": "l"})
    sae.init_weights(torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    sae.save(tmp_path / "s")
    with safe_open(str(tmp_path / "s" / "sae_weights.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}  # noqa: SIM118
    assert shapes == {"W_enc": (24, 96), "W_dec": (96, 24), "b_enc": (96,), "b_dec": (24,)}
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 24, 96, 5)
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    back = load_sae(tmp_path / "s" / "cfg.json")
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(back, key), getattr(sae, key))
    x = torch.randn(7, 24)
    assert torch.equal(back(x), sae(x)) and (back.encode(x) > 0).sum(1).max() <= 5
    feat = back.feature(3)
    assert torch.equal(feat.encoder, sae.W_enc[:, 3]) and torch.equal(feat.decoder, sae.W_dec[3])
    # the standard (ReLU) architecture reads back as relu
    relu = SAE(24, 48, "relu")
    relu.init_weights().save(tmp_path / "r")
    assert load_sae(tmp_path / "r").arch == "relu"
    assert json.loads((tmp_path / "r" / "cfg.json").read_text())["architecture"] == "standard"


def test_folding_the_input_scale_is_exact():
    """Weights trained on s·x, folded, give f(x) = f_train(s·x) / s and x̂ = x̂_train(s·x) / s."""
    for arch, k in (("topk", 6), ("relu", None)):
        sae = SAE(16, 64, arch, k).init_weights(torch.Generator().manual_seed(2))
        with torch.no_grad():
            sae.b_enc.normal_()
            sae.b_dec.normal_()
        x = torch.randn(20, 16) * 3
        s = 0.37
        f_train, x_train = sae.encode(s * x), sae(s * x)
        sae.fold_scale(s)
        assert torch.allclose(sae.encode(x), f_train / s, atol=1e-4)
        assert torch.allclose(sae(x), x_train / s, atol=1e-4)


def test_bad_sae_files_are_clear_errors(tmp_path):
    from circuits_cli.errors import CircuitsError

    with pytest.raises(CircuitsError, match="does not exist"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CircuitsError, match="not an SAE folder"):
        load_sae(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cfg.json").write_text("{}")
    (tmp_path / "bad" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(CircuitsError, match="safetensors"):
        load_sae(tmp_path / "bad")
    result = run("sae", "info", tmp_path / "empty")
    assert_clean_error(result, "not an SAE folder")


# --------------------------------------------------------------------------------- resume


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    """Interrupted after step 40 (checkpoints every 25 steps and at the interruption), the run
    resumes at step 40 and ends with exactly the weights of an uninterrupted run."""
    _, maps = planted_maps(8 * 1024, d=32, n_dirs=96, grid=4)
    rows = np.arange(len(maps))
    cfg = TrainConfig(expansion=3, k=4, steps=60, batch_size=256, dead_window=2_000,
                      chunk_samples=3_000)
    whole, _ = train(maps, rows, cfg)

    def stop_at_40(m):
        if m["step"] == 40:
            raise KeyboardInterrupt

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train(maps, rows, cfg, checkpoint=ckpt, checkpoint_every=25, callback=stop_at_40)
    assert torch.load(ckpt, weights_only=True)["step"] == 40
    steps_run = []
    resumed, info = train(maps, rows, cfg, checkpoint=ckpt, checkpoint_every=25,
                          callback=lambda m: steps_run.append(m["step"]))
    assert info["resumed_from"] == 40 and steps_run == list(range(41, 61))
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(resumed, key), getattr(whole, key)), key
    # another configuration never silently continues someone else's checkpoint
    from circuits_cli.errors import CircuitsError

    with pytest.raises(CircuitsError, match="different training run"):
        train(maps, rows, TrainConfig(expansion=3, k=5, steps=60, batch_size=256),
              checkpoint=ckpt)
