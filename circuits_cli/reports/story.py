"""The demo's front page: the whole story (circuit, superposition, features, steering) on one
HTML page, from a Jinja2 template (``templates/story.html``). Figures are linked relative to the
page, so the folder can be moved or served as it is."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

STORY_FILE = "report.html"


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    id: str
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    table: dict | None = None  # {"header": [...], "rows": [[...], ...]}
    links: list[tuple[str, Path]] = field(default_factory=list)  # (text, target)


def render_story(out: Path, title: str, model: str, sections: list[Section], seconds: float,
                 atlas: Path | None = None) -> str:
    """The page's HTML; paths are written relative to ``out``."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("circuits_cli.reports", "templates"),
                      autoescape=select_autoescape(["html"]))

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), Path(out).resolve())).as_posix()

    ctx = [{"id": s.id, "heading": s.heading, "paragraphs": s.paragraphs, "table": s.table,
            "figures": [{"src": rel(f.path), "href": rel(f.path), "caption": f.caption}
                        for f in s.figures if Path(f.path).is_file()],
            "links": [{"text": t, "href": rel(p)} for t, p in s.links if Path(p).exists()]}
           for s in sections]
    return env.get_template("story.html").render(
        title=title, model=model, sections=ctx, seconds=f"{seconds:.0f}",
        created=time.strftime("%Y-%m-%d %H:%M"),
        atlas=rel(atlas) if atlas is not None and Path(atlas).exists() else None)


def write_story(out: Path, *args, **kwargs) -> Path:
    from ..files import write_text

    path = Path(out) / STORY_FILE
    write_text(path, render_story(Path(out), *args, **kwargs))
    return path
