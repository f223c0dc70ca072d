"""The toy world: procedural scenes whose classes share parts the way ImageNet classes do.

Eight classes of small RGB scenes (64x64 by default) on a sky/ground background with clutter:

- ``car``: body, a cabin with windows in its upper half, two wheels at the bottom;
- ``bus``: a long box with a row of windows along its top, wheels at the bottom;
- ``truck``: a cab with one window, a windowless cargo box, wheels at the bottom;
- ``wagon``: a car-sized body on two wheels under an opaque cover (arched, or shaped like a
  car's cabin): a car without windows;
- ``house``: walls with framed windows, a roof on top, a door at the bottom;
- ``bicycle``: two thin-spoked wheels and a frame of coloured tubes;
- ``tree``: one to three trees, each a trunk under foliage;
- ``scrap``: a car carrying spare parts where a car has none: a pair of wheels on its roof, or a
  pair of panes low in its body, between its wheels.

So ``car``, ``bus`` and ``truck`` share wheels and windows, ``house`` shares windows, ``wagon``
and ``bicycle`` share wheels, and what tells a car apart is the arrangement: windows on top,
wheels below (a wagon has the wheels and the shape, but no windows; scrap has every part of a
car in its place, plus wheels above its windows or panes between its wheels).
Half of all scenes, of every class, also have a stray wheel or window lying about, so the mere
presence of a part is weak evidence and its place relative to the others matters.

Besides scenes, :func:`make_part_images` renders *part-only* images: one to four instances of a
single part (``wheels``, ``windows``, ``roof``, ``door``, ``frame``, ``foliage``) on the same kind
of background and clutter, the ground truth for finding part detectors. ``part="none"`` gives the
background and clutter alone. Clutter (clouds, stones, grass, posts, blobs) never draws anything
that looks like a part: no glass colours, no tyre-black discs, no triangles.

Everything is deterministic by seed: image ``i`` of a set with seed ``s`` is drawn from the
generator ``numpy.random.default_rng([s, i, stream])``, with one stream for the background and
clutter and another for the objects. Image ``i`` of ``make_part_images(p, n, s)`` therefore has
exactly the background of image ``i`` of ``make_part_images("none", n, s)``, and the two differ
only inside the part boxes. Drawing is done with PIL at twice the resolution and box-filtered
down (anti-aliasing); about 0.3 ms a scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

CLASSES = ("car", "bus", "truck", "wagon", "house", "bicycle", "tree", "scrap")
PARTS = ("wheels", "windows", "roof", "door", "frame", "foliage")
NO_PART = "none"

#: Fraction of scenes (of every class) with a stray wheel or window somewhere behind the
#: object: the presence of wheels and windows alone does not make a vehicle, their arrangement
#: does.
LOOSE_PARTS = 0.5

_SS = 2  # supersampling factor
_BG_STREAM, _OBJ_STREAM, _LABEL_STREAM = 0, 1, 2
_PART_SEED = 7_919  # separates part-only image streams from scene streams of the same seed

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in output pixels


# ----------------------------------------------------------------------------------- colours

def _rgb(c) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(v)))) for v in c)


def _jitter(rng: np.random.Generator, base, amount: float = 20):
    return _rgb(np.asarray(base, float) + rng.uniform(-amount, amount, 3))


def _glass(rng: np.random.Generator) -> tuple[int, int, int]:
    """Window glass: a pale cyan-blue, lighter and greener than any sky of the backgrounds."""
    return _jitter(rng, (175, 225, 240), 15)


def _tyre(rng: np.random.Generator) -> tuple[int, int, int]:
    g = rng.uniform(12, 45)
    return _rgb((g, g, g + rng.uniform(0, 6)))


def _paint(rng: np.random.Generator) -> tuple[int, int, int]:
    """A vehicle paint colour: saturated or neutral, never glass-like nor tyre-black."""
    palette = [(200, 30, 30), (30, 70, 190), (230, 200, 40), (240, 240, 235), (40, 140, 60),
               (230, 120, 30), (120, 120, 125), (150, 40, 120), (20, 150, 160), (90, 50, 30)]
    return _jitter(rng, palette[rng.integers(len(palette))], 25)


def _is_partlike(c) -> bool:
    """True for colours that clutter must avoid: glass blue and tyre black."""
    r, g, b = c
    light_blue = b > 170 and b - r > 35 and g > 150
    dark = max(c) < 70
    return light_blue or dark


def _clutter_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    while True:
        c = _rgb(rng.uniform(40, 255, 3))
        if not _is_partlike(c):
            return c


# ------------------------------------------------------------------------------ background

def _background(rng: np.random.Generator, s: int) -> tuple[Image.Image, float]:
    """Sky over ground (horizon height varies) or a plain wall; returns image and horizon y."""
    y = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None, None]
    kind = rng.random()
    if kind < 0.75:  # outdoor: sky gradient over ground
        horizon = rng.uniform(0.35, 0.7)
        sky_top = np.array(_jitter(rng, rng.choice([(110, 160, 225), (150, 180, 210),
                                                     (235, 175, 130), (185, 185, 195)]), 25))
        sky_low = np.clip(sky_top + rng.uniform(10, 50), 0, 255)
        ground_top = np.array(_jitter(rng, rng.choice([(95, 150, 70), (140, 130, 100),
                                                        (125, 125, 125), (175, 160, 120)]), 25))
        ground_low = np.clip(ground_top * rng.uniform(0.7, 1.0), 0, 255)
        t_sky = np.clip(y / horizon, 0, 1)
        t_gnd = np.clip((y - horizon) / (1 - horizon), 0, 1)
        sky = sky_top * (1 - t_sky) + sky_low * t_sky
        gnd = ground_top * (1 - t_gnd) + ground_low * t_gnd
        img = np.where(y < horizon, sky, gnd)
    else:  # plain backdrop with a soft gradient
        horizon = rng.uniform(0.6, 0.9)
        a = np.array(_clutter_colour(rng), float)
        b = np.clip(a * rng.uniform(0.6, 1.1), 0, 255)
        img = a * (1 - y) + b * y
    img = np.broadcast_to(img, (s, s, 3)).astype(np.uint8)
    return Image.fromarray(img, "RGB"), horizon * s


def _clutter(d: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, horizon: float) -> None:
    """Clouds, stones, grass, posts and blobs: texture and distraction without any part."""
    for _ in range(rng.integers(2, 9)):
        kind = rng.integers(5)
        x, y = rng.uniform(0, s), rng.uniform(0, s)
        if kind == 0:  # cloud: a few white ellipses in the sky
            y = rng.uniform(0, max(1.0, horizon * 0.8))
            c = _jitter(rng, (245, 245, 245), 10)
            for _ in range(rng.integers(2, 5)):
                rx, ry = rng.uniform(0.03, 0.09) * s, rng.uniform(0.02, 0.05) * s
                cx, cy = x + rng.uniform(-0.06, 0.06) * s, y + rng.uniform(-0.02, 0.02) * s
                d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=c)
        elif kind == 1:  # stone: a grey-brown flat ellipse on the ground
            y = rng.uniform(horizon, s)
            c = _jitter(rng, (150, 140, 125), 30)
            rx, ry = rng.uniform(0.02, 0.06) * s, rng.uniform(0.01, 0.03) * s
            d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=c)
        elif kind == 2:  # grass: short strokes
            y = rng.uniform(horizon, s)
            c = _jitter(rng, (70, 150, 50), 30)
            for _ in range(rng.integers(3, 8)):
                gx = x + rng.uniform(-0.05, 0.05) * s
                h = rng.uniform(0.02, 0.06) * s
                d.line((gx, y, gx + rng.uniform(-0.02, 0.02) * s, y - h), fill=c, width=_SS)
        elif kind == 3:  # post: a thin vertical bar standing on the ground
            y = rng.uniform(horizon, s)
            h = rng.uniform(0.1, 0.3) * s
            w = rng.uniform(0.01, 0.025) * s
            d.rectangle((x - w, y - h, x + w, y), fill=_jitter(rng, (130, 100, 70), 30))
        else:  # blob: an irregular polygon of any non-part colour
            r = rng.uniform(0.02, 0.07) * s
            k = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = r * rng.uniform(0.6, 1.0, k)
            pts = [(x + rr * math.cos(a), y + rr * math.sin(a))
                   for a, rr in zip(ang, rad, strict=True)]
            d.polygon(pts, fill=_clutter_colour(rng))


# ----------------------------------------------------------------------------------- parts
# Each part painter draws in supersampled pixels and returns its box(es) in output pixels.

def _box(x0, y0, x1, y1) -> Box:
    return (x0 / _SS, y0 / _SS, x1 / _SS, y1 / _SS)


def _wheel(d, rng, cx, cy, r, style="car") -> Box:
    """A wheel: a thick dark tyre with a grey hub (car), or a thin ring with spokes (bicycle)."""
    tyre = _tyre(rng)
    if style == "car":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tyre)
        hr = r * rng.uniform(0.4, 0.55)
        d.ellipse((cx - hr, cy - hr, cx + hr, cy + hr), fill=_jitter(rng, (185, 185, 190), 25))
        if rng.random() < 0.5:
            cr = hr * 0.35
            d.ellipse((cx - cr, cy - cr, cx + cr, cy + cr), fill=_jitter(rng, (90, 90, 95), 15))
    else:
        width = max(_SS, int(round(r * rng.uniform(0.16, 0.24))))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=tyre, width=width)
        spoke = _jitter(rng, (160, 160, 165), 20)
        angles = np.linspace(0, math.pi, int(rng.integers(3, 6)), endpoint=False)
        for a in angles + rng.uniform(0, 1):
            dx, dy = (r - width) * math.cos(a), (r - width) * math.sin(a)
            d.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=spoke, width=1)
        hr = r * 0.15
        d.ellipse((cx - hr, cy - hr, cx + hr, cy + hr), fill=spoke)
    return _box(cx - r, cy - r, cx + r, cy + r)


def _window(d, rng, x0, y0, x1, y1, frame=None, cross=False, border=0.1) -> Box:
    """A window: glass, optionally a frame (``border`` times its width) and glazing bars."""
    if frame is not None:
        f = max(_SS, (x1 - x0) * border)
        d.rectangle((x0 - f, y0 - f, x1 + f, y1 + f), fill=frame)
        box = _box(x0 - f, y0 - f, x1 + f, y1 + f)
    else:
        box = _box(x0, y0, x1, y1)
    glass = _glass(rng)
    d.rectangle((x0, y0, x1, y1), fill=glass)
    if rng.random() < 0.7:  # a reflection streak
        hi = _rgb(np.asarray(glass) * 0.4 + 153)
        d.line((x0 + (x1 - x0) * 0.2, y1 - (y1 - y0) * 0.2, x0 + (x1 - x0) * 0.5,
                y0 + (y1 - y0) * 0.2), fill=hi, width=_SS)
    if cross and frame is not None:
        w = max(1, int((x1 - x0) * 0.08))
        d.line(((x0 + x1) / 2, y0, (x0 + x1) / 2, y1), fill=frame, width=w)
        d.line((x0, (y0 + y1) / 2, x1, (y0 + y1) / 2), fill=frame, width=w)
    return box


def _roof(d, rng, x0, x1, y_base, h) -> Box:
    """A roof: a triangle (gable) or trapezoid (hip) in red, brown or slate."""
    c = _jitter(rng, [(170, 50, 40), (110, 70, 45), (80, 80, 90), (150, 90, 60)]
                [rng.integers(4)], 20)
    if rng.random() < 0.7:
        pts = [(x0, y_base), ((x0 + x1) / 2, y_base - h), (x1, y_base)]
    else:
        inset = (x1 - x0) * rng.uniform(0.2, 0.3)
        pts = [(x0, y_base), (x0 + inset, y_base - h), (x1 - inset, y_base - h), (x1, y_base)]
    d.polygon(pts, fill=c)
    return _box(x0, y_base - h, x1, y_base)


def _door(d, rng, x0, y0, x1, y1) -> Box:
    """A door: a wooden or painted panel with a knob."""
    c = _jitter(rng, [(110, 65, 35), (140, 30, 30), (60, 80, 60), (90, 60, 100)]
                [rng.integers(4)], 20)
    d.rectangle((x0, y0, x1, y1), fill=c)
    kr = max(1.0, (x1 - x0) * 0.09)
    kx, ky = x1 - (x1 - x0) * 0.22, (y0 + y1) / 2
    d.ellipse((kx - kr, ky - kr, kx + kr, ky + kr), fill=_jitter(rng, (220, 190, 60), 20))
    return _box(x0, y0, x1, y1)


def _frame(d, rng, rear, front, r) -> Box:
    """A bicycle frame between the rear and front hubs: tubes, seat and handlebar."""
    (rx, ry), (fx, fy) = rear, front
    c = _paint(rng)
    width = max(_SS, int(round(r * rng.uniform(0.12, 0.18))))
    span = fx - rx
    bb = (rx + span * 0.45, ry + r * 0.05)            # bottom bracket
    seat = (rx + span * 0.33, ry - r * 1.05)          # top of the seat tube
    head = (rx + span * 0.88, ry - r * 0.95)          # top of the head tube
    for a, b in [((rx, ry), bb), ((rx, ry), seat), (seat, bb), (bb, head), (seat, head),
                 (head, (fx, fy))]:
        d.line((*a, *b), fill=c, width=width)
    dark = _tyre(rng)
    d.rectangle((seat[0] - r * 0.25, seat[1] - r * 0.18, seat[0] + r * 0.2, seat[1]), fill=dark)
    d.line((head[0], head[1], head[0] - span * 0.08, head[1] - r * 0.25), fill=dark, width=width)
    xs = [rx, fx, seat[0] - r * 0.25, head[0], head[0] - span * 0.08]
    ys = [ry, fy, seat[1] - r * 0.18, head[1] - r * 0.25, bb[1]]
    pad = width / 2 + 1  # the tubes' thickness reaches past their end points
    return _box(min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)


def _foliage(d, rng, cx, cy, r) -> Box:
    """Foliage: a cluster of overlapping green ellipses around (cx, cy)."""
    base = [(50, 130, 45), (35, 100, 40), (90, 150, 50), (60, 115, 70)][rng.integers(4)]
    xs, ys = [], []
    for _ in range(rng.integers(4, 8)):
        ex, ey = cx + rng.uniform(-0.55, 0.55) * r, cy + rng.uniform(-0.45, 0.45) * r
        rr = r * rng.uniform(0.45, 0.7)
        d.ellipse((ex - rr, ey - rr, ex + rr, ey + rr), fill=_jitter(rng, base, 18))
        xs += [ex - rr, ex + rr]
        ys += [ey - rr, ey + rr]
    return _box(min(xs), min(ys), max(xs), max(ys))


# --------------------------------------------------------------------------------- objects
# Each object painter draws one object standing on the ground at y = base (supersampled
# pixels) and returns {part: [boxes]} plus an "object" box.

def _parts() -> dict[str, list[Box]]:
    return {p: [] for p in PARTS}


def _car(d, rng, s, base):
    w = rng.uniform(0.45, 0.85) * s
    x0 = rng.uniform(0.0, s - w)
    flip = rng.random() < 0.5
    r = w * rng.uniform(0.10, 0.13)
    hb = w * rng.uniform(0.2, 0.27)
    hc = w * rng.uniform(0.2, 0.26)
    yw = base - r
    yb1 = yw + 0.25 * r
    yb0 = yb1 - hb
    paint = _paint(rng)
    parts = _parts()

    def fx(u):  # position along the car, mirrored for a car facing the other way
        return x0 + (1 - u if flip else u) * w

    # cabin: a trapezoid on top of the body, set towards the back
    c0, c1 = rng.uniform(0.15, 0.25), rng.uniform(0.7, 0.82)
    t0, t1 = c0 + rng.uniform(0.08, 0.14), c1 - rng.uniform(0.1, 0.18)
    cabin = [(fx(c0), yb0 + 1), (fx(t0), yb0 - hc), (fx(t1), yb0 - hc), (fx(c1), yb0 + 1)]
    d.polygon(cabin, fill=paint)
    d.rounded_rectangle((x0, yb0, x0 + w, yb1), radius=hb * 0.3, fill=paint)
    # windows: two panes split by a pillar, inset in the cabin
    m = hc * 0.18
    pillar = (t0 + t1) / 2
    for u0, u1 in ((c0 + 0.06, pillar - 0.02), (pillar + 0.02, c1 - 0.06)):
        a, b = sorted((fx(u0), fx(u1)))
        parts["windows"].append(_window(d, rng, a, yb0 - hc + m, b, yb0 - m * 0.5))
    # lights
    hl = hb * 0.18
    d.rectangle((fx(0.98) - hl, yb0 + hb * 0.25, fx(0.98) + hl, yb0 + hb * 0.45),
                fill=_jitter(rng, (250, 230, 120), 5))
    d.rectangle((fx(0.02) - hl, yb0 + hb * 0.25, fx(0.02) + hl, yb0 + hb * 0.45),
                fill=_jitter(rng, (200, 40, 40), 10))
    for u in (0.2, 0.8):
        parts["wheels"].append(_wheel(d, rng, fx(u), yw, r, "car"))
    return parts, _box(x0, yb0 - hc, x0 + w, base)


def _scrap(d, rng, s, base):
    """A car with spare parts where a car has none: a pair of wheels on its roof (or, where
    the roof is too close to the top, on its bonnet and boot), or a pair of panes low in its
    body, between the wheels. Every part of a car is in its place; only the spare ones, above
    the windows or below them, tell it from a car."""
    parts, box = _car(d, rng, s, base)

    def drawn(b: Box) -> Box:  # boxes are in output pixels, drawing is supersampled
        return tuple(v * _SS for v in b)

    (wa, wb), (pa, pb) = (sorted(map(drawn, parts[p])) for p in ("wheels", "windows"))
    box = drawn(box)
    r = (wa[2] - wa[0]) / 2
    if rng.random() < 0.5:
        top = box[1] - 2 * r * rng.uniform(0.75, 0.9)
        if top >= 1:  # on the roof, over the panes
            centres = [((p[0] + p[2]) / 2, top + r) for p in (pa, pb)]
        else:  # on the bonnet and the boot, level with the panes
            cy = (pa[1] + pa[3]) / 2
            centres = [(box[0] + r, cy), (box[2] - r, cy)]
        for cx, cy in centres:
            parts["wheels"].append(_wheel(d, rng, cx, cy, r, "car"))
        box = (box[0], min(box[1], min(cy for _, cy in centres) - r), box[2], box[3])
        return parts, _box(*box)
    body0, body1 = max(pa[3], pb[3]), wa[1] + r * 1.25  # beltline, bottom of the body
    y0, y1 = body0 + (body1 - body0) * 0.25, body1 - (body1 - body0) * 0.1
    x0, x1 = wa[2] + r * 0.3, wb[0] - r * 0.3
    mid = (x0 + x1) / 2
    for a, b in ((x0, mid - r * 0.2), (mid + r * 0.2, x1)):
        if b - a > _SS:
            parts["windows"].append(_window(d, rng, a, y0, b, y1))
    return parts, _box(*box)


def _bus(d, rng, s, base):
    w = rng.uniform(0.6, 0.95) * s
    h = w * rng.uniform(0.33, 0.45)
    x0 = rng.uniform(0.0, s - w)
    r = h * rng.uniform(0.17, 0.22)
    yw = base - r
    y1 = yw + 0.3 * r
    y0 = y1 - h
    paint = _paint(rng)
    parts = _parts()
    d.rounded_rectangle((x0, y0, x0 + w, y1), radius=h * 0.12, fill=paint)
    n = int(rng.integers(3, 7))
    gap = w * 0.03
    ww = (w * 0.92 - gap * (n - 1)) / n
    top = y0 + h * 0.12
    bot = top + h * rng.uniform(0.3, 0.4)
    for k in range(n):
        a = x0 + w * 0.04 + k * (ww + gap)
        parts["windows"].append(_window(d, rng, a, top, a + ww, bot))
    if rng.random() < 0.6:  # a stripe along the side
        sy = bot + h * 0.12
        d.rectangle((x0, sy, x0 + w, sy + h * 0.08), fill=_paint(rng))
    us = (0.15, 0.85) if rng.random() < 0.6 else (0.12, 0.3, 0.85)
    for u in us:
        parts["wheels"].append(_wheel(d, rng, x0 + u * w, yw, r, "car"))
    return parts, _box(x0, y0, x0 + w, base)


def _truck(d, rng, s, base):
    w = rng.uniform(0.55, 0.9) * s
    h = w * rng.uniform(0.38, 0.5)
    x0 = rng.uniform(0.0, s - w)
    flip = rng.random() < 0.5
    r = h * rng.uniform(0.16, 0.2)
    yw = base - r
    y1 = yw + 0.3 * r
    parts = _parts()
    cab_w = w * rng.uniform(0.24, 0.3)
    cab_h = h * rng.uniform(0.7, 0.85)
    box_w = w - cab_w - w * 0.02
    if flip:
        cab, cargo = (x0, x0 + cab_w), (x0 + cab_w + w * 0.02, x0 + w)
    else:
        cargo, cab = (x0, x0 + box_w), (x0 + box_w + w * 0.02, x0 + w)
    d.rectangle((cargo[0], y1 - h, cargo[1], y1 - r * 0.2), fill=_paint(rng))
    if rng.random() < 0.5:  # a painted band on the cargo box
        d.rectangle((cargo[0], y1 - h * 0.6, cargo[1], y1 - h * 0.5), fill=_paint(rng))
    d.rounded_rectangle((cab[0], y1 - cab_h, cab[1], y1), radius=cab_h * 0.1, fill=_paint(rng))
    # one window in the upper half of the cab, towards the front
    front_in = cab_w * 0.12
    if flip:
        a, b = cab[0] + front_in, cab[0] + cab_w * 0.65
    else:
        a, b = cab[1] - cab_w * 0.65, cab[1] - front_in
    parts["windows"].append(_window(d, rng, a, y1 - cab_h * 0.9, b, y1 - cab_h * 0.5))
    us = (0.12, 0.85) if rng.random() < 0.5 else (0.12, 0.3, 0.85)
    for u in us:
        parts["wheels"].append(_wheel(d, rng, x0 + (1 - u if flip else u) * w, yw, r, "car"))
    return parts, _box(x0, y1 - h, x0 + w, base)


def _wagon(d, rng, s, base):
    """A covered wagon: a car-sized body on two wheels under an opaque canvas cover, arched or
    shaped like a car's cabin. It differs from a car mainly in having no windows."""
    w = rng.uniform(0.45, 0.85) * s
    x0 = rng.uniform(0.0, s - w)
    r = w * rng.uniform(0.10, 0.14)
    hb = w * rng.uniform(0.18, 0.26)
    hc = w * rng.uniform(0.2, 0.3)
    yw = base - r
    yb1 = yw + 0.25 * r
    yb0 = yb1 - hb
    parts = _parts()
    canvas = _jitter(rng, [(235, 225, 200), (215, 200, 170), (200, 200, 195), (170, 150, 120)]
                     [rng.integers(4)], 15) if rng.random() < 0.7 else _paint(rng)
    c0, c1 = rng.uniform(0.05, 0.2), rng.uniform(0.8, 0.95)
    if rng.random() < 0.6:  # arched canvas with ribs
        d.pieslice((x0 + c0 * w, yb0 - hc, x0 + c1 * w, yb0 + hc), 180, 360, fill=canvas)
        rib = _rgb(np.asarray(canvas) * 0.75)
        for u in np.linspace(c0, c1, int(rng.integers(3, 6)))[1:-1]:
            d.line((x0 + u * w, yb0 - hc * 0.95, x0 + u * w, yb0), fill=rib, width=_SS)
    else:  # a cabin-shaped cover, like a car's but without glass
        t0, t1 = c0 + rng.uniform(0.08, 0.14), c1 - rng.uniform(0.1, 0.18)
        d.polygon([(x0 + c0 * w, yb0 + 1), (x0 + t0 * w, yb0 - hc), (x0 + t1 * w, yb0 - hc),
                   (x0 + c1 * w, yb0 + 1)], fill=canvas)
    body = _jitter(rng, (120, 80, 45), 25) if rng.random() < 0.6 else _paint(rng)
    d.rectangle((x0, yb0, x0 + w, yb1), fill=body)
    if rng.random() < 0.5:  # a shaft at the front
        fx = x0 + w if rng.random() < 0.5 else x0
        d.line((fx, yb1 - hb * 0.4, fx + (w * 0.15 if fx > x0 else -w * 0.15), yb1 - hb * 0.2),
               fill=_jitter(rng, (100, 70, 40), 20), width=_SS)
    style = "car" if rng.random() < 0.5 else "bicycle"
    for u in (0.2, 0.8):
        parts["wheels"].append(_wheel(d, rng, x0 + u * w, yw, r, style))
    return parts, _box(x0, yb0 - hc, x0 + w, base)


