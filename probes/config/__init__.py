"""Experiment configuration: one dataclass, read from YAML, overridden from the command line.

Any key given a list (in the YAML file or as ``--key "[a, b]"``) expands into a grid: the runs are
the product of all lists, in key order. ``thresholds`` and ``merge_steps`` are lists by nature and
never expand.
"""

from probes.config.load import (
    YamlLoader,
    checked,
    config_path,
    expand,
    load_config,
    load_yaml,
    parse_overrides,
    preset_names,
    validate,
)
from probes.config.run_config import (
    ANALYSIS_KEYS,
    DEFAULT_CONFIG,
    EXPERIMENT_KEYS,
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
    ConfigError,
    RunConfig,
    effective_lr,
    merge_at,
    resolved_yaml,
    training_keys,
)

__all__ = ["ANALYSIS_KEYS", "DEFAULT_CONFIG", "EXPERIMENT_KEYS", "FIELDS", "HINTS", "LIST_KEYS",
           "LR_SCALINGS", "LR_SCHEDULES", "OPTIMIZERS", "PRECISIONS", "PRESETS",
           "SAVE_CHECKPOINTS", "SHARED_KEYS",
           "ConfigError", "RunConfig", "YamlLoader", "checked", "config_path", "effective_lr", "expand",
           "load_config", "merge_at", "load_yaml", "parse_overrides", "preset_names", "resolved_yaml",
           "training_keys", "validate"]
