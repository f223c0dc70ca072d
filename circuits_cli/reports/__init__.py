"""Picture reports: contact sheets of unit renders (:mod:`.sheets`)."""

from .sheets import SheetEntry, contact_sheet, save_contact_sheet

__all__ = ["SheetEntry", "contact_sheet", "save_contact_sheet"]