def _house(d, rng, s, base):
    w = rng.uniform(0.35, 0.65) * s
    hw = w * rng.uniform(0.55, 0.95)
    hr = w * rng.uniform(0.3, 0.55)
    x0 = rng.uniform(0.05 * s, 0.95 * s - w)
    base = min(base, s * 0.97)
    y0 = base - hw
    if y0 - hr < 0:
        y0 = hr + 1
        base = y0 + hw
    parts = _parts()
    wall = _jitter(rng, [(230, 220, 190), (200, 170, 130), (180, 90, 70), (235, 235, 230),
                         (190, 200, 170)][rng.integers(5)], 20)
    d.rectangle((x0, y0, x0 + w, base), fill=wall)
    ov = w * rng.uniform(0.04, 0.1)
    parts["roof"].append(_roof(d, rng, x0 - ov, x0 + w + ov, y0 + 1, hr))
    # door at the bottom, left, centre or right
    dw, dh = w * rng.uniform(0.16, 0.22), hw * rng.uniform(0.38, 0.5)
    dx = x0 + w * rng.choice([0.15, 0.5, 0.85]) - dw / 2
    parts["door"].append(_door(d, rng, dx, base - dh, dx + dw, base))
    # windows in a grid, skipping the cell the door takes
    rows = 1 if hw < w * 0.7 else int(rng.integers(1, 3))
    cols = int(rng.integers(1, 4))
    frame = _jitter(rng, (245, 245, 240), 10)
    size = min(w / (cols * 2.2), hw / (rows * 2.6))
    cross = rng.random() < 0.6
    for i in range(rows):
        cy = y0 + hw * (0.28 + 0.3 * i)
        for j in range(cols):
            cx = x0 + w * (j + 0.5) / cols
            if abs(cx - (dx + dw / 2)) < dw and cy + size > base - dh:
                continue
            parts["windows"].append(_window(d, rng, cx - size / 2, cy - size / 2,
                                            cx + size / 2, cy + size / 2, frame, cross))
    return parts, _box(x0 - ov, y0 - hr, x0 + w + ov, base)


