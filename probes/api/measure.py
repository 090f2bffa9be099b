"""``measure``: condensation of a live model, a checkpoint folder or a run's checkpoint series, as
metrics.csv rows in a DataFrame. One measuring path: every case is planned as a checkpoint
(``probes.checkpoint.probe.plan_all`` for paths on disk, ``probes.api.live.live_plan`` for a
model in memory) and measured by the checkpoint probe's ``Prober`` with the options of
``probes/run.py --checkpoint``."""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from probes.api.live import eval_mode, live_plan, model_device
from probes.checkpoint.activations import ACTIVATION_POINTS
from probes.checkpoint.probe import Hint, Options, Prober, plan_all, plan_reference, set_reference
from probes.config import SPECTRAL_CHOICES
from probes.measure.fitting import Fitter
from probes.measure.metrics import THRESHOLDS
from probes.store import METRICS_COLUMNS, frame

BASES = ("weight", "activation", "both")
PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)  # probes/


def measure(model_or_path, *, thresholds=THRESHOLDS, basis: str = "weight", inputs=None,
            probe_samples: int = 1024, activation_point: str = "pre", fold_norms: bool = True,
            merge: bool = False, spectral: bool | str = True, run_id: str | None = None,
            step: int | None = None, num_threads: int | None = None, device=None,
            allow_pickle: bool = False, trust_remote_code: bool = False,
            reference=None) -> pd.DataFrame:
    """Condensation of every unit set of a model: cosine similarity of its units and the groups
    they condense into (complete linkage cut at each threshold; Xu, Zhang, Zhou, arXiv
    2504.09484), ranks and, with ``merge``, the loss after merging each condensed group.

    Units (reports/README.md): an ``nn.Linear`` / GPT-2 ``Conv1D`` output neuron's input
    weights with its bias appended; a convolution's output channel, kernel flattened (in_ch *
    prod(kernel)), bias appended; per attention head where the architecture has a reader.

    Args:
        model_or_path: an ``nn.Module`` in memory: a transformers model whose model type has a
            reader (``probes.measure.arch.REGISTRY``; others by module path in numbered blocks,
            as their checkpoint folders), this project's models, or any module (every
            ``nn.Linear``, ``Conv1D`` and convolution a unit set of its own: component = its
            module path, layer = the first integer in it or None; see ``module_layout``);
            or a path (str / ``os.PathLike``): a ``save_pretrained`` folder, a run folder of
            ``checkpoint-<step>/`` folders (measured step by step, ``runs/<id>``), ``gguf:FILE``.
        thresholds: cosine thresholds tau in (0, 1) at which groups are counted.
        basis: ``weight`` (the units' weights), ``activation`` (their outputs over ``inputs``)
            or ``both``.
        inputs: probe inputs (activation basis and merge). A live model: a tensor (its forward
            pass's first argument), a dict of keyword arguments of one pass, or a list of
            either. A path: a task name, a text file of lines or a folder of images, as
            ``--probe_inputs``.
        probe_samples: samples (tokens, positions, rows) kept per layer in the activation basis.
        activation_point: ``pre`` (projection outputs) or ``post`` (MLP neurons after their
            nonlinearity).
        fold_norms: weight basis: fold the gain (and bias) of the norm a projection reads into
            its rows (TransformerLens's ``fold_ln``); only architectures with a reader have norms.
        merge: merge each condensed group and report the next-token loss (causal LMs with token
            ``inputs``; a live model is merged on a copy and left unchanged).
        spectral: also ``stable_rank`` and ``effective_rank`` (of a Linear weight without its
            bias also ``stable_rank_weight`` and ``alpha``); ``"stable"``: the stable ranks
            alone, without the spectrum (``--spectral_metrics stable``).
        run_id, step: the rows' run_id (default: the class name) and step (default None): live
            models only; a path's come from disk (folder name, checkpoint-<step>).
        num_threads: threads for fitting (default: torch's current count).
        device: a path only: where its forward passes run (default: the accelerator when there is
            one, else CPU). A live model runs where it is (move it first to run it elsewhere).
        allow_pickle, trust_remote_code: as ``--allow_pickle`` / ``--trust_remote_code``.
        reference: a step-0 or base model of the same architecture and unit-set shapes (an
            ``nn.Module`` or a checkpoint path, as ``--reference``): adds, per weight-basis unit
            set, ``rd`` = ||W - W_ref||_F / ||W_ref||_F (Luo, Xu, Ma, Zhang, JMLR 2021) and
            ``angle_mean`` / ``angle_median`` / ``angle_max``, each unit's angle in degrees to
            its direction in the reference (``probes.measure.drift``). None: no such rows.

    Returns:
        DataFrame with exactly ``METRICS_COLUMNS`` (run_id, step, layer, component, head, basis,
        metric, threshold, value, n_units), one row per (unit set, metric, threshold); integer
        columns nullable (``Int64``). Its ``attrs`` say what was done, which may be less than
        what was asked (``done``): ``fold_norms`` as applied, ``activation_point`` as captured,
        ``notes`` and ``runs`` (the runs.csv rows of ``--checkpoint``); ``hints``: options that
        would add rows (a series with its step 0: ``reference=``). A live model's training
        mode, device and weights are left as they were; no hook stays on it.

    Raises:
        TypeError: ``model_or_path`` neither a module nor a path; an option of the wrong type.
        ValueError: an option outside what is accepted (the message names it); a model or a
            folder that cannot be measured (``UnsupportedModel``, ``CheckpointError``).
    """
    live = isinstance(model_or_path, nn.Module)
    if not live and not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(f"model_or_path of type {type(model_or_path).__name__} is not accepted: "
                        f"accepted are an nn.Module or a path (str or os.PathLike)")
    opts = _options(thresholds, basis, inputs, probe_samples, activation_point, fold_norms,
                    merge, spectral, num_threads, allow_pickle, trust_remote_code)
    if reference is not None and not isinstance(reference, (nn.Module, str, os.PathLike)):
        raise TypeError(f"reference of type {type(reference).__name__} is not accepted: accepted "
                        f"are an nn.Module, a path (str or os.PathLike) or None")
    if live:
        if run_id is not None and not isinstance(run_id, str):
            raise TypeError(f"run_id={run_id!r} is not accepted: accepted is a str")
        if step is not None and (not isinstance(step, numbers.Integral) or step < 0):
            raise ValueError(f"step={step!r} is not accepted: accepted is an integer >= 0 or None")
        if device is not None:
            raise ValueError(f"device={device!r} applies to a path only: a live model runs on its "
                             f"own device (accepted: device=None; move the model first)")
        with eval_mode(model_or_path) if inputs is not None else contextlib.nullcontext():
            return _measure_live(model_or_path, opts, run_id or type(model_or_path).__name__,
                                 step, inputs, reference)
    if run_id is not None or step is not None:
        raise ValueError(f"run_id={run_id!r} / step={step!r} apply to a model in memory only: a "
                         f"path's run_id and steps are read from its folders")
    if inputs is not None and not isinstance(inputs, (str, os.PathLike)):
        raise TypeError(f"inputs of type {type(inputs).__name__} are not accepted with a path: "
                        f"accepted are a task name, a text file or a folder of images")
    opts.checkpoints = [str(model_or_path)]
    opts.probe_inputs = None if inputs is None else str(inputs)
    live_ref = isinstance(reference, nn.Module)
    opts.reference = None if reference is None or live_ref else str(reference)
    plans, notes = plan_all(opts, live_plan(reference, opts, "reference", None)[0] if live_ref
                            else None)
    return _run(plans, notes, opts, device or _default_device())


