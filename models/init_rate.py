"""Initialization rate gamma: every weight matrix W with fan-in d_in is drawn from N(0, (d_in^-gamma)^2).

Larger gamma means smaller initialization (arXiv 2405.05409; at d_in = 400, gamma 0.5 gives std
0.05). Embeddings and the output head count n_embd as d_in. Biases start at 0, except those of the
modules a model names in its ``init_rate_keeps_bias`` attribute (the paper model's optional head
bias: PyTorch's default draw, as the authors'), and normalization layers at weight 1, bias 0.
This overrides whatever the model's own ``_init_weights`` did (GPT-2's 1/sqrt(2 n_layer)
rescaling of ``c_proj`` included).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

PARTS = ("embedding", "attention", "mlp", "head", "other")
_ATTENTION_NAMES = {"attn", "attention", "self_attn", "crossattention"}
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def check_gamma(gamma: float, name: str = "gamma", high: float = 3.0) -> float:
    """Return ``gamma`` as float. Raises ValueError unless 0 < gamma <= ``high`` (3 for the init
    rate; the two-layer net's phase-diagram gamma goes to ``models.mlp.MAX_GAMMA``)."""
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not 0 < gamma <= high:
        raise ValueError(f"{name}={gamma!r} is invalid: accepted is a number in (0, {high:g}]")
    return float(gamma)


def fan_in(module: nn.Module) -> int:
    """d_in of a weight-bearing module: Linear (d_out, d_in) -> d_in; GPT-2 Conv1D (d_in, d_out)
    -> d_in; Embedding (n, d) -> d; Conv (out, in/groups, *k) -> in/groups * prod(k).

    Raises:
        TypeError: for any other module type.
    """
    if isinstance(module, nn.Linear):
        return module.weight.shape[1]
    if isinstance(module, Conv1D):
        return module.weight.shape[0]
    if isinstance(module, nn.Embedding):
        return module.weight.shape[1]
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.weight[0].numel()
    raise TypeError(f"no fan-in rule for {type(module).__name__}")


def part_of(name: str, module: nn.Module) -> str:
    """Which part of the model a module belongs to, from its type and module path."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    pieces = set(name.split("."))
    if "lm_head" in pieces or "classifier" in pieces:
        return "head"
    if pieces & _ATTENTION_NAMES:
        return "attention"
    if "mlp" in pieces:
        return "mlp"
    return "other"


@torch.no_grad()
def apply_init_rate(
    model: nn.Module, gamma: float, part_gammas: dict[str, float | None] | None = None,
    generator: torch.Generator | None = None,
) -> list[dict]:
    """Re-initialize ``model`` in place with std = d_in^-gamma for every weight matrix.

    Args:
        model: any torch module (transformers models included).
        gamma: the init rate, in (0, 3].
        part_gammas: optional per-part gamma, keys in PARTS; a missing or None value uses ``gamma``.
        generator: torch random generator (default: the global one, seeded by ``set_seed``).

    Returns:
        one record per weight matrix: {"name", "part", "d_in", "gamma", "std"}.

    Raises:
        ValueError: on gamma outside (0, 3] or an unknown part name.
    """
    gamma = check_gamma(gamma)
    part_gammas = dict(part_gammas or {})
    unknown = set(part_gammas) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown part(s) {sorted(unknown)} in part_gammas: accepted are {PARTS}")
    seen, records = set(), []
    keep_bias = set(getattr(model, "init_rate_keeps_bias", ()))
    for name, module in model.named_modules():
        if isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            continue
        try:
            d_in = fan_in(module)
        except TypeError:
            continue
        if id(module.weight) in seen:  # tied weights are initialized once, as their first owner
            continue
        seen.add(id(module.weight))
        part = part_of(name, module)
        g = part_gammas.get(part)
        g = gamma if g is None else check_gamma(g, f"gamma_{part}")
        std = float(d_in) ** -g
        module.weight.normal_(0.0, std, generator=generator)
        if getattr(module, "bias", None) is not None and name not in keep_bias:
            module.bias.zero_()
        records.append({"name": name, "part": part, "d_in": d_in, "gamma": g, "std": std})
    return records
