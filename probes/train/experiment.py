"""An experiment: expand the config into runs, split them between accelerate processes, train
and probe each (``probes.train.loop``), and have the main process write the reports
(``probes.report.experiment``).

Entry: ``accelerate launch probes/run.py [--config FILE] [--KEY VALUE ...]`` (``main`` below).
Finished runs are kept and skipped when the same command runs again (``--overwrite true``
retrains them). Bad input prints one ``error:`` line and exits with code 2 before anything is
written.
"""

from __future__ import annotations

import math
import os
import shutil

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from probes.config import (
    AUTO_PRECISION,
    ConfigError,
    expand,
    load_config,
    parse_overrides,
    unread_options,
)
from probes.logs import bar_disabled
from probes.report.experiment import write_all
from probes.runtime import (
    bf16_native,
    configure_threads,
    main_process_logger,
    pick_precision,
    say_error,
)
from probes.store import (
    OutputError,
    check_output_dir,
    finished,
    other_version,
    provenance,
    read_run_json,
    recover,
    run_dir,
    save_run,
    work_dir,
)
from probes.train.loop import Run, build_data
from probes.train.remeasure import measure_all
from probes.train.saved_series import measurable, recorded, stale
from probes.train.usage import experiment_help

# messages of the main process only (probes.runtime; shown by probes.logs)
logger = main_process_logger(__name__)


def train_all(cfgs, accelerator) -> None:
    """Train the unfinished runs of ``cfgs`` (``train_rounds``), then measure again, from their
    checkpoints, every finished run measured with other analysis settings than ``cfgs`` ask for
    (main process; nothing is trained for them).

    A finished run is reused whatever code made it; one made by another package version or git
    commit (``store.other_version``) is named in a note, and keeps its own provenance in
    runs.csv."""
    todo = [c for c in cfgs if c.overwrite or not finished(c)]
    kept = [c for c in cfgs if c not in todo]
    if kept:
        logger.info(f"{len(kept)} finished run(s) kept; --overwrite true retrains them")
    older = other_version({c.run_id: read_run_json(run_dir(c)) or {} for c in kept})
    if older:
        logger.info(f"note: {len(older)} finished run(s) were made by another code version "
                          f"(commit {', '.join(dict.fromkeys(older.values()))}): pass --overwrite "
                          f"true to retrain them: {', '.join(list(older)[:3])}")
    if accelerator.is_main_process:  # what a killed --overwrite rerun began: never resumed
        for c in kept:
            shutil.rmtree(work_dir(c), ignore_errors=True)
    moved = sorted({c.run_id for c in kept if recorded(run_dir(c)).get("n_probes") != c.n_probes})
    if moved:
        logger.info(f"note: {len(moved)} finished run(s) keep the probe steps they saved "
                          f"(n_probes applies to new runs): {', '.join(moved[:3])}")
    if todo:
        train_rounds(todo, accelerator)
    again = [c for c in cfgs if finished(c) and stale(c)]
    bare = [c.run_id for c in again if not measurable(c)]
    if bare:
        logger.info(f"note: {len(bare)} finished run(s) saved no checkpoint series and keep "
                          f"the analysis settings they were measured with (their config.yaml; "
                          f"--overwrite true retrains them): {', '.join(bare[:3])}")
    again = [c for c in again if c.run_id not in bare]
    if again:
        logger.info(f"{len(again)} run(s) measured again from their checkpoints with the "
                          f"analysis settings asked for")
        if accelerator.is_main_process:
            measure_all(again, build_data(again), accelerator.device)
    accelerator.wait_for_everyone()


