"""Experiment configuration: one dataclass, read from YAML, overridden from the command line.

Any key given a list (in the YAML file or as ``--key "[a, b]"``) expands into a grid: the runs are
the product of all lists, in key order. ``thresholds`` is a list by nature and never expands.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from models import ACTIVATIONS, FAMILIES, LM_FAMILIES, check_gamma
from models.mlp import ntk_scale
from tasks import TASKS, make_task

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """Bad configuration: the message names the bad value and what is accepted."""


@dataclass
class RunConfig:
    """Every setting of one run, and the experiment-level keys (marked in comments)."""

    # experiment level (not part of a run's identity)
    experiment: str = "default"
    output_dir: str | None = None  # default: reports/<experiment>
    overwrite: bool = False  # retrain runs whose results exist
    num_threads: int | None = None  # torch threads per process; default: all cores / processes
    save_checkpoint: bool = True
    save_every: int = 500  # steps between resumable training states (0: none)
    report_only: bool = False  # write the reports of the finished runs, train nothing
    # task
    task: str = "composite"
    seq_len: int = 9
    split_modulus: int = 7
    n_train: int = 20000
    n_test_id: int = 2000
    n_ood: int = 2000
    data_seed: int = 0
    fresh_samples: bool = False  # draw a new training batch every step instead of epochs
    in_dim: int = 1  # regression tasks: input dimension (four_points: 1)
    image_source: str = "digits"  # images task: digits | mnist5k | path to an .npz file
    image_size: int = 32  # images task: side of the resized square images
    test_fraction: float = 0.2  # images task: held-out share
    key_low: int = 20  # keys and noise are drawn from [key_low, key_high]
    key_high: int = 99
    # options of the other tasks (None: the task's own default); lists are strings like "34,43"
    held_out: str | int | None = None  # composite_no_twist / multi_anchor: held-out anchor pairs
    ood_key_position: int | None = None  # identity: the key position kept for ood
    ood_hops: str | int | None = None  # chain_search: step sizes held out for ood
    n_chains: int = 2  # chain_search
    chain_len: int = 8  # chain_search
    n_hop_anchors: int = 3  # chain_search
    # model
    model_family: str = "paper"
    n_layer: int = 2
    n_head: int = 1
    n_embd: int = 64
    d_ff: int | None = None
    vocab_size: int = 128
    dropout: float = 0.0
    width: int = 100  # mlp: hidden neurons m
    activation: str = "relu"  # mlp: relu | tanh | sigmoid | softplus | xtanh
    # initialization rate: std = d_in^-gamma; a part's own gamma overrides when set
    gamma: float = 0.5
    gamma_embedding: float | None = None
    gamma_attention: float | None = None
    gamma_mlp: float | None = None
    gamma_head: float | None = None
    gamma_prime: float = 0.0  # mlp: std of a = m^-(gamma+gamma')/2, of (w, b) = m^-(gamma-gamma')/2
    # optimization
    optimizer: str = "adamw"  # adamw | adam | sgd (full-batch GD: sgd with batch_size >= n_train)
    lr_schedule: str = "cosine"  # cosine | constant (both after warmup_steps of linear warm-up)
    lr_scaling: str = "none"  # mlp: none | ntk (lr divided by max(1, the tangent kernel's scale))
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    # probes
    n_probes: int = 12  # log-spaced probe steps, step 0 and the last included
    n_eval: int = 2000  # training samples scored for acc_train and train_loss
    thresholds: list[float] = field(default_factory=lambda: [0.7, 0.9, 0.95, 0.99])

    @property
    def part_gammas(self) -> dict[str, float | None]:
        """Per-part init rates: embedding, attention, mlp, head -> gamma or None (use gamma)."""
        return {p: getattr(self, f"gamma_{p}") for p in ("embedding", "attention", "mlp", "head")}

    @property
    def out_dir(self) -> Path:
        """The experiment's output folder: output_dir, else reports/<experiment>."""
        return Path(self.output_dir or Path("reports") / self.experiment)

    def identity(self) -> dict:
        """The settings that define the run (experiment-level keys left out; keys added after
        the first release are left out at their default, so older run ids stay valid)."""
        d = dataclasses.asdict(self)
        for key in EXPERIMENT_KEYS:
            d.pop(key)
        for key, default in LATER_KEYS.items():
            if d[key] == default:
                d.pop(key)
        return d

    @property
    def run_id(self) -> str:
        """Stable, readable id: family, gamma, seed and a hash of every identity setting."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.model_family}-g{self.gamma:g}-s{self.seed}-{digest}"

    def task_options(self) -> dict:
        """Options of the task generator: the config keys its dataclass has (data_seed -> seed)."""
        names = {f.name for f in dataclasses.fields(TASKS[self.task])}
        options = {k: v for k, v in dataclasses.asdict(self).items() if k in names and k != "seed"}
        if "seed" in names:
            options["seed"] = self.data_seed
        return options


EXPERIMENT_KEYS = ("experiment", "output_dir", "overwrite", "num_threads", "save_checkpoint",
                   "save_every", "report_only")
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
# keys added with the baselines: left out of a run's identity at their default value
LATER_KEYS = {k: FIELDS[k].default for k in (
    "in_dim", "image_source", "image_size", "test_fraction", "width", "activation", "gamma_prime",
    "optimizer", "lr_schedule", "lr_scaling")}
OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
LR_SCALINGS = ("none", "ntk")
HINTS = typing.get_type_hints(RunConfig)
LIST_KEYS = {"thresholds"}


NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
         type(None): "null"}


def _type_name(tp) -> str:
    """'an integer', 'a number or null', ... for an annotated RunConfig type."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    options = typing.get_args(tp) if union else (tp,)
    return " or ".join("a list" if typing.get_origin(o) is list
                       else NAMES.get(o, getattr(o, "__name__", str(o))) for o in options)


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
        raise ConfigError(f"{key}=[] is an empty grid: give at least one value")
    for v in values:
        if not _accepts(key, v):
            raise ConfigError(f"{key}={v!r} has the wrong type: accepted is {_type_name(HINTS[key])}")


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config and apply overrides; values may be lists (a grid).

    Args:
        path: YAML file (default configs/default.yaml).
        overrides: key -> value, applied after the file.

    Returns:
        the merged raw mapping, checked key by key.

    Raises:
        ConfigError: missing or unreadable file, unknown key, or a value of the wrong type.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist: give a YAML file path")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}".splitlines()[0]) from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    raw.update(overrides or {})
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
    shared = [k for k in grid if k in EXPERIMENT_KEYS]
    if shared:
        raise ConfigError(f"{shared[0]}={grid[shared[0]]} is a list: accepted is one value, since "
                          f"{', '.join(EXPERIMENT_KEYS)} are shared by all runs of an experiment")
    fixed = {k: v for k, v in raw.items() if k not in grid}
    runs = []
    for combo in itertools.product(*grid.values()):
        cfg = RunConfig(**fixed, **dict(zip(grid, combo)))
        validate(cfg)
        runs.append(cfg)
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError("the grid repeats a run: remove duplicate values from its lists")
    return runs


