"""Benchmark: the activation cache, its decoding workers, and SAE training from it, each against
its anchor, one run.

On the toy model (``mixed4b``: 192 channels, 8x8 positions) over toy scenes written once as PNG
files (a folder source, decoded like photos), and, where ``../shared`` has them, on googlenet-bvlc
(``inception_4c``) over full-size ImageNet JPEG photos (shorter side 256, centre 224):

- **decoding alone**: images/s of the ``DataLoader`` that ``circuits cache`` reads through
  (``ImageDataset``: open, EXIF rotation, resize, crop), with 0, 1 and 2 worker processes and no
  network at all; the torch thread count inside a worker is recorded;
- **caching vs forward only**: ``circuits cache`` (decode, forward, sample 16 positions per
  image, float16, write shards atomically) in images/s with 0 and 1 decoding workers (1 worker
  also with the main process's forward on one thread fewer), against the forward pass alone over
  the same images already decoded in memory (the anchor; target: caching >= 0.9x);
- the **decode share** of the time (decode time / (decode + forward time) per image, each
  measured alone) and the speed-up a worker could give at best (1 / (1 - share): the decode
  hidden entirely behind the forward pass, on a core of its own);
- **SAE training vs a plain loop**: ``train`` streamed from the cache's memory-mapped shards (TopK
  x8 = 1536 latents, k=32, batch 1024) against the textbook loop over the same rows as one
  in-memory tensor (``bench_sae.plain_loop``; target >= 1.0x), interleaved, best of two.

Runnable alone: ``python benchmarks/bench_scale.py --out DIR [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

THREADS = 2
# the photos and GoogLeNet weights beside the repository (as the tests find them)
SHARED = Path(os.environ.get("CIRCUITS_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))


def _forward_only(model, paths: list[Path], layer: str, size: int, batch: int) -> float:
    """images/s of the forward pass to ``layer`` over the images, decoded beforehand."""
    from circuits_cli.hooks import capture
    from circuits_cli.images import load_image

    x = torch.stack([load_image(p, size=size, resize=round(size * 256 / 224)) for p in paths])
    with torch.no_grad():
        capture(model, x[:batch], [layer])
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            capture(model, x[i:i + batch], [layer])
    return len(x) / (time.perf_counter() - t)


class _ThreadProbe(torch.utils.data.Dataset):
    """Each item: the torch thread count of the process that reads it (a DataLoader worker)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return torch.get_num_threads()


def _worker_threads() -> int:
    loader = torch.utils.data.DataLoader(_ThreadProbe(), batch_size=1, num_workers=1)
    return int(max(int(b) for b in loader))


def _decode_only(source, size: int, workers: int, batch: int) -> tuple[float, float]:
    """(images/s of the cache's DataLoader alone: decoding, no network, worker start included;
    seconds to the first batch: the start of the workers plus one batch's decoding)."""
    from circuits_cli.cache.sources import ImageDataset

    ds = ImageDataset(source, range(len(source)), size, round(size * 256 / 224))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False,
                                         num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    t = time.perf_counter()
    n, first = 0, None
    for idx, _, _ in loader:
        n += len(idx)
        first = first if first is not None else time.perf_counter() - t
    return n / (time.perf_counter() - t), first


def _caching(model, source, layer: str, out: Path, workers: int, batch: int,
             threads: int | None = None) -> float:
    from circuits_cli.cache import write_cache
    from circuits_cli.files import release_claims

    shutil.rmtree(out, ignore_errors=True)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        write_cache(model, [layer], source, out, positions=16, shard_images=512,
                    batch_size=batch, workers=workers)
        seconds = time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
        release_claims()
    return len(source) / seconds


def _decoding_case(name: str, model, source, paths, layer: str, size: int, batch: int,
                   work: Path, rounds: int = 2) -> dict:
    """Decoding alone (0/1/2 workers), forward alone, caching (0/1 workers, and 1 worker with
    the forward on one thread fewer), interleaved rounds, best of each."""
    runs: dict[str, list[float]] = {}
    firsts: dict[int, list[float]] = {}

    def add(key, value):
        runs.setdefault(key, []).append(value)

    fewer = max(1, THREADS - 1)
    for _ in range(rounds):
        for w in (0, 1, 2):
            rate, first = _decode_only(source, size, w, batch)
            add(f"decode_workers{w}", rate)
            firsts.setdefault(w, []).append(first)
        add("forward_only", _forward_only(model, paths, layer, size, batch))
        add("cache_workers0", _caching(model, source, layer, work / "c", 0, batch))
        add("cache_workers1", _caching(model, source, layer, work / "c", 1, batch))
        add(f"cache_workers1_threads{fewer}", _caching(model, source, layer, work / "c", 1,
                                                        batch, threads=fewer))
    best = {k: round(max(v), 1) for k, v in runs.items()}
    fwd, dec = best["forward_only"], best["decode_workers0"]
    share = (1 / dec) / (1 / dec + 1 / fwd)
    return {"case": name, "layer": layer, "images": len(source), "size": size, "batch": batch,
            "images_per_s": best, "decode_ms_per_image": round(1000 / dec, 2),
            "forward_ms_per_image": round(1000 / fwd, 2), "decode_share": round(share, 3),
            "overlap_bound": round(1 / (1 - share), 3),
            "cache_share_of_forward": {k: round(best[k] / fwd, 2) for k in best
                                       if k.startswith("cache")},
            "workers1_vs_workers0": round(best["cache_workers1"] / best["cache_workers0"], 2),
            "threads_fewer": fewer,
            "first_batch_ms": {f"workers{w}": round(1000 * min(v), 1) for w, v in firsts.items()}}


