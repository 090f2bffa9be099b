"""``condensation-probes merge CKPT --threshold TAU``: save a checkpoint with its condensed groups
merged, as a checkpoint folder the other commands read (``align``, ``--checkpoint``).

CKPT is a checkpoint folder or ``RUN_DIR@STEP`` (``probes.checkpoint.discover.resolve``). Every
merge site of the model (each layer's MLP neurons and query rows with their key rows) is merged at
once at threshold TAU by ``probes.measure.merge.merge_model``, the code behind the merge probe's
component ``all`` rows: each condensed group's first member holds the merged unit, the others
are zeroed, so the merged model has the architecture and parameter names of the original
(exact for ReLU neurons and query rows with parallel rows; otherwise approximate, see
``probes.measure.merge``). With ``--fold_norms true`` (default) the norm gains are folded into
the rows first (function-preserving), so the groups merged are those the weight basis reports.

Writes, staged then renamed into ``OUT`` (replaced whole; ``MERGED_OUTPUTS``):

- ``OUT/model/``: the merged model (``save_pretrained``, safetensors, float32) with the source's
  tokenizer files;
- ``OUT/config.yaml``: the source run's config, when CKPT is a checkpoint of this project's runs,
  so that ``--probe_inputs <task>`` builds the same probe batch for the merged model (the model
  in ``OUT/model`` is that run's, merged; it was not trained so);
- ``OUT/merge.json``: source, step, threshold, fold_norms and, per site, ``n_units`` before and
  ``merged_width`` after, with the code's provenance.

Bad input prints one ``error:`` line and exits with code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from probes.checkpoint.cli import flag
from probes.checkpoint.discover import CheckpointError, load_config, load_model, resolve
from probes.checkpoint.inputs import TOKENIZER_FILES
from probes.checkpoint.usage import MERGE_OPTIONS as OPTIONS
from probes.checkpoint.usage import MERGE_USAGE as USAGE
from probes.measure.arch import UnsupportedModel, check_mergeable
from probes.measure.merge import merge_model
from probes.runtime import configure_threads, hub_progress_bars_off
from probes.store import (
    CONFIG,
    MERGED_OUTPUTS,
    MODEL,
    OutputError,
    atomic_write_text,
    check_output_dir,
    check_replaceable,
    provenance,
    replace_folder,
    run_of_model,
    staging_dir,
)

DEFAULT_OUTPUT = "reports/merged"
MERGE_JSON = "merge.json"
# tokenizer files beside the weights, copied so that text --probe_inputs read the merged model alike
TOKENIZER_EXTRA = ("special_tokens_map.json", "merges.txt", "added_tokens.json")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and code 2, as the other commands
        raise CheckpointError(f"{message}: accepted with merge are CKPT and {', '.join(OPTIONS)}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line: checkpoint, threshold (float in (0, 1)), output_dir (Path), fold_norms
    (bool), allow_pickle, trust_remote_code, num_threads (int or None).

    Raises:
        CheckpointError: no checkpoint or threshold, an unknown flag, a value outside what is
            accepted.
    """
    p = _Parser(prog="condensation-probes merge", add_help=False, allow_abbrev=False)
    p.add_argument("checkpoint")
    p.add_argument("--threshold", required=True)
    p.add_argument("--output_dir", default=DEFAULT_OUTPUT)
    p.add_argument("--fold_norms", default="true")
    p.add_argument("--allow_pickle", action="store_true")
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--num_threads")
    a = p.parse_args(argv)
    try:
        tau = float(a.threshold)
    except ValueError:
        tau = float("nan")
    if not 0 < tau < 1:
        raise CheckpointError(f"--threshold {a.threshold!r} is invalid: accepted is a cosine in "
                              f"(0, 1)")
    if a.num_threads is not None and not (a.num_threads.isdigit() and int(a.num_threads) >= 1):
        raise CheckpointError(f"--num_threads {a.num_threads!r} is invalid: accepted is an "
                              f"integer >= 1")
    a.threshold, a.output_dir, a.fold_norms = tau, Path(a.output_dir), flag(a, "fold_norms")
    a.num_threads = int(a.num_threads) if a.num_threads is not None else None
    return a


def merged_model(a: argparse.Namespace):
    """(the checkpoint resolved, its model merged at ``a.threshold``: ``merge_model``'s Merged).

    Raises:
        CheckpointError: as ``resolve`` and ``load_model``; a GGUF file; a model type without
            merge sites.
    """
    ckpt = resolve(a.checkpoint)
    if ckpt.gguf:
        raise CheckpointError(f"{a.checkpoint!r} is a GGUF file: accepted are save_pretrained "
                              f"folders (python -m probes.gguf_convert writes one)")
    config = load_config(ckpt.path, a.trust_remote_code)
    try:
        check_mergeable(config)
    except UnsupportedModel as e:
        raise CheckpointError(f"merge: checkpoint {str(ckpt.path)!r}: {e}") from e
    model = load_model(ckpt.path, config, a.allow_pickle, a.trust_remote_code)
    return ckpt, merge_model(model, a.threshold, fold=a.fold_norms)


def write(stage: Path, ckpt, merged, a: argparse.Namespace) -> None:
    """``OUT``'s files (module docstring) into the staging folder ``stage``."""
    with hub_progress_bars_off():
        merged.model.save_pretrained(stage / MODEL)
    for name in (*TOKENIZER_FILES, *TOKENIZER_EXTRA):
        if (ckpt.path / name).is_file() and not (stage / MODEL / name).exists():
            shutil.copy2(ckpt.path / name, stage / MODEL / name)
    run = run_of_model(ckpt.path)
    if run is not None and (run / CONFIG).is_file():
        shutil.copy2(run / CONFIG, stage / CONFIG)
    record = dict(source=str(ckpt.path), run_id=ckpt.run_id, step=ckpt.step,
                  threshold=a.threshold, fold_norms=a.fold_norms, sites=merged.widths,
                  **provenance())
    atomic_write_text(stage / MERGE_JSON, json.dumps(record, indent=1) + "\n")


def main(argv: list[str]) -> int:
    """Entry of ``condensation-probes merge``; returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    try:
        a = parse_args(argv)
        check_output_dir(a.output_dir)
        check_replaceable(a.output_dir, MERGED_OUTPUTS)
        configure_threads(a.num_threads, 1)
        ckpt, merged = merged_model(a)
    except (CheckpointError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stage = staging_dir(a.output_dir)  # all or nothing: the folder is replaced whole
    try:
        write(stage, ckpt, merged, a)
        replace_folder(stage, a.output_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    for w in merged.widths:
        print(f"layer {w['layer']} {w['component']}: {w['n_units']} -> {w['merged_width']} units")
    print(f"merged at {a.threshold:g} -> {a.output_dir}/{MODEL}")
    return 0