def _bicycle(d, rng, s, base):
    r = rng.uniform(0.12, 0.2) * s
    span = r * rng.uniform(2.5, 3.0)
    x0 = rng.uniform(r, s - span - r)
    yw = min(base, s - 1) - r
    if rng.random() < 0.5:
        rear, front = (x0, yw), (x0 + span, yw)
    else:  # facing left: mirror the frame by swapping the hubs' roles
        rear, front = (x0 + span, yw), (x0, yw)
    parts = _parts()
    for cx in (x0, x0 + span):
        parts["wheels"].append(_wheel(d, rng, cx, yw, r, "bicycle"))
    parts["frame"].append(_frame(d, rng, rear, front, r))
    return parts, _box(x0 - r, yw - 1.4 * r, x0 + span + r, yw + r)


def _tree(d, rng, s, base):
    parts = _parts()
    boxes = []
    for _ in range(rng.integers(1, 4)):
        th = rng.uniform(0.15, 0.3) * s
        tw = th * rng.uniform(0.15, 0.3)
        cr = rng.uniform(0.1, 0.2) * s
        x = rng.uniform(cr, s - cr)
        b = min(s - 1, base + rng.uniform(-0.08, 0.08) * s)
        d.rectangle((x - tw / 2, b - th, x + tw / 2, b), fill=_jitter(rng, (100, 70, 40), 20))
        box = _foliage(d, rng, x, max(cr * 0.8, b - th - cr * 0.5), cr)
        parts["foliage"].append(box)
        boxes.append(box)
    x0 = min(b[0] for b in boxes) * _SS
    y0 = min(b[1] for b in boxes) * _SS
    x1 = max(b[2] for b in boxes) * _SS
    return parts, _box(x0, y0, x1, base)


