"""Benchmark: training steps per second of the suite's loop against a bare PyTorch loop and
transformers' Trainer, on the paper family at two widths, in float32 and bf16 autocast.

    python benchmarks/train_throughput.py [--threads 2] [--steps 20] [--repeats 3]
        [--widths 64 400] [--precisions fp32 bf16]

Width 64 is the default experiment's model (batch 512); width 400 is the authors' reference model
(d_ff 1200, vocabulary 201, batch 2048; configs/authors_reference.yaml). Each row is the median
seconds per step over ``--steps`` timed steps (after 3 untimed ones), best of ``--repeats``, all
in this process on ``--threads`` threads:
- ``suite``: ``probes.train.loop.Run`` as ``probes/run.py`` drives it (accelerate, clipping,
  schedule, loss read every step), probes excluded;
- ``suite_last``: the same with ``last_position_only: true`` (the last block and the head at
  the last position only: the task's loss reads nothing else);
- ``bare``: the same model, optimizer and clipping in a plain PyTorch loop;
- ``trainer``: ``transformers.Trainer`` with the same model, batch and optimizer.
It prints each row's ratio to ``bare`` of the same width and precision, and the model GFLOP/s
counted as 6 x parameters x tokens (the issue's measure; ``suite_last`` does less work than that).
The goal (issue 14): width 400, batch 2048 at <= 0.35 s a step on 2 cores.

bf16 is timed only where the CPU multiplies bf16 natively (``probes.runtime.bf16_native``: the
flags avx512_bf16 or amx_bf16);
elsewhere PyTorch emulates it at a small fraction of float32's speed, and the script prints the
measured matmul rates that show it instead of timing a step that would take minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState  # noqa: E402

from models import build_for_run  # noqa: E402
from probes.config import RunConfig  # noqa: E402
from probes.runtime import bf16_native  # noqa: E402
from probes.train.loop import Run  # noqa: E402
from tasks import make_task  # noqa: E402

WARM = 3  # untimed steps: allocator and oneDNN caches


def config(width: int, precision: str, steps: int, out: str, last_only: bool = False) -> RunConfig:
    """The benchmark's run: the default model at width 64, the authors' at 400."""
    authors = dict(n_embd=400, vocab_size=201, batch_size=2048, lr=2e-4) if width == 400 else {}
    sizes = {} if width in (64, 400) else dict(n_embd=width)
    return RunConfig(experiment="throughput", output_dir=out, gamma=0.5, steps=steps, n_probes=2,
                     save_every=0, save_checkpoints="none", overwrite=True, log_every=0,
                     mixed_precision="no" if precision == "fp32" else precision,
                     last_position_only=last_only, **authors, **sizes)


def fresh_accelerator(precision: str) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True, mixed_precision="no" if precision == "fp32" else precision)


def per_step(stamps: list[float]) -> float:
    """Median seconds per step of the timed steps (stamps taken after each step)."""
    return statistics.median(np.diff(stamps[WARM:]))


def time_suite(cfg: RunConfig, task, data) -> float:
    stamps = []
    Run(cfg, task, data, fresh_accelerator(precision_of(cfg))).train(
        progress=lambda loss, n: stamps.append(time.perf_counter()) if loss is not None else None)
    return per_step(stamps)


def time_bare(cfg: RunConfig, task, data) -> float:
    torch.manual_seed(cfg.seed)
    model, _ = build_for_run(cfg, task)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, y = torch.as_tensor(data["train"]["input_ids"]), torch.as_tensor(data["train"]["target"])
    rng = np.random.default_rng(0)
    bf16 = precision_of(cfg) == "bf16"
    stamps = []
    for _ in range(cfg.steps):
        idx = torch.as_tensor(rng.integers(0, len(x), cfg.batch_size))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(input_ids=x[idx]).logits[:, -1], y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
    return per_step(stamps)


def time_trainer(cfg: RunConfig, task, data, out: str) -> float:
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class LastToken(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            logits = model(input_ids=inputs["input_ids"]).logits[:, -1]
            return F.cross_entropy(logits, inputs["labels"])

    stamps = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    torch.manual_seed(cfg.seed)
    model, _ = build_for_run(cfg, task)
    train = Dataset.from_dict({"input_ids": data["train"]["input_ids"],
                               "labels": data["train"]["target"]}).with_format("torch")
    AcceleratorState._reset_state(reset_partial_state=True)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch_size,
                             max_steps=cfg.steps, learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                             max_grad_norm=cfg.grad_clip, bf16=precision_of(cfg) == "bf16",
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, dataloader_drop_last=True, seed=cfg.seed)
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its summary dict
        LastToken(model=model, args=args, train_dataset=train, callbacks=[Stamp()]).train()
    return per_step(stamps)


def precision_of(cfg: RunConfig) -> str:
    return "fp32" if cfg.mixed_precision == "no" else cfg.mixed_precision


def matmul_rate(dtype: torch.dtype, n: int = 1024, m: int = 4096) -> float:
    """GFLOP/s of an (m, n) @ (n, n) matmul in ``dtype``, best of 3."""
    a, b = torch.randn(m, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * n * n / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps a repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 400])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--modes", nargs="+", default=["suite", "suite_last", "bare", "trainer"],
                    choices=["suite", "suite_last", "bare", "trainer"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16 matmul: {bf16_native()}")
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16, m=512)
    print(f"matmul (4096 x 1024) @ (1024 x 1024): float32 {fp32:.0f} GFLOP/s, bf16 {bf16:.1f} "
          f"GFLOP/s ({bf16 / fp32:.2f}x)")
    print(f"{'width':>5} {'batch':>5} {'prec':>5} {'mode':>10} {'s/step':>8} {'steps/s':>8} "
          f"{'vs bare':>8} {'GFLOP/s':>8}")
    for width in args.widths:
        for precision in args.precisions:
            if precision == "bf16" and not bf16_native():
                print(f"{width:>5} {'':>5} {'bf16':>5}   skipped: no native bf16 matmul on this CPU "
                      f"(bf16 runs at {bf16 / fp32:.3f}x float32's rate here)")
                continue
            with tempfile.TemporaryDirectory() as out:
                cfg = config(width, precision, WARM + args.steps + 1, out)
                task = make_task(cfg.task, **cfg.task_options())
                data = {k: v[:] for k, v in task.build().items()}
                model, _ = build_for_run(cfg, task)
                n_params = sum(p.numel() for p in model.parameters())
                flop = 6 * n_params * cfg.batch_size * task.seq_len
                times = {}
                for mode in args.modes:
                    run_cfg = config(width, precision, cfg.steps, out, last_only=mode == "suite_last")
                    timer = {"suite": time_suite, "suite_last": time_suite, "bare": time_bare,
                             "trainer": lambda c, t, d: time_trainer(c, t, d, out)}[mode]
                    times[mode] = min(timer(run_cfg, task, data) for _ in range(args.repeats))
                for mode, s in times.items():
                    ratio = f"{s / times['bare']:.2f}x" if "bare" in times else "-"
                    print(f"{width:>5} {cfg.batch_size:>5} {precision:>5} {mode:>10} {s:>8.3f} "
                          f"{1 / s:>8.2f} {ratio:>8} {flop / s / 1e9:>8.0f}", flush=True)
    print("goal: width 400, batch 2048 <= 0.35 s a step on 2 cores")


if __name__ == "__main__":
    main()
