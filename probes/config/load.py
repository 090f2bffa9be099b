"""Reading a config: YAML (with YAML 1.2 floats), presets, command-line overrides, grid expansion
and validation. Every problem is one ``ConfigError`` line naming the value and what is accepted."""

from __future__ import annotations

import difflib
import itertools
import re
import types
import typing
from pathlib import Path

import yaml

from models import ACTIVATIONS, FAMILIES, LM_FAMILIES, check_gamma
from models.mlp import MAX_GAMMA as MLP_MAX_GAMMA
from probes.config import grammar
from probes.config.keys import GRID_KEYS, RunKeys, thresholds_problem
from probes.config.run_config import (
    AUTO_PRECISION,
    CHANCE_NULLS,
    DEFAULT_CONFIG,
    FIELDS,
    HINTS,
    LIST_KEYS,
    LR_SCALINGS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    PRESETS,
    SAVE_CHECKPOINTS,
    SHARED_KEYS,
    TRAJECTORY_AXES,
    ConfigError,
    RunConfig,
    task_fields,
    unread_task_keys,
)
from tasks import TASKS, make_task


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3``, ``3E-4`` and ``5e-1`` are numbers.

    PyYAML follows YAML 1.1, whose float syntax needs a dot (``1.0e-3``) and reads ``1e-3`` as a
    string. The added resolver covers every float with an exponent and no dot; everything else
    resolves as before.
    """


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(text: str):
    """Parse YAML ``text`` with ``YamlLoader`` (safe: plain data only). Raises yaml.YAMLError."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def _accepts(key: str, value) -> bool:
    """Whether ``value`` fits the annotated type of RunConfig field ``key``."""
    tp = HINTS[key]
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = typing.get_args(tp) if union else (tp,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is str and isinstance(value, str):
            return True
        if typing.get_origin(option) is list and isinstance(value, list):
            return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return False


def _check_key(key: str) -> None:
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown config key {key!r}{hint}: accepted are {', '.join(FIELDS)}")


def _check_value(key: str, value) -> None:
    values = value if isinstance(value, list) and key not in LIST_KEYS else [value]
    if not values:
        raise ConfigError(f"{key}=[] is an empty grid: accepted is a list of at least one value")
    for v in values:
        if not _accepts(key, v):
            raise ConfigError(f"{key}={v!r} has the wrong type: accepted is {grammar.type_name(HINTS[key])}")


def _as_list(value):
    """A list key's value as a list: ``0.9,0.95`` (a comma list) and ``0.9`` (one number) become
    [0.9, 0.95] and [0.9]; anything else is left for the type check."""
    if isinstance(value, str) and "," in value:
        try:
            return [float(v) for v in value.split(",")]
        except ValueError:
            return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


def preset_names() -> list[str]:
    """The shipped presets' names (configs/*.yaml less the suffix; accelerate's own left out)."""
    return sorted(p.name[:-5] for p in PRESETS.iterdir()
                  if p.name.endswith(".yaml") and not p.name.startswith("accelerate"))


def config_path(path: str | Path | None):
    """The file ``--config path`` names (a Path or an importlib.resources Traversable): the file
    itself, else the shipped preset ``sweep_small``, ``sweep_small.yaml`` or
    ``configs/sweep_small.yaml`` (so README's commands work from any folder after ``pip install
    .``), the default preset for None, and ``path`` unchanged when nothing matches."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if path is not DEFAULT_CONFIG and not path.is_file() and str(path.parent) in (".", "configs"):
        preset = PRESETS / (path.name if path.suffix else f"{path.name}.yaml")
        return preset if preset.is_file() else path
    return path


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config and apply overrides; values may be lists (a grid).

    Args:
        path: YAML file or preset name (see ``config_path``; default: the default preset).
        overrides: key -> value, applied after the file.

    Returns:
        the merged raw mapping, checked key by key.

    Raises:
        ConfigError: missing or unreadable file, unknown key, or a value of the wrong type.
    """
    path = config_path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist: accepted are a YAML file path "
                          f"or a preset name ({', '.join(preset_names())})")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({first}): accepted is a "
                          f"YAML mapping of config keys to values") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} does not hold a mapping: accepted is a YAML "
                          f"mapping of config keys to values")
    # a file named in a config file is found beside it (presets ship their data with them)
    ref = raw.get("reference_trajectories")
    if isinstance(ref, str) and not Path(ref).is_absolute() and (path.parent / ref).is_file():
        raw["reference_trajectories"] = str(path.parent / ref)
    raw.update(overrides or {})
    if raw.get("mixed_precision") is False:  # YAML 1.1 reads a bare `no` as false
        raw["mixed_precision"] = "no"
    return checked(raw)