_OBJECTS: dict[str, Callable] = {"car": _car, "bus": _bus, "truck": _truck, "wagon": _wagon,
                                 "house": _house, "bicycle": _bicycle, "tree": _tree,
                                 "scrap": _scrap}


def _lone_part(d, rng, s, part, count: int | None = None) -> list[Box]:
    """``count`` (default one to four) instances of ``part`` anywhere, at scene-like sizes."""
    boxes = []
    for _ in range(rng.integers(1, 5) if count is None else count):
        if part == "wheels":
            r = rng.uniform(0.05, 0.14) * s
            cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
            boxes.append(_wheel(d, rng, cx, cy, r, "car" if rng.random() < 0.6 else "bicycle"))
        elif part == "windows":
            ww = rng.uniform(0.07, 0.2) * s
            wh = ww * rng.uniform(0.5, 1.2)
            x0, y0 = rng.uniform(0.03 * s, s - ww - 0.03 * s), rng.uniform(0.03 * s,
                                                                           s - wh - 0.03 * s)
            # glass always sits in something: a white house frame or a vehicle's paint
            if rng.random() < 0.5:
                boxes.append(_window(d, rng, x0, y0, x0 + ww, y0 + wh,
                                     _jitter(rng, (245, 245, 240), 10), rng.random() < 0.6))
            else:
                boxes.append(_window(d, rng, x0, y0, x0 + ww, y0 + wh, _paint(rng),
                                     border=rng.uniform(0.12, 0.3)))
        elif part == "roof":
            w = rng.uniform(0.25, 0.6) * s
            h = w * rng.uniform(0.35, 0.7)
            x0, yb = rng.uniform(0, s - w), rng.uniform(h, s)
            boxes.append(_roof(d, rng, x0, x0 + w, yb, h))
        elif part == "door":
            dw = rng.uniform(0.08, 0.14) * s
            dh = dw * rng.uniform(1.6, 2.4)
            x0, y0 = rng.uniform(0, s - dw), rng.uniform(0, s - dh)
            boxes.append(_door(d, rng, x0, y0, x0 + dw, y0 + dh))
        elif part == "frame":
            r = rng.uniform(0.12, 0.2) * s
            span = r * rng.uniform(2.5, 3.0)
            x0, y = rng.uniform(0, s - span), rng.uniform(1.5 * r, s - 0.2 * r)
            hubs = ((x0, y), (x0 + span, y))
            boxes.append(_frame(d, rng, *(hubs if rng.random() < 0.5 else hubs[::-1]), r))
        elif part == "foliage":
            r = rng.uniform(0.08, 0.2) * s
            boxes.append(_foliage(d, rng, rng.uniform(r, s - r), rng.uniform(r, s - r), r))
        else:
            raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")
    return boxes


