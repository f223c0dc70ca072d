"""One self-contained HTML page for a traced circuit, as the Circuits papers present one.

:func:`write_report` reads a ``circuits trace`` output folder (``circuit.json``, the PNG figures
beside it, and, when :func:`circuits_cli.evidence.add_evidence` has run, ``evidence.json`` with
dataset examples and ablation) and writes ``report.html`` into it. Every picture is embedded as
a base64 data URI, so the page can be mailed or archived on its own.

Sections: the circuit diagram (the folder's PNG figures); the units layer by layer, each with its
feature visualization, dataset examples and statistics; the connections with their expanded-weight
kernels (red excitation, blue inhibition, white zero, normalised by the target's largest weight);
the ablation test against random units.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

REPORT_FILE = "report.html"
GENERATOR = "<meta name='generator' content='circuits report'>"

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1180px;
color:#1a1a1a;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;
padding-bottom:.2em} h3{margin:1.2em 0 .3em} .muted{color:#666} code{background:#f3f3f3;
padding:1px 4px;border-radius:3px} table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle;font-size:.92em}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.fig img{max-width:100%;border:1px solid #eee} .fig figcaption{font-size:.85em;color:#666}
.node{display:flex;gap:18px;align-items:flex-start;border:1px solid #e4e4e4;border-radius:6px;
padding:12px;margin:12px 0} .node .vis{flex:0 0 170px;text-align:center}
.node .vis img{width:160px;height:160px;image-rendering:auto;border:1px solid #ddd}
.node .ex{flex:1 1 auto;min-width:0} .node .ex img{max-width:100%}
.kernel{image-rendering:pixelated;width:64px;height:64px;border:1px solid #ccc}
.ok{color:#0a7a2f;font-weight:600} .bad{color:#b00020;font-weight:600}
.legend span{display:inline-block;width:14px;height:14px;vertical-align:middle;margin:0 4px}
"""


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


