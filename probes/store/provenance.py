"""Which code made a row: the suite's version, the git commit of a checkout (and whether it had
uncommitted changes) and the versions of the libraries the numbers depend on
(``files.PROVENANCE_COLUMNS``). Training runs record it in their runs row (``run.json``, gathered
into runs.csv), checkpoint probes in their runs.csv rows.

A finished run made by another code version is still reused (retraining is expensive), but the
experiment names it (``other_version``), and its row keeps the provenance of the code that trained
it, so a runs.csv that mixes versions shows it."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from probes.store.files import PROVENANCE_COLUMNS, package_version

# the libraries whose versions runs.csv records (distribution name -> column)
LIBRARIES = {"torch": "torch_version", "transformers": "transformers_version",
             "accelerate": "accelerate_version", "numpy": "numpy_version"}
# the folder that holds the probes package: a git checkout when the suite runs from a clone
SOURCE_ROOT = Path(__file__).resolve().parents[2]
GIT_TIMEOUT_S = 5.0


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` (stdout, stripped), or None when git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(root: Path) -> dict:
    """The git commit of the checkout whose top folder is ``root``, and whether its tracked files
    differ from that commit.

    Args:
        root: the folder that holds the package (``SOURCE_ROOT``).

    Returns:
        ``{"git_commit": 40 hex digits, "git_dirty": bool}``, or ``{}`` when ``root`` is not the
        top of a git checkout (an installed package, even one inside some other repository),
        git is not installed, or it does not answer within ``GIT_TIMEOUT_S`` seconds. Untracked
        files do not count as changes (outputs and notes beside the code would mark every run).
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != Path(root).resolve():
        return {}
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if not commit or status is None:
        return {}
    return {"git_commit": commit, "git_dirty": bool(status)}


def library_versions() -> dict:
    """``{column: installed version}`` of each of ``LIBRARIES`` (blank when not installed)."""
    out = {}
    for dist, column in LIBRARIES.items():
        try:
            out[column] = version(dist)
        except PackageNotFoundError:
            out[column] = ""
    return out


@functools.cache
def provenance() -> dict:
    """This process's provenance: every one of ``PROVENANCE_COLUMNS``, in order; ``git_commit``
    and ``git_dirty`` are blank (``""``) outside a git checkout. Read once per process."""
    found = {"package_version": package_version(), **git_state(SOURCE_ROOT), **library_versions()}
    return {c: found.get(c, "") for c in PROVENANCE_COLUMNS}


def code_version(row: dict) -> tuple[str, str]:
    """(package_version, git_commit) of a runs row: what decides whether a finished run was made
    by this code. A row written before provenance was recorded has no commit (``""``)."""
    commit = row.get("git_commit")
    return str(row.get("package_version", "")), "" if commit is None else str(commit)


def other_version(rows: dict[str, dict]) -> dict[str, str]:
    """The runs of ``rows`` (run id -> runs row) made by another code version than this process:
    another package version, or another git commit. A run or a process without a commit
    (outside a checkout, or made before commits were recorded) differs from one with a commit.

    Returns:
        run id -> the commit that made it (12 digits; ``unrecorded`` when it has none), for the
        runs that differ, in the order of ``rows``.
    """
    now = code_version(provenance())
    return {run_id: (code_version(row)[1][:12] or "unrecorded")
            for run_id, row in rows.items() if code_version(row) != now}
