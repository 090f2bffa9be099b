"""The activation basis of a checkpoint: its units measured by their outputs over a probe batch.

A unit's vector is its output on every probe sample (token, pixel position or row), captured
with forward hooks (``measure.capture``). What is captured, ``activation_point``:
- ``pre`` (default): the projection's outputs, W x + b, before any nonlinearity;
- ``post``: for MLP neurons, their output after the nonlinearity, read as the input of the MLP's
  output projection: act(W x + b) for a plain MLP; act(gate) * up for a gated one, so that
  ``mlp.gate`` and ``mlp.up`` then give the same vectors. Attention projections have no
  nonlinearity and stay ``pre``.

Dead units: an MLP neuron whose output after the nonlinearity is constant on every probe input
(a ReLU that never fires) carries no signal; its pre-activation vector still has a direction, so
a set of them would read as a condensed group. Whatever the capture point, such units are left
out of the groups and counted (``n_dead``, also in ``n_dropped``).
"""

from __future__ import annotations

import torch

from probes.checkpoint.discover import CheckpointError
from probes.measure.capture import Capture
from probes.measure.units import ModelTensors, base_prefix, layer_unit_sets

ACTIVATION_POINTS = ("pre", "post")
# a unit is dead when its post-nonlinearity range over the probe samples is at most this share
# of the largest range in its layer and component (0 for a ReLU that never fires)
DEAD_RTOL = 1e-6


def dead_mask(post: torch.Tensor) -> torch.Tensor:
    """Units whose output after the nonlinearity is constant over the probe samples.

    Args:
        post: (n_samples, n_units) outputs after the nonlinearity.

    Returns:
        (n_units,) bool: range (max - min over samples) <= DEAD_RTOL times the largest range
        (every unit when all ranges are 0).
    """
    spread = post.amax(dim=0) - post.amin(dim=0)
    top = spread.max() if spread.numel() else torch.tensor(0.0)
    return spread <= DEAD_RTOL * top if top > 0 else torch.ones_like(spread, dtype=torch.bool)


def _paths(model, layout, prefix: str) -> tuple[dict, dict]:
    """(layer, component) -> module path of each part, and -> path of its post module."""
    outs, posts = {}, {}
    for block in layout.blocks:
        for part in block.parts:
            path = prefix + block.module(part)
            try:
                model.get_submodule(path)
            except AttributeError:
                if not part.optional:
                    raise CheckpointError(f"module {path!r} is missing from the loaded model") from None
                continue
            outs[(block.layer, part.component)] = path
            if part.post is not None:
                post = f"{prefix}{block.path}.{part.post}" if block.path else prefix + part.post
                posts[(block.layer, part.component)] = post
    return outs, posts


def activation_units(model, layout, batch, probe_samples: int, point: str, device, threads: int,
                     run_id: str):
    """Capture the probe batch's outputs and return the activation-basis unit sets.

    Args:
        model: the loaded model; layout: its reader; batch: the ``ProbeBatch``.
        probe_samples: samples kept per layer; point: ``pre`` or ``post`` (module doc).
        device: where the forward passes run; threads: torch threads for them.
        run_id: for the notes.

    Returns:
        (per-layer generator of UnitSet lists with ``dead`` masks on MLP components,
        n_samples (the most any layer had), notes for the user).

    Raises:
        CheckpointError: a module of the layout missing from the model.
    """
    prefix = base_prefix(ModelTensors(model).names(), layout)
    outs, posts = _paths(model, layout, prefix)
    model.to(device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the forward passes use every core
    try:
        with torch.no_grad(), Capture(model, list(outs.values()), batch.max_positions,
                                      inputs_of=list(posts.values())) as cap:
            for inputs in batch.passes:
                model(**{k: v.to(device) for k, v in inputs.items()})
    finally:
        torch.set_num_threads(before)
    outputs = {p: y[:probe_samples] for p, y in cap.outputs.items()}
    inputs = {p: y[:probe_samples] for p, y in cap.inputs.items()}
    n_samples = max((len(y) for y in outputs.values()), default=0)
    notes = []
    short = [(len(y), y.shape[1]) for y in outputs.values() if len(y) < y.shape[1]]
    if short:
        n, units = min(short)
        notes.append(f"{run_id}: in the activation basis a layer of {units} units has only {n} "
                     f"samples, so its output vectors span at most {n} dimensions and cosines run "
                     f"high: give more probe inputs")
    dead = {key: dead_mask(inputs[path]) for key, path in posts.items()}
    n_dead = {key: int(m.sum()) for key, m in dead.items() if m.any()}
    if n_dead:
        where = ", ".join(f"layer {lay} {comp} {n}" for (lay, comp), n in sorted(n_dead.items())[:4])
        notes.append(f"{run_id}: {sum(n_dead.values())} dead units (constant after the nonlinearity on "
                     f"every probe input: {where}{', ...' if len(n_dead) > 4 else ''}) left out of "
                     f"the activation-basis groups and counted as n_dead")

    def layers():
        for block in layout.blocks:
            comps = {}
            for part in block.parts:
                key = (block.layer, part.component)
                if key not in outs:
                    continue
                y = inputs[posts[key]] if point == "post" and key in posts else outputs[outs[key]]
                y = y[:, part.select] if part.select is not None else y
                comps[part.component] = (y.T.contiguous(), part.heads, y.shape[0])
            sets = layer_unit_sets(block.layer, comps, qk_heads=False)
            for u in sets:
                if u.head is None and (block.layer, u.component) in dead:
                    u.dead = dead[(block.layer, u.component)]
            yield sets

    return layers(), n_samples, notes
