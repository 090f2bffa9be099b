"""Units of the baseline families beyond ``probes.measure.units.read_units``, and per-neuron features.

- ResNet (``model_type == "resnet"``): ``read_units`` gives the convolutions (layer 0 the stem,
  layer b + 1 the b-th residual block in forward order; a conv unit = one output channel's kernel
  flattened, in_ch * kh * kw). ``all_units`` adds the classifier: its 10 output neurons (rows of
  the weight, bias appended) as component ``classifier`` at the layer after the last block.
  ``resnet_stage`` maps a layer to its stage (``stem``, ``stage0`` .. ``stage3``, ``classifier``).
- The two-layer net (``model_type == "condensation_mlp"``): ``read_units`` gives ``mlp.in``, every
  hidden neuron's (w_k, b_k). ``all_units`` adds ``mlp.active``: the neurons that carry the
  output, i.e. the fewest neurons, by decreasing amplitude |a_k| |(w_k, b_k)|, that hold
  ``ACTIVE_SHARE`` (99%) of the total amplitude. A neuron whose output weight has gone to zero
  (what dropout does to the neurons it does not need: Zhang and Xu, TPAMI 2024) keeps its input
  weights, so ``mlp.in`` still counts it; ``mlp.active`` does not. Its n_groups divided by the
  width is the dropout paper's effective ratio. RD is not defined for it (the set changes).
- With 1-D input, ``neuron_features`` gives each hidden neuron's orientation angle of (w, b) in
  [-pi, pi) and amplitude |a| * |(w, b)| (probes.measure.neurons).
"""

from __future__ import annotations

import numpy as np
import torch

from probes.measure.neurons import amplitude, orientation
from probes.measure.units import UnitSet, read_units, unit_rows

ACTIVE_SHARE = 0.99
NO_RD = {"mlp.active"}  # unit sets whose membership changes over training: no RD


def active_neurons(units: torch.Tensor, out_weight: torch.Tensor,
                   share: float = ACTIVE_SHARE) -> torch.Tensor:
    """Indices of the fewest neurons holding ``share`` of the total amplitude.

    Args:
        units: (m, d + 1) input weights with bias; out_weight: (out_dim, m).

    Returns:
        (k,) int64 indices, largest amplitude first (all neurons when the total is 0).
    """
    amp = out_weight.norm(dim=0) * units.norm(dim=1)
    order = torch.argsort(amp, descending=True)
    total = amp.sum()
    if total <= 0:
        return order
    k = int(torch.searchsorted(torch.cumsum(amp[order], 0) / total, torch.tensor(share))) + 1
    return order[: min(k, len(order))]


def _mlp_active_units(model, n_layers: int) -> list[UnitSet]:
    units = unit_rows(model.hidden.weight, model.hidden.bias, "linear")[0]
    keep = active_neurons(units, model.output.weight.detach().cpu().float())
    return [UnitSet(0, "mlp.active", None, units[keep])]


def _classifier_units(model, n_layers: int) -> list[UnitSet]:
    linear = model.classifier[-1]
    rows, d_in = unit_rows(linear.weight, linear.bias, "linear")
    return [UnitSet(n_layers, "classifier", None, rows, bias_columns=rows.shape[1] - d_in)]


EXTRA_UNITS = {"resnet": _classifier_units, "condensation_mlp": _mlp_active_units}


def all_units(model) -> list[UnitSet]:
    """``read_units(model)`` plus the family's extra unit sets (the ResNet classifier, the
    two-layer net's active neurons).

    Returns:
        list of UnitSet, (n_units, dim) float32 CPU copies.

    Raises:
        ValueError: as ``read_units`` (no reader for the model type).
    """
    sets = read_units(model)
    extra = EXTRA_UNITS.get(getattr(model.config, "model_type", None))
    if extra is not None:
        n_layers = 1 + max((u.layer for u in sets), default=-1)
        with torch.no_grad():
            sets += extra(model, n_layers)
    return sets


def resnet_stage(layer: int, depths=(2, 2, 2, 2)) -> str:
    """Stage name of a ResNet unit layer (``all_units`` numbering): 0 -> ``stem``, block layers
    1.. -> ``stage<s>`` by ``depths``, the layer after the last block -> ``classifier``."""
    if layer == 0:
        return "stem"
    bounds = np.cumsum(depths)
    if layer > bounds[-1]:
        return "classifier"
    return f"stage{int(np.searchsorted(bounds, layer))}"


@torch.no_grad()
def neuron_features(model) -> dict | None:
    """Orientation and amplitude of each hidden neuron of a 1-D-input two-layer net.

    Returns:
        {"layer": 0, "component": "mlp.in", "units": (m, 2) float64 rows (w_k, b_k),
        "angle": (m,) in [-pi, pi), "amplitude": (m,) |a_k| |(w_k, b_k)|}, or None for any other
        model (another family, or input dimension > 1).
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "condensation_mlp" or config.in_dim != 1:
        return None
    # float64 (unit_rows gives float32): angles of near-opposite neurons are compared closely
    units = torch.cat([model.hidden.weight, model.hidden.bias[:, None]], dim=1).double().cpu().numpy()
    a = model.output.weight.double().cpu().numpy()
    return {"layer": 0, "component": "mlp.in", "units": units, "angle": orientation(units),
            "amplitude": amplitude(units, a[0] if len(a) == 1 else a)}