# ----------------------------------------------------------------------------- rendering

def _finish(img: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """Downsample (anti-aliasing), then camera-like brightness/contrast and pixel noise."""
    img = img.reduce(_SS) if img.size[0] == size * _SS else img.resize((size, size), Image.BOX)
    x = np.asarray(img, dtype=np.float32)
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    x = x * gain + offset + rng.normal(0.0, rng.uniform(0.0, 6.0), x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _render(seed_key, what: str, size: int, kind: str) -> tuple[np.ndarray, dict]:
    bg_rng = np.random.default_rng([*seed_key, _BG_STREAM])
    obj_rng = np.random.default_rng([*seed_key, _OBJ_STREAM])
    s = size * _SS
    img, horizon = _background(bg_rng, s)
    d = ImageDraw.Draw(img)
    _clutter(d, bg_rng, s, horizon)
    meta: dict = {"size": size}
    if kind == "scene":
        loose = {}
        if obj_rng.random() < LOOSE_PARTS:  # a stray wheel or window behind the object
            part = ("wheels", "windows")[obj_rng.integers(2)]
            loose[part] = _lone_part(d, obj_rng, s, part, int(obj_rng.integers(1, 3)))
        base = obj_rng.uniform(max(horizon, 0.55 * s), 0.97 * s)
        parts, obj_box = _OBJECTS[what](d, obj_rng, s, base)
        meta.update(cls=what, label=CLASSES.index(what), object=obj_box,
                    parts={p: b for p, b in parts.items() if b}, loose=loose)
    elif what == NO_PART:
        meta.update(part=NO_PART, parts={})
    else:
        meta.update(part=what, parts={what: _lone_part(d, obj_rng, s, what)})
    return _finish(img, bg_rng, size), meta


def make_scene(rng: np.random.Generator | int, cls: str, size: int = 64
               ) -> tuple[np.ndarray, dict]:
    """One scene of class ``cls``: ``(image (size, size, 3) uint8, metadata)``.

    ``rng`` is a numpy Generator (one seed is drawn from it) or an int seed. The metadata holds
    ``cls``, ``label`` (index in :data:`CLASSES`), ``object`` (the object's box), ``parts``:
    ``{part: [(x0, y0, x1, y1), ...]}`` in output pixels, for every part the object has, and
    ``loose``: boxes of stray parts (wheels or windows not on the object) in the same form.
    """
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; choose one of {', '.join(CLASSES)}")
    key = int(rng.integers(2**63)) if isinstance(rng, np.random.Generator) else int(rng)
    return _render((key, 0), cls, size, "scene")


def _labels(n: int, seed: int) -> np.ndarray:
    """Balanced labels (n // K of each class, the rest in order) in a seeded random order."""
    labels = np.arange(n) % len(CLASSES)
    return np.random.default_rng([seed, _LABEL_STREAM]).permutation(labels)


def render_scenes(n: int, seed: int, size: int = 64, classes=None, progress=None,
                  with_meta: bool = False):
    """``(uint8 array (n, size, size, 3), labels int64 (n,)[, metadata])``; the workhorse of
    :func:`make_dataset`. ``classes`` restricts the classes drawn (labels stay indices into
    :data:`CLASSES`); ``progress`` is called with the number of images done so far."""
    if classes is None:
        labels = _labels(n, seed)
    else:
        idx = [CLASSES.index(c) for c in classes]
        labels = np.asarray(idx)[_labels(n, seed) % len(idx)]
    out = np.empty((n, size, size, 3), np.uint8)
    metas = []
    for i in range(n):
        out[i], meta = _render((seed, i), CLASSES[labels[i]], size, "scene")
        if with_meta:
            metas.append(meta)
        if progress is not None and (i + 1) % 500 == 0:
            progress(i + 1)
    labels = labels.astype(np.int64)
    return (out, labels, metas) if with_meta else (out, labels)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def make_dataset(n: int, seed: int, size: int = 64, classes=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled scenes, balanced over the classes: ``(images (n, 3, size, size) float in
    [0, 1], labels (n,) int64)``. Scene ``i`` depends only on ``(seed, i)`` and its label."""
    images, labels = render_scenes(n, seed, size, classes)
    return to_tensor(images), torch.from_numpy(labels)


def make_part_images(part: str, n: int, seed: int, size: int = 64, with_meta: bool = False):
    """``n`` part-only images (float tensor (n, 3, size, size) in [0, 1]): one to four
    instances of ``part`` (one of :data:`PARTS`, or ``"none"`` for background and clutter
    alone). Image ``i`` shares its background with image ``i`` of every other part at the same
    seed. ``with_meta=True`` also returns each image's ``{"part", "parts": {part: boxes}}``."""
    if part != NO_PART and part not in PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(PARTS)} or none")
    out = np.empty((n, size, size, 3), np.uint8)
    metas = []
    for i in range(n):
        out[i], meta = _render((seed, _PART_SEED, i), part, size, "part")
        metas.append(meta)
    images = to_tensor(out)
    return (images, metas) if with_meta else images


def save_scenes(folder, n: int, seed: int, size: int = 64) -> list:
    """Write ``n`` scenes as PNG files ``{i:05d}_{class}.png`` into ``folder`` (created if
    needed), e.g. as an image folder for dataset examples; returns their paths in order."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = render_scenes(n, seed, size)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / f"{i:05d}_{CLASSES[label]}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(img).save(tmp, format="PNG")
        tmp.replace(path)
        paths.append(path)
    return paths