def _fmt(v, digits=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return html.escape(str(v))


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


def build_report(directory: str | Path) -> str:
    """The HTML text of the report for a trace output folder."""
    directory = Path(directory)
    c = json.loads((directory / "circuit.json").read_text(encoding="utf-8"))
    evpath = directory / "evidence.json"
    ev = json.loads(evpath.read_text(encoding="utf-8")) if evpath.exists() else None
    nodes = c.get("nodes", [])
    edges = c.get("edges", [])
    by_id = {n["id"]: n for n in nodes}
    esc = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>{GENERATOR}<title>Circuit of "
           f"{esc(c['target'])}</title><style>{CSS}</style></head><body>"]
    out.append(f"<h1>Circuit of <code>{esc(c['target'])}</code></h1>")
    hops = "; ".join(f"{esc(h['source'])} &rarr; {esc(h['target'])} ({esc(h['method'])})"
                     for h in c.get("hops", []))
    out.append(f"<p class='muted'>Model <b>{esc(c['model'])}</b> (weights "
               f"<code>{esc(str(c['weights_id']))[:16]}</code>); {len(nodes)} units, "
               f"{len(edges)} connections; depth {c.get('depth')}, top {c.get('top_k')} inputs "
               f"per unit. Hops: {hops or '–'}.</p>")
    if c.get("note"):
        out.append(f"<p class='muted'>{esc(c['note'])}</p>")
    if ev:
        out.append(f"<p class='muted'>Dataset examples and ablation over {ev['n_images']} images "
                   f"from <code>{esc(ev['images'])}</code>"
                   + (f" ({ev['n_skipped']} unreadable or non-image files skipped)"
                      if ev.get("n_skipped") else "") + ".</p>")
    else:
        out.append("<p class='muted'>No dataset examples or ablation yet: run "
                   "<code>circuits trace ... --images DIR</code> to add them.</p>")

    figs = _figures(directory)
    if figs:
        out.append("<h2>Circuit diagram</h2>")
        for p in figs:
            uri = _uri_file(p)
            if uri:
                out.append(f"<figure class='fig'><img src='{uri}' alt='{esc(p.name)}'>"
                           f"<figcaption>{esc(p.name)}</figcaption></figure>")

    if ev and ev.get("ablation"):
        out.append("<h2>Ablation: does the circuit do what the weights say?</h2>")
        s = ev.get("ablation_settings") or {}
        how = "their mean over the images" if s.get("mode") == "mean" else "zero"
        out.append(f"<p>Each group of traced inputs is set to {how} and "
                   f"the target's {esc(str(s.get('reduce')))} activation is measured over the "
                   f"{'top ' + str(s['top_images']) + ' ' if s.get('top_images') else ''}images "
                   "where it is most active, against the same number of random units of the "
                   "same layer (many draws). Excitatory inputs should make it drop, inhibitory "
                   "ones rise.</p>")
        out.append("<table><tr><th>target</th><th>inputs</th><th>expected</th>"
                   "<th>baseline</th><th>ablated</th><th>change</th><th>random draws</th>"
                   "<th>z</th><th>p (one-sided, as predicted)</th><th>verdict</th></tr>")
        for a in ev["ablation"]:
            rel = a["relative_drop"]
            change = f"{-rel * 100:+.1f}%" if rel is not None else "–"
            rnd = a["random"]
            rmean = rnd["mean_relative_drop"]
            rstd = (rnd["std_drop"] / a["baseline"] * 100) if a["baseline"] and rnd[
                "std_drop"] is not None else None
            rtxt = (f"{-rmean * 100:+.1f}% &plusmn; {rstd:.1f}% ({rnd['draws']})"
                    if rmean is not None and rstd is not None else "–")
            verdict = ("<span class='ok'>agrees</span>" if a["agrees"]
                       else "<span class='bad'>not shown</span>")
            out.append(f"<tr><td><code>{esc(a['target'])}</code></td><td>{a['group']}: "
                       f"{', '.join(esc(u.split(':')[1]) for u in a['inputs'])}</td>"
                       f"<td>{a['expected']}</td><td class='num'>{_fmt(a['baseline'])}</td>"
                       f"<td class='num'>{_fmt(a['ablated'])}</td><td class='num'>{change}</td>"
                       f"<td class='num'>{rtxt}</td><td class='num'>{_fmt(a['z_score'], 3)}</td>"
                       f"<td class='num'>{_fmt(a.get('p_expected', a['p_value']), 2)}</td>"
                       f"<td>{verdict}</td></tr>")
        out.append("</table>")
        for a in ev["ablation"]:
            out.append(f"<figure class='fig'><img src='{_uri_png_bytes(ablation_png(a))}' "
                       f"alt='ablation histogram'><figcaption>{esc(a['target'])}, "
                       f"{a['group']} inputs: drop of the traced inputs (red) against random "
                       "draws.</figcaption></figure>")

    out.append("<h2>Units</h2>")
    depths = sorted({n.get("depth", 0) for n in nodes})
    for d in depths:
        layer_nodes = [n for n in nodes if n.get("depth", 0) == d]
        layer = layer_nodes[0]["layer"] if layer_nodes else ""
        out.append(f"<h3>{'Target' if d == 0 else f'Hop {d}'}: <code>{esc(layer)}</code></h3>")
        for n in layer_nodes:
            out.append(_node_html(n, edges, by_id, ev, directory))

    if edges:
        out.append("<h2>Connections (expanded weights)</h2>")
        out.append("<p class='legend'>Kernel colours: <span style='background:#e52626'></span>"
                   "excitation <span style='background:#2626e5'></span>inhibition "
                   "<span style='background:#fff;border:1px solid #ccc'></span>zero; "
                   "normalised by the target's largest weight. Strength = L2 norm of the "
                   "kernel.</p>")
        out.append("<table><tr><th>source</th><th>target</th><th>rank</th><th>sign</th>"
                   "<th>strength</th><th>relative</th><th>kernel</th></tr>")
        for e in sorted(edges, key=lambda e: (by_id.get(e["target"], {}).get("depth", 0),
                                              e["target"], e["rank"])):
            tgt = by_id.get(e["target"], {})
            k = np.asarray(e["kernel"], dtype=np.float64)
            scale = tgt.get("max_weight") or float(np.abs(k).max() or 1.0)
            uri = _uri_png_bytes(kernel_png(k, scale))
            out.append(f"<tr><td><code>{esc(e['source'])}</code></td><td><code>"
                       f"{esc(e['target'])}</code></td><td class='num'>{e['rank']}</td><td>"
                       f"{'excites' if e['sign'] > 0 else 'inhibits'}</td><td class='num'>"
                       f"{_fmt(e['strength'])}</td><td class='num'>{_fmt(e['relative'], 3)}"
                       f"</td><td><img class='kernel' src='{uri}' alt='kernel'></td></tr>")
        out.append("</table>")
    out.append("<p class='muted'>Written by <code>circuits</code>. Expanded weights are evidence, "
               "not proof (the linear approximation ignores ReLUs and max-pools); dataset "
               "examples and ablation test them on real images.</p></body></html>")
    return "\n".join(out)


