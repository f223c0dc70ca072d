"""The atlas folder on disk: what the atlas wrote there (its manifests), and writing only that.

Every file the atlas writes is recorded in a manifest inside the site folder, ``manifest.json``
for an unsharded run and ``manifest-shard-K-of-N.json`` for shard K of N, so that shards of one
Slurm array job never write the same manifest. The union of all manifests is what the atlas owns:
a path that exists and is in no manifest was not written by the atlas and is never overwritten.
A file's path is recorded *before* the file is written, by appending it to a journal beside the
manifest (``manifest*.journal``, folded into the manifest whenever it is rewritten), so even a run
killed mid-write leaves nothing behind that a re-run would refuse as foreign.

Each manifest also records the unit pages it finished, with the signature of everything a page
depends on (settings, images, which units are linkable): a re-run skips a unit whose signature
is unchanged and whose files all exist.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import files
from ..errors import CircuitsError

FORMAT = "circuits-atlas/1"
MANIFEST_GLOB = "manifest*.json"
JOURNAL_GLOB = "manifest*.journal"
FLUSH_EVERY = 30.0  # seconds between manifest rewrites while unit pages are being written


def manifest_name(shard: tuple[int, int] | None) -> str:
    return "manifest.json" if shard is None else f"manifest-shard-{shard[0]}-of-{shard[1]}.json"


class Site:
    """An atlas folder: ``owns(rel)``, ``write_bytes(rel, data)``, ``units()``, ``flush()``."""

    def __init__(self, root: str | Path, *, model: str, weights_id: str,
                 shard: tuple[int, int] | None = None):
        self.root = Path(root)
        self.name = manifest_name(shard)
        self.model, self.weights_id = model, str(weights_id)
        self._others_files: set[str] = set()
        self._others_units: dict[str, dict] = {}
        self.files: dict[str, int] = {}
        self.units_done: dict[str, dict] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        self.journal = self.root / (self.name[:-len(".json")] + ".journal")
        self._load()

    # -- reading --------------------------------------------------------------------------
    def _load(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise CircuitsError(f"--out {str(root)!r} is a file; give a folder for the atlas")
        if not root.exists():
            return
        manifests = sorted(root.glob(MANIFEST_GLOB))
        journals = sorted(root.glob(JOURNAL_GLOB))
        visible = [p for p in root.iterdir() if not p.name.startswith(".")]
        if visible and not manifests and not journals:
            raise CircuitsError(f"{str(root)!r} is not empty and holds no atlas manifest; the "
                                "atlas never writes into a folder it did not make: choose a new "
                                "or empty --out")
        for path in manifests:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise CircuitsError(f"{str(path)!r} is not an atlas manifest (format "
                                    f"{FORMAT!r}); choose another --out")
            if data.get("model") != self.model or data.get("weights_id") != self.weights_id:
                raise CircuitsError(
                    f"{str(root)!r} holds an atlas of model {data.get('model')!r} (weights "
                    f"{data.get('weights_id')!r}), not {self.model!r} ({self.weights_id}); "
                    "choose another --out")
            if path.name == self.name:
                self.files = {k: int(v) for k, v in data.get("files", {}).items()}
                self.units_done = dict(data.get("units", {}))
            else:
                self._others_files.update(data.get("files", {}))
                self._others_units.update(data.get("units", {}))
        for path in journals:
            try:
                lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln]
            except OSError:
                lines = []
            if path == self.journal:
                for ln in lines:
                    self.files.setdefault(ln, 0)
                self._dirty = bool(lines)
            else:
                self._others_files.update(lines)

    def owns(self, rel: str) -> bool:
        return rel in self.files or rel in self._others_files or rel in (
            [p.name for p in self.root.glob(MANIFEST_GLOB)]
            + [p.name for p in self.root.glob(JOURNAL_GLOB)])

    def _refresh_others(self) -> None:
        """Re-read the other shards' journals, then their manifests: shards running at the same
        time write shared files (the dataset images) that this one did not know of at its start.
        (A shard rewrites its manifest before it drops its journal, so reading in this order
        misses nothing.)"""
        for path in self.root.glob(JOURNAL_GLOB):
            if path != self.journal:
                try:
                    self._others_files.update(
                        ln for ln in path.read_text(encoding="utf-8").splitlines() if ln)
                except OSError:
                    pass
        for path in self.root.glob(MANIFEST_GLOB):
            if path.name != self.name:
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                    self._others_files.update(data.get("files", {}))
                except (OSError, ValueError, AttributeError):
                    pass

    def check_writable(self, rels) -> None:
        """A one-line error if one of ``rels`` exists and was not written by the atlas."""
        refreshed = False
        for rel in rels:
            path = self.root / rel
            if path.exists() and not self.owns(rel) and not refreshed:
                self._refresh_others()
                refreshed = True
            if path.exists() and not self.owns(rel):
                raise CircuitsError(f"{str(path)!r} exists and was not written by the atlas; "
                                    "choose another --out or move the file")

    def units(self) -> dict[str, dict]:
        """Every finished unit page recorded by any manifest whose page file exists."""
        merged = {**self._others_units, **self.units_done}
        return {u: rec for u, rec in merged.items() if (self.root / rec["page"]).is_file()}

    def unit_current(self, unit_id: str, signature: str) -> bool:
        rec = self.units_done.get(unit_id) or self._others_units.get(unit_id)
        return bool(rec and rec.get("signature") == signature
                    and all((self.root / f).is_file() for f in rec.get("files", [])))

    # -- writing --------------------------------------------------------------------------
    def claim(self, rels) -> None:
        """Record ``rels`` as ours before writing them (checked: none may be foreign)."""
        new = list(dict.fromkeys(r for r in rels if r not in self.files))
        self.check_writable(new)
        if new:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.journal, "a", encoding="utf-8") as fh:
                fh.write("".join(r + "\n" for r in new))
            for r in new:
                self.files[r] = 0
            self._dirty = True

    def write_bytes(self, rel: str, data: bytes) -> None:
        if rel not in self.files:
            self.claim([rel])
        files.write_bytes(self.root / rel, data)
        self.files[rel] = len(data)
        self._dirty = True

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8", "surrogateescape"))

    def finish_unit(self, unit_id: str, record: dict) -> None:
        self.units_done[unit_id] = record
        self._dirty = True
        if time.monotonic() - self._last_flush > FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._dirty:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        files.write_json(self.root / self.name, {
            "format": FORMAT, "model": self.model, "weights_id": self.weights_id,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "files": dict(sorted(self.files.items())),
            "units": dict(sorted(self.units_done.items()))}, indent=1)
        self.journal.unlink(missing_ok=True)  # its paths are in the manifest now
        self._dirty = False
        self._last_flush = time.monotonic()

    def size_on_disk(self) -> tuple[int, int]:
        """(files, bytes) of everything the atlas wrote in this folder, all shards, manifests
        included, as they are on disk now."""
        rels = set(self.files) | self._others_files | {
            p.name for g in (MANIFEST_GLOB, JOURNAL_GLOB) for p in self.root.glob(g)}
        n = size = 0
        for rel in rels:
            try:
                size += (self.root / rel).stat().st_size
                n += 1
            except OSError:
                pass
        return n, size
