"""Threads for torch and numpy's BLAS, transformers' progress bars, and the main process's logger,
shared by both entry paths (training and checkpoint probing)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

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


def say_error(error) -> None:
    """Print ``error: <error>`` on stderr from the launcher's first process only (``RANK`` 0, or
    no launcher): bad input found before the processes meet is found alike by each of them, and
    the user should read it once."""
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {error}", file=sys.stderr)


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
def transformers_quiet():
    """Inside the block, transformers logs errors only (its load report of missing or unexpected
    tensors, which the caller turns into one line of its own); after it, as it was."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(was)


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


# x86 feature flags (/proc/cpuinfo's names, also torch.cpu.get_capabilities') of a native bf16
# matrix multiply: AVX512-BF16's dot products or AMX's bf16 tiles. oneDNN's own check
# (torch.ops.mkldnn._is_mkldnn_bf16_supported) also says yes for plain AVX-512 (avx512bw, vl,
# dq), where bf16 is converted to float32 and back around float32 arithmetic: not native.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_info(text: str | None = None) -> tuple[frozenset[str], str]:
    """This CPU's feature flags and model name, from the first processor of /proc/cpuinfo.

    Args:
        text: the text of a /proc/cpuinfo (None: this machine's, read without a subprocess).

    Returns:
        (flags: the words of the ``flags`` line (x86) or ``Features`` line (ARM), model name: the
        ``model name`` line, '' when absent). Without a /proc/cpuinfo (macOS, Windows) the flags
        are the true entries of ``torch.cpu.get_capabilities()`` where this torch has it (same
        names), else empty; the name is ''.
    """
    if text is None:
        if not CPUINFO.is_file():
            caps = getattr(torch.cpu, "get_capabilities", dict)()
            return frozenset(k for k, v in caps.items() if v is True), ""
        text = CPUINFO.read_text(errors="replace")
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = fields.get("flags") or fields.get("features", "")
    return frozenset(flags.split()), fields.get("model name", "")


def bf16_native(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively: its flags (``cpu_info``; None: this machine's)
    include avx512_bf16 or amx_bf16 (``BF16_FLAGS``).

    Without them, PyTorch emulates bf16 matmuls on the CPU, far slower than float32 (measured on
    an AVX2 EPYC: 0.9 against 60 GFLOP/s on one thread), so bf16 autocast there is slower, not
    faster.
    """
    flags = cpu_info()[0] if flags is None else flags
    return bool(flags & BF16_FLAGS)


def pick_precision(flags: frozenset[str] | None = None) -> tuple[str, str]:
    """The precision ``mixed_precision: auto`` trains in on this machine, and why.

    bf16 only where the hardware multiplies bf16 natively: on a CUDA device that
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` accepts (compute capability
    >= 8, or ROCm), on a CPU when ``bf16_native(flags)``; float32 (``no``) everywhere else,
    including accelerators other than CUDA, whose bf16 speed is not checked. fp16 is never
    picked (it needs loss scaling and can overflow where bf16 cannot).

    Args:
        flags: the CPU's feature flags (None: this machine's, ``cpu_info``); read only when
            training runs on the CPU.

    Returns:
        (precision: 'bf16' or 'no', reason: one clause naming what decided it).
    """
    if torch.accelerator.is_available():
        kind = torch.accelerator.current_accelerator().type
        if kind != "cuda":
            return "no", f"bf16 speed on a {kind} device is not checked"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"CUDA device {name} multiplies bf16 natively"
        return "no", f"CUDA device {name} has no native bf16 (compute capability < 8)"
    flags = cpu_info()[0] if flags is None else flags
    found = sorted(flags & BF16_FLAGS)
    if found:
        return "bf16", f"this CPU multiplies bf16 natively ({', '.join(found)})"
    return "no", (f"this CPU has neither {' nor '.join(sorted(BF16_FLAGS))}: bf16 would be "
                  f"emulated, far slower than float32")
