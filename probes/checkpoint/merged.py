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
- ``OUT/merge.json``: source, step, threshold, fold_norms (whether gains were folded: false for
  a post-LN model whatever was asked) and, per site, ``n_units`` before and ``merged_width``
  after, with the code's provenance.

Bad input prints one ``error:`` line and exits with code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from probes.checkpoint.cli import values
from probes.checkpoint.discover import CheckpointError, load_config, load_model, resolve
from probes.checkpoint.inputs import TOKENIZER_FILES
from probes.checkpoint.usage import MERGE_DEFAULTS, merge_help
from probes.config.grammar import ConfigError
from probes.config.keys import MERGE_KEYS
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

MERGE_JSON = "merge.json"
# tokenizer files beside the weights, copied so that text --probe_inputs read the merged model alike
TOKENIZER_EXTRA = ("special_tokens_map.json", "merges.txt", "added_tokens.json")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``CKPT --threshold TAU [--KEY VALUE ...]`` by the one grammar (``MERGE_KEYS`` of
    ``ProbeKeys``): checkpoint, threshold (float in (0, 1)), output_dir (Path), fold_norms,
    allow_pickle, trust_remote_code (bools), num_threads (int or None).

    Raises:
        ConfigError: not one checkpoint, no threshold, an unknown key, a value outside what is
            accepted.
    """
    positional, v = values(argv, "merge", MERGE_KEYS, MERGE_DEFAULTS)
    if len(positional) != 1:
        raise ConfigError(f"merge takes one checkpoint CKPT, not {len(positional)} "
                          f"({' '.join(positional) or 'none'}): accepted is a folder or RUN_DIR@STEP")
    if v["threshold"] is None:
        raise ConfigError("merge needs --threshold TAU: accepted is a cosine in (0, 1)")
    if not 0 < v["threshold"] < 1:
        raise ConfigError(f"threshold={v['threshold']} is invalid: accepted is a cosine in (0, 1)")
    return argparse.Namespace(checkpoint=positional[0], **(v | {"output_dir": Path(v["output_dir"])}))


def merged_model(a: argparse.Namespace):
    """(the checkpoint resolved, its model merged at ``a.threshold``: ``merge_model``'s Merged).

    Raises:
        CheckpointError: as ``resolve`` and ``load_model``; a GGUF file; a model type without
            merge sites.
    """
    ckpt = resolve(a.checkpoint)
    source = Path(ckpt.series or ckpt.path).resolve()
    out = a.output_dir.resolve()
    if out == source or source in out.parents:  # a merged model inside its own series or folder
        raise CheckpointError(f"--output_dir {str(a.output_dir)!r} lies inside the checkpoint it "
                              f"merges ({source}): accepted is a folder outside it")
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


def merged_source(path: Path) -> Path | None:
    """The checkpoint folder a merge output was made from (``source`` in the ``merge.json`` of
    ``path`` or of its parent: ``path`` is OUT or OUT/model), resolved; None for any other folder
    or an unreadable record."""
    for folder in (Path(path), Path(path).parent):
        try:
            return Path(json.loads((folder / MERGE_JSON).read_text())["source"]).resolve()
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


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
                  threshold=a.threshold, fold_norms=merged.folded, sites=merged.widths,
                  **provenance())
    atomic_write_text(stage / MERGE_JSON, json.dumps(record, indent=1) + "\n")


def main(argv: list[str]) -> int:
    """Entry of ``condensation-probes merge``; returns the exit code (2 on bad input)."""
    if any(a in ("-h", "--help") for a in argv):
        print(merge_help())
        return 0
    try:
        a = parse_args(argv)
        check_output_dir(a.output_dir)
        check_replaceable(a.output_dir, MERGED_OUTPUTS)
        configure_threads(a.num_threads, 1)
        ckpt, merged = merged_model(a)
    except (CheckpointError, ConfigError, OutputError) as e:
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