def checked(raw: dict) -> dict:
    """``raw`` with list keys read as lists (one grammar with ``--checkpoint``: ``0.9,0.95`` and
    ``0.9`` too), each key and value checked.

    Raises:
        ConfigError: an unknown key or a value of the wrong type.
    """
    raw = {k: _as_list(v) if k in LIST_KEYS else v for k, v in raw.items()}
    for key, value in raw.items():
        _check_key(key)
        _check_value(key, value)
    return raw


def expand(raw: dict) -> list[RunConfig]:
    """Expand a raw mapping into one validated RunConfig per grid point (product of the lists).

    Raises:
        ConfigError: on any invalid run (see ``validate``) or two runs with the same identity.
    """
    grid = {k: v for k, v in raw.items() if isinstance(v, list) and k not in LIST_KEYS}
    shared = [k for k in grid if k in SHARED_KEYS]
    if shared:
        raise ConfigError(f"{shared[0]}={grid[shared[0]]} is a list: accepted is one value, since "
                          f"{', '.join(SHARED_KEYS)} are shared by all runs of an experiment")
    tasks = grid.get("task", [])
    reasoning = [t for t in tasks if t in TASKS and not hasattr(TASKS[t], "families")]
    if len(set(tasks)) > 1 and reasoning:
        raise ConfigError(f"task={tasks} is a grid over tasks: accepted is one reasoning task "
                          f"per experiment, since its correlations, summary and figures read "
                          f"that task's scores (run each task with its own --output_dir)")
    fixed = {k: v for k, v in raw.items() if k not in grid}
    runs, points = [], []
    for combo in itertools.product(*grid.values()):
        points.append(dict(zip(grid, combo)))
        cfg = RunConfig(**fixed, **points[-1])
        validate(cfg)
        runs.append(cfg)
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError(_repeat(runs, ids, points))
    return runs


def _repeat(runs: list[RunConfig], ids: list[str], points: list[dict]) -> str:
    """The error for a grid whose points give one run twice: which values coincide, and why (a
    key the run's task or family does not read, or a value listed twice)."""
    second = next(i for i, run_id in enumerate(ids) if ids.index(run_id) != i)
    first = ids.index(ids[second])
    a, b = points[first], points[second]
    differ = [k for k in a if a[k] != b[k]]
    if not differ:
        return ("the grid repeats a run (a value is listed twice): accepted are lists of "
                "distinct values")
    run = runs[first]
    where = ", ".join(f"{k}={a[k]!r} and {b[k]!r}" for k in differ)
    return (f"the grid gives run {ids[first]!r} twice ({where}): task {run.task!r} with "
            f"model_family {run.model_family!r} does not read {', '.join(differ)}: accepted are "
            f"grids whose points each change the trained model (one experiment per task)")


def unread_options(raw: dict) -> str | None:
    """The warning for the task options set in ``raw`` (a checked config mapping) that no task
    of its grid reads, which its run configs record as null (``RunConfig.__post_init__``); None
    when every option set is read. The command line shows it on the main process once the runs
    are valid, so bad input stays one ``error:`` line."""
    tasks = raw.get("task", RunConfig.task)
    tasks = tasks if isinstance(tasks, list) else [tasks]
    unread = set.intersection(*(set(unread_task_keys(raw, t)) for t in tasks))
    if not unread:
        return None
    given = ", ".join(f"{k}={raw[k]!r}" for k in raw if k in unread)
    options = sorted(set().union(*(task_fields(t) or {} for t in tasks)))
    return (f"{given} {'is' if len(unread) == 1 else 'are'} not read by task "
            f"{' or '.join(map(repr, tasks))}: ignored (recorded as null); "
            f"{'its' if len(tasks) == 1 else 'their'} options are {', '.join(options) or 'none'}")


