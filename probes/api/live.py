"""A model in memory as a planned checkpoint, so that the checkpoint probe's ``Prober`` measures it
exactly as it measures a folder on disk: the weight basis read through the same unit readers
(``ModelTensors`` over its state dict instead of a safetensors file), the activation basis over
probe inputs given as tensors, and the merge probe on a copy."""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from probes.checkpoint.discover import Checkpoint
from probes.checkpoint.inputs import ProbeBatch
from probes.checkpoint.merge import check_merge
from probes.checkpoint.probe import Options, Plan
from probes.checkpoint.validate import check_batch
from probes.measure.arch import live_layout
from probes.measure.units import ModelTensors, base_prefix

INPUTS = ("a tensor (the forward pass's first argument), a dict of keyword arguments of one "
          "forward pass, or a list of either")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def first_input(model: nn.Module) -> str:
    """The name of the first argument of ``model.forward`` (``input_ids``, ``pixel_values``,
    ``input``), under which a tensor given as probe input is passed.

    Raises:
        TypeError: a forward pass that takes ``*args`` first (no name to pass a tensor by).
    """
    for p in inspect.signature(model.forward).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return p.name
        break
    raise TypeError(f"{type(model).__name__}.forward has no named first argument: accepted inputs "
                    f"are dicts of its keyword arguments")


def probe_batch(model: nn.Module, inputs) -> ProbeBatch:
    """The probe batch of the activation basis from ``inputs``: one forward pass per item.

    Args:
        inputs: a tensor (passed as ``model.forward``'s first argument; e.g. (batch, seq) token
            ids or (batch, features)), a dict of keyword arguments (str -> tensor), or a
            non-empty list / tuple of either.

    Raises:
        TypeError: anything else; ValueError: an empty list.
    """
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise ValueError(f"inputs=[] is empty: accepted are {INPUTS}")
    passes = []
    for x in items:
        if isinstance(x, torch.Tensor):
            passes.append({first_input(model): x})
        elif isinstance(x, Mapping) and all(isinstance(k, str) for k in x):
            passes.append(dict(x))
        else:
            raise TypeError(f"inputs of type {type(x).__name__} are not accepted: accepted are "
                            f"{INPUTS}")
    return ProbeBatch(passes)


def live_plan(model: nn.Module, opts: Options, run_id: str, step: int | None,
              inputs=None) -> tuple[Plan, list[str]]:
    """The ``Plan`` of a live model (what ``plan_checkpoint`` gives for a folder) and notes.

    Args:
        model: any ``nn.Module`` (its unit layout: ``probes.measure.arch.live_layout``).
        opts: the probe's options; run_id, step: the rows' identity.
        inputs: the activation basis's probe inputs (``probe_batch``), or None.

    With ``opts.merge_probe`` the merges run on a deep copy (they fold the norm gains in place),
    so the model is never changed; the copy doubles the memory for the call.

    Raises:
        UnsupportedModel (a ValueError): no Linear / Conv1D / convolution to measure;
        CheckpointError (a ValueError): token ids outside the vocabulary, or a merge the model
        cannot run (``check_merge``).
    """
    layout = live_layout(model)
    source = ModelTensors(model)
    config = getattr(model, "config", None)
    plan = Plan(Checkpoint(Path(run_id), run_id, step), config, layout, "live",
                sum(p.numel() for p in model.parameters()), source,
                prefix=base_prefix(source.names(), layout), draw=False)
    notes = [f"{run_id}: {n}" for n in layout.notes]
    if inputs is not None:
        plan.batch = probe_batch(model, inputs)
        plan.model = copy.deepcopy(model) if opts.merge_probe else model
        if config is not None:
            notes += check_batch(plan.batch, config, run_id)
        if opts.merge_probe:
            check_merge(plan)
    return plan, notes


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Inside the block the model is in eval mode (no dropout in the probe's forward passes);
    after it, every submodule's ``training`` flag is as it was."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in was.items():
            m.training = training
