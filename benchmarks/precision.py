"""Benchmark: one training step of the paper's d_model-400 model in float32 and in bf16 autocast on
one CPU thread, with the CPU's bf16 flags, to see what ``mixed_precision: bf16`` (or ``auto``)
gains on the machine it runs on.

    python benchmarks/precision.py [--steps 8] [--warmup 3] [--threads 1] [--force_bf16]

The model and batch are ``configs/split_cpu.yaml``'s (paper family, n_layer 2, n_embd 400, d_ff
1200, one head, seq_len 9, vocabulary 201, ``last_position_only``, head bias, batch 256): a step is
the suite's loss (``tasks.objective``), backward, gradient clipping at 1.0 and an AdamW step, on
the same fresh training batches for both precisions, from the same initial model. Each figure is
the median seconds of ``--steps`` timed steps after ``--warmup`` untimed ones (oneDNN builds its
kernels on the first steps).

The goal: bf16 at least 2x faster than float32 where the CPU multiplies bf16 natively (flags
avx512_bf16 or amx_bf16; ``probes.runtime.bf16_native``). Where it does not, PyTorch emulates bf16
at a small fraction of float32's speed (one step would take minutes): bf16 is then not timed
unless ``--force_bf16`` is given, and the float32 / bf16 matmul rates show why.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train_throughput import matmul_rate  # noqa: E402  (the same rate as the throughput benchmark)

from models import build_for_run  # noqa: E402
from probes.config import RunConfig, load_config  # noqa: E402
from probes.runtime import BF16_FLAGS, bf16_native, cpu_info, pick_precision  # noqa: E402
from tasks import make_task  # noqa: E402
from tasks.objective import objective_for  # noqa: E402

GOAL = 2.0  # bf16 at least this many times faster than float32 where native


def split_cpu_run() -> RunConfig:
    """The first run of configs/split_cpu.yaml (gamma 0.5, seed 1): its model and batch."""
    raw = load_config("split_cpu")
    return RunConfig(**{k: v[0] if isinstance(v, list) else v for k, v in raw.items()})


def time_steps(cfg: RunConfig, task, batches: list[dict], bf16: bool, warmup: int) -> tuple[float, float]:
    """(median seconds a step over the batches after the first ``warmup``, first step's loss)."""
    torch.manual_seed(cfg.seed)
    model, _ = build_for_run(cfg, task)
    model.train()
    objective = objective_for(task, cfg.last_position_only)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    seconds, first = [], float("nan")
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = objective.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        seconds.append(time.perf_counter() - start)
        first = value if i == 0 else first
    return statistics.median(seconds[warmup:]), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--force_bf16", action="store_true", help="time bf16 even where it is emulated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags, name = cpu_info()
    native = bf16_native(flags)
    present = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in sorted(BF16_FLAGS))
    print(f"CPU: {name or 'unknown'}; {present} -> native bf16 matmul: {native}; "
          f"mixed_precision auto picks {pick_precision(flags)[0]}")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} thread(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    fp32_rate, bf16_rate = (matmul_rate(t, m=512) for t in (torch.float32, torch.bfloat16))
    print(f"matmul (512 x 1024) @ (1024 x 1024): float32 {fp32_rate:.0f} GFLOP/s, bf16 "
          f"{bf16_rate:.1f} GFLOP/s ({bf16_rate / fp32_rate:.2f}x)")
    cfg = split_cpu_run()
    task = make_task(cfg.task, **cfg.task_options())
    rng = np.random.default_rng(0)
    batches = [{c: torch.as_tensor(v) for c, v in task.train_sampler(rng, cfg.batch_size).items()}
               for _ in range(args.warmup + args.steps)]
    print(f"model: paper, n_layer {cfg.n_layer}, n_embd {cfg.n_embd}, d_ff {cfg.d_ff}, n_head "
          f"{cfg.n_head}, seq_len {cfg.seq_len}, vocab {cfg.vocab_size}, last_position_only "
          f"{cfg.last_position_only}; batch {cfg.batch_size}; median of {args.steps} steps after "
          f"{args.warmup}")
    fp32, loss32 = time_steps(cfg, task, batches, bf16=False, warmup=args.warmup)
    print(f"{'float32':>8} {fp32:8.4f} s/step  first loss {loss32:.4f}  goal: the baseline", flush=True)
    if not (native or args.force_bf16):
        print(f"{'bf16':>8}  skipped: bf16 is emulated on this CPU (matmul at "
              f"{bf16_rate / fp32_rate:.3f}x float32's rate); --force_bf16 times it anyway")
        return
    bf16, loss16 = time_steps(cfg, task, batches, bf16=True, warmup=args.warmup)
    print(f"{'bf16':>8} {bf16:8.4f} s/step  first loss {loss16:.4f}  goal: <= {fp32 / GOAL:.4f} "
          f"(float32 / {GOAL:g}) where native")
    ratio = fp32 / bf16
    verdict = ("met" if ratio >= GOAL else "missed") if native else "not applicable (emulated)"
    print(f"{'ratio':>8} {ratio:8.2f}x float32 / bf16  goal: >= {GOAL:g}x where native: {verdict}")


if __name__ == "__main__":
    main()
