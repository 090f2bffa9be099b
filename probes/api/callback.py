"""``CondensationCallback``: condensation measured during any ``transformers.Trainer`` run.

At each chosen step the trained model is measured by ``probes.api.measure.measure`` (weight basis:
its parameters read in place, no hook, no forward pass), the rows are written to
``<output_dir>/metrics.csv`` (the suite's schema) and a few scalars go to the Trainer's logs.

How the scalars reach the logs: a callback cannot call ``Trainer.log`` (it is not given the
trainer) and may change only ``control`` (``TrainerCallback``'s docstring). So at a measured step
``on_step_end`` sets ``control.should_log`` (``DefaultFlowCallback.on_step_end`` does the same for
``logging_steps``): the Trainer then logs that step (``Trainer._maybe_log_save_evaluate`` ->
``Trainer.log``), and ``on_log`` adds the scalars to the ``logs`` dict it is handed, the dict
that each later callback's ``on_log`` receives (``CallbackHandler.call_event`` passes one dict
down the list; ``PrinterCallback``, the docstring's example, edits it with ``logs.pop``), and to
``state.log_history[-1]`` (``Trainer.log`` appended ``{**logs, "step": ...}`` before calling
``on_log``; transformers 5.x, src/transformers/trainer.py ``Trainer.log``). Reporting callbacks
that run earlier in the list, i.e. those of ``report_to`` (the Trainer puts them before the
callbacks it is given), do not see them: to send them to W&B or TensorBoard, pass
``report_to=[]`` and list the reporting callback after this one.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import pandas as pd
from transformers import TrainerCallback

from probes.api.measure import checked_flag, checked_spectral, checked_thresholds, measure
from probes.measure.metrics import THRESHOLDS
from probes.store import METRICS_COLUMNS, frame, read_csv, write_csv
from probes.train.loop import probe_steps


class CondensationCallback(TrainerCallback):
    """Measures the model of a ``Trainer`` run at chosen steps (weight basis).

    Args:
        steps: optimizer steps at which to measure (ints >= 0; 0 is the model before training);
            None (default): ``n_probes`` log-spaced steps over ``state.max_steps``, 0 and the
            last included (``probes.train.loop.probe_steps``).
        n_probes: how many log-spaced steps when ``steps`` is None (>= 2).
        thresholds, fold_norms, spectral: as ``probes.measure``.
        run_id: the rows' run_id (default: the name of ``args.output_dir``, which is what
            ``probes.measure(output_dir)`` calls the run's checkpoint series).

    At each measured step the world's process 0 measures the model, rewrites
    ``<args.output_dir>/metrics.csv`` with every row so far (written to a temporary file and
    renamed) and logs, per component, the mean over layers (whole layers, heads pooled) of
    ``mean_abs_cos`` and of ``n_groups`` at 0.9 (else the first threshold):
    ``condensation/<component>/mean_abs_cos``, ``condensation/<component>/n_groups@0.9``. Step 0
    is in metrics.csv only (the Trainer logs nothing before its first step). Every process asks
    the Trainer to log at a measured step, so that its logging collectives stay in step. A
    resumed run keeps the rows of metrics.csv up to the step it resumes from. At any other step
    nothing is done. Not for sharded parameters (FSDP, DeepSpeed ZeRO-3): each process would see
    its shard only.

    Raises:
        TypeError / ValueError: ``steps``, ``n_probes`` or an option outside what is accepted.
    """

    def __init__(self, steps=None, *, n_probes: int = 10, thresholds=THRESHOLDS,
                 fold_norms: bool = True, spectral: bool | str = True, run_id: str | None = None):
        if steps is not None:
            if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
                raise TypeError(f"steps={steps!r} is not accepted: accepted are a list of "
                                f"integers >= 0 or None")
            steps = list(steps)
            if not steps or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                    and s >= 0 for s in steps):
                raise ValueError(f"steps={steps!r} is not accepted: accepted is a non-empty list "
                                 f"of integers >= 0 or None")
        if not isinstance(n_probes, numbers.Integral) or isinstance(n_probes, bool) or n_probes < 2:
            raise ValueError(f"n_probes={n_probes!r} is not accepted: accepted is an integer >= 2")
        self.steps = None if steps is None else sorted({int(s) for s in steps})
        self.n_probes, self.run_id = n_probes, run_id
        self.options = dict(thresholds=checked_thresholds(thresholds),
                            fold_norms=checked_flag("fold_norms", fold_norms),
                            spectral=checked_spectral(spectral))
        self.summary_threshold = 0.9 if 0.9 in self.options["thresholds"] else \
            self.options["thresholds"][0]
        self.rows: pd.DataFrame = frame([], METRICS_COLUMNS)
        self._chosen: set[int] = set()
        self._pending: tuple[int, dict] | None = None

    def schedule(self, max_steps: int) -> list[int]:
        """The steps measured in a run of ``max_steps`` optimizer steps."""
        if self.steps is not None:
            return [s for s in self.steps if s <= max_steps]
        return probe_steps(max_steps, self.n_probes)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._chosen = set(self.schedule(state.max_steps))
        self.run_id = self.run_id or Path(args.output_dir).resolve().name
        self.rows, self._pending = frame([], METRICS_COLUMNS), None
        path = Path(args.output_dir) / "metrics.csv"
        if state.global_step > 0 and path.is_file():  # resumed: keep what was measured before
            old = read_csv(path)
            keep = (old["run_id"] == self.run_id) & (old["step"] <= state.global_step)
            self.rows = old[keep.fillna(False).astype(bool)].reset_index(drop=True)
        if state.global_step == 0 and 0 in self._chosen:
            self._measure(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self._chosen:
            return control
        self._measure(args, state, model)
        control.should_log = True  # on every process: Trainer.log gathers the loss
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or self._pending[0] != state.global_step or logs is None:
            return control
        scalars = self._pending[1]
        self._pending = None
        logs.update(scalars)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(scalars)
        return control

    def _measure(self, args, state, model) -> None:
        if not state.is_world_process_zero:
            return
        df = measure(model, run_id=self.run_id, step=state.global_step, **self.options)
        self.rows = df if self.rows.empty else pd.concat([self.rows, df], ignore_index=True)
        write_csv(self.rows, Path(args.output_dir) / "metrics.csv")
        if state.global_step > 0:
            self._pending = (state.global_step, self.summary(df))

    def summary(self, df: pd.DataFrame) -> dict[str, float]:
        """The logged scalars of one step's rows (class docstring)."""
        whole = df[df["head"].isna() & (df["basis"] == "weight")]
        cos = whole[whole["metric"] == "mean_abs_cos"].groupby("component", sort=False)["value"]
        groups = whole[(whole["metric"] == "n_groups")
                       & (whole["threshold"] == self.summary_threshold)]
        groups = groups.groupby("component", sort=False)["value"]
        out = {f"condensation/{c}/mean_abs_cos": float(v) for c, v in cos.mean().items()}
        out |= {f"condensation/{c}/n_groups@{self.summary_threshold:g}": float(v)
                for c, v in groups.mean().items()}
        return out
