"""Entry point: ``accelerate launch probes/run.py [--config FILE] [--KEY VALUE ...]``.

Reads the experiment (default ``configs/default.yaml``), expands its grid into runs, splits the
runs between accelerate processes, trains and probes each, and has the main process write the
reports: ``runs.csv``, ``metrics.csv``, ``ood_offsets.csv``, ``correlations.csv`` and
``figures/`` under ``reports/<experiment>/`` (or ``--output_dir``). Finished runs are kept and
skipped when the same command runs again (``--overwrite true`` retrains them).

Bad input (unknown key, task or family, gamma outside (0, 3], ...) prints one ``error:`` line and
exits with code 2 before anything is written.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the project, not probes/ siblings
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from probes.config import FIELDS, ConfigError, expand, load_config, parse_overrides  # noqa: E402

USAGE = """usage: accelerate launch probes/run.py [--config FILE] [--output_dir DIR] [--KEY VALUE ...]
       accelerate launch probes/run.py --checkpoint DIR [--checkpoint DIR ...] [--output_dir DIR]
         (probe checkpoints on disk; --checkpoint X --help lists its options)

Any config key can be overridden; a YAML list value (e.g. --gamma "[0.3, 1.0]") makes a grid.
Keys: """ + ", ".join(FIELDS)


def check_output_dir(out_dir: Path) -> None:
    """Raise ConfigError if ``out_dir`` (or a folder above it) exists and is not a folder."""
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"output_dir={str(out_dir)!r} is not usable: {str(p)!r} is a file; "
                                  f"accepted is a folder path")
            return


def configure_threads(num_threads: int | None, num_processes: int) -> int:
    """Use all cores in a one-process run (``accelerate launch`` sets OMP_NUM_THREADS=1 unless
    told otherwise), and share them between processes in a multi-process one. The same number
    holds for numpy's BLAS (the probes' SVDs): on a busy machine, BLAS and torch threads that
    outnumber the free cores spin at every barrier (one SVD of a 512 x 4608 ResNet layer: 3.7 s
    with 2 threads against 0.19 s with 1 while another process held a core)."""
    import torch
    from threadpoolctl import threadpool_limits

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = num_threads or max(1, (cores or 1) // num_processes)
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")
    return n


def build_data(cfgs):
    """A lookup cfg -> (task, numpy columns per split), built once per distinct task setting
    (runs of a grid share their data)."""
    from tasks import make_task

    def key(cfg):
        return cfg.task, tuple(sorted(cfg.task_options().items()))

    cache = {}
    for cfg in cfgs:
        if key(cfg) not in cache:
            task = make_task(cfg.task, **cfg.task_options())
            splits = task.build()
            cache[key(cfg)] = (task, {s: splits[s][:] for s in splits})
    return lambda cfg: cache[key(cfg)]


def train_all(cfgs, accelerator) -> None:
    """Train the unfinished runs of ``cfgs``, round by round: in each round every process trains
    one run, the results are gathered and the main process writes them (so a killed experiment
    keeps every finished run)."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from probes.report import finished, save_run
    from probes.train import Run

    todo = [c for c in cfgs if c.overwrite or not finished(c)]
    skipped = len(cfgs) - len(todo)
    if skipped:
        accelerator.print(f"{skipped} finished run(s) kept; --overwrite true retrains them")
    if not todo:
        return
    with accelerator.split_between_processes(todo) as mine:
        mine = list(mine)
    data_for = build_data(mine)
    n_rounds = math.ceil(len(todo) / accelerator.num_processes)
    bar = tqdm(total=sum(c.steps for c in mine), disable=not accelerator.is_main_process,
               unit="step", dynamic_ncols=True)
    for i in range(n_rounds):
        result = None
        if i < len(mine):
            cfg = mine[i]
            bar.set_description(f"run {i + 1}/{len(mine)} {cfg.run_id}")
            task, data = data_for(cfg)

            def progress(loss, steps):
                bar.update(steps)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            result = Run(cfg, task, data, accelerator).train(progress)
        results = gather_object([result]) if accelerator.num_processes > 1 else [result]
        if accelerator.is_main_process:
            for r in results:
                if r is not None:
                    save_run(r)
        accelerator.wait_for_everyone()
    bar.close()


