"""Output folders: checked before any work, written all or nothing."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path


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


def shared_mode(path: Path) -> Path:
    """Give ``path``, and everything below it when it is a folder, the mode a plain ``open`` or
    ``mkdir`` would (0o666 for a file, 0o777 for a folder, less the process's umask) and return
    it: ``tempfile``'s files and folders are private (0o600, 0o700), and so are the safetensors
    files that ``save_pretrained`` writes; a report or checkpoint put in place is for sharing."""
    umask = os.umask(0)
    os.umask(umask)
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~umask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~umask)
    return path


def staging_dir(target: Path) -> Path:
    """A new, empty hidden folder ``.<name>.staging-<random>`` beside ``target`` (same file
    system, so it can be renamed into place); ``probes.store.publish.recover`` removes one that a
    killed command left."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return shared_mode(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))


def replace_folder(staged: Path, target: Path) -> None:
    """Put the finished folder ``staged`` in the place of ``target`` (which may exist).

    Where the system can swap two folders in one step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), ``target`` is at every instant either the old folder or the new one,
    and the old one is removed after. Elsewhere it takes two renames: the old folder is moved to
    ``.<name>.old-<random>`` first, and ``probes.store.publish.recover`` puts it back if a kill
    came between the two.

    Raises:
        OSError: a rename the file system refused.
    """
    staged, target = shared_mode(staged), Path(target)
    if target.exists() and exchange(staged, target):
        shutil.rmtree(staged, ignore_errors=True)  # now the old folder
        return
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def folder_replaced(target: Path):
    """The staged publish of a command whose output folder is replaced whole (``--checkpoint``,
    ``align``): yields a new staging folder (``staging_dir``) to write the outputs into; on a
    clean exit it takes the place of ``target`` (``replace_folder``), on an exception it is
    removed and ``target`` is left as it was. A kill at any point leaves what
    ``probes.store.publish.recover`` rolls back to the previous ``target``.

    Raises:
        OSError: a rename the file system refused (``target`` then as it was).
    """
    stage = staging_dir(target)
    try:
        yield stage
        replace_folder(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
# errors of a system or file system without the exchange: fall back to two renames
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EPERM, getattr(errno, "ENOTSUP", errno.EINVAL)}


@functools.cache
def _renameat2():
    """libc's ``renameat2``, or None where there is none (not Linux, or an old C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one atomic step (Linux ``renameat2``,
    ``RENAME_EXCHANGE``; same file system). Returns False, having changed nothing, where the
    system or file system cannot.

    Raises:
        OSError: any other failure (a path missing, no permission).
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