def validate(cfg: RunConfig) -> None:
    """Check one run's values against what is accepted.

    Raises:
        ConfigError: the first bad value found, named with what is accepted.
    """
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is unknown: accepted are {sorted(TASKS)}")
    if cfg.model_family not in FAMILIES:
        raise ConfigError(f"model_family={cfg.model_family!r} is unknown: accepted are {list(FAMILIES)}")
    if cfg.mixed_precision == AUTO_PRECISION:
        raise ConfigError(f"mixed_precision={AUTO_PRECISION!r} names no precision until the machine "
                          f"picks one (probes.runtime.pick_precision, as the command line does "
                          f"before it makes the runs): accepted in a RunConfig are {list(PRECISIONS)}")
    try:
        check_gamma(cfg.gamma, high=MLP_MAX_GAMMA if cfg.model_family == "mlp" else 3.0)
        for part, g in cfg.part_gammas.items():
            if g is not None:
                check_gamma(g, f"gamma_{part}")
        task = make_task(cfg.task, **cfg.task_options())
    except ValueError as e:
        raise ConfigError(str(e)) from e
    _validate_baselines(cfg, task)
    positive = ("n_layer", "n_head", "n_embd", "vocab_size", "steps", "batch_size", "n_probes",
                "n_eval", "width", "in_dim")  # the task's own sizes: its dataclass checks them
    for key in positive:
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:  # in_dim: None, no input
            raise ConfigError(f"{key}={getattr(cfg, key)} is invalid: accepted is an integer >= 1")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(
            f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}: accepted are n_head "
            f"values that divide n_embd"
        )
    if cfg.d_ff is not None and cfg.d_ff < 1:
        raise ConfigError(f"d_ff={cfg.d_ff} is invalid: accepted is an integer >= 1 or null")
    if cfg.vocab_size < getattr(task, "vocab_min_size", 0):
        raise ConfigError(
            f"vocab_size={cfg.vocab_size} is too small for task {cfg.task!r}: accepted is "
            f">= {task.vocab_min_size}"
        )
    if cfg.lr <= 0:
        raise ConfigError(f"lr={cfg.lr} is invalid: accepted is a number > 0")
    for key in ("weight_decay", "grad_clip", "warmup_steps", "save_every"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} is invalid: accepted is a number >= 0")
    for key in ("seed", "data_seed"):  # numpy and accelerate take seeds in [0, 2^32)
        if not 0 <= getattr(cfg, key) < 2**32:
            raise ConfigError(f"{key}={getattr(cfg, key)} is invalid: accepted is an integer in "
                              f"[0, 2^32)")
    if not 0 <= cfg.lr_warmup_start <= 1:
        raise ConfigError(f"lr_warmup_start={cfg.lr_warmup_start} is invalid: accepted is a number "
                          f"in [0, 1] (the warm-up's start as a fraction of lr)")
    if not 0 <= cfg.lr_min < cfg.lr:
        raise ConfigError(f"lr_min={cfg.lr_min} is invalid: accepted is a number in [0, lr={cfg.lr})")
    if cfg.lr_min and cfg.lr_schedule != "cosine":
        raise ConfigError(f"lr_min={cfg.lr_min} applies to lr_schedule 'cosine' only: accepted for "
                          f"{cfg.lr_schedule!r} is 0")
    if cfg.reference_trajectories and not Path(cfg.reference_trajectories).is_file():
        raise ConfigError(f"reference_trajectories={cfg.reference_trajectories!r} is not a file: "
                          "accepted is a CSV with columns gamma, step and score columns "
                          "(e.g. configs/authors_trajectories.csv)")
    if cfg.last_position_only and cfg.model_family not in ("paper", "gpt2"):
        raise ConfigError(f"last_position_only=true applies to model_family 'paper' or 'gpt2' "
                          f"only, not {cfg.model_family!r}")
    if cfg.head_bias and cfg.model_family != "paper":
        raise ConfigError(f"head_bias=true applies to model_family 'paper' only: accepted for "
                          f"{cfg.model_family!r} is false")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"dropout={cfg.dropout} is invalid: accepted is a number in [0, 1)")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ConfigError(f"num_threads={cfg.num_threads} is invalid: accepted is >= 1 or null")
    if thresholds_problem(cfg.thresholds):
        raise ConfigError(thresholds_problem(cfg.thresholds))
    if cfg.merge_probe and cfg.model_family == "resnet":  # probes.measure.arch: no merge sites
        raise ConfigError("merge_probe=true has nothing to merge in model_family 'resnet' (a "
                          "channel feeds a batch norm): accepted for 'resnet' is false")
    if any(s != int(s) or s < 0 for s in cfg.merge_steps):
        raise ConfigError(f"merge_steps={cfg.merge_steps} is invalid: accepted are whole steps "
                          f">= 0 (one past the last probe merges nothing)")
    if cfg.merge_steps and not cfg.merge_probe:
        raise ConfigError(f"merge_steps={cfg.merge_steps} needs merge_probe: true (accepted "
                          f"without it is [])")


