"""Experiment configuration: one dataclass, read from YAML, overridden from the command line.

Any key given a list (in the YAML file or as ``--key "[a, b]"``) expands into a grid: the runs are
the product of all lists, in key order. ``thresholds`` and ``merge_steps`` are lists by nature and
never expand.

- ``grammar``: the one option grammar of every command, read off dataclass fields;
- ``keys``: every key with its type, default, section and help (``RunKeys``, ``ProbeKeys``;
  standard library only, so that ``--help`` loads neither torch nor the tasks);
- ``run_config``: ``RunConfig`` (the keys with the run's identity and run id) and the key groups;
- ``load``: YAML, presets, command-line overrides, grid expansion and validation.

Each name below is imported from its module on first use (PEP 562), so that importing
``probes.config.keys`` does not import ``run_config`` and ``load`` (which import the tasks and
models, and so torch).
"""

import importlib

# where a name is looked for, in this order (each module imports the ones before it)
_MODULES = ("probes.config.grammar", "probes.config.keys", "probes.config.run_config", "probes.config.load")

__all__ = ["ALIGN_KEYS", "ANALYSIS_BEFORE", "ANALYSIS_KEYS", "AUTO_PRECISION", "CHANCE_NULLS",
           "DEFAULT_CONFIG", "EXPERIMENT_KEYS", "FIELDS", "GRID_KEYS", "HINTS", "LIST_KEYS",
           "MEASURE_KEYS", "PROBE_KEYS", "ProbeKeys",
           "LR_SCALINGS", "LR_SCHEDULES", "OPTIMIZERS", "PRECISIONS", "PRESETS",
           "SAVE_CHECKPOINTS", "SHARED_KEYS", "SPECTRAL_CHOICES",
           "ConfigError", "RunConfig", "RunKeys", "YamlLoader", "checked", "config_path",
           "effective_lr", "expand", "load_config", "load_yaml", "merge_at", "parse_overrides",
           "preset_names", "resolved_yaml", "training_keys", "unread_options", "validate"]


def __getattr__(name: str):
    if name in __all__:
        for module in _MODULES:
            found = importlib.import_module(module)
            if hasattr(found, name):
                globals()[name] = value = getattr(found, name)  # looked up once
                return value
    raise AttributeError(f"module 'probes.config' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
