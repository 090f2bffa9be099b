"""condensation-probes: condensation of neurons (units of one layer lining up into a few groups of
near-identical direction) in any PyTorch model, checkpoint or training run.

The Python API (README, "Python API"); each name is imported on first use (PEP 562), so that
``import probes`` loads neither torch nor transformers:

- ``probes.measure(model_or_path, *, thresholds, basis, ...) -> pandas.DataFrame``: metrics.csv
  rows of a live ``nn.Module``, a checkpoint folder or a run's checkpoint series
  (``probes.api.measure.measure``);
- ``probes.Condensation``: the estimator of one unit set (``probes.measure.metrics``);
- ``probes.CondensationCallback``: a ``transformers.TrainerCallback`` that measures a ``Trainer``
  run (``probes.api.callback``);
- ``probes.make_task(name, **options)``: a synthetic task; ``.build()`` gives its datasets
  (``tasks.make_task``).

``probes.measure`` is also the name of the measuring room (the package ``probes/measure/``), and
importing any of its modules binds that package to ``probes.measure``, so a function of that name
would be replaced by the package at the first import. Instead the package itself is made callable
here (its module class gets a ``__call__``, the data model's documented way to customize a
module), so ``probes.measure(...)`` and ``probes.measure.units`` both work, in any import order.
"""

import importlib
import types

from probes import measure as _measure_room  # the room's __init__ is a docstring: no imports

_LAZY = {"Condensation": "probes.measure.metrics", "CondensationCallback": "probes.api.callback",
         "make_task": "tasks"}
__all__ = ["measure", "Condensation", "CondensationCallback", "make_task"]


class _CallableRoom(types.ModuleType):
    def __call__(self, model_or_path, **options):
        """``probes.api.measure.measure(model_or_path, **options)``: see its docstring."""
        return importlib.import_module("probes.api.measure").measure(model_or_path, **options)


_measure_room.__class__ = _CallableRoom


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
