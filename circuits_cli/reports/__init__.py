"""Reports: contact sheets of unit renders (:mod:`.sheets`), circuit diagrams
(:mod:`.diagrams`), the trace report (:mod:`.html`, with evidence and steering from
:mod:`.evidence`), the polysemantic-neuron page (:mod:`.polysemantic`) and the demo's story
(:mod:`.story`); pages come from the Jinja2 templates in ``templates/``."""

from .sheets import SheetEntry, contact_sheet, save_contact_sheet

__all__ = ["SheetEntry", "contact_sheet", "save_contact_sheet"]
