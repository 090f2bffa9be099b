"""Threads for torch and numpy's BLAS, transformers' progress bars, and the main process's logger,
shared by both entry paths (training and checkpoint probing)."""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from accelerate.logging import MultiProcessAdapter
from threadpoolctl import threadpool_limits


class _MainProcessAdapter(MultiProcessAdapter):
    """accelerate's adapter (a record is logged by the main process only, unless
    ``main_process_only=False``) without its ``[RANK n]`` prefix: the command line's lines keep
    their one-line form (``warning: ...``, ``probes.logs``)."""

    def process(self, msg, kwargs):
        kwargs.setdefault("stacklevel", 2)
        return msg, kwargs


def main_process_logger(name: str) -> logging.LoggerAdapter:
    """The logger ``name`` (a child of ``probes``: ``probes.logs`` shows its lines) through an
    adapter that logs on the main accelerate process only. A record logged before any
    ``Accelerator`` or ``PartialState`` exists raises RuntimeError (accelerate's rule)."""
    return _MainProcessAdapter(logging.getLogger(name), {})


def configure_threads(num_threads: int | None, num_processes: int) -> int:
    """Set torch's and BLAS's thread count for this process, and return it.

    ``accelerate launch`` sets OMP_NUM_THREADS=1 unless told otherwise: a one-process run gets every
    core, a multi-process one shares them. The same number holds for numpy's BLAS (the probes'
    SVDs): on a busy machine, BLAS and torch threads that outnumber the free cores spin at every
    barrier (one SVD of a 512 x 4608 ResNet layer: 3.7 s with 2 threads against 0.19 s with 1
    while another process held a core).

    Args:
        num_threads: threads per process, or None for all cores / ``num_processes``.
        num_processes: accelerate processes on this machine.

    Returns:
        the thread count set (>= 1).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = num_threads or max(1, (cores or 1) // num_processes)
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")
    return n


@contextlib.contextmanager
def hub_progress_bars_off():
    """Inside the block, no transformers progress bars (``from_pretrained``'s loading bars: the
    suite shows one bar, its own); after it, they are as they were, so that importing or calling
    the suite never switches them off for the program around it."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's check: AVX512-BF16 or AMX).

    Without it, PyTorch emulates bf16 matmuls on the CPU at about 1% of float32's rate (measured
    on an AVX2 EPYC: 0.8 against 69 GFLOP/s), so bf16 autocast there is far slower, not faster.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no native path either
        return False