def _node_html(n: dict, edges: list[dict], by_id: dict, ev: dict | None, directory: Path) -> str:
    esc = html.escape
    parts = ["<div class='node'><div class='vis'>"]
    render = n.get("render")
    uri = None
    if render:
        p = Path(render)
        uri = _uri_file(p if p.is_absolute() else directory / p)
    if uri:
        parts.append(f"<img src='{uri}' alt='feature visualization of {esc(n['id'])}'>"
                     "<div class='muted' style='font-size:.8em'>feature visualization</div>")
    else:
        parts.append("<div class='muted' style='font-size:.85em;padding-top:60px'>no feature "
                     "visualization</div>")
    parts.append(f"<div><b><code>{esc(n['id'])}</code></b></div>")
    if n.get("branch"):
        parts.append(f"<div class='muted'>{esc(n['branch'])} branch</div>")
    ins = sorted((e for e in edges if e["target"] == n["id"]), key=lambda e: e["rank"])
    outs = [e for e in edges if e["source"] == n["id"]]
    if ins:
        parts.append("<div style='font-size:.85em;text-align:left;margin-top:6px'>inputs: "
                     + ", ".join(f"{'+' if e['sign'] > 0 else '&minus;'}"
                                 f"{esc(e['source'].split(':')[-1])}" for e in ins) + "</div>")
    if outs:
        parts.append("<div style='font-size:.85em;text-align:left'>feeds: "
                     + ", ".join(f"{'+' if e['sign'] > 0 else '&minus;'}"
                                 f"{esc(e['target'])}" for e in outs) + "</div>")
    parts.append("</div><div class='ex'>")
    exinfo = (ev or {}).get("examples", {}).get(n["id"])
    if exinfo:
        suri = _uri_jpeg(directory / exinfo["sheet"])
        if suri:
            parts.append(f"<img src='{suri}' alt='dataset examples of {esc(n['id'])}'>")
        s = exinfo.get("summary", {})
        if s:
            parts.append(f"<div class='muted' style='font-size:.85em'>spatial max over the "
                         f"images: mean {_fmt(s.get('max_mean'))}, largest "
                         f"{_fmt(s.get('max_max'))}; active (max &gt; 0) in "
                         f"{_fmt(100 * s.get('fraction_active', 0), 3)}% of images.</div>")
    else:
        parts.append("<div class='muted'>no dataset examples</div>")
    parts.append("</div></div>")
    return "".join(parts)


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


def write_report(directory: str | Path, path: str | Path | None = None) -> Path:
    """Write the report of a trace output folder (default ``DIR/report.html``); returns it."""
    from ..files import write_text

    directory = Path(directory)
    if not (directory / "circuit.json").is_file():
        from ..errors import CircuitsError

        raise CircuitsError(f"{str(directory)!r} has no circuit.json; pass the output folder of "
                            "'circuits trace'")
    path = Path(path) if path else directory / REPORT_FILE
    check_report_path(path)
    return write_text(path, build_report(directory))
