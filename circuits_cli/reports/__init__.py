"""Reports: contact sheets of unit renders (:mod:`.sheets`), circuit diagrams
(:mod:`.diagrams`), the trace report (:mod:`.html`, with evidence and steering from
:mod:`.evidence`), the polysemantic-neuron page (:mod:`.polysemantic`), the demo's story
(:mod:`.story`) and an attribution graph's figure and viewer (:mod:`.graph_figure`,
:mod:`.graph_page`); pages come from the Jinja2 templates in ``templates/``."""

from .sheets import SheetEntry, contact_sheet, save_contact_sheet

__all__ = ["SheetEntry", "contact_sheet", "save_contact_sheet"]