def validate(cfg: RunConfig) -> None:
    """Check one run's values against what is accepted.

    Raises:
        ConfigError: the first bad value found, named with what is accepted.
    """
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is unknown: accepted are {sorted(TASKS)}")
    if cfg.model_family not in FAMILIES:
        raise ConfigError(f"model_family={cfg.model_family!r} is unknown: accepted are {list(FAMILIES)}")
    try:
        check_gamma(cfg.gamma)
        for part, g in cfg.part_gammas.items():
            if g is not None:
                check_gamma(g, f"gamma_{part}")
        task = make_task(cfg.task, **cfg.task_options())
    except ValueError as e:
        raise ConfigError(str(e)) from e
    _validate_baselines(cfg, task)
    positive = ("n_layer", "n_head", "n_embd", "vocab_size", "steps", "batch_size", "n_probes",
                "n_eval", "n_train", "width", "in_dim")
    for key in positive:
        if getattr(cfg, key) < 1:
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
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"dropout={cfg.dropout} is invalid: accepted is a number in [0, 1)")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ConfigError(f"num_threads={cfg.num_threads} is invalid: accepted is >= 1 or null")
    if not cfg.thresholds or not all(0 < t < 1 for t in cfg.thresholds):
        raise ConfigError(f"thresholds={cfg.thresholds} is invalid: accepted are numbers in (0, 1)")


def _validate_baselines(cfg: RunConfig, task) -> None:
    """The keys of the baseline families, and that the task suits the model family."""
    families = getattr(task, "families", LM_FAMILIES)
    if cfg.model_family not in families:
        raise ConfigError(f"model_family={cfg.model_family!r} does not fit task {cfg.task!r}: "
                          f"accepted are {list(families)}")
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"activation={cfg.activation!r} is unknown: accepted are {list(ACTIVATIONS)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer={cfg.optimizer!r} is unknown: accepted are {list(OPTIMIZERS)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule={cfg.lr_schedule!r} is unknown: accepted are "
                          f"{list(LR_SCHEDULES)}")
    if cfg.lr_scaling not in LR_SCALINGS:
        raise ConfigError(f"lr_scaling={cfg.lr_scaling!r} is unknown: accepted are {list(LR_SCALINGS)}")
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
    """Parse ``[--config FILE] [--key value | --key=value ...]``; values are read as YAML.

    Returns:
        (config path or None, overrides).

    Raises:
        ConfigError: a token that is not ``--key``, a key without a value, or an unknown key.
    """
    config, overrides, i = None, {}, 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}: accepted are --config FILE and --KEY VALUE")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            value, i = argv[i + 1], i + 1
        i += 1
        if key == "config":
            config = value
            continue
        _check_key(key)
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--{key} {value!r} is not a readable value") from e
    return config, overrides


def resolved_yaml(cfg: RunConfig, extra: dict | None = None) -> str:
    """The YAML text of a run's full resolved config (plus ``extra``, e.g. the init records)."""
    data = dataclasses.asdict(cfg) | {"run_id": cfg.run_id} | (extra or {})
    return yaml.safe_dump(data, sort_keys=False)


def effective_lr(cfg: RunConfig) -> float:
    """The learning rate the optimizer gets: ``cfg.lr``, divided by max(1, the tangent kernel's
    scale m (beta1^2 + beta2^2) / 2) under ``lr_scaling: ntk`` (mlp; models.mlp.ntk_scale)."""
    if cfg.lr_scaling == "ntk":
        return cfg.lr / max(1.0, ntk_scale(cfg.width, cfg.gamma, cfg.gamma_prime))
    return cfg.lr


def check_output_dir(out_dir: Path) -> None:
    """Raise ConfigError if ``out_dir`` (or a folder above it) exists and is not a folder."""
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"output_dir={str(out_dir)!r} is not usable: {str(p)!r} is a file; "
                                  f"accepted is a folder path")
            return
