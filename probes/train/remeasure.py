"""Measure finished runs again from their checkpoint series, without training.

A run id names a trained model (``RunConfig.identity``); the analysis settings
(``ANALYSIS_KEYS``: thresholds, merge_probe, merge_steps, n_eval,
chance baselines) say what is measured of
it. When a finished run was measured with other analysis settings than the ones asked for, its
saved models (``checkpoint-<step>/`` and ``model/``, ``store.checkpoint_series``) are measured
again by the same ``SeriesProbe`` that measured them during training, and the run folder's
measured files are replaced. A finished run is measured at the steps it saved: ``n_probes``
changes the steps of new runs only.

Two ways in: the experiment's own command run again with only analysis settings changed
(``probes.train.experiment``), or ``condensation-probes measure DIR [--KEY VALUE ...]`` on a
finished experiment folder (``main``), which measures every run of its runs.csv again; under
``accelerate launch --num_processes N`` its processes split the runs and the main one writes
(``measure_all``). The saved series is checked and each model loaded by
``probes.train.saved_series``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path

import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from models import build_for_run
from probes.config import (
    ConfigError,
    RunConfig,
    checked,
    grammar,
    load_yaml,
    merge_at,
    validate,
)
from probes.config.keys import MEASURE_KEYS, RunKeys
from probes.measure.series import SeriesProbe
from probes.report.experiment import write_all
from probes.runtime import (
    configure_threads,
    main_process_logger,
    say_error,
)
from probes.store import (
    CONFIG,
    RUN_JSON,
    Publish,
    RunResult,
    read_run_json,
    recover,
    run_dir,
    run_folder,
    save_run,
)
from probes.train.loop import build_data, eval_data
from probes.train.saved_series import checked_series, first_line, load_model, recorded
from probes.train.usage import measure_help
from tasks.objective import objective_for

# messages of the main process only (probes.runtime; shown by probes.logs)
logger = main_process_logger(__name__)


def measure_run(cfg: RunConfig, task, data: dict, device) -> RunResult:
    """Measure the finished run of ``cfg`` again at every saved step.

    Args:
        cfg: the run's config with the analysis settings to apply; task, data: its task and
            numpy columns per split (as training used them); device: where the models run.

    Returns:
        the run's RunResult (no model; the config records the run's own n_probes).

    Raises:
        ConfigError: the run saved no checkpoint series from step 0 (``save_checkpoints`` final
            or none, or a run of an older version).
    """
    folder = run_dir(cfg)
    series = checked_series(cfg)
    objective = objective_for(task, cfg.last_position_only)
    probe = SeriesProbe(cfg.run_id, objective, eval_data(cfg, data), device, cfg.thresholds,
                        merge_steps=merge_at(cfg, [step for step, _ in series]),
                        chance=(cfg.chance_draws, cfg.chance_nulls))
    model_class = type(build_for_run(cfg, task)[0])  # built once: only its class is needed
    for step, path in series:
        where = f"checkpoint {str(path)!r} of run {cfg.run_id!r} (step {step})"
        try:
            model = load_model(model_class, path).to(device)
        except (OSError, RuntimeError, ValueError) as e:
            why = ("a tensor's shape differs from the model's" if "mismatched" in str(e)
                   else first_line(e))
            raise ConfigError(f"{where} does not load as the run's model ({why}): accepted are "
                              f"the models training saved, with finite weights") from e
        try:
            probe.measure(model, step)
        except ValueError as e:  # not met by a model that loads (finite, of the run's shapes)
            raise ConfigError(f"{where} cannot be measured ({first_line(e)}): accepted are "
                              f"the models training saved") from e
    raw = load_yaml((folder / CONFIG).read_text()) or {}
    row = dict(read_run_json(folder))
    last = probe.metrics[-1]["step"] if probe.metrics else 0
    if not row.get("diverged"):
        scores = {r["metric"]: r["value"] for r in probe.metrics
                  if r["step"] == last and r["component"] == "output" and r["metric"] in row}
        row |= scores
        row["fitted"] = bool(objective.fitted(scores))
    done = dataclasses.replace(cfg, n_probes=raw.get("n_probes", cfg.n_probes))
    return RunResult(done, row, probe.metrics, probe.offsets, probe.neurons, probe.heatmap,
                     None, raw.get("init_records", []), lineage=probe.lineage)


def measure_all(cfgs: list[RunConfig], data_for, device, publish: Publish | None = None,
                state: PartialState | None = None) -> list[dict]:
    """Measure the finished runs of ``cfgs`` again, then write them: every run is measured
    before any folder is replaced, so an error leaves them all as they were.

    Args:
        cfgs: the runs; data_for: cfg -> (task, numpy columns per split) (``build_data``);
        device: where the models run; publish: the set the new run folders join
            (``store.Publish``; None: each replaces its old one at once).
        state: accelerate's ``PartialState`` of several processes (None or one process: this
            one measures every run). Each process measures a contiguous share of ``cfgs``
            (``split_between_processes``), the results are gathered in the order of ``cfgs``
            and the main process alone writes them, so the files are those one process writes.

    Returns:
        the runs rows, in the order of ``cfgs`` (empty on a process other than the main one).

    Raises:
        ConfigError: a run that cannot be measured (``measure_run``), on every process (the
            first one met, in the order of ``cfgs``), so that none waits for another.
    """
    several = state is not None and state.num_processes > 1
    mine = cfgs
    if several:
        with state.split_between_processes(cfgs) as share:
            mine = list(share)
        logger.debug(f"process {state.process_index} measures {len(mine)} run(s): "
                     f"{', '.join(c.run_id for c in mine)}", main_process_only=False)
    results, error = [], None
    try:
        for cfg in mine:
            task, data = data_for(cfg)
            results.append(measure_run(cfg, task, data, device))
    except ConfigError as e:  # kept until every process has met the gathering below
        error = str(e)
    if several:
        results = gather_object(results)
        error = next((e for e in gather_object([error]) if e), None)
    if error:
        raise ConfigError(error)
    if several and not state.is_main_process:
        return []
    return [save_run(r, run_dir(r.cfg), publish) for r in results]


def experiment_configs(out_dir: Path, overrides: dict) -> list[RunConfig]:
    """The RunConfigs of the finished experiment in ``out_dir`` (its runs.csv, in order), with
    the analysis ``overrides`` applied.

    Raises:
        ConfigError: no runs.csv, a run folder without its config, an override of a key that
            is not an analysis setting, or an ``n_probes`` other than a run's own (its saved
            steps are what can be measured).
    """
    overrides = checked(overrides)
    bad = [k for k in overrides if k not in MEASURE_KEYS]
    if bad:
        raise ConfigError(f"--{bad[0]} is not taken by measure: accepted are "
                          f"{', '.join(MEASURE_KEYS)} (measure rewrites DIR's measured files in "
                          f"place, and every other key is fixed by the trained runs: train again "
                          f"to change one)")
    runs_csv = Path(out_dir) / "runs.csv"
    if not runs_csv.is_file():
        run = (Path(out_dir) / RUN_JSON).is_file() or any(Path(out_dir).glob("checkpoint-*"))
        raise ConfigError(f"{str(out_dir)!r} holds no runs.csv: accepted is the output folder of "
                          f"a finished experiment" + (" (this is one run's folder: measure its "
                          "experiment's folder, or probe this one with probe DIR)" if run else ""))
    cfgs = []
    for run_id in pd.read_csv(runs_csv)["run_id"]:
        folder = run_folder(out_dir, run_id)
        if not (folder / CONFIG).is_file():
            raise ConfigError(f"run folder {str(folder)!r} has no {CONFIG}: accepted is the output "
                              f"folder of a finished experiment")
        raw = recorded(folder)
        if "n_probes" in overrides and overrides["n_probes"] != raw.get("n_probes"):
            raise ConfigError(f"--n_probes {overrides['n_probes']}: measure measures the steps "
                              f"run {run_id!r} saved (n_probes {raw.get('n_probes')}): accepted is "
                              f"that value (n_probes sets the steps a new run saves)")
        cfg = RunConfig(**(raw | overrides | {"output_dir": str(out_dir)}))
        if cfg.run_id != run_id:  # a training key edited by hand: not the model that was saved
            raise ConfigError(f"{str(folder / CONFIG)!r} gives run id {cfg.run_id!r}, not its "
                              f"folder's {run_id!r} (a training setting in it was changed): "
                              f"accepted is the {CONFIG} training wrote")
        cfgs.append(cfg)
    return cfgs


def parse_args(argv: list[str]) -> tuple[Path, dict]:
    """``DIR [--KEY VALUE ...]`` by the one grammar (``probes.config.grammar``, RunKeys' types,
    one value per key): (the folder, the keys given).

    Raises:
        ConfigError: not one folder, an unknown key or a value of the wrong type.
    """
    positional, overrides = grammar.parse(argv, RunKeys, command="measure", listed=MEASURE_KEYS)
    if len(positional) != 1:
        raise ConfigError(f"measure takes one folder DIR, not {len(positional)} "
                          f"({' '.join(positional) or 'none'}): accepted is the output folder "
                          f"of a finished experiment")
    return Path(positional[0]), overrides


def failed(error: ConfigError, state: PartialState) -> int:
    """Exit code 2 after an error every process met: the main one says it, and all leave
    together (a process that exits while another still holds the process group can make that
    one abort instead of returning)."""
    if state.is_main_process:
        print(f"error: {error}", file=sys.stderr)
    state.wait_for_everyone()
    return 2


def main(argv: list[str]) -> int:
    """``measure DIR [--KEY VALUE ...]`` (see ``usage.measure_help``; the one grammar, one value
    per key); returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(measure_help())
        return 0
    try:
        folder, overrides = parse_args(argv)
    except ConfigError as e:
        say_error(e)
        return 2
    # several processes under accelerate launch --num_processes N (gloo on a CPU), else one
    state = PartialState(cpu=not torch.accelerator.is_available())
    if state.is_main_process and folder.is_dir():
        recover(folder)  # a killed measure (or run) of this folder rolled back first
    state.wait_for_everyone()
    try:
        cfgs = experiment_configs(folder, overrides)
        for cfg in cfgs:
            validate(cfg)
            checked_series(cfg)  # before any process starts: none is left waiting for another
    except ConfigError as e:
        return failed(e, state)
    threads = configure_threads(cfgs[0].num_threads, state.num_processes)
    logger.info(f"{len(cfgs)} run(s) of {cfgs[0].out_dir}/ measured again on "
                f"{state.num_processes} process(es), {threads} thread(s) each")
    # the run folders and the reports as one set: a kill, or a model found unusable only once
    # it is loaded (non-finite weights, a tensor of another shape), leaves the experiment as it was
    try:
        with Publish(cfgs[0].out_dir) if state.is_main_process else contextlib.nullcontext() as publish:
            with state.split_between_processes(cfgs) as mine:
                data_for = build_data(list(mine))
            measure_all(cfgs, data_for, torch.device("cpu"), publish, state)
            if state.is_main_process:
                write_all(cfgs, publish)
    except ConfigError as e:  # met by every process (measure_all)
        return failed(e, state)
    state.wait_for_everyone()
    return 0
