"""A finished run's saved checkpoint series, checked before it is measured again
(``probes.train.remeasure``): its recorded config, whether its analysis settings are stale, its
saved steps against its probe steps, each model folder's files and tensor types, and the loading
of each model with every tensor present and finite. Every problem is one ``ConfigError`` or
``ValueError`` line, met before any file is replaced."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from probes.config import ANALYSIS_BEFORE, ANALYSIS_KEYS, FIELDS, ConfigError, RunConfig, load_yaml
from probes.runtime import hub_progress_bars_off, transformers_quiet
from probes.store import CONFIG, RUN_JSON, checkpoint_series, read_run_json, run_dir
from probes.train.loop import probe_steps

# what save_pretrained writes for a model of this project (safetensors, one shard)
SAVED_FILES = ("config.json", "model.safetensors")
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")  # safetensors' names


def recorded(folder: Path) -> dict:
    """The resolved config a run folder holds (``config.yaml``), less the keys that are not
    RunConfig fields (run_id, init records); an analysis key the folder predates reads as the
    value it was measured with (``ANALYSIS_BEFORE``)."""
    raw = load_yaml((Path(folder) / CONFIG).read_text()) or {}
    return ANALYSIS_BEFORE | {k: v for k, v in raw.items() if k in FIELDS}


def stale(cfg: RunConfig) -> bool:
    """Whether the finished run of ``cfg`` was measured with other analysis settings (n_probes
    aside: a finished run keeps the steps it saved)."""
    was = recorded(run_dir(cfg))
    default = RunConfig()  # a key added after the run was measured had its default then
    return any(was.get(k, getattr(default, k)) != getattr(cfg, k)
               for k in ANALYSIS_KEYS if k != "n_probes")


def measurable(cfg: RunConfig, series: list | None = None) -> bool:
    """Whether the finished run of ``cfg`` saved a checkpoint series (``series``, read from its
    folder when not given) from step 0."""
    series = checkpoint_series(run_dir(cfg)) if series is None else series
    return bool(series) and series[0][0] == 0


def checked_series(cfg: RunConfig) -> list[tuple[int, Path]]:
    """The saved (step, folder) series of the finished run of ``cfg``, checked before any model
    is measured, so that nothing is half done and no step is silently left out.

    Raises:
        ConfigError: the run saved no checkpoint series from step 0 (``save_checkpoints`` final
            or none, or a run of an older version); its run.json or config.yaml is missing; its
            saved steps are not its probe steps (a checkpoint or the final ``model/`` lost, or a
            folder that is no probe step); a model folder lacks config.json or
            model.safetensors, or holds one that cannot be read.
    """
    folder = run_dir(cfg)
    series = checkpoint_series(folder)
    if not measurable(cfg, series):
        raise ConfigError(f"run {cfg.run_id!r} in {str(folder)!r} has no checkpoint series from "
                          f"step 0 (saved steps: {[s for s, _ in series]}): accepted are runs "
                          f"trained with save_checkpoints: probes (retrain it with --overwrite true)")
    row = read_run_json(folder)
    if row is None or not (folder / CONFIG).is_file():
        raise ConfigError(f"run {cfg.run_id!r} in {str(folder)!r} lacks its "
                          f"{RUN_JSON if row is None else CONFIG}: accepted are run folders as "
                          f"training wrote them (retrain it with --overwrite true)")
    check_steps(cfg, folder, row, [s for s, _ in series])
    for step, path in series:
        check_model_files(cfg, step, path)
    return series


def check_steps(cfg: RunConfig, folder: Path, row: dict, saved: list[int]) -> None:
    """Raise ConfigError unless ``saved`` are the run's probe steps (``probe_steps`` of the steps
    and n_probes its config.yaml records; a diverged run: those up to where it stopped)."""
    was = recorded(folder)
    wanted = probe_steps(int(was.get("steps", cfg.steps)), int(was.get("n_probes", cfg.n_probes)))
    diverged = bool(row.get("diverged"))
    if saved == wanted or (diverged and saved == wanted[:len(saved)]):
        return
    missing = [s for s in wanted if s not in saved and (not diverged or s < max(saved))]
    extra = [s for s in saved if s not in wanted]
    what = (f"lacks the model of step(s) {missing}" + (" (model/, the final one)"
                                                       if wanted[-1] in missing else "")
            if missing else f"holds checkpoint-<step> folders of no probe step: {extra}")
    raise ConfigError(f"run {cfg.run_id!r} in {str(folder)!r} {what}: accepted is the series "
                      f"it saved, at its probe steps {wanted} (restore it, or retrain the run "
                      f"with --overwrite true)")


def check_model_files(cfg: RunConfig, step: int, path: Path) -> None:
    """Raise ConfigError unless ``path`` holds a readable config.json and model.safetensors
    (their headers only: the tensors are read when the model is loaded)."""
    where = f"checkpoint {str(path)!r} of run {cfg.run_id!r} (step {step})"
    missing = [f for f in SAVED_FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"{where} lacks {' and '.join(missing)}: accepted are save_pretrained "
                          f"folders with {' and '.join(SAVED_FILES)} (restore them, or retrain "
                          f"the run with --overwrite true)")
    try:
        json.loads((path / SAVED_FILES[0]).read_text())
        with safe_open(path / SAVED_FILES[1], "pt") as f:
            dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    except (OSError, ValueError, SafetensorError) as e:
        raise ConfigError(f"{where} holds a file that cannot be read ({str(e).splitlines()[0]}): "
                          f"accepted are save_pretrained folders as training wrote them") from e
    # training keeps float32 weights under every precision; another float type was re-saved,
    # and loading would cast it back silently, with the rounding of the narrower type
    other = {n: d for n, d in dtypes.items() if d in FLOAT_DTYPES and d != "F32"}
    if other:
        name, dtype = next(iter(other.items()))
        raise ConfigError(f"{where} stores {name} as {dtype}: accepted are the float32 tensors "
                          f"training saved")


def first_line(error: Exception) -> str:
    """The first line of an exception's message (library messages run over several)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_model(model_class, path: Path):
    """The model saved in ``path`` (``model_class.from_pretrained``), in eval mode.

    Raises:
        ValueError: a tensor the model expects is missing from the file, or the file holds one
            it does not expect (transformers would initialize the missing one at random and
            measure it), or a weight holds NaN or inf (its task scores would be made up).
        OSError, RuntimeError: files that cannot be read, a tensor of another shape.
    """
    # no loading bar per checkpoint, and no load report: what it would say is an error here
    with hub_progress_bars_off(), transformers_quiet():
        model, info = model_class.from_pretrained(path, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys"):
        if info.get(kind):
            raise ValueError(f"its weights file {'lacks' if kind == 'missing_keys' else 'has'} "
                             f"the tensor(s) {', '.join(sorted(info[kind])[:3])}")
    bad = [name for name, t in model.state_dict().items() if not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"tensor {bad[0]} holds NaN or inf")
    return model.eval()
