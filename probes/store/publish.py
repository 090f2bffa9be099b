"""Several outputs of one folder replaced as one set, and what a killed command left undone.

An experiment's reports are a dozen files beside ``runs/``, and ``measure DIR`` replaces every
run folder and the reports: no single rename can swap such a set. ``Publish`` makes it one
step anyway. Before it moves anything it writes a journal (``.publishing.json``, atomically) that
names each move: the new entry (staged beside its place), its place, and the backup the old entry
is moved to. The set is committed when the journal is removed; until then ``roll_back`` can put
every old entry back byte for byte. ``recover`` (at the start of every command that writes an
output folder) rolls back a journal that a killed command left, and removes its staging folders
and backups, so that the previous complete output is what the next command sees.

Hidden names (a leading dot) are the working names of this module, ``output.staging_dir`` and
``output.replace_folder``: ``.<name>.staging-*``, ``.<name>.old-*``, ``.publish.old-*``,
``.<file>.*.tmp`` and the journal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from probes.store.files import REPORT_FILES, atomic_write_text
from probes.store.output import shared_mode

JOURNAL = ".publishing.json"
# working names a killed command may leave: staging folders, backups of replace_folder's two
# renames, a Publish's backups and atomic_write_text's temp files
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-[A-Za-z0-9_]+$")
_BACKUPS = re.compile(r"^\.publish\.old-[A-Za-z0-9_]+$")
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")
# the staging folder of an experiment's report: .report.staging-* (report.experiment)
REPORT_STAGE = "report"
_TEMP_OF = REPORT_FILES | {JOURNAL}


def _remove(path: Path) -> None:
    """Remove a file or a folder tree (nothing when absent)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Publish:
    """Replace entries (files or folders) below ``root`` as one set, all or nothing.

    ``put(staged, target)`` moves the old ``target`` (if any) into a backup and ``staged`` into
    its place, after recording both in the journal; ``commit()`` removes the journal (the set is
    then final) and the backups; ``rollback()`` puts every old entry back. As a context manager
    it commits on success and rolls back on an exception; a kill is rolled back by the next
    ``recover(root)``.

    Args:
        root: the output folder; every staged entry and target lies below it (one file system).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.moves: list[dict] = []
        self.backups: Path | None = None

    def __enter__(self) -> Publish:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.rollback()

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def put(self, staged: Path | None, target: Path) -> None:
        """Move ``staged`` (a finished file or folder; None: remove ``target``) into the place of
        ``target``, keeping the old ``target`` until ``commit``.

        Raises:
            ValueError: a path outside ``root``; OSError: a rename the file system refused.
        """
        target = Path(target)
        for p in (staged, target):
            if p is not None and self._rel(p).startswith(".."):
                raise ValueError(f"{str(p)!r} is outside {str(self.root)!r}: accepted are paths "
                                 f"below the folder published")
        if self.backups is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.backups = Path(tempfile.mkdtemp(dir=self.root, prefix=".publish.old-"))
        backup = self.backups / str(len(self.moves))
        had_old = target.exists()
        self.moves.append({"staged": None if staged is None else self._rel(staged),
                           "target": self._rel(target), "backup": self._rel(backup),
                           "had_old": had_old})
        atomic_write_text(self.root / JOURNAL, json.dumps({"moves": self.moves}, indent=1))
        if had_old:
            os.replace(target, backup)
        if staged is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(shared_mode(staged), target)

    def commit(self) -> None:
        """Make the set final: remove the journal, then the old entries."""
        (self.root / JOURNAL).unlink(missing_ok=True)
        if self.backups is not None:
            shutil.rmtree(self.backups, ignore_errors=True)
        self.moves, self.backups = [], None

    def rollback(self) -> None:
        """Put every old entry back (``roll_back``)."""
        if self.moves:
            roll_back(self.root)
        self.moves, self.backups = [], None


def roll_back(root: Path) -> bool:
    """Undo the set that the journal of ``root`` names, whatever step a kill stopped it at:
    each new entry is removed and each old one moved back, last move first. Safe to repeat
    (a kill during a roll-back is rolled back again). Returns whether there was a journal.

    Raises:
        OSError: a rename the file system refused.
    """
    root = Path(root)
    try:
        moves = json.loads((root / JOURNAL).read_text())["moves"]
    except FileNotFoundError:
        return False
    for move in reversed(moves):
        target, backup = root / move["target"], root / move["backup"]
        if backup.exists() or backup.is_symlink():  # the old entry left its place
            _remove(target)  # a new entry, whole or part removed
            os.replace(backup, target)
        elif not move["had_old"]:
            _remove(target)  # a new entry where there was none
    (root / JOURNAL).unlink()
    return True


def _leftovers(folder: Path, ours, extra: bool = False) -> None:
    """In ``folder``: remove the staging folders of the names ``ours(name)`` accepts, and put
    back (or, when their place is taken, remove) their old folders of ``replace_folder``'s two
    renames; with ``extra``, also ``Publish`` backups and the temp files of the report's files
    and the journal. Nothing else is touched: the folder may hold a user's hidden files."""
    if not folder.is_dir():
        return
    for p in sorted(folder.iterdir()):
        m = _LEFTOVER.fullmatch(p.name)
        t = _TEMP.fullmatch(p.name)
        if extra and (_BACKUPS.fullmatch(p.name) or (t and t["name"] in _TEMP_OF)):
            _remove(p)
        elif m and ours(m["name"]):
            place = folder / m["name"]
            if m["kind"] == "old" and not place.exists():
                os.replace(p, place)  # a kill between replace_folder's two renames
            else:
                _remove(p)


def recover(root: Path) -> None:
    """Bring the output folder ``root`` back to its last complete state after a kill: roll back
    an unfinished ``Publish`` (``roll_back``), put back a folder that ``replace_folder`` had
    moved aside, and remove staging folders, backups and temp files, in ``root``, in
    ``root/runs`` and, for ``root`` itself, beside it. Run it in one process, before any other
    writes ``root`` (it would remove their staging folders). Nothing happens for a folder
    without such leftovers.

    Raises:
        OSError: a rename the file system refused.
    """
    root = Path(root)
    _leftovers(root.parent, lambda name: name == root.name)
    if not root.is_dir():
        return
    roll_back(root)
    _leftovers(root, lambda name: name == REPORT_STAGE, extra=True)
    _leftovers(root / "runs", lambda name: True)  # run folders: every entry is a run's


def publish_reports(staged: Path, out_dir: Path, publish: Publish | None = None) -> None:
    """Move an experiment's staged report files into ``out_dir`` as one set: the REPORT_FILES of
    an earlier report that the new one lacks are removed with it, so that no table or figure of
    an earlier, different grid stays beside the new ones (run folders and anything else are left
    alone). ``publish``: a larger set these files join (committed by its owner); None: they are
    their own set, committed here.

    Raises:
        OSError: a rename the file system refused (the earlier report is then put back).
    """
    out_dir, staged = Path(out_dir), Path(staged)
    own = publish is None
    publish = Publish(out_dir) if own else publish
    try:
        new = sorted(p.name for p in staged.iterdir())
        for p in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
            if p.name in REPORT_FILES and p.name not in new:
                publish.put(None, p)
        for name in new:
            publish.put(staged / name, out_dir / name)
        if own:
            publish.commit()
    except BaseException:
        if own:
            publish.rollback()
        raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
