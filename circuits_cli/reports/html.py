"""One self-contained HTML page for a traced circuit, as the Circuits papers present one.

:func:`write_report` reads a ``circuits trace`` output folder (``circuit.json``, the PNG figures
beside it, and, when :func:`circuits_cli.reports.evidence.add_evidence` has run,
``evidence.json`` with dataset examples and ablation; when
:func:`circuits_cli.reports.evidence.add_steering` has run, ``steer.json`` and ``steer.png``) and
writes ``report.html`` into it. Every picture is embedded as a base64 data URI, so the page can be
mailed or archived on its own. :func:`report_context` computes what the page shows; the Jinja2
template ``templates/report.html`` lays it out.

Sections: the circuit diagram (the folder's PNG figures); the ablation test against random units;
the circuit's quality (faithfulness, completeness, minimality and the faithfulness curve);
steering the target (dose-response table and figure, top-5 before and after); the units layer by
layer, each with its feature visualization, dataset examples and statistics; the connections with
their expanded-weight kernels (red excitation, blue inhibition, white zero, normalised by the
target's largest weight).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from markupsafe import Markup

REPORT_FILE = "report.html"
REPORT_TEMPLATE = "report.html"
STEER_JSON, STEER_PNG = "steer.json", "steer.png"  # written by 'circuits trace --steer'
STEER_COLUMNS = ("supported_prob_all", "moved_into_supported", "supported_prob_on_supported",
                 "top1_on_unrelated", "kl_on_unrelated")  # the steering table's, in order
OWN_FIGURES = (STEER_PNG,)  # figures with a section of their own, not the diagram's
GENERATOR = "<meta name='generator' content='circuits report'>"

def _uri_png_bytes(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _uri_file(path: Path) -> str | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    mime = "image/png" if Path(path).suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def kernel_png(kernel: np.ndarray, scale: float, cell: int = 8) -> bytes:
    """A spatial weight kernel as a small PNG: red = excitation, blue = inhibition, white = 0,
    values divided by ``scale`` (the target's largest |weight|)."""
    from PIL import Image

    k = np.asarray(kernel, dtype=np.float64) / (scale or 1.0)
    k = np.clip(k, -1, 1)
    rgb = np.ones(k.shape + (3,))
    pos, neg = np.clip(k, 0, 1), np.clip(-k, 0, 1)
    rgb[..., 1] -= pos * 0.85 + neg * 0.6  # green fades for both
    rgb[..., 2] -= pos * 0.85  # red: lose blue
    rgb[..., 0] -= neg * 0.85  # blue: lose red
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    img = img.resize((k.shape[1] * cell, k.shape[0] * cell), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def ablation_png(result: dict) -> bytes:
    """Histogram of the random draws' drops with the measured drop marked."""
    from matplotlib.figure import Figure

    drops = [d for d in result["random"]["drops"] if d is not None]
    base = result["baseline"] or 1.0
    fig = Figure(figsize=(5.2, 2.3), dpi=100)
    ax = fig.add_subplot()
    if drops:
        ax.hist(np.asarray(drops) / base * 100, bins=min(30, max(5, len(drops) // 3)),
                color="#9aa7b8", label=f"{len(drops)} random draws")
    ax.axvline(result["drop"] / base * 100, color="#d62728", lw=2,
               label=f"traced inputs ({result['relative_drop'] * 100:.1f}%)")
    ax.set_xlabel(f"drop of the target's {result['reduce']} activation (% of baseline)")
    ax.set_ylabel("draws")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")  # embedded in the page, not a file
    return buf.getvalue()


def quality_png(q: dict) -> bytes:
    """The faithfulness curve of a circuit (``evidence.json``'s ``quality``): faithfulness of
    its first k nodes in trace order, with the whole circuit's marked."""
    from matplotlib.figure import Figure

    sizes = q["curve"]["sizes"]
    vals = [np.nan if v is None else v for v in q["curve"]["faithfulness"]]
    fig = Figure(figsize=(5.6, 3.0), dpi=100)
    ax = fig.add_subplot()
    ax.axhline(1, color="#999", lw=0.8, ls="--")
    ax.axhline(0, color="#999", lw=0.8)
    ax.plot(sizes, vals, "o-", color="#d62728", ms=3,
            label=f"nodes added in trace order (area {_fmt(q['curve']['area'], 3)})")
    ax.set_xlabel("units kept, added in trace order (the rest of their layers ablated)")
    ax.set_ylabel("faithfulness")
    order = q["curve"]["order"]
    if len(order) <= 12:
        ax.set_xticks(sizes)
        ax.set_xticklabels(["∅"] + [f"+{o}" for o in order], fontsize=7, rotation=35,
                           ha="right")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")  # embedded in the page, not a file
    return buf.getvalue()


def _quality(ev: dict) -> dict | None:
    q = ev.get("quality")
    if not q:
        return {"note": ev["quality_note"]} if ev.get("quality_note") else None
    comp = q["completeness"]
    gaps = comp["gaps"]
    return {"target": q["target"], "ablation": q["ablation"], "n_images": q["n_images"],
            "layers": ", ".join(q["layers"]), "faithfulness": _fmt(q["faithfulness"], 3),
            "by_depth": [(", ".join(d["layers"]), _fmt(d["faithfulness"], 3))
                         for d in q.get("faithfulness_by_depth", [])]
            if len(q.get("faithfulness_by_depth", [])) > 1 else [],
            "f_model": _fmt(q["F_model"]), "f_empty": _fmt(q["F_empty"]),
            "f_circuit": _fmt(q["F_circuit"]), "circuit_gap": _fmt(comp["circuit_gap"], 3),
            "max_gap": _fmt(comp["max_gap"], 3), "area": _fmt(q["curve"]["area"], 3),
            "rows": [{"node": k, "drop": _fmt(v, 3), "gap": _fmt(gaps.get(k), 3)}
                     for k, v in q["minimality"].items()],
            "figure": _uri_png_bytes(quality_png(q))}


def _fmt(v, digits=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _uri_jpeg(path: Path, max_width: int = 1100, quality: int = 85) -> str | None:
    """A photo-heavy PNG (dataset-example sheet) re-encoded as JPEG: a tenth of the bytes."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, round(im.height * max_width / im.width)),
                               Image.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality, optimize=True)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(directory: Path) -> list[Path]:
    """Top-level PNG figures of the folder (circuit diagram and friends)."""
    return sorted(p for p in directory.glob("*.png") if not p.name.startswith("."))


def build_report(directory: str | Path, steering: bool | None = None) -> str:
    """The HTML text of the report for a trace output folder (``templates/report.html``).
    ``steering``: show ``steer.json`` (True), not (False), or when it steered the circuit's
    target (None)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    directory = Path(directory)
    env = Environment(loader=PackageLoader("circuits_cli.reports", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    return env.get_template(REPORT_TEMPLATE).render(**report_context(directory, steering),
                                                    generator=Markup(GENERATOR))


def report_context(directory: Path, steering: bool | None = None) -> dict:
    """What the report shows, as plain values (numbers formatted, pictures as data URIs); the
    template (``templates/report.html``) only lays it out."""
    c = json.loads((directory / "circuit.json").read_text(encoding="utf-8"))
    evpath = directory / "evidence.json"
    ev = json.loads(evpath.read_text(encoding="utf-8")) if evpath.exists() else None
    stpath = directory / STEER_JSON
    st = json.loads(stpath.read_text(encoding="utf-8")) if stpath.exists() else None
    if steering is False or (steering is None and st and st.get("unit") != c["target"]):
        st = None
    nodes = c.get("nodes", [])
    edges = c.get("edges", [])
    by_id = {n["id"]: n for n in nodes}
    figures = [{"uri": uri, "name": p.name} for p in _figures(directory)
               if p.name not in OWN_FIGURES and (uri := _uri_file(p))]
    units = []
    for d in sorted({n.get("depth", 0) for n in nodes}):
        layer_nodes = [n for n in nodes if n.get("depth", 0) == d]
        units.append({"title": "Target" if d == 0 else f"Hop {d}",
                      "layer": layer_nodes[0]["layer"] if layer_nodes else "",
                      "nodes": [_node(n, edges, ev, directory) for n in layer_nodes]})
    connections = []
    for e in sorted(edges, key=lambda e: (by_id.get(e["target"], {}).get("depth", 0),
                                          e["target"], e["rank"])):
        tgt = by_id.get(e["target"], {})
        k = np.asarray(e["kernel"], dtype=np.float64)
        scale = tgt.get("max_weight") or float(np.abs(k).max() or 1.0)
        connections.append({"source": e["source"], "target": e["target"], "rank": e["rank"],
                            "detects": by_id.get(e["source"], {}).get("label") or "",
                            "sign": "excites" if e["sign"] > 0 else "inhibits",
                            "strength": _fmt(e["strength"]),
                            "relative": _fmt(e["relative"], 3), "vertical": _vertical(k),
                            "kernel": _uri_png_bytes(kernel_png(k, scale))})
    from ..trace import breadth

    return {"c": c, "breadth": breadth(c.get("top_k", 0)),
            "weights_id": str(c["weights_id"])[:16], "n_nodes": len(nodes),
            "n_edges": len(edges), "ev": ev, "figures": figures,
            "ablation": _ablation(ev) if ev and ev.get("ablation") else None,
            "quality": _quality(ev) if ev else None,
            "units": units, "connections": connections,
            "labelled": any(n.get("label") for n in nodes),
            "steering": _steering(st, directory) if st else None}


def _ablation(ev: dict) -> dict:
    s = ev.get("ablation_settings") or {}
    n_avail = ev.get("n_images")
    top = s.get("top_images")
    rows = []
    for a in ev["ablation"]:
        if top and (n_avail is None or top < n_avail):
            which = (f"the {top} images where these inputs are most active"
                     if a.get("top_by") == "inputs"
                     else f"the {top} images where the target is most active")
        else:
            which = f"all {n_avail} images" if n_avail is not None else "all images"
        rel = a["relative_drop"]
        rnd = a["random"]
        rmean = rnd["mean_relative_drop"]
        rstd = (rnd["std_drop"] / a["baseline"] * 100) if a["baseline"] and rnd[
            "std_drop"] is not None else None
        rows.append({"target": a["target"], "group": a["group"], "expected": a["expected"],
                     "inputs": ", ".join(u.split(":")[1] for u in a["inputs"]),
                     "images": which,
                     "baseline": _fmt(a["baseline"]), "ablated": _fmt(a["ablated"]),
                     "change": f"{rel * 100:+.1f}%" if rel is not None else "–",
                     "random": (f"{rmean * 100:+.1f}%", f"{rstd:.1f}%", rnd["draws"])
                     if rmean is not None and rstd is not None else None,
                     "z": _fmt(a["z_score"], 3),
                     "p": _fmt(a.get("p_expected", a["p_value"]), 2), "agrees": a["agrees"],
                     "histogram": _uri_png_bytes(ablation_png(a))})
    return {"how": "their mean over the images" if s.get("mode") == "mean" else "zero",
            "reduce": str(s.get("reduce")), "top": top,
            "excluded": bool(s.get("excluded")), "rows": rows}


def _node(n: dict, edges: list[dict], ev: dict | None, directory: Path) -> dict:
    uri = None
    if n.get("render"):
        p = Path(n["render"])
        uri = _uri_file(p if p.is_absolute() else directory / p)
    ins = sorted((e for e in edges if e["target"] == n["id"]), key=lambda e: e["rank"])
    outs = [e for e in edges if e["source"] == n["id"]]
    exinfo = (ev or {}).get("examples", {}).get(n["id"])
    examples = None
    if exinfo:
        s = exinfo.get("summary", {})
        examples = {"sheet": _uri_jpeg(directory / exinfo["sheet"]),
                    "summary": {"max_mean": _fmt(s.get("max_mean")),
                                "max_max": _fmt(s.get("max_max")),
                                "active": _fmt(100 * s.get("fraction_active", 0), 3)}
                    if s else None}
    return {"id": n["id"], "render": uri, "branch": n.get("branch"), "label": n.get("label"),
            "ins": [(e["sign"] > 0, e["source"].split(":")[-1]) for e in ins],
            "outs": [(e["sign"] > 0, e["target"]) for e in outs], "examples": examples}


def _steering(st: dict, directory: Path) -> dict:
    """The steering section from ``steer.json`` (the JSON of a
    :class:`~circuits_cli.evidence.steering.SteeringResult`) and ``steer.png`` (its
    dose-response figure)."""
    levels = [{"strength": f"{lv['strength']:g}",
               **{k: "–" if lv[k] is None else f"{lv[k]:.3f}"
                  for k in STEER_COLUMNS},
               "changed_top1": lv["changed_top1"],
               "changed_to": ", ".join(f"{k} ({v})" for k, v in lv["changed_to"].items()),
               "class_shift": ", ".join(f"{d['class']} {d['shift']:+.3f}"
                                        for d in lv.get("class_shift", [])[:3])}
              for lv in st["levels"]]
    samples = [{"file": Path(s["path"]).name, "true": s.get("true"),
                "strength": f"{s['strength']:g}",
                "before": [(t["class"], f"{t['prob']:.3f}", t["supported"])
                           for t in s["before"]],
                "after": [(t["class"], f"{t['prob']:.3f}", t["supported"])
                          for t in s["after"]]}
               for s in st.get("samples", [])]
    clean = st.get("clean") or {}
    return {"unit": st["unit"], "mode": st["mode"], "reference": _fmt(st["reference"]),
            "n_images": st["n_images"], "supported": st["supported_classes"],
            "levels": levels, "samples": samples,
            "clean": {k: "–" if clean.get(k) is None else f"{clean[k]:.3f}"
                      for k in STEER_COLUMNS},
            "n_supported": clean.get("n_supported"), "n_unrelated": clean.get("n_unrelated"),
            "figure": _uri_file(directory / STEER_PNG)}


def _vertical(kernel: np.ndarray) -> str:
    """Mean weight of the kernel's rows above the centre and of those below it (where in the
    target's receptive field an input acts: windows above a car's centre, wheels below)."""
    h = kernel.shape[0]
    if h < 3:
        return "–"
    top, bottom = float(kernel[: h // 2].mean()), float(kernel[(h + 1) // 2:].mean())
    return f"{top:+.3g} / {bottom:+.3g}"


def check_report_path(path: str | Path) -> None:
    """Refuse to overwrite an HTML file that this module did not write (or a folder)."""
    from ..errors import CircuitsError

    path = Path(path)
    if path.is_dir():
        raise CircuitsError(f"{str(path)!r} is a folder; choose another --out")
    if path.exists():
        try:
            head = path.read_text(encoding="utf-8", errors="replace")[:400]
        except OSError:
            head = ""
        if GENERATOR not in head:
            raise CircuitsError(f"{str(path)!r} exists and was not written by circuits; choose "
                                "another --out or move the file")


def write_report(directory: str | Path, path: str | Path | None = None,
                 steering: bool | None = None) -> Path:
    """Write the report of a trace output folder (default ``DIR/report.html``); returns it.
    ``steering``: as :func:`build_report`."""
    from ..files import write_text

    directory = Path(directory)
    if not (directory / "circuit.json").is_file():
        from ..errors import CircuitsError

        raise CircuitsError(f"{str(directory)!r} has no circuit.json; pass the output folder of "
                            "'circuits trace'")
    path = Path(path) if path else directory / REPORT_FILE
    check_report_path(path)
    return write_text(path, build_report(directory, steering))
