"""``condensation-probes align A B [options]``: did two checkpoints find the same directions?

A and B are checkpoint folders (as ``--checkpoint`` accepts, one checkpoint each) or
``RUN_DIR@STEP``, one step of a folder of step checkpoints. Both are planned and checked by the
checkpoint probe's own code (``probes.checkpoint.probe.plan_checkpoint``: config against
weights, before any work). For every weight-basis unit set present in both (same layer,
component and head, units of the same dimension), the condensed groups of each side at each
threshold are matched one to one by the Hungarian algorithm on their centroids' cosine
(``probes.measure.alignment.group_alignment``). With ``--probe_inputs`` both models run on the
same probe batch and every activation-basis unit set present in both gets the debiased linear
CKA of the two sides' activations (``probes.measure.alignment.linear_cka``).

Centroid cosines compare directions in one coordinate system: two steps of one run, or layers
that read the same fixed inputs; two independent transformer runs have different embeddings,
so their weight rows do not share one (CKA does not need it). A note says so when A and B are
not steps of one series. Writes ``OUT/align.csv`` (``ALIGN_COLUMNS``) as the checkpoint probe
writes its folder: what a killed earlier command left in OUT is rolled back first
(``store.recover``), then the new folder is staged and takes OUT's place whole
(``store.folder_replaced``); bad input prints one ``error:`` line and exits with code 2 before
anything is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from probes.checkpoint.activations import activation_units
from probes.checkpoint.cli import values
from probes.checkpoint.discover import CheckpointError, load_model, resolve, unique_run_ids
from probes.checkpoint.merged import merged_source
from probes.checkpoint.probe import Options, check_inputs, plan_checkpoint
from probes.checkpoint.usage import ALIGN_DEFAULTS, align_help
from probes.config.grammar import ConfigError
from probes.config.keys import ALIGN_KEYS
from probes.measure.alignment import CKA, group_alignment, linear_cka
from probes.measure.fitting import Fitter, UnitsError, fitted
from probes.measure.units import block_units
from probes.runtime import configure_threads
from probes.store import (
    ALIGN_COLUMNS,
    ALIGN_OUTPUTS,
    OutputError,
    check_output_dir,
    check_replaceable,
    folder_replaced,
    frame,
    recover,
    run_of_model,
    write_csv,
)


def parse_args(argv: list[str]) -> Options:
    """The command line ``A B [--KEY VALUE ...]`` (``ALIGN_KEYS``, the one grammar) as the
    checkpoint probe's ``Options`` (``checkpoints`` = [A, B]).

    Raises:
        ConfigError: not two checkpoints, an unknown key, or a value outside what is accepted.
    """
    positional, v = values(argv, "align", ALIGN_KEYS, ALIGN_DEFAULTS)
    if len(positional) != 2:
        raise ConfigError(f"align takes two checkpoints A B, not {len(positional)} "
                          f"({' '.join(positional) or 'none'}): accepted are two folders or "
                          f"RUN_DIR@STEP")
    return Options(positional, Path(v["output_dir"]), v["probe_inputs"], v["probe_samples"],
                   v["allow_pickle"], v["trust_remote_code"], v["thresholds"], None, None,
                   v["num_threads"], v["fold_norms"], v["activation_point"],
                   spectral_metrics=False)


def label(ckpt) -> str:
    """The a_run / b_run of a checkpoint: its run_id, with ``@step`` when it has one."""
    return ckpt.run_id if ckpt.step is None else f"{ckpt.run_id}@{ckpt.step}"


def same_coordinates(a, b) -> bool:
    """Whether checkpoints ``a`` and ``b`` (resolved) keep their units in one coordinate system:
    each taken as the checkpoint it was merged from, if it is a ``merge`` output (the merge keeps
    each merged unit in its group's first member's place), they are one folder, two steps of one
    series, or two models of one run of this project."""
    pa, pb = (merged_source(p) or p for p in (a.path.resolve(), b.path.resolve()))
    if pa == pb or (a.series is not None and a.series == b.series):
        return True
    run = run_of_model(pa)
    return run is not None and run == run_of_model(pb)


def plan_pair(opts: Options):
    """Plan and check A and B (and their probe batch) before any work; returns (plans, notes).

    Raises:
        CheckpointError: as ``resolve`` and ``plan_checkpoint``; no (layer, component) in
            both; probe batches that differ (their tokenizers or task settings differ: CKA
            needs the same inputs).
    """
    notes: list[str] = []
    ckpts = unique_run_ids([resolve(s) for s in opts.checkpoints])
    plans = [plan_checkpoint(c, opts, notes) for c in ckpts]
    a, b = ckpts
    if not set.intersection(*({(blk.layer, p.component) for blk in plan.layout.blocks
                               for p in blk.parts} for plan in plans)):
        raise CheckpointError(f"{label(a)} and {label(b)} have no unit set in common: accepted are "
                              f"two checkpoints whose layers have components alike")
    if not same_coordinates(a, b):
        notes.append(f"{label(a)} and {label(b)} are not steps of one run: their weight rows may "
                     f"live in different coordinate systems (their embeddings differ), so the "
                     f"group matching means something only for layers that read the same input "
                     f"features; CKA (--probe_inputs) needs no shared coordinates")
    if opts.probe_inputs:
        for plan in plans:
            notes += check_inputs(plan, opts)
        pa, pb = (p.batch.passes for p in plans)
        if len(pa) != len(pb) or any(x.keys() != y.keys() or any(not torch.equal(x[k], y[k])
                                                                 for k in x) for x, y in zip(pa, pb)):
            raise CheckpointError(f"--probe_inputs {opts.probe_inputs!r} gives {label(a)} and "
                                  f"{label(b)} different inputs (different tokenizers or task "
                                  f"settings): accepted are two checkpoints that read them alike")
    return plans, list(dict.fromkeys(notes))


def _sets(plan, block, fold: bool) -> dict:
    try:
        return {(u.layer, u.component, u.head): u.units
                for u in block_units(plan.source, plan.prefix, block, fold)}
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(plan.ckpt.path)!r} layer {block.layer}: "
                              f"{str(e).strip(chr(39))}") from e


def _fit(future, plan, key):
    try:
        return fitted(future, f"checkpoint {str(plan.ckpt.path)!r} layer {key[0]} {key[1]}")[0]
    except UnitsError as e:
        raise CheckpointError(str(e)) from e


def weight_rows(plans, opts: Options, fitter: Fitter, notes: list[str]) -> list[dict]:
    """align.csv rows of the weight basis: ``group_alignment`` of each unit set in both, one
    layer at a time (both sides' sets fitted in ``fitter``'s pool)."""
    a, b = plans
    ids = dict(a_run=label(a.ckpt), b_run=label(b.ckpt))
    b_blocks = {blk.layer: blk for blk in b.layout.blocks}
    rows, other_dim = [], []
    for block in a.layout.blocks:
        if block.layer not in b_blocks:
            continue
        sa, sb = _sets(a, block, opts.fold_norms), _sets(b, b_blocks[block.layer], opts.fold_norms)
        keys = [k for k in sa if k in sb]
        other_dim += [k for k in keys if sa[k].shape[1] != sb[k].shape[1]]
        keys = [k for k in keys if sa[k].shape[1] == sb[k].shape[1]]
        fits = {k: (fitter.submit(sa[k], order=False), fitter.submit(sb[k], order=False)) for k in keys}
        for k, (fa, fb) in fits.items():
            fa, fb = _fit(fa, a, k), _fit(fb, b, k)
            found = group_alignment(sa[k].numpy()[fa.kept_], fa.labels_, sb[k].numpy()[fb.kept_],
                                    fb.labels_)
            rows += [dict(**ids, layer=k[0], component=k[1], head=k[2], threshold=t, metric=m,
                          value=v) for m, t, v in found]
    if other_dim:
        notes.append(f"{len(other_dim)} unit set(s) in both have units of other dimensions (e.g. "
                     f"layer {other_dim[0][0]} {other_dim[0][1]}): no group matching there")
    return rows


def _activations(plan, opts: Options, device, threads: int, notes: list[str]) -> dict:
    model = plan.model or load_model(plan.ckpt.path, plan.config, opts.allow_pickle,
                                     opts.trust_remote_code)
    layers, _, found = activation_units(model, plan.layout, plan.batch, opts.probe_samples,
                                        opts.activation_point, device, threads, plan.ckpt.run_id)
    notes += found
    # (n_samples, n_units): rows are the probe samples, in the same order on both sides
    return {(u.layer, u.component, u.head): u.units.T for sets in layers for u in sets}


def activation_rows(plans, opts: Options, device, threads: int, notes: list[str]) -> list[dict]:
    """align.csv rows of the activation basis: the debiased linear CKA of each unit set in
    both, on the same probe batch (the activations of A are held while B runs).

    Raises:
        CheckpointError: a unit set whose two sides saw different numbers of samples, or < 4.
    """
    a, b = plans
    acts_a = _activations(a, opts, device, threads, notes)
    acts_b = _activations(b, opts, device, threads, notes)
    rows = []
    for k in (k for k in acts_a if k in acts_b):
        try:
            cka = linear_cka(acts_a[k].numpy(), acts_b[k].numpy())
        except ValueError as e:
            raise CheckpointError(f"layer {k[0]} {k[1]} activations: {e}: give more probe "
                                  f"inputs") from e
        rows.append(dict(a_run=label(a.ckpt), b_run=label(b.ckpt), layer=k[0], component=k[1],
                         head=k[2], threshold=None, metric=CKA, value=cka))
    return rows


def summary(table: pd.DataFrame) -> str:
    """Per component, the median over whole-layer sets of each metric (0.9 for thresholded
    ones when measured, else the first threshold)."""
    t = table[table["head"].isna()]
    taus = sorted(t["threshold"].dropna().unique())
    if taus:
        tau = 0.9 if 0.9 in taus else taus[0]
        t = t[t["threshold"].isna() | (t["threshold"] == tau)]
    wide = t.groupby(["component", "metric"])["value"].median().unstack("metric")
    head = f"medians over layers (thresholded metrics at {tau:g})" if taus else "medians over layers"
    return f"{head}:\n{wide.round(3).to_string()}"


def main(argv: list[str]) -> int:
    """Entry of ``condensation-probes align``; returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(align_help())
        return 0
    try:
        opts = parse_args(argv)
        check_output_dir(opts.output_dir)
        recover(opts.output_dir)  # what a killed align left half done, rolled back first
        check_replaceable(opts.output_dir, ALIGN_OUTPUTS)
        plans, notes = plan_pair(opts)  # its notes are shown with the others, after the work
        threads = configure_threads(opts.num_threads, 1)
        device = (torch.accelerator.current_accelerator() if torch.accelerator.is_available()
                  else torch.device("cpu"))
        with Fitter(opts.thresholds, threads, spectral=False) as fitter:
            rows = weight_rows(plans, opts, fitter, notes)
            if opts.probe_inputs:
                rows += activation_rows(plans, opts, device, fitter.torch_threads, notes)
        if not rows:  # nothing comparable: an empty align.csv would look like a result
            raise CheckpointError(
                f"{label(plans[0].ckpt)} and {label(plans[1].ckpt)} have no unit set in common "
                f"(same layer, component and unit dimension)"
                f"{''.join('; ' + n for n in notes if 'other dimensions' in n)}: "
                f"accepted are two checkpoints of one architecture and width")
    except (CheckpointError, ConfigError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in dict.fromkeys(notes):
        print(f"warning: {note}", file=sys.stderr)
    table = frame(rows, ALIGN_COLUMNS)
    with folder_replaced(opts.output_dir) as stage:  # all or nothing: replaced whole
        write_csv(table, stage / "align.csv")
    print(summary(table))
    print(f"{len(table)} rows -> {opts.output_dir}/align.csv")
    return 0
