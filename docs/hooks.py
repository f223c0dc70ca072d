"""MkDocs hook (mkdocs.yml ``hooks:``): the CLI reference keeps Click's layout.

mkdocs-click copies each command's help into the page as Markdown, which re-wraps the blocks that
Click prints as written (the paragraphs after a ``\\b`` line: examples, typical sessions) and reads
``<OPTION>`` as an HTML tag. Here such a block becomes a code block (its first line, when it is a
title such as ``Example:``, stays text) and ``<`` in the prose is escaped, so the page shows what
``circuits COMMAND --help`` shows.
"""

from __future__ import annotations

import inspect
import textwrap


def _description(ctx, remove_ascii_art: bool = False):
    help_string = ctx.command.help or ctx.command.short_help
    if not help_string:
        return
    lines = inspect.cleandoc(help_string).splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "\b":
            yield lines[i].replace("<", "&lt;")
            i += 1
            continue
        block = []
        i += 1
        while i < len(lines) and lines[i].strip():
            block.append(lines[i])
            i += 1
        if block and block[0].rstrip().endswith(":") and not block[0].startswith(" "):
            yield block.pop(0).strip().replace("<", "&lt;")
            yield ""
        if block:
            yield from ["```text", *textwrap.dedent("\n".join(block)).splitlines(), "```"]
    yield ""


def on_config(config, **kwargs):
    import mkdocs_click._docs

    mkdocs_click._docs._make_description = _description
    return config