def _decoding_table(cases: list[dict], worker_threads: int) -> list[str]:
    lines = ["| images/s (vs forward only) | " + " | ".join(c["case"] for c in cases) + " |",
             "| --- |" + " ---: |" * len(cases)]
    fewer = cases[0]["threads_fewer"]
    rows = [("decoding alone, no worker", "decode_workers0"),
            ("decoding alone, 1 worker", "decode_workers1"),
            ("decoding alone, 2 workers", "decode_workers2"),
            ("forward only, images decoded beforehand (anchor)", "forward_only"),
            ("`circuits cache`, decoding in the main process (`--workers 0`)", "cache_workers0"),
            ("`circuits cache`, 1 decoding worker (`--workers 1`)", "cache_workers1"),
            (f"`circuits cache --workers 1`, forward on {fewer} thread(s)",
             f"cache_workers1_threads{fewer}")]
    for label, key in rows:
        cells = []
        for c in cases:
            v = c["images_per_s"][key]
            fwd = c["images_per_s"]["forward_only"]
            cells.append(f"{v} ({v / fwd:.2f}x)" if key.startswith("cache") else f"{v}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| per image | " + " | ".join(c["case"] for c in cases) + " |",
              "| --- |" + " ---: |" * len(cases)]
    for label, key in (("decode (ms)", "decode_ms_per_image"),
                       ("forward (ms)", "forward_ms_per_image"),
                       ("decode share of decode + forward", "decode_share"),
                       ("best speed-up from hiding the decode (1 / (1 - share))",
                        "overlap_bound"),
                       ("measured: `--workers 1` / `--workers 0`", "workers1_vs_workers0")):
        lines.append(f"| {label} | " + " | ".join(str(c[key]) for c in cases) + " |")
    for w in (0, 1, 2):
        lines.append(f"| decoding alone, {w} worker(s): ms to the first batch | "
                     + " | ".join(str(c["first_batch_ms"][f"workers{w}"]) for c in cases)
                     + " |")
    lines += ["", f"torch threads inside a DataLoader worker: {worker_threads}."]
    return lines


def main(out: Path, quick: bool = False) -> dict:
    import bench_sae

    from circuits_cli.cache import open_cache
    from circuits_cli.toy.world import save_scenes
    from circuits_cli.zoo import load_model

    torch.set_num_threads(THREADS)
    n = 600 if quick else 3000
    batch = 128
    work = out / "scale-work"
    shutil.rmtree(work, ignore_errors=True)
    folder = work / "scenes"
    save_scenes(folder, n, seed=11)
    model = load_model("toy")
    result: dict = {"model": "toy", "layer": "mixed4b", "images": n, "batch": batch,
                    "threads": THREADS, "positions": 16}
    from circuits_cli.cache import open_source

    result["worker_torch_threads"] = _worker_threads()
    cases = [_decoding_case("toy PNG 64 px, mixed4b", model, open_source(folder),
                            sorted(folder.glob("*.png")), "mixed4b", 64, batch, work)]
    toy = cases[0]["images_per_s"]
    result["forward_only_images_per_s"] = toy["forward_only"]
    result["cache_workers0_images_per_s"] = toy["cache_workers0"]
    result["cache_workers1_images_per_s"] = toy["cache_workers1"]
    result["cache_share_of_forward"] = max(v for k, v in cases[0]["cache_share_of_forward"]
                                           .items())
    photos = SHARED / "images" / "imagenet-samples"
    weights = SHARED / "models" / "bvlc_googlenet.npz"
    if weights.is_file() and photos.is_dir():
        paths = sorted(photos.glob("*.JPEG"))[:64 if quick else 192]
        listing = work / "photos.txt"
        listing.write_text("".join(f"{p}\n" for p in paths))
        bvlc = load_model("googlenet-bvlc", weights=weights)
        cases.append(_decoding_case("googlenet-bvlc JPEG photos, inception_4c", bvlc,
                                    open_source(listing), paths, "inception_4c", 224, 32,
                                    work))
    else:
        result["photos_skipped"] = f"{SHARED} has no bvlc_googlenet.npz or imagenet-samples"
    result["decoding"] = cases
    # the cache the SAE trains from: the toy scenes, 16 positions each, decoded in the main
    # process
    _caching(model, open_source(folder), "mixed4b", work / "cache", 0, batch)

    rows = open_cache(work / "cache").rows("mixed4b")
    steps = 10 if quick else 30
    plain, ours = [], []
    for _ in range(2):
        plain.append(bench_sae.plain_loop(rows, steps, "cpu"))
        ours.append(bench_sae.ours(rows, steps)[0])
    result["sae_rows"] = len(rows)
    result["sae_plain_samples_per_s"] = round(max(plain))
    result["sae_ours_samples_per_s"] = round(max(ours))
    result["sae_ours_vs_plain"] = round(max(ours) / max(plain), 2)
    shutil.rmtree(work, ignore_errors=True)
    lines = ["## Activation cache, decoding workers and SAE training from it", "",
             f"Toy: {n} toy scenes as PNG files, batch {batch}; photos: "
             f"{cases[-1]['images'] if len(cases) > 1 else 0} ImageNet JPEGs, batch 32; "
             f"{THREADS} torch threads, 16 positions per image, two interleaved rounds, best "
             "of each.", "", *_decoding_table(cases, result["worker_torch_threads"]), "",
             "| SAE training (TopK x8 k=32, batch 1024) | samples/s |", "| --- | ---: |",
             "| plain PyTorch loop, rows in memory (anchor) | "
             f"{result['sae_plain_samples_per_s']} |",
             f"| `circuits sae train --cache` (streamed from the shards) | "
             f"{result['sae_ours_samples_per_s']} |", "",
             f"Ratio ours / plain: {result['sae_ours_vs_plain']}x."]
    (out / "scale.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(main(args.out, args.quick), indent=2))
