"""Contact sheets live in :mod:`circuits_cli.render.sheets` (rendering writes them, and the
layering puts reports above render); re-exported here for the report code and old imports."""

from ..render.sheets import SheetEntry, contact_sheet, save_contact_sheet, sheet_png_bytes

__all__ = ["SheetEntry", "contact_sheet", "save_contact_sheet", "sheet_png_bytes"]
