"""The command line of ``probes/run.py probe DIR [...]`` (alias ``--checkpoint DIR``): parse (the
one grammar, ``ProbeKeys``), plan, probe, report.

For each checkpoint (a folder, every step of a folder of step checkpoints, or a GGUF file), the
unit sets of every layer are read one layer at a time from the weights and measured with the same
``Condensation`` metrics as training probes (``probes.checkpoint.probe``); with
``--probe_inputs`` the whole model is loaded and the same units are measured again by their
outputs over the probe batch (``basis=activation``). The main process writes ``OUT/metrics.csv``
(same schema as the experiments), ``OUT/runs.csv`` (one row per checkpoint) and ``OUT/figures/``
(``probes.report.checkpoint``).

With ``--reference DIR`` (a step-0 or base checkpoint of the same architecture and unit-set
shapes, checked before any work) every weight-basis unit set also gets ``rd`` and the angles of
its units from the reference's (``probes.measure.drift``); without it no ``rd`` is reported, as a
foreign checkpoint lacks its initialization.
Bad input prints one ``error:`` line and exits with code 2 before anything is written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from probes.checkpoint.discover import CheckpointError
from probes.checkpoint.probe import Hint, Options, Prober, plan_all
from probes.checkpoint.usage import probe_help
from probes.config import grammar
from probes.config.grammar import ConfigError
from probes.config.keys import PROBE_KEYS, ProbeKeys, thresholds_problem
from probes.logs import bar_disabled
from probes.measure.fitting import Fitter
from probes.report.checkpoint import summary, write_outputs
from probes.runtime import configure_threads, main_process_logger, say_error
from probes.store import (
    CHECKPOINT_OUTPUTS,
    OutputError,
    check_output_dir,
    check_replaceable,
    folder_replaced,
    read_csv,
    recover,
)

# messages of the main process only (probes.runtime; shown by probes.logs)
logger = main_process_logger(__name__)


def values(argv: list[str], command: str, accepted: tuple[str, ...],
           defaults: dict | None = None) -> tuple[list[str], dict]:
    """Read ``argv`` by the one grammar against ``ProbeKeys`` (``probes.config.grammar``) and
    check the values the checkpoint commands share.

    Args:
        argv: the command's arguments; command: its name (for error lines); accepted: the keys
            it takes (``PROBE_KEYS``, ``ALIGN_KEYS``, ``MERGE_KEYS``); defaults: its own defaults
            over the fields'.

    Returns:
        (positional arguments, every key of ``accepted`` -> its value, the default when not given).

    Raises:
        ConfigError: an unknown key or a value of the wrong type (the grammar), a count < 1, or
            thresholds that are not distinct numbers in (0, 1).
    """
    positional, given = grammar.parse(argv, ProbeKeys, command=command, accepted=accepted)
    fields = grammar.fields_of(ProbeKeys)
    out = {k: grammar.default(fields[k]) for k in accepted} | (defaults or {}) | given
    for key in ("probe_samples", "num_threads"):
        if key in out and out[key] is not None and out[key] < 1:
            raise ConfigError(f"{key}={out[key]} is invalid: accepted is an integer >= 1")
    if "chance_draws" in out and out["chance_draws"] < 0:
        raise ConfigError(f"chance_draws={out['chance_draws']} is invalid: accepted is an integer "
                          f">= 0 (0: no chance baselines)")
    problem = thresholds_problem(out["thresholds"]) if "thresholds" in out else None
    if problem:
        raise ConfigError(problem)
    return positional, out


def parse_args(argv: list[str]) -> Options:
    """Parse the command line of ``probe DIR [DIR ...]`` or its alias ``--checkpoint DIR``
    (``PROBE_KEYS``; positional DIRs and ``--checkpoint`` ones are probed alike, in order).

    Raises:
        ConfigError: no checkpoint, an unknown key, or a value outside what is accepted.
    """
    positional, v = values(argv, "probe", PROBE_KEYS)
    checkpoints = [*positional, *v["checkpoint"]]
    if not checkpoints:
        raise ConfigError("probe needs a checkpoint: accepted are probe DIR [DIR ...] or "
                          "--checkpoint DIR (a save_pretrained folder, a series, gguf:FILE)")
    if v["merge_probe"] and not v["probe_inputs"]:
        raise ConfigError("merge_probe=true needs probe_inputs: accepted are a text file of "
                          "lines or a token task, whose next-token loss the merges are scored by")
    return Options(checkpoints, Path(v["output_dir"]), v["probe_inputs"], v["probe_samples"],
                   v["allow_pickle"], v["trust_remote_code"], v["thresholds"],
                   v["heatmap_layers"], v["heatmap_component"], v["num_threads"], v["fold_norms"],
                   v["activation_point"], merge_probe=v["merge_probe"],
                   spectral_metrics=v["spectral_metrics"], chance_draws=v["chance_draws"],
                   chance_nulls=v["chance_nulls"], reference=v["reference"])


def main(argv: list[str]) -> int:
    """Entry of ``probes/run.py --checkpoint ...``; returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(probe_help())
        return 0
    try:
        opts = parse_args(argv)
        check_output_dir(opts.output_dir)
        if os.environ.get("RANK", "0") == "0":  # a killed probe's leftovers, by one process
            recover(opts.output_dir)
        check_replaceable(opts.output_dir, CHECKPOINT_OUTPUTS)
        plans, notes = plan_all(opts)
    except (CheckpointError, ConfigError, OutputError) as e:
        say_error(e)
        return 2
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    main_process = accelerator.is_main_process
    threads = configure_threads(opts.num_threads, accelerator.num_processes)
    for note in notes:
        (logger.info if isinstance(note, Hint) else logger.warning)(note)
    with accelerator.split_between_processes(list(range(len(plans)))) as mine:
        mine = list(mine)
    bases = 2 if opts.probe_inputs else 1
    bar = tqdm(total=sum(len(plans[i].layout.blocks) for i in mine) * bases, unit="layer",
               disable=bar_disabled(main_process), dynamic_ncols=True)
    results, error = [], None
    try:
        with Fitter(opts.thresholds, threads, opts.spectral_metrics,
                    (opts.chance_draws, opts.chance_nulls)) as fitter:
            for i in mine:
                bar.set_description(plans[i].ckpt.run_id)
                results.append(Prober(plans[i], opts, fitter, bar.update, accelerator.device,
                                      logger.warning).run())
    except CheckpointError as e:
        error = str(e)
    bar.close()
    if accelerator.num_processes > 1:
        results = [r for part in gather_object([results]) for r in part]
        error = next((e for e in gather_object([error]) if e), None)
    if error:
        if main_process:
            print(f"error: {error}", file=sys.stderr)
        return 2
    if main_process:
        with folder_replaced(opts.output_dir) as stage:  # all or nothing: replaced whole
            write_outputs(stage, results, plans, opts)
        print(summary(read_csv(opts.output_dir / "metrics.csv"), opts.heatmap_threshold))
        logger.info(f"{len(plans)} checkpoint(s) probed -> {opts.output_dir}/ (metrics.csv, runs.csv, "
                    f"figures/)")
    accelerator.wait_for_everyone()
    return 0