def _measure_live(model, opts: Options, run_id: str, step, inputs, reference) -> pd.DataFrame:
    plan, notes = live_plan(model, opts, run_id, step, inputs)
    if inputs is not None:
        opts.probe_inputs = "inputs"  # the runs row's label; the batch is already on the plan
    if isinstance(reference, nn.Module):
        set_reference([plan], live_plan(reference, opts, "reference", None)[0], opts, "reference")
    elif reference is not None:
        set_reference([plan], plan_reference(str(reference), opts), opts, str(reference))
    return _run([plan], notes, opts, model_device(model))


def _warn(text: str) -> None:
    """A UserWarning attributed to the first caller outside this package (the user's line)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(text, stacklevel=level)


def _run(plans, notes, opts: Options, device) -> pd.DataFrame:
    for note in notes:
        if not isinstance(note, Hint):  # a suggestion, not a warning: in attrs["hints"]
            _warn(note)
    for plan in plans:
        plan.draw = False  # no heat maps: no dendrogram order to build
    rows, runs = [], []
    with Fitter(opts.thresholds, opts.num_threads or torch.get_num_threads(),
                opts.spectral_metrics) as fitter:
        for plan in plans:
            result = Prober(plan, opts, fitter, device=device, warn=_warn).run()
            rows += result.metrics
            runs.append(result.record)
    df = frame(rows, METRICS_COLUMNS)
    df.attrs.update(done(runs), hints=[str(n) for n in notes if isinstance(n, Hint)])
    return df


def done(runs: list[dict]) -> dict:
    """``DataFrame.attrs`` of ``measure``: what was done, as the ``--checkpoint`` command line's
    runs.csv records it (``CHECKPOINT_RUNS_COLUMNS``).

    Args:
        runs: one runs row per measured checkpoint (``Prober.run().record``), in step order.

    Returns:
        ``fold_norms`` (bool: norm gains folded into the weight-basis rows), ``activation_point``
        (``pre`` / ``post`` as captured, ``""`` without the activation basis), each the value
        every checkpoint shares (None where checkpoints of a series differ); ``notes``: the
        distinct notes of every checkpoint joined by ``"; "`` (the runs.csv ``notes`` column:
        each option asked for and not, or not wholly, applied; ``""`` when none); ``runs``: the
        rows themselves (lists and plain values only, so that pandas can copy and compare
        attrs).
    """
    shared = {}
    for key in ("fold_norms", "activation_point"):
        values = {r[key] for r in runs}
        shared[key] = values.pop() if len(values) == 1 else None
    notes = dict.fromkeys(n for r in runs for n in r["notes"].split("; ") if n)
    return shared | {"notes": "; ".join(notes), "runs": [dict(r) for r in runs]}


def _default_device() -> torch.device:
    """The accelerator when there is one, else CPU (as the ``--checkpoint`` command line)."""
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def checked_spectral(value) -> bool | str:
    """``spectral`` if it is True, False or "stable" (``probes.config.SPECTRAL_CHOICES``; the
    name in any case, as on the command line). Raises TypeError otherwise."""
    if isinstance(value, bool):
        return value
    names = [c for c in SPECTRAL_CHOICES if isinstance(c, str)]
    if isinstance(value, str) and value.lower() in names:
        return value.lower()
    raise TypeError(f"spectral={value!r} is not accepted: accepted are True, False and "
                    f"'stable' (the stable ranks alone)")


def checked_flag(name: str, value) -> bool:
    """``value`` if it is a bool. Raises TypeError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} is not accepted: accepted are True and False")
    return value


