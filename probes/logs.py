"""Messages and progress bars of the command line, shared by its three entry paths (training,
``--checkpoint``, ``measure``).

Messages go through the standard ``logging`` module, under the ``probes`` logger: a module logs
with ``logging.getLogger(__name__)`` (accelerate's ``get_logger`` where several processes run, so
that only the main one speaks), and ``configure`` sends them to stderr, one line each: info lines
as they are, warnings as ``warning: ...``, debug lines as ``debug: ...``. Results (the summary
tables) are printed to stdout. Bad input is one ``error:`` line printed by the entry path itself,
whatever the level. Lines are written through ``tqdm.write``, so that a progress bar on the same
terminal is redrawn below them instead of being cut.

Two options of every command, taken off the command line by ``probes/run.py`` (the fields of
``probes.config.keys.LogKeys``, read by the one grammar): ``--log_level debug|info|warning|error``
(default info) and ``--progress`` / ``--progress true|false`` (default: a bar on a terminal
only). This module imports neither torch nor transformers, so that ``--help``
stays fast.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

LOGGER = "probes"
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}
PREFIX = {logging.DEBUG: "debug: ", logging.WARNING: "warning: ", logging.ERROR: "error: ",
          logging.CRITICAL: "error: "}
OPTIONS_HELP = """  --log_level LEVEL        messages shown on stderr: debug | info (default) | warning |
                           error (the error: line of bad input is shown at every level)
  --progress BOOL          progress bars: --progress alone or true | false (default: on a
                           terminal only)"""


class _Console(logging.Handler):
    """One line per record on the current ``sys.stderr`` (looked up at each record, so that a
    redirected stream is followed), through ``tqdm.write``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(PREFIX.get(record.levelno, "") + self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a failing handler reports, never raises
            self.handleError(record)


_progress: bool | None = None  # --progress: None (a terminal decides), True or False


def configure(level: str = "info", progress: bool | None = None) -> None:
    """Send the ``probes`` logger's records at ``level`` and above to stderr (``_Console``), and
    set the progress choice. Called again, it replaces its own handler: a process that runs the
    command line twice (a test, a notebook) shows each line once.

    Args:
        level: one of ``LOG_LEVELS``.
        progress: True (always a bar), False (never) or None (on a terminal only).

    Raises:
        ValueError: an unknown level.
    """
    global _progress
    if level not in LOG_LEVELS:
        raise ValueError(f"level {level!r} is unknown: accepted are {', '.join(LOG_LEVELS)}")
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _Console)]:
        logger.removeHandler(handler)
    logger.addHandler(_Console())
    logger.setLevel(LOG_LEVELS[level])
    logger.propagate = False  # the root logger's handlers (if the program has any) would repeat it
    _progress = progress


def bar_disabled(main_process: bool = True) -> bool | None:
    """tqdm's ``disable`` for a progress bar of this process: True off the main process or under
    ``--progress false``, False under ``--progress true``, None (tqdm: a bar on a terminal only)
    otherwise."""
    if not main_process:
        return True
    return None if _progress is None else not _progress
