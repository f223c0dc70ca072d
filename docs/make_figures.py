"""Make the documentation's figures with the tool itself: ``python docs/make_figures.py``.

Every figure under ``docs/figures/`` comes from a ``circuits`` command run on the shipped toy
model (offline, seeded), copied or shrunk with Pillow, and the pages of HTML output (the report,
an atlas page, an SAE page, the demo's story page) are photographed in chromium. The work goes to
``outputs/docs-figures/`` (its own render and activation cache, so the figures do not depend on
what else a user has cached); a second run re-uses it and finishes in seconds.

The PNGs are committed (about 2.3 MB in all) so that the site builds without this script,
which takes about 4 CPU minutes from nothing on one thread (4 min 14 s measured on 2026-12-07;
17 minutes of wall time on a shared 2-core machine at a load average of 10 to 13). The plots
and renders come out bit for bit again with the same torch and thread count (renders depend on
the number of torch threads, so the script uses one); chromium's screenshots may differ in a
few anti-aliased pixels between chromium versions.

``make docs`` does not run this script; ``make docs-figures`` does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"


def circuits(*args: str, work: Path) -> None:
    """Run one ``circuits`` command the way a user does (a subprocess, seeded, one thread)."""
    env = {**os.environ, "CIRCUITS_CACHE": str(ROOT / work / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "circuits_cli.cli", *args]
    print("$ circuits", " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)


def shrink(src: Path, dest: Path, width: int, *, top: float = 1.0, colours: int = 0) -> None:
    """Copy a PNG, keeping its top ``top`` fraction, resized to at most ``width`` pixels wide
    (Lanczos) and, with ``colours``, reduced to a palette of that many colours (renders are
    noise to PNG's compression: a palette makes a contact sheet 3-4 times smaller).
    Deterministic."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if top < 1.0:
            im = im.crop((0, 0, im.width, round(im.height * top)))
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        if colours:
            im = im.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        im.save(dest, optimize=True)


def chromium() -> str | None:
    for cand in (os.environ.get("CIRCUITS_CHROMIUM"), "chromium", "chromium-browser"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def screenshots(pages: dict[str, tuple[Path, str | None]], width: int = 1280,
                height: int = 900) -> None:
    """Photograph each HTML page into docs/figures/NAME.png: ``height`` pixels from its top, or
    from the ``<h2>`` holding the given text."""
    exe = chromium()
    if exe is None:
        print("no chromium: screenshots skipped (apt-get install chromium)", file=sys.stderr)
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width, "height": height})
        for name, (html, heading) in pages.items():
            page.goto((ROOT / html).resolve().as_uri())
            page.wait_for_load_state("networkidle")
            if heading:
                page.locator("h2", has_text=heading).first.evaluate(
                    "e => window.scrollTo(0, e.getBoundingClientRect().top + window.scrollY - 16)")
            shot = FIGURES / f"{name}.full.png"
            page.screenshot(path=str(shot))
            shrink(shot, FIGURES / f"{name}.png", 960)
            shot.unlink()
        browser.close()


def sae_page(work: Path) -> Path:
    """The page of ``circuits sae features``: the layer's most polysemantic neuron."""
    return next((ROOT / work / "sae-features").glob("neuron-*.html"))


def pages(work: Path) -> dict[str, tuple[Path, str | None]]:
    """The HTML pages the figures photograph, with the section each starts at."""
    demo = work / "demo"
    return {"report": (demo / "trace" / "report.html", "Ablation"),
            "atlas-unit": (work / "atlas" / "units" / "mixed4b" / "64.html", None),
            "sae-page": (sae_page(work), None),
            "story": (demo / "report.html", None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "docs-figures",
                        help="where the commands write (default outputs/docs-figures)")
    parser.add_argument("--no-screenshots", action="store_true")
    parser.add_argument("--screenshots-only", action="store_true",
                        help="photograph the pages of an earlier run again, running nothing")
    args = parser.parse_args()
    work = args.work.resolve()
    if work.is_relative_to(ROOT):  # relative paths, so that no local folder shows in the figures
        work = work.relative_to(ROOT)
    demo = work / "demo"
    FIGURES.mkdir(parents=True, exist_ok=True)

    if args.screenshots_only:
        return screenshots(pages(work))
    # The whole story on the toy model: the car circuit, evidence, superposition, SAE, steering.
    circuits("demo", "-m", "toy", "--out", str(demo), work=work)
    scenes = str(demo / "scenes")
    # The car unit and its five strongest inputs, one hop: the README's picture.
    circuits("trace", "mixed4b:64", "-m", "toy", "--depth", "1", "--top-k", "5", "--steps", "128",
             "--out", str(work / "trace-1hop"), work=work)
    circuits("examples", "mixed4b:64", "-m", "toy", "--images", scenes,
             "--out", str(work / "examples"), work=work)
    circuits("atlas", "-m", "toy", "--layers", "mixed4a,mixed4b", "--units", "mixed4b:60-67",
             "--images", scenes, "--steps", "128", "--kinds", "channel",
             "--out", str(work / "atlas"), work=work)
    # the most polysemantic neuron of the layer (the most live features writing into it)
    circuits("sae", "features", str(demo / "sae"), "-m", "toy", "--images", scenes,
             "--out", str(work / "sae-features"), work=work)

    shrink(ROOT / work / "trace-1hop" / "circuit.png", FIGURES / "car-circuit.png", 900,
           colours=256)
    shrink(ROOT / demo / "trace" / "circuit.png", FIGURES / "car-circuit-2hops.png", 800,
           colours=256)
    # the first five rows of the contact sheet: units 0-64, the window (37) and wheel (63) units
    shrink(ROOT / demo / "visualize" / "sheet.png", FIGURES / "toy-mixed4a-sheet.png", 1000,
           top=0.395, colours=256)
    shrink(ROOT / work / "examples" / "toy_mixed4b_64.png", FIGURES / "examples-car-unit.png", 900,
           colours=256)
    shrink(ROOT / demo / "superposition" / "wtw_sweep.png", FIGURES / "superposition-wtw.png", 1000)
    shrink(ROOT / demo / "steer" / "steer.png", FIGURES / "steer.png", 1000)
    # the demo's attribution graph of one car scene (circuits graph's figure)
    shrink(ROOT / demo / "graph" / "graph.png", FIGURES / "graph.png", 1000, colours=256)
    shrink(sae_page(work).with_suffix(".png"), FIGURES / "sae-neuron.png", 1000, colours=256)
    if not args.no_screenshots:
        screenshots(pages(work))
    for png in sorted(FIGURES.glob("*.png")):
        print(f"{png.relative_to(ROOT)}  {png.stat().st_size // 1024} kB")


if __name__ == "__main__":
    main()
