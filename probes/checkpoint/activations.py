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
from probes.config import keys
from probes.measure.capture import Capture
from probes.measure.units import ModelTensors, base_prefix, layer_unit_sets

ACTIVATION_POINTS = keys.ACTIVATION_POINTS  # pre | post: written once, in the keys of probe
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


def _depths(layout, outs: dict, cap: Capture, run_id: str) -> tuple[dict, list[str]]:
    """(block layer, call) -> the layer index its activations are reported under, and notes.

    A block that runs once per forward pass keeps its own index. When blocks run several times
    in a pass (weights shared across depth, as in ALBERT), each call is its own layer, numbered
    by depth: the order in which the first pass ran the blocks' first captured modules.

    Raises:
        CheckpointError: modules of one block that ran different numbers of times in a pass
            (no depth can be given to their calls).
    """
    by_block = {}
    for (lay, _), path in outs.items():
        by_block.setdefault(lay, []).append(path)
    counts = {lay: {len(cap.calls.get(p, [None])) for p in paths} for lay, paths in by_block.items()}
    uneven = sorted(lay for lay, c in counts.items() if len(c) > 1)
    if uneven:
        raise CheckpointError(f"the modules of layer {uneven[0]} of {run_id} ran different numbers "
                              f"of times in one forward pass: accepted are blocks whose modules run "
                              f"together (the activation basis needs each call's depth)")
    if not cap.repeated:
        return {(lay, 0): lay for lay in by_block}, []
    first = {paths[0]: lay for lay, paths in by_block.items()}
    order = [(first[p], c) for p, c in cap.order if p in first]
    depth = {key: d for d, key in enumerate(order)}
    k = max(cap.repeated.values())
    note = (f"{run_id}: its layers share weights across depth ({len(by_block)} stored layer(s) "
            f"run {len(depth)} times in one forward pass, up to {k} times each): the activation "
            f"basis reports each call as its own layer, numbered by depth 0..{len(depth) - 1}; "
            f"the weight basis reports each stored layer once")
    return depth, [note]


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
    outputs = {p: [y[:probe_samples] for y in ys] for p, ys in cap.calls.items()}
    inputs = {p: [y[:probe_samples] for y in ys] for p, ys in cap.input_calls.items()}
    depth, notes = _depths(layout, outs, cap, run_id)
    n_samples = max((len(y) for ys in outputs.values() for y in ys), default=0)
    short = [(len(y), y.shape[1]) for ys in outputs.values() for y in ys if len(y) < y.shape[1]]
    if short:
        n, units = min(short)
        notes.append(f"{run_id}: in the activation basis a layer of {units} units has only {n} "
                     f"samples, so its output vectors span at most {n} dimensions and cosines run "
                     f"high: give more probe inputs")
    dead = {(depth[(lay, c)], comp): dead_mask(y) for (lay, comp), path in posts.items()
            for c, y in enumerate(inputs[path])}
    n_dead = {key: int(m.sum()) for key, m in dead.items() if m.any()}
    if n_dead:
        where = ", ".join(f"layer {lay} {comp} {n}" for (lay, comp), n in sorted(n_dead.items())[:4])
        notes.append(f"{run_id}: {sum(n_dead.values())} dead units (constant after the nonlinearity on "
                     f"every probe input: {where}{', ...' if len(n_dead) > 4 else ''}) left out of "
                     f"the activation-basis groups and counted as n_dead")

    def layers():
        for (lay, c), d in sorted(depth.items(), key=lambda kv: kv[1]):
            block = next(b for b in layout.blocks if b.layer == lay)
            comps = {}
            for part in block.parts:
                key = (lay, part.component)
                if key not in outs:
                    continue
                y = inputs[posts[key]][c] if point == "post" and key in posts else outputs[outs[key]][c]
                y = y[:, part.select] if part.select is not None else y
                comps[part.component] = (y.T.contiguous(), part.heads, y.shape[0])
            sets = layer_unit_sets(d, comps, qk_heads=False)
            for u in sets:
                if u.head is None and (d, u.component) in dead:
                    u.dead = dead[(d, u.component)]
            yield sets

    return layers(), n_samples, notes