def write_all(cfgs) -> None:
    """Main process: the experiment's CSVs, correlations and figures, and a summary."""
    from probes import analysis, figures
    from probes.report import write_csv, write_reports
    from tasks import TASKS

    out_dir = cfgs[0].out_dir
    frames = write_reports(cfgs, out_dir)
    runs, metrics = frames["runs"], frames["metrics"]
    task = TASKS[cfgs[0].task]
    if getattr(task, "families", None):  # a baseline task (mlp, resnet): its own tables, figures
        from probes import baselines

        baselines.write_all(cfgs, frames)
        return
    corr = analysis.correlations(runs, metrics, task.ood_scores) if len(runs) else None
    if corr is not None:
        write_csv(corr, out_dir / "correlations.csv")
        if runs["gamma"].nunique() > 1 and runs["n_layer"].nunique() > 1:
            table = analysis.phase_table(runs, metrics,
                                         scores=("acc_test_id", *figures.phase_scores(task)))
            write_csv(table, out_dir / "phase_diagram.csv")
        figures.draw_all(out_dir, runs, metrics, frames["offsets"], corr, task)
    print(summary(runs, corr, task))
    written = sorted(p.name for p in out_dir.glob("*.csv"))
    print(f"reports written to {out_dir}/: {', '.join(written)}"
          + (", figures/" if (out_dir / "figures").is_dir() and corr is not None else ""))


def summary(runs, corr, task) -> str:
    """Per-gamma means of the final scores, the fitted count, and the headline correlation."""
    import numpy as np

    from probes import analysis

    if runs.empty:
        return "no finished runs yet"
    cols = [c for c in task.score_names if c != "acc_train"]
    table = runs.groupby("gamma").agg(
        runs=("run_id", "count"), fitted=("fitted", "sum"),
        **{c: (c, "mean") for c in cols}, wall_s_total=("wall_s", "sum"))
    text = "final scores, mean over the runs of each gamma:\n" + table.round(3).to_string()
    if corr is not None:
        row = corr[(corr["layer"] == 0) & (corr["component"] == "attn.q") & corr["head"].isna()
                   & (corr["metric"] == "mean_abs_cos") & (corr["score"] == "ood_inferential")
                   & (corr["subset"] == "all")]
        if len(row) and np.isfinite(row["spearman_rho"].iloc[0]):
            r = row.iloc[0]
            text += (f"\nSpearman(layer-0 W_Q mean|cos|, ood_inferential) over {r['n_runs']} runs: "
                     + analysis.interval_text(r))
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--checkpoint" or a.startswith("--checkpoint=") for a in argv):
        from probes.checkpoint_probe import main as probe_main  # probe models on disk instead

        return probe_main(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        path, overrides = parse_overrides(argv)
        cfgs = expand(load_config(path, overrides))
        check_output_dir(cfgs[0].out_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import torch
    from accelerate import Accelerator

    # With no accelerator, say so: processes started by torchrun (accelerate launch --multi_gpu)
    # then join one gloo group instead of each believing it is alone.
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    threads = configure_threads(cfgs[0].num_threads, accelerator.num_processes)
    for cfg in {(c.warmup_steps, c.steps): c for c in cfgs}.values():
        if cfg.warmup_steps >= cfg.steps:
            accelerator.print(f"warning: warmup_steps={cfg.warmup_steps} >= steps={cfg.steps}: "
                              f"the learning rate never reaches lr={cfg.lr:g}")
    accelerator.print(f"{len(cfgs)} run(s) -> {cfgs[0].out_dir}/ on {accelerator.num_processes} "
                      f"process(es), {threads} thread(s) each, device {accelerator.device}")
    if not cfgs[0].report_only:
        train_all(cfgs, accelerator)
    if accelerator.is_main_process:
        write_all(cfgs)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
