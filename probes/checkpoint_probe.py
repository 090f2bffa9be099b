"""Probe checkpoints on disk: ``accelerate launch probes/run.py --checkpoint DIR [...]``.

For each checkpoint (a folder, every step of a folder of step checkpoints, or a GGUF file), the
unit sets of every layer (probes/units.py) are read one layer at a time from the weights and
measured with the same ``Condensation`` metrics as training probes; with ``--probe_inputs`` the
whole model is loaded and the same units are measured again by their outputs over the probe batch
(``basis=activation``, probes/capture.py). The main process writes ``OUT/metrics.csv`` (same
schema as the experiments), ``OUT/runs.csv`` (one row per checkpoint) and ``OUT/figures/``.

``rd`` is not reported: it needs the weights at initialization, which a foreign checkpoint lacks.
Bad input prints one ``error:`` line and exits with code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from probes.checkpoints import (
    Checkpoint,
    CheckpointError,
    discover,
    load_config,
    load_model,
    meta_model,
    open_weights,
    unique_run_ids,
)
from probes.metrics import THRESHOLDS, Condensation
from probes.units import (
    Layout,
    ModelTensors,
    UnsupportedModel,
    base_prefix,
    block_units,
    discover_layout,
    layer_unit_sets,
    layout_for,
)

RUNS_COLUMNS = ["run_id", "step", "checkpoint", "format", "model_type", "architecture", "n_params",
                "n_layers", "unit_reader", "probe_inputs", "n_samples", "wall_s", "package_version"]
DEFAULT_OUTPUT = "reports/checkpoints"
OPTIONS = ("--checkpoint", "--output_dir", "--probe_inputs", "--probe_samples", "--allow_pickle",
           "--trust_remote_code", "--thresholds", "--heatmap_layers", "--heatmap_component",
           "--num_threads")
USAGE = """usage: accelerate launch probes/run.py --checkpoint DIR [--checkpoint DIR2 ...] [options]

  --checkpoint PATH        a save_pretrained folder, a folder of checkpoint-N / step_N folders
                           (probed as a series), gguf:FILE or gguf:smollm2, or a hub id when online
  --output_dir DIR         where metrics.csv, runs.csv and figures/ go (default reports/checkpoints)
  --probe_inputs SPEC      activation basis too: a task name (this project's models), a text file
                           of lines (language models) or a folder of images (vision models)
  --probe_samples N        samples (tokens, pixel positions, rows) in the probe batch (default 1024)
  --allow_pickle           accept pytorch_model.bin weights (pickle can run code: trusted files only)
  --trust_remote_code      run the model code a checkpoint ships (trusted checkpoints only)
  --thresholds LIST        cosine thresholds for groups (default [0.7, 0.9, 0.95, 0.99])
  --heatmap_layers LIST    layers drawn as heat maps (default: first, middle and last)
  --heatmap_component C    component drawn (default attn.q, else the first component)
  --num_threads N          threads (default: all cores / processes)"""


@dataclass
class Options:
    checkpoints: list[str]
    output_dir: Path
    probe_inputs: str | None
    probe_samples: int
    allow_pickle: bool
    trust_remote_code: bool
    thresholds: list[float]
    heatmap_layers: list[int] | None
    heatmap_component: str | None
    num_threads: int | None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one line, code 2
        raise CheckpointError(f"{message}: accepted with --checkpoint are {', '.join(OPTIONS)}")


def _number_list(text: str, name: str, kind) -> list:
    """A YAML list ("[0, 5]") or comma list ("0,5") of numbers."""
    try:
        value = yaml.safe_load(text if text.strip().startswith("[") else f"[{text}]")
        items = [kind(v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not value or len(items) != len(value) or (kind is int and items != value):
            raise ValueError
    except (yaml.YAMLError, TypeError, ValueError):
        raise CheckpointError(f"{name} {text!r} is invalid: accepted is a list of "
                              f"{'integers' if kind is int else 'numbers'} like 0,5 or [0, 5]") from None
    return items


def parse_args(argv: list[str]) -> Options:
    """Parse the command line.

    Raises:
        CheckpointError: unknown flag, missing value, or a value outside what is accepted.
    """
    p = _Parser(prog="probes/run.py", add_help=False, allow_abbrev=False)
    p.add_argument("--checkpoint", action="append", required=True)
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT)
    p.add_argument("--probe_inputs")
    p.add_argument("--probe_samples", default="1024")
    p.add_argument("--allow_pickle", action="store_true")
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--thresholds")
    p.add_argument("--heatmap_layers")
    p.add_argument("--heatmap_component")
    p.add_argument("--num_threads")
    a = p.parse_args(argv)
    positive = {}
    for key in ("probe_samples", "num_threads"):
        text = getattr(a, key)
        if text is not None and not (text.isdigit() and int(text) >= 1):
            raise CheckpointError(f"--{key} {text!r} is invalid: accepted is an integer >= 1")
        positive[key] = int(text) if text is not None else None
    thresholds = _number_list(a.thresholds, "--thresholds", float) if a.thresholds else list(THRESHOLDS)
    if not all(0 < t < 1 for t in thresholds):
        raise CheckpointError(f"--thresholds {a.thresholds!r} is invalid: accepted are numbers in (0, 1)")
    layers = _number_list(a.heatmap_layers, "--heatmap_layers", int) if a.heatmap_layers else None
    return Options(a.checkpoint, Path(a.output_dir), a.probe_inputs, positive["probe_samples"],
                   a.allow_pickle, a.trust_remote_code, thresholds, layers, a.heatmap_component,
                   positive["num_threads"])


# --- planning: every check before any work ----------------------------------------------------

@dataclass
class Plan:
    """One checkpoint, checked and ready: its config, layout, weights and what to draw."""

    ckpt: Checkpoint
    config: object
    layout: Layout
    fmt: str
    n_params: int
    source: object = None  # tensor source (opened when planned, so broken files fail early)
    model: object = None  # the whole model: GGUF files, or when activations are asked for
    tokenizer: object = None  # shipped with a GGUF file
    batch: object = None  # the probe batch (probes.probe_inputs.ProbeBatch), when asked for
    prefix: str = ""  # key prefix in front of the layout's block paths
    draw_layers: list[int] = field(default_factory=list)  # chosen layers (heat maps, series plot)
    component: str = ""  # chosen component
    draw: bool = True  # heat maps of this checkpoint (only the last step of a series)


def _layout(config, meta) -> Layout:
    try:
        return layout_for(config)
    except UnsupportedModel:
        return discover_layout(meta)


def _draw_choice(plan: Plan, opts: Options) -> None:
    layers = sorted({b.layer for b in plan.layout.blocks})
    chosen = opts.heatmap_layers or sorted({layers[0], layers[len(layers) // 2], layers[-1]})
    bad = [x for x in chosen if x not in layers]
    if bad:
        raise CheckpointError(f"--heatmap_layers {bad} not in checkpoint {plan.ckpt.run_id!r}: "
                              f"accepted are its layers {layers[0]}..{layers[-1]}")
    comps = list(dict.fromkeys(p.component for b in plan.layout.blocks for p in b.parts))
    component = opts.heatmap_component or ("attn.q" if "attn.q" in comps else comps[0])
    if component not in comps:
        raise CheckpointError(f"--heatmap_component {component!r} is not in checkpoint "
                              f"{plan.ckpt.run_id!r}: accepted are {comps}")
    plan.draw_layers, plan.component = chosen, component


def plan_checkpoint(ckpt: Checkpoint, opts: Options, notes: list[str]) -> Plan:
    """Check one checkpoint (config, safety, weights, reader, heat-map choice) without probing.

    Raises:
        CheckpointError: anything that would stop the probe (one line).
    """
    if ckpt.gguf:
        from probes.gguf_convert import load_gguf

        try:
            model, tokenizer = load_gguf(ckpt.path)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        layout = _layout(model.config, model)
        plan = Plan(ckpt, model.config, layout, "gguf", model.num_parameters(),
                    ModelTensors(model), model, tokenizer)
    else:
        config = load_config(ckpt.path, opts.trust_remote_code)
        meta = meta_model(config, opts.trust_remote_code)
        try:
            layout = _layout(config, meta)
        except UnsupportedModel as e:
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: {e}") from e
        fmt, source = open_weights(ckpt.path, opts.allow_pickle)
        plan = Plan(ckpt, config, layout, fmt, meta.num_parameters(), source)
    try:
        plan.prefix = base_prefix(plan.source.names(), layout)
    except UnsupportedModel as e:
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: {e}") from e
    notes.extend(f"{ckpt.run_id}: {n}" for n in layout.notes)
    _draw_choice(plan, opts)
    return plan


def plan_all(opts: Options) -> tuple[list[Plan], list[str]]:
    """Discover and check every checkpoint named on the command line (see ``plan_checkpoint``);
    only the last step of a series is drawn as heat maps."""
    ckpts = unique_run_ids([c for arg in opts.checkpoints for c in discover(arg)])
    notes: list[str] = []
    plans = [plan_checkpoint(c, opts, notes) for c in ckpts]
    for i, plan in enumerate(plans):
        nxt = plans[i + 1].ckpt if i + 1 < len(plans) else None
        if nxt is not None and nxt.series is not None and nxt.series == plan.ckpt.series:
            plan.draw = False
    if opts.probe_inputs:
        for plan in plans:
            check_inputs(plan, opts)
    return plans, list(dict.fromkeys(notes))


def check_inputs(plan: Plan, opts: Options) -> None:
    """Build the checkpoint's probe batch now, so that inputs it cannot read fail before any work.

    Raises:
        CheckpointError: inputs of a kind the checkpoint cannot read (no tokenizer, no image
            processor, a task without the model's input column, ...).
    """
    from probes import probe_inputs as pi
    from probes.checkpoints import model_class

    spec, folder, n = opts.probe_inputs, plan.ckpt.path, opts.probe_samples
    kind = pi.input_kind(spec)
    if kind == "task":
        input_name = model_class(plan.config, opts.trust_remote_code).main_input_name
        plan.batch = pi.task_batch(spec, folder, input_name, n)
    elif kind == "text":
        plan.batch = pi.text_batch(Path(spec), plan.tokenizer or pi.load_tokenizer(folder), n)
    else:
        plan.batch = pi.image_batch(Path(spec), pi.load_image_processor(folder), n)


# --- probing ----------------------------------------------------------------------------------

class Fitter:
    """Fits unit sets on ``workers`` threads, each with one BLAS thread, while the main thread
    reads the next layer with one torch thread: the metrics' BLAS / LAPACK calls are faster side
    by side than sharing threads on a small machine, and idle threads that spin at barriers
    (OpenBLAS, OpenMP) cost much when another process takes a core. ``torch_threads`` is the
    caller's torch thread count, for the forward passes of the activation basis."""

    def __init__(self, thresholds, workers: int):
        self.thresholds, self.workers = thresholds, max(1, workers)

    def __enter__(self) -> Fitter:
        from threadpoolctl import threadpool_limits

        self.limits = threadpool_limits(1, user_api="blas")
        self.torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        self.pool = ThreadPoolExecutor(self.workers)
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()
        torch.set_num_threads(self.torch_threads)
        self.limits.restore_original_limits()

    def submit(self, units: torch.Tensor):
        return self.pool.submit(Condensation(self.thresholds).fit, units.numpy())


def ordered_cosine(fit, max_units: int = 1024) -> tuple[np.ndarray, int]:
    """(the fit's cosine with units in group order, every k-th unit kept, k) as float32: a heat
    map shows at most ``max_units`` units a side (the group order keeps groups as blocks)."""
    n = len(fit.order_)
    k = max(1, -(-n // max_units))
    order = fit.order_[::k]
    return np.asarray(fit.cosine_[np.ix_(order, order)], dtype=np.float32), k


@dataclass
class Result:
    """What one checkpoint hands to the report: metrics rows, its runs row, heat-map panels."""

    metrics: list[dict]
    row: dict
    maps: list[dict]


class Prober:
    """Measures one planned checkpoint in the weight basis (and the activation basis if asked)."""

    def __init__(self, plan: Plan, opts: Options, fitter: Fitter, progress=None, device="cpu",
                 warn=None):
        self.plan, self.opts, self.fitter, self.device = plan, opts, fitter, device
        self.progress = progress or (lambda: None)
        self.warn = warn or (lambda text: None)
        self.metrics, self.maps, self.n_samples = [], [], None
        self.threshold = 0.9 if 0.9 in opts.thresholds else opts.thresholds[0]

    def run(self) -> Result:
        start = time.perf_counter()
        plan = self.plan
        self.measure("weight", (block_units(plan.source, plan.prefix, b) for b in plan.layout.blocks))
        if self.opts.probe_inputs:
            self.measure("activation", self.activation_sets())
        plan.source = plan.model = plan.batch = None  # free memory before the next checkpoint
        from probes.report import package_version

        row = dict(run_id=plan.ckpt.run_id, step=plan.ckpt.step, checkpoint=str(plan.ckpt.path),
                   format=plan.fmt, model_type=plan.config.model_type,
                   architecture=(getattr(plan.config, "architectures", None) or [""])[0],
                   n_params=plan.n_params, n_layers=len({b.layer for b in plan.layout.blocks}),
                   unit_reader=plan.layout.reader, probe_inputs=self.opts.probe_inputs or "",
                   n_samples=self.n_samples, wall_s=round(time.perf_counter() - start, 2),
                   package_version=package_version())
        return Result(self.metrics, row, self.maps)

    def measure(self, basis: str, layers) -> None:
        """Fit every unit set of every layer; at most two layers are in flight at once."""
        pending = deque()
        for sets in layers:
            pending.append((sets, [self.fitter.submit(u.units) for u in sets]))
            if len(pending) > 1:
                self.collect(basis, *pending.popleft())
        while pending:
            self.collect(basis, *pending.popleft())

    def collect(self, basis: str, sets, futures) -> None:
        ckpt = self.plan.ckpt
        for u, future in zip(sets, futures):
            try:
                fit = future.result()
            except ValueError as e:
                raise CheckpointError(f"{ckpt.run_id} layer {u.layer} {u.component}: {e}") from e
            base = dict(run_id=ckpt.run_id, step=ckpt.step, layer=u.layer, component=u.component,
                        head=u.head, basis=basis, n_units=fit.n_units_)
            self.metrics += [base | dict(metric=m, threshold=t, value=v) for m, t, v in fit.results()]
            if (self.plan.draw and u.layer in self.plan.draw_layers and u.head is None
                    and u.component == self.plan.component and fit.n_units_ > 1):
                cosine, stride = ordered_cosine(fit)
                self.maps.append(dict(basis=basis, layer=u.layer, cosine=cosine, stride=stride,
                                      n_units=fit.n_units_, threshold=self.threshold,
                                      n_groups=fit.n_groups_[self.threshold],
                                      mean_abs_cos=fit.mean_abs_cos_))
        self.progress()

    def activation_sets(self):
        """Per layer, the unit sets of the activation basis (outputs over the probe batch)."""
        from probes.capture import Capture

        plan, model = self.plan, self.load_model()
        batch = plan.batch
        prefix = base_prefix(ModelTensors(model).names(), plan.layout)
        paths = {}
        for block in plan.layout.blocks:
            for part in block.parts:
                path = prefix + block.module(part)
                try:
                    model.get_submodule(path)
                except AttributeError:
                    if not part.optional:
                        raise CheckpointError(f"module {path!r} is missing from the loaded model") from None
                    continue
                paths[(block.layer, part.component)] = path
        model.to(self.device)
        torch.set_num_threads(self.fitter.torch_threads)  # the forward passes use every core
        try:
            with torch.no_grad(), Capture(model, list(paths.values()), batch.max_positions) as cap:
                for inputs in batch.passes:
                    model(**{k: v.to(self.device) for k, v in inputs.items()})
        finally:
            torch.set_num_threads(1)
        outputs = {p: y[: self.opts.probe_samples] for p, y in cap.outputs.items()}
        # convolutions see fewer positions deeper in: report the most any layer had
        self.n_samples = max((len(y) for y in outputs.values()), default=0)
        short = [(len(y), y.shape[1]) for y in outputs.values() if len(y) < y.shape[1]]
        if short:
            n, units = min(short)
            self.warn(f"{plan.ckpt.run_id}: in the activation basis a layer of {units} units has "
                      f"only {n} samples, so its output vectors span at most {n} dimensions and "
                      f"cosines run high: give more probe inputs")
        for block in plan.layout.blocks:
            comps = {}
            for part in block.parts:
                path = paths.get((block.layer, part.component))
                if path is None:
                    continue
                y = outputs[path]
                y = y[:, part.select] if part.select is not None else y
                comps[part.component] = (y.T.contiguous(), part.heads, y.shape[0])
            yield layer_unit_sets(block.layer, comps, qk_heads=False)

    def load_model(self):
        plan = self.plan
        if plan.model is None:
            plan.model = load_model(plan.ckpt.path, plan.config, self.opts.allow_pickle,
                                    self.opts.trust_remote_code)
        return plan.model

# --- report -----------------------------------------------------------------------------------

def write_outputs(out: Path, results: list[Result], plans: list[Plan], opts: Options) -> None:
    """Main process: metrics.csv, runs.csv and the figures, each written atomically."""
    from probes.checkpoint_figures import cosine_heatmaps, groups_over_training, heatmap_name
    from probes.report import METRICS_COLUMNS, frame, write_csv

    metrics = frame([r for res in results for r in res.metrics], METRICS_COLUMNS)
    runs = frame([res.row for res in results], RUNS_COLUMNS)
    write_csv(metrics, out / "metrics.csv")
    write_csv(runs, out / "runs.csv")
    for res, plan in zip(results, plans):
        if res.maps:
            ckpt = plan.ckpt
            title = f"{ckpt.run_id}" + (f" step {ckpt.step}" if ckpt.step is not None else "")
            cosine_heatmaps(res.maps, out / "figures" / heatmap_name(ckpt.run_id, ckpt.step, plan.component),
                            f"{title}: {plan.component} cosine, units ordered by group")
    series = [p for p in plans if p.ckpt.series is not None]
    if series:
        threshold = 0.9 if 0.9 in opts.thresholds else opts.thresholds[0]
        groups_over_training(metrics, out / "figures" / "groups_over_training.png",
                             series[-1].component, series[-1].draw_layers, threshold)


def summary(metrics, threshold: float) -> str:
    """Per checkpoint and component (weight basis, whole layers): the median over layers of the
    group ratio at ``threshold`` and of mean |cos|, and the most condensed layer."""
    import pandas as pd

    m = metrics[metrics["head"].isna() & (metrics["basis"] == "weight")].copy()
    m["step"] = m["step"].astype("string").fillna("-")
    ratio = m[(m["metric"] == "group_ratio") & np.isclose(m["threshold"].astype(float), threshold)]
    cos = m[m["metric"] == "mean_abs_cos"]
    keys = ["run_id", "step", "component"]
    low = ratio.loc[ratio.groupby(keys)["value"].idxmin()].set_index(keys)
    table = pd.DataFrame({
        f"group_ratio@{threshold:g} median": ratio.groupby(keys)["value"].median(),
        "lowest": low["value"], "in layer": low["layer"],
        "mean|cos| median": cos.groupby(keys)["value"].median()})
    return ("condensation over layers (weight basis; group ratio = groups / units, 1 = none):\n"
            + table.round(3).to_string())


def main(argv: list[str]) -> int:
    """Entry of ``probes/run.py --checkpoint ...``; returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        opts = parse_args(argv)
        plans, notes = plan_all(opts)
    except CheckpointError as e:
        if os.environ.get("RANK", "0") == "0":  # every process fails alike; the main one says so
            print(f"error: {e}", file=sys.stderr)
        return 2
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from probes.run import configure_threads

    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    main_process = accelerator.is_main_process
    threads = configure_threads(opts.num_threads, accelerator.num_processes)
    hf_logging.disable_progress_bar()  # one progress bar: ours
    if main_process:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    with accelerator.split_between_processes(list(range(len(plans)))) as mine:
        mine = list(mine)
    bases = 2 if opts.probe_inputs else 1
    bar = tqdm(total=sum(len(plans[i].layout.blocks) for i in mine) * bases, unit="layer",
               disable=not main_process, dynamic_ncols=True)

    def warn(text: str) -> None:
        if main_process:
            bar.write(f"warning: {text}", file=sys.stderr)

    results, error = [], None
    try:
        with Fitter(opts.thresholds, threads) as fitter:
            for i in mine:
                bar.set_description(plans[i].ckpt.run_id)
                results.append(Prober(plans[i], opts, fitter, bar.update, accelerator.device,
                                      warn).run())
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
        write_outputs(opts.output_dir, results, plans, opts)
        from probes.report import read_csv

        threshold = 0.9 if 0.9 in opts.thresholds else opts.thresholds[0]
        print(summary(read_csv(opts.output_dir / "metrics.csv"), threshold))
        print(f"{len(plans)} checkpoint(s) probed -> {opts.output_dir}/ (metrics.csv, runs.csv, figures/)")
    accelerator.wait_for_everyone()
    return 0
