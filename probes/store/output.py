"""Output folders: checked before any work, written all or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from probes.store.files import REPORT_FILES


class OutputError(ValueError):
    """An output folder that cannot be used: the message is one line, for the user."""


def _probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder``; raises OutputError when that fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"output_dir {str(folder)!r} is not writable ({e.strerror}): accepted is a "
                          f"folder this user can write") from e


def check_output_dir(out_dir: Path) -> None:
    """Check, before any work, that ``out_dir`` can be written: no file in its place or above
    it, and a file can be created (and removed) in it, or in its nearest existing parent, and in
    its parent (where staging folders go).

    Raises:
        OutputError: the first problem found, in one line.
    """
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise OutputError(f"output_dir={str(out_dir)!r} is not usable: {str(p)!r} is a file; "
                                  f"accepted is a folder path")
            _probe_write(p)
            if p == out_dir and out_dir.parent != out_dir:
                _probe_write(out_dir.parent)
            return


def check_replaceable(out_dir: Path, own: set[str]) -> None:
    """Refuse an existing, non-empty ``out_dir`` that holds anything but ``own`` entries (files
    or folders a previous run of the same command wrote), so that replacing it whole never
    deletes a user's files.

    Raises:
        OutputError: naming an entry that is not ours.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in own)
    if foreign:
        raise OutputError(f"output_dir {str(out_dir)!r} holds files this command did not write "
                          f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): accepted "
                          f"is a new or empty folder, or the folder of an earlier run of it "
                          f"(replaced whole)")


def staging_dir(target: Path) -> Path:
    """A new, empty hidden folder beside ``target`` (same file system, so it can be renamed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))


def replace_folder(staged: Path, target: Path) -> None:
    """Put the finished folder ``staged`` in the place of ``target`` (which may exist): two
    renames, the old folder removed only after the new one is in place."""
    target = Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_reports(staged: Path, out_dir: Path) -> None:
    """Move an experiment's staged report files into ``out_dir`` as one set: the REPORT_FILES of
    an earlier report are removed first, so that no table or figure of an earlier, different grid
    stays beside the new ones (run folders and anything else are left alone)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in out_dir.iterdir():
        if p.name not in REPORT_FILES:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    for p in Path(staged).iterdir():
        os.replace(p, out_dir / p.name)
    shutil.rmtree(staged, ignore_errors=True)
