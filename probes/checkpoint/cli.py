"""The command line of ``probes/run.py --checkpoint DIR [...]``: parse, plan, probe, report.

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

import argparse
import os
import sys
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from probes.checkpoint.activations import ACTIVATION_POINTS
from probes.checkpoint.discover import CheckpointError
from probes.checkpoint.probe import Fitter, Options, Prober, plan_all
from probes.checkpoint.usage import OPTIONS, USAGE
from probes.config import CHANCE_NULLS, load_yaml
from probes.logs import bar_disabled
from probes.measure.metrics import THRESHOLDS
from probes.report.checkpoint import summary, write_outputs
from probes.runtime import configure_threads, main_process_logger
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
DEFAULT_OUTPUT = "reports/checkpoints"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one line, code 2
        raise CheckpointError(f"{message}: accepted with --checkpoint are {', '.join(OPTIONS)}")


def number_list(text: str, name: str, kind) -> list:
    """A YAML list ("[0, 5]") or comma list ("0,5") of numbers."""
    try:
        value = load_yaml(text if text.strip().startswith("[") else f"[{text}]")
        items = [kind(v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not value or len(items) != len(value) or (kind is int and items != value):
            raise ValueError
    except (yaml.YAMLError, TypeError, ValueError):
        raise CheckpointError(f"{name} {text!r} is invalid: accepted is a list of "
                              f"{'integers' if kind is int else 'numbers'} like 0,5 or [0, 5]") from None
    return items


def flag(args, key: str) -> bool:
    """The value of flag ``--key`` read as a YAML bool. Raises CheckpointError otherwise."""
    text = getattr(args, key)
    value = load_yaml(text) if text.strip() else None
    if not isinstance(value, bool):
        raise CheckpointError(f"--{key} {text!r} is invalid: accepted are true and false")
    return value


def add_shared_arguments(p: argparse.ArgumentParser) -> None:
    """The options that ``--checkpoint`` and ``align`` share (checked by ``shared_values``)."""
    p.add_argument("--probe_inputs")
    p.add_argument("--probe_samples", default="1024")
    p.add_argument("--allow_pickle", action="store_true")
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--thresholds")
    p.add_argument("--num_threads")
    p.add_argument("--fold_norms", default="true")
    p.add_argument("--activation_point", default="pre")


def shared_values(a) -> tuple[dict, list[float]]:
    """The options that ``--checkpoint`` and ``align`` share, checked: ({probe_samples,
    num_threads}: ints or None when unset, the thresholds).

    Raises:
        CheckpointError: an activation point, count or threshold list outside what is accepted.
    """
    if a.activation_point not in ACTIVATION_POINTS:
        raise CheckpointError(f"--activation_point {a.activation_point!r} is invalid: accepted are "
                              f"{', '.join(ACTIVATION_POINTS)}")
    positive = {}
    for key in ("probe_samples", "num_threads"):
        text = getattr(a, key)
        if text is not None and not (text.isdigit() and int(text) >= 1):
            raise CheckpointError(f"--{key} {text!r} is invalid: accepted is an integer >= 1")
        positive[key] = int(text) if text is not None else None
    thresholds = number_list(a.thresholds, "--thresholds", float) if a.thresholds else list(THRESHOLDS)
    if not all(0 < t < 1 for t in thresholds) or len(set(thresholds)) < len(thresholds):
        raise CheckpointError(f"--thresholds {a.thresholds!r} is invalid: accepted are distinct "
                              f"numbers in (0, 1)")
    return positive, thresholds


def parse_args(argv: list[str]) -> Options:
    """Parse the command line.

    Raises:
        CheckpointError: unknown flag, missing value, or a value outside what is accepted.
    """
    p = _Parser(prog="probes/run.py", add_help=False, allow_abbrev=False)
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT)
    add_shared_arguments(p)
    p.add_argument("--heatmap_layers")
    p.add_argument("--heatmap_component")
    p.add_argument("--spectral_metrics", default="true")
    p.add_argument("--merge_probe", default="false")
    p.add_argument("--chance_draws", default="0")
    p.add_argument("--chance_nulls", default="both")
    p.add_argument("--reference")
    a = p.parse_args(argv)
    fold, spectral, merge = (flag(a, key) for key in ("fold_norms", "spectral_metrics",
                                                       "merge_probe"))
    if merge and not a.probe_inputs:
        raise CheckpointError("--merge_probe true needs --probe_inputs: accepted are a text file of "
                              "lines or a token task, whose next-token loss the merges are scored by")
    if not a.chance_draws.isdigit():
        raise CheckpointError(f"--chance_draws {a.chance_draws!r} is invalid: accepted is an "
                              f"integer >= 0 (0: no chance baselines)")
    if a.chance_nulls not in CHANCE_NULLS:
        raise CheckpointError(f"--chance_nulls {a.chance_nulls!r} is invalid: accepted are "
                              f"{', '.join(CHANCE_NULLS)}")
    positive, thresholds = shared_values(a)
    layers = number_list(a.heatmap_layers, "--heatmap_layers", int) if a.heatmap_layers else None
    return Options(a.checkpoint, Path(a.output_dir), a.probe_inputs, positive["probe_samples"],
                   a.allow_pickle, a.trust_remote_code, thresholds, layers, a.heatmap_component,
                   positive["num_threads"], fold, a.activation_point, merge_probe=merge,
                   spectral_metrics=spectral, chance_draws=int(a.chance_draws),
                   chance_nulls=a.chance_nulls, reference=a.reference)


def main(argv: list[str]) -> int:
    """Entry of ``probes/run.py --checkpoint ...``; returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        opts = parse_args(argv)
        check_output_dir(opts.output_dir)
        if os.environ.get("RANK", "0") == "0":  # a killed probe's leftovers, by one process
            recover(opts.output_dir)
        check_replaceable(opts.output_dir, CHECKPOINT_OUTPUTS)
        plans, notes = plan_all(opts)
    except (CheckpointError, OutputError) as e:
        if os.environ.get("RANK", "0") == "0":  # every process fails alike; the main one says so
            print(f"error: {e}", file=sys.stderr)
        return 2
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    main_process = accelerator.is_main_process
    threads = configure_threads(opts.num_threads, accelerator.num_processes)
    for note in notes:
        logger.warning(note)
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
