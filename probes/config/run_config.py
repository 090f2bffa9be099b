"""RunConfig: every setting of one run, its identity (the run id) and the experiment-level keys."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from models.mlp import ntk_scale
from probes.config.grammar import ConfigError  # noqa: F401 (re-exported: every module raises it)
from probes.config.keys import (  # noqa: F401 (CHANCE_NULLS, LIST_KEYS, SHARED_KEYS: re-exported)
    ANALYSIS_KEYS,
    CHANCE_NULLS,
    LIST_KEYS,
    SHARED_KEYS,
    TASK_OPTION_KEYS,
    RunKeys,
)
from tasks import TASKS

# the presets (configs/*.yaml), shipped as package data: probes/presets is a link to configs/
PRESETS = resources.files("probes") / "presets"
DEFAULT_CONFIG = PRESETS / "default.yaml"


@dataclass
class RunConfig(RunKeys):
    """Every setting of one run and the experiment-level keys (the fields of ``RunKeys``, each
    with its type, default and help), with the run's identity: ``identity``, ``run_id``, its
    analysis settings and its task's options."""

    def __post_init__(self) -> None:
        """Resolve the task's options (``TASK_OPTION_KEYS``): a key the task's dataclass has and
        that is left null takes that field's default (the one place it is written); a key the
        task does not read is set to null, so that the config records what the run used; so is
        ``in_dim`` for a task without an input dimension (the token tasks). An unknown task is
        left alone (``probes.config.load.validate`` refuses it)."""
        own = task_fields(self.task)
        if own is None:
            return
        for key in TASK_OPTION_KEYS:
            if key not in own:
                setattr(self, key, None)
            elif getattr(self, key) is None:
                setattr(self, key, field_default(own[key]))
        if not has_in_dim(self.task):
            self.in_dim = None

    @property
    def part_gammas(self) -> dict[str, float | None]:
        """Per-part init rates: embedding, attention, mlp, head -> gamma or None (use gamma)."""
        return {p: getattr(self, f"gamma_{p}") for p in ("embedding", "attention", "mlp", "head")}

    @property
    def out_dir(self) -> Path:
        """The experiment's output folder: output_dir, else reports/<experiment>."""
        return Path(self.output_dir or Path("reports") / self.experiment)

    def identity(self) -> dict:
        """The settings that make the trained model what it is: the task and the options its
        generator reads, the keys its model family reads, the init rates, optimization, data
        order and precision (``training_keys``). Analysis keys (``ANALYSIS_KEYS``: what is
        measured of the trained model) and experiment keys never enter, nor does a key the run's
        task or model family does not read."""
        d = dataclasses.asdict(self)
        return {k: d[k] for k in training_keys(self)}

    @property
    def run_id(self) -> str:
        """Stable, readable id: family, gamma, seed and a hash of the identity settings."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.model_family}-g{self.gamma:g}-s{self.seed}-{digest}"

    def analysis(self) -> dict:
        """The analysis settings (``ANALYSIS_KEYS``): what a run's checkpoint series is measured
        with. Changing them re-measures a finished run; it never retrains it."""
        return {k: getattr(self, k) for k in ANALYSIS_KEYS}

    def task_options(self) -> dict:
        """Options of the task generator: the config keys its dataclass has (data_seed -> seed)."""
        names = task_fields(self.task)
        options = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
        if "seed" in {f.name for f in dataclasses.fields(TASKS[self.task])}:
            options["seed"] = self.data_seed
        return options


def task_fields(task: str) -> dict[str, dataclasses.Field] | None:
    """The option fields of task ``task``'s dataclass (its data seed left out: ``data_seed`` feeds
    it), by name; None for an unknown task."""
    if task not in TASKS:
        return None
    return {f.name: f for f in dataclasses.fields(TASKS[task]) if f.name != "seed"}


def field_default(field: dataclasses.Field):
    """A dataclass field's default value (its factory called for a mutable one)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def has_in_dim(task: str) -> bool:
    """Whether task ``task`` has an input dimension (``in_dim``: a field, or fixed by the task),
    which a run's ``in_dim`` must equal."""
    return hasattr(TASKS[task], "in_dim")