def train_rounds(todo, accelerator) -> None:
    """Train the runs ``todo``, round by round: in each round every process trains one run, the
    results are gathered and the main process writes them (so a killed experiment keeps every
    finished run)."""
    with accelerator.split_between_processes(todo) as mine:
        mine = list(mine)
    data_for = build_data(mine)
    n_rounds = math.ceil(len(todo) / accelerator.num_processes)
    bar = tqdm(total=sum(c.steps for c in mine), disable=bar_disabled(accelerator.is_main_process),
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
                    save_run(r, work_dir(r.cfg))
                    shutil.rmtree(work_dir(r.cfg), ignore_errors=True)
        accelerator.wait_for_everyone()
    bar.close()


def resolved_precision(raw: dict) -> tuple[dict, str | None]:
    """``raw`` (a checked config mapping) with ``mixed_precision: auto`` replaced by the precision
    this machine trains in (``probes.runtime.pick_precision``: bf16 where the hardware multiplies
    it natively, else no), and the reason for it (None when ``auto`` was not asked for).

    The runs are made from the picked value, so their ids, config.yaml and runs.csv name the
    precision trained in: ``auto`` on a machine with native bf16 is the same run as ``bf16``."""
    if raw.get("mixed_precision") != AUTO_PRECISION:
        return raw, None
    precision, reason = pick_precision()
    return raw | {"mixed_precision": precision}, reason


def main(argv: list[str]) -> int:
    """Run the experiment of ``argv`` (see ``usage.USAGE``); returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(experiment_help())
        return 0
    try:
        path, overrides = parse_overrides(argv)
        # precision: the config's key when given, else what accelerate launch was told
        launcher = {"mixed_precision": os.environ.get("ACCELERATE_MIXED_PRECISION", "no")}
        raw, picked = resolved_precision(launcher | load_config(path, overrides))
        cfgs = expand(raw)
        unread = unread_options(raw)
        if cfgs[0].mixed_precision == "fp16" and not torch.accelerator.is_available():
            raise ConfigError("mixed_precision='fp16' needs a GPU (on CPU accelerate trains in float32 "
                              "with no gradient scaling): accepted on CPU are 'no' and 'bf16'")
        check_output_dir(cfgs[0].out_dir)
    except (ConfigError, OutputError) as e:
        say_error(e)
        return 2
    # With no accelerator, say so: processes started by torchrun (accelerate launch --multi_gpu)
    # then join one gloo group instead of each believing it is alone.
    accelerator = Accelerator(cpu=not torch.accelerator.is_available(),
                              mixed_precision=cfgs[0].mixed_precision)
    if accelerator.is_main_process:  # what a killed command left half done, rolled back first
        recover(cfgs[0].out_dir)
    accelerator.wait_for_everyone()
    threads = configure_threads(cfgs[0].num_threads, accelerator.num_processes)
    if picked:
        logger.info(f"mixed_precision {AUTO_PRECISION} -> {cfgs[0].mixed_precision}: {picked}")
    if unread:
        logger.warning(unread)
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not bf16_native():
        logger.warning("this CPU has no native bf16 matmul (no AVX512-BF16 or AMX): bf16 autocast "
                       "runs far slower than float32 here (~1% of its rate on an AVX2 CPU)")
    # Recorded, not refused: a short run of a preset (--steps 500 with its 3,700-step warm-up)
    # is a fair thing to ask, and refusing it would only make the user lower warmup_steps, a
    # different schedule. What a reader of runs.csv must not do is take `lr` for the rate the
    # run trained at: `lr_peak` beside it is the highest rate any update used (train.loop.peak_lr).
    for cfg in {(c.warmup_steps, c.steps): c for c in cfgs}.values():
        if cfg.warmup_steps >= cfg.steps:
            logger.warning(f"warmup_steps={cfg.warmup_steps} >= steps={cfg.steps}: the learning "
                           f"rate never reaches lr={cfg.lr:g} (runs.csv: lr_peak)")
    logger.info(f"{len(cfgs)} run(s) -> {cfgs[0].out_dir}/ on {accelerator.num_processes} "
                f"process(es), {threads} thread(s) each, device {accelerator.device}, "
                f"mixed precision {accelerator.mixed_precision}")
    logger.debug("code: " + ", ".join(f"{k}={v}" for k, v in provenance().items()))
    if not cfgs[0].report_only:
        train_all(cfgs, accelerator)
    if accelerator.is_main_process:
        write_all(cfgs)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0
