"""Contact sheets: many unit pictures in one labelled grid PNG (the "layer overview" a researcher
scans to find interesting units, as in the Circuits thread's appendices and OpenAI Microscope).

Each cell shows one picture with its label (``layer:unit``) and a second line (usually the
activation the picture reaches) underneath; a title bar says what the sheet shows.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)


@dataclass
class SheetEntry:
    """One cell: an image (H, W, 3) float in [0, 1] or uint8, or a PNG path; two text lines."""

    image: np.ndarray | Path
    label: str
    detail: str = ""


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _as_image(img) -> Image.Image:
    if isinstance(img, (str, Path)):
        with Image.open(img) as im:
            return im.convert("RGB")
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` pixels."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return [_fit(draw, line, font, width) for line in lines] or [""]


def contact_sheet(entries: Sequence[SheetEntry], title: str = "", cell: int = 128,
                  columns: int | None = None, gap: int = 6) -> Image.Image:
    """A labelled grid of ``entries``; each picture is scaled to ``cell`` pixels high (wide
    pictures, e.g. diversity facets, keep their aspect ratio)."""
    if not entries:
        raise ValueError("a contact sheet needs at least one entry")
    images = [_as_image(e.image) for e in entries]
    cell_w = max(round(cell * im.width / im.height) for im in images)
    cell_w = max(cell_w, cell)
    if columns is None:
        # roughly square sheet, at most 16 cells wide for single pictures
        columns = max(1, min(len(entries), round(math.sqrt(len(entries) * cell / cell_w)),
                             max(1, 16 * cell // cell_w)))
        columns = max(columns, min(len(entries), 4 if cell_w == cell else 1))
    rows = math.ceil(len(entries) / columns)
    label_font, detail_font, title_font = _font(13), _font(11), _font(16)
    line = 16
    text_h = line * 2 + 2
    width = gap + columns * (cell_w + gap)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_lines = _wrap(measure, title, title_font, width - 2 * gap - 4) if title else []
    title_h = 10 + 20 * len(title_lines) if title else 0
    height = title_h + gap + rows * (cell + text_h + gap)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(title_lines):
        draw.text((gap + 2, 8 + 20 * i), text, fill=INK, font=title_font)
    for i, (entry, im) in enumerate(zip(entries, images, strict=True)):
        r, c = divmod(i, columns)
        x = gap + c * (cell_w + gap)
        y = title_h + gap + r * (cell + text_h + gap)
        w = round(cell * im.width / im.height)
        resample = Image.Resampling.LANCZOS if im.height > cell else Image.Resampling.BICUBIC
        sheet.paste(im.resize((w, cell), resample), (x, y))
        draw.text((x + 1, y + cell + 2), _fit(draw, entry.label, label_font, cell_w), fill=INK,
                  font=label_font)
        if entry.detail:
            draw.text((x + 1, y + cell + 2 + line), _fit(draw, entry.detail, detail_font, cell_w),
                      fill=MUTED, font=detail_font)
    return sheet


def sheet_png_bytes(sheet: Image.Image) -> bytes:
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def save_contact_sheet(path: Path, entries: Sequence[SheetEntry], title: str = "",
                       **kwargs) -> Path:
    """Render and write the sheet atomically (temporary file + rename)."""
    from .cache import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, sheet_png_bytes(contact_sheet(entries, title, **kwargs)))
    return path