def checked_thresholds(value) -> list[float]:
    """``value`` as a list of distinct floats in (0, 1) (a repeated one would give its rows
    twice). Raises TypeError (not a sequence) or ValueError."""
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"thresholds={value!r} is not accepted: accepted is a sequence of numbers "
                        f"in (0, 1), e.g. (0.9, 0.95)") from None
    if not items or not all(isinstance(t, numbers.Real) and not isinstance(t, bool) and 0 < t < 1
                            for t in items) or len(set(items)) < len(items):
        raise ValueError(f"thresholds={value!r} is not accepted: accepted is a non-empty sequence "
                         f"of distinct numbers in (0, 1)")
    return [float(t) for t in items]


def _positive(name: str, value, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} is not accepted: accepted is an integer >= 1"
                         + (" or None" if optional else ""))
    return int(value)


def _options(thresholds, basis, inputs, probe_samples, activation_point, fold_norms, merge,
             spectral, num_threads, allow_pickle, trust_remote_code) -> Options:
    """The checkpoint probe's ``Options`` for ``measure``'s arguments, checked (see there)."""
    if basis not in BASES:
        raise ValueError(f"basis={basis!r} is not accepted: accepted are {', '.join(BASES)}")
    if activation_point not in ACTIVATION_POINTS:
        raise ValueError(f"activation_point={activation_point!r} is not accepted: accepted are "
                         f"{', '.join(ACTIVATION_POINTS)}")
    merge = checked_flag("merge", merge)
    if (basis != "weight" or merge) and inputs is None:
        raise ValueError(f"basis={basis!r}{' with merge=True' if merge else ''} needs inputs: "
                         f"accepted are probe inputs (see measure's docstring)")
    if basis == "weight" and not merge and inputs is not None:
        raise ValueError("inputs are read by basis='activation' or 'both' and by merge=True only: "
                         "accepted with basis='weight' is inputs=None")
    return Options(checkpoints=[], output_dir=Path("."), probe_inputs=None,
                   probe_samples=_positive("probe_samples", probe_samples),
                   allow_pickle=checked_flag("allow_pickle", allow_pickle),
                   trust_remote_code=checked_flag("trust_remote_code", trust_remote_code),
                   thresholds=checked_thresholds(thresholds), heatmap_layers=None,
                   heatmap_component=None,
                   num_threads=_positive("num_threads", num_threads, optional=True),
                   fold_norms=checked_flag("fold_norms", fold_norms),
                   activation_point=activation_point, merge_probe=merge,
                   spectral_metrics=checked_spectral(spectral),
                   bases=("weight", "activation") if basis == "both" else (basis,))