# keys that take one of a few names, and the names
CHOICES = {"activation": ACTIVATIONS, "optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES,
           "mixed_precision": (*PRECISIONS, AUTO_PRECISION), "lr_scaling": LR_SCALINGS,
           "trajectory_axis": TRAJECTORY_AXES, "save_checkpoints": SAVE_CHECKPOINTS,
           "chance_nulls": CHANCE_NULLS}


def _validate_baselines(cfg: RunConfig, task) -> None:
    """The keys of the baseline families, and that the task suits the model family."""
    families = getattr(task, "families", LM_FAMILIES)
    if cfg.model_family not in families:
        raise ConfigError(f"model_family={cfg.model_family!r} does not fit task {cfg.task!r}: "
                          f"accepted are {list(families)}")
    for key, accepted in CHOICES.items():
        if getattr(cfg, key) not in accepted:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is unknown: accepted are {list(accepted)}")
    for key in ("log_every", "chance_draws"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} is invalid: accepted is an integer >= 0")
    if cfg.lr_scaling != "none" and cfg.model_family != "mlp":
        raise ConfigError(f"lr_scaling={cfg.lr_scaling!r} applies to model_family 'mlp' only: "
                          f"accepted for {cfg.model_family!r} is 'none'")
    if not -3 <= cfg.gamma_prime <= 3:
        raise ConfigError(f"gamma_prime={cfg.gamma_prime} is invalid: accepted is a number in [-3, 3]")
    if hasattr(task, "in_dim") and cfg.in_dim != task.in_dim:
        raise ConfigError(f"in_dim={cfg.in_dim} does not fit task {cfg.task!r}: accepted is {task.in_dim}")
    if cfg.model_family == "mlp":
        for part, g in cfg.part_gammas.items():
            if g is not None:
                raise ConfigError(f"gamma_{part}={g} does not apply to model_family 'mlp': accepted "
                                  f"is null (the mlp is drawn from gamma and gamma_prime)")
    if cfg.model_family == "resnet" and cfg.dropout:
        raise ConfigError(f"dropout={cfg.dropout} does not apply to model_family 'resnet': "
                          f"accepted is 0")


def parse_overrides(argv: list[str]) -> tuple[str | None, dict]:
    """Parse ``train``'s ``[--config FILE] [--key value | --key=value ...]`` by the one grammar
    (``probes.config.grammar``): each value read as its RunKeys field's type, ``[a, b]`` a grid
    where the key may be one (``GRID_KEYS``).

    Returns:
        (config path or None, overrides).

    Raises:
        ConfigError: a stray argument, a key without a value, an unknown key or a value of the
            wrong type.
    """
    positional, overrides = grammar.parse(argv, RunKeys, command="train", grid=GRID_KEYS,
                                          extra=("config",))
    if positional:
        raise ConfigError(f"unexpected argument {positional[0]!r}: accepted are --config FILE and "
                          f"--KEY VALUE")
    return overrides.pop("config", None), overrides
