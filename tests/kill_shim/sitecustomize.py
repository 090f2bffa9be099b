"""Test-only shim (tests/test_kill.py puts this folder first on PYTHONPATH of a CLI subprocess):
log chosen calls, and SIGKILL the process itself at the N-th one. Nothing in the product reads it.

Environment:
    KILL_LOG: a file to which every call is appended as ``kind<TAB>path`` (flushed at once, so
        it survives the kill).
    KILL_AT: ``kind:N``: at the N-th call (from 1) of ``kind``, kill the process with SIGKILL.

Kinds:
    save_pretrained: ``transformers.PreTrainedModel.save_pretrained`` (path: its folder); the kill
        comes once the files are written, with the largest of them cut to half its size: a
        checkpoint caught while its weights were being written.
    savefig: ``matplotlib.figure.Figure.savefig`` (path: the file); the file is cut to half its
        size before the kill: a figure caught while it was being drawn.
    replace: ``os.replace`` called from the project's own modules (``probes.*``; path: the
        destination); the kill comes before the rename.
"""

import importlib.abc
import os
import signal
import sys

_LOG = os.environ.get("KILL_LOG")
_KIND, _, _N = os.environ.get("KILL_AT", "").partition(":")
_COUNT: dict[str, int] = {}


def _cut(path: str) -> None:
    """Cut file ``path`` (or the largest file in folder ``path``) to half its size."""
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in os.listdir(path)]
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            return
        path = max(files, key=os.path.getsize)
    if os.path.isfile(path):
        os.truncate(path, os.path.getsize(path) // 2)


def _event(kind: str, path) -> bool:
    """Log one call; True when this is the call to die at."""
    _COUNT[kind] = _COUNT.get(kind, 0) + 1
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(f"{kind}\t{os.fspath(path)}\n")
    return kind == _KIND and _COUNT[kind] == int(_N)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_real_replace = os.replace


def _replace(src, dst, *args, **kwargs):
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith("probes.") and _event("replace", dst):
        _die()
    return _real_replace(src, dst, *args, **kwargs)


os.replace = _replace


def _patch_transformers(module) -> None:
    real = module.PreTrainedModel.save_pretrained

    def save_pretrained(self, save_directory, *args, **kwargs):
        out = real(self, save_directory, *args, **kwargs)
        if _event("save_pretrained", save_directory):
            _cut(os.fspath(save_directory))
            _die()
        return out

    module.PreTrainedModel.save_pretrained = save_pretrained


def _patch_matplotlib(module) -> None:
    real = module.Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        out = real(self, fname, *args, **kwargs)
        if _event("savefig", fname):
            _cut(os.fspath(fname))
            _die()
        return out

    module.Figure.savefig = savefig


_PATCHES = {"transformers.modeling_utils": _patch_transformers,
            "matplotlib.figure": _patch_matplotlib}


class _Finder(importlib.abc.MetaPathFinder):
    """Patches a module of ``_PATCHES`` right after it is first executed."""

    def find_spec(self, name, path, target=None):
        if name not in _PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