def unread_task_keys(raw: dict, task: str) -> list[str]:
    """The task options set (not null) in ``raw`` that task ``task`` does not read, and
    ``in_dim`` when set for a task without an input dimension."""
    own = task_fields(task) or {}
    unread = [k for k in TASK_OPTION_KEYS if raw.get(k) is not None and k not in own]
    if raw.get("in_dim") is not None and task in TASKS and not has_in_dim(task):
        unread.append("in_dim")
    return unread


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
# keys every run's training reads, whatever its task and family (task options come from the
# task's dataclass, the family's from FAMILY_TRAINING_KEYS)
COMMON_TRAINING_KEYS = ("task", "data_seed", "fresh_samples", "model_family", "gamma", "dropout",
                        "optimizer", "lr_schedule", "steps", "batch_size", "lr", "weight_decay",
                        "warmup_steps", "lr_warmup_start", "grad_clip", "mixed_precision", "seed")
PART_GAMMAS = ("gamma_embedding", "gamma_attention", "gamma_mlp", "gamma_head")
LM_KEYS = ("n_layer", "n_head", "n_embd", "d_ff", "vocab_size", "last_position_only", *PART_GAMMAS)
FAMILY_TRAINING_KEYS = {"paper": (*LM_KEYS, "head_bias"), "gpt2": LM_KEYS,
                        "mlp": ("width", "activation", "gamma_prime", "lr_scaling"),
                        "resnet": PART_GAMMAS}


def training_keys(cfg: RunConfig) -> list[str]:
    """The keys that the training of ``cfg`` reads, sorted: ``COMMON_TRAINING_KEYS``, the options
    of its task's generator (``data_seed`` is the generator's seed), its family's keys, and
    ``lr_min`` under the cosine schedule only (the constant one never reads it)."""
    keys = set(COMMON_TRAINING_KEYS) | set(FAMILY_TRAINING_KEYS[cfg.model_family])
    keys |= set(task_fields(cfg.task))
    if cfg.lr_schedule == "cosine":
        keys.add("lr_min")
    return sorted(keys)


PRECISIONS = ("no", "fp16", "bf16")  # what a run trains in: its run id and runs.csv hold one
# asks the command line to pick bf16 or no for the machine (probes.runtime.pick_precision)
# before any RunConfig is made, so a run id never hashes it
AUTO_PRECISION = "auto"
SAVE_CHECKPOINTS = ("probes", "final", "none")
TRAJECTORY_AXES = ("step", "samples")
OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
LR_SCALINGS = ("none", "ntk")
# analysis keys added after runs were first saved: the value a run folder or training state
# saved without the key was measured with
ANALYSIS_BEFORE = {"chance_draws": 0, "chance_nulls": "both", "merge_steps": []}
HINTS = typing.get_type_hints(RunConfig)


def resolved_yaml(cfg: RunConfig, extra: dict | None = None) -> str:
    """The YAML text of a run's full resolved config (plus ``extra``, e.g. the init records)."""
    data = dataclasses.asdict(cfg) | {"run_id": cfg.run_id} | (extra or {})
    return yaml.safe_dump(data, sort_keys=False)


def merge_at(cfg: RunConfig, steps) -> set[int]:
    """The probe steps at which the merge probe runs (``probes.measure.merge_probe``).

    Args:
        cfg: the run's config; steps: the steps its models are measured at (the probe schedule
            in training, the saved checkpoints when measured again).

    Returns:
        the empty set without ``merge_probe``; else ``cfg.steps`` (the last step) and, for each
        value s of ``merge_steps``, the first of ``steps`` at or after s (none when s is past
        them all).
    """
    if not cfg.merge_probe:
        return set()
    steps = sorted(int(s) for s in steps)
    chosen = {cfg.steps}
    for wanted in cfg.merge_steps:
        later = [s for s in steps if s >= wanted]
        if later:
            chosen.add(later[0])
    return chosen


def effective_lr(cfg: RunConfig) -> float:
    """The learning rate the optimizer gets: ``cfg.lr``, divided by max(1, the tangent kernel's
    scale m (beta1^2 + beta2^2) / 2) under ``lr_scaling: ntk`` (mlp; models.mlp.ntk_scale)."""
    if cfg.lr_scaling == "ntk":
        return cfg.lr / max(1.0, ntk_scale(cfg.width, cfg.gamma, cfg.gamma_prime))
    return cfg.lr

