"""Benchmark: SAE training throughput on inception_4c, against a plain PyTorch loop.

Measured on googlenet-bvlc ``inception_4c`` (512 channels, 14x14 positions) over the 500 photos
of ``../shared/images/imagenet-samples`` (random non-negative data of the same shape when they are
absent), on 2 torch threads (CPU) or the GPU when one is present, in the same run:

- ``ours``: :func:`circuits_cli.sae.train` — TopK (x8 = 4096 latents, k=32, batch 1024) with
  AuxK, streamed from the memory-mapped activation store chunk by chunk, running metrics every
  step, checkpoint bookkeeping;
- ``plain``: the anchor, the textbook loop of the same architecture and loss: all samples in
  memory as one float32 tensor, a random permutation per epoch, a dense decoder
  (``f @ W_dec`` over all 4096 latents) and a dense AuxK.

Both report samples per second over the same number of steps (after one warm-up step); the
time to train the default 4c SAE (600 steps x 1024 samples) follows from it.

Runnable alone: ``python benchmarks/bench_sae.py --out DIR [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
THREADS = 2
D_SAE_X, K, BATCH = 8, 32, 1024


def _maps(quick: bool) -> tuple[np.ndarray, str]:
    weights = SHARED / "models" / "bvlc_googlenet.npz"
    photos = SHARED / "images" / "imagenet-samples"
    if weights.is_file() and photos.is_dir():
        from circuits_cli.evidence import layer_activations
        from circuits_cli.zoo import load_model

        model = load_model("googlenet-bvlc", weights=weights)
        acts = layer_activations(model, "inception_4c", photos, batch_size=25)
        return acts.maps, f"googlenet-bvlc inception_4c over {acts.n_images} photos"
    g = np.random.default_rng(0)
    n = 100 if quick else 500
    maps = np.maximum(g.standard_normal((n, 512, 14, 14), dtype=np.float32), 0)
    return maps.astype(np.float16), f"random non-negative (N={n}, 512, 14, 14)"


def plain_loop(maps: np.ndarray, steps: int, device: str) -> float:
    """The anchor: samples/s of a dense textbook TopK + AuxK loop over in-memory samples."""
    x_all = torch.from_numpy(np.asarray(maps, dtype=np.float32)).flatten(2).transpose(1, 2)
    x_all = x_all.reshape(-1, maps.shape[1]).to(device)
    d = x_all.shape[1]
    s = D_SAE_X * d
    x_all *= (d / x_all.pow(2).sum(1).mean()).sqrt()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(s, d, generator=g)
    W_dec = torch.nn.Parameter((w / w.norm(dim=1, keepdim=True)).to(device))
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(s, device=device))
    b_dec = torch.nn.Parameter(x_all[:65536].mean(0).clone())
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=1e-3)
    since = torch.zeros(s, dtype=torch.long, device=device)
    perm = torch.randperm(len(x_all), generator=g).to(device)

    def step(i):
        x = x_all[perm[(i * BATCH) % (len(x_all) - BATCH):][:BATCH]]
        pre = (x - b_dec) @ W_enc + b_enc
        v, idx = pre.topk(K, -1)
        f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(v))
        x_hat = f @ W_dec + b_dec
        e = x - x_hat
        loss = e.pow(2).sum(1).mean()
        dead = since >= 50_000
        if dead.any():
            av, ai = pre[:, dead].topk(min(d // 2, int(dead.sum())), -1)
            fa = torch.zeros(len(x), int(dead.sum()), device=device).scatter(-1, ai,
                                                                              torch.relu(av))
            ed = e.detach()
            loss = loss + (ed - fa @ W_dec[dead]).pow(2).sum(1).mean() / ed.pow(2).sum(
                1).mean() / 32
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
            since.add_(len(x))
            since[(f > 0).any(0)] = 0

    step(0)
    _sync(device)
    t = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    _sync(device)
    return steps * BATCH / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ours(maps: np.ndarray, steps: int, checkpoint: Path | None = None) -> tuple[float, float]:
    """(samples/s over ``steps`` steps after the first, total seconds) of our training loop."""
    from circuits_cli.sae import TrainConfig, train

    cfg = TrainConfig(expansion=D_SAE_X, k=K, batch_size=BATCH, steps=steps + 1)
    stamps = []
    t0 = time.perf_counter()
    train(maps, np.arange(len(maps)), cfg, checkpoint=checkpoint,
          callback=lambda m: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    return steps * BATCH / (stamps[-1] - stamps[0]), total


def main(out: Path, quick: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    maps, source = _maps(quick)
    steps = 10 if quick else 40
    result: dict = {"data": source, "threads": THREADS, "device": device, "d_sae_x": D_SAE_X,
                    "k": K, "batch": BATCH, "timed_steps": steps}
    # interleave: anchor, ours, anchor, ours; keep the better of each (least disturbed)
    plain_rates, our_rates = [], []
    for _ in range(2):
        plain_rates.append(plain_loop(maps, steps, device))
        our_rates.append(ours(maps, steps)[0])
    result["plain_samples_per_s"] = round(max(plain_rates))
    result["ours_samples_per_s"] = round(max(our_rates))
    result["speedup_vs_plain"] = round(max(our_rates) / max(plain_rates), 2)
    default_samples = 600 * BATCH
    result["default_run_estimate_s"] = {
        "ours": round(default_samples / max(our_rates)),
        "plain": round(default_samples / max(plain_rates))}
    lines = ["## SAE training (inception_4c, TopK x8 k=32, batch 1024)", "",
             f"Data: {source}; {THREADS} threads on {device}.", "",
             "| loop | samples/s | default run (600 x 1024 samples) |", "| --- | ---: | ---: |",
             f"| plain PyTorch (anchor, in-memory, dense decoder) | "
             f"{result['plain_samples_per_s']} | ~{result['default_run_estimate_s']['plain']} s |",
             f"| circuits (streamed from the store, running metrics) | "
             f"{result['ours_samples_per_s']} | ~{result['default_run_estimate_s']['ours']} s |",
             "",
             f"Ratio ours / plain: {result['speedup_vs_plain']}x."]
    (out / "sae.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(main(args.out, args.quick), indent=2))
