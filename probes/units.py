"""Unit readers: which vectors of a model are the "neurons" that condensation metrics compare.

A unit is one row vector compared with its peers in the same layer and component (DESIGN.md):
- ``mlp.in``: MLP input neuron k = its input weights, concatenated with its bias when it has one.
- ``attn.q`` / ``attn.k`` / ``attn.v``: rows of W_Q, W_K, W_V (the output neurons of each
  projection, bias appended where present), for the whole layer (head empty) and per head.
- ``attn.qk_heads``: heads as units, head h's flattened W_Q^h (W_K^h)^T (d_in x d_in bilinear
  form), when the layer has >= 2 heads.

Layers are numbered from 0 like the module paths (layer 0 is the paper's "layer 1").
Storage differs by module: ``nn.Linear`` is (d_out, d_in), so neuron k is row k; GPT-2's
``Conv1D`` is (d_in, d_out), so neuron k is column k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass
class UnitSet:
    """Units of one (layer, component, head): ``units`` is (n_units, dim), float32, on CPU."""

    layer: int
    component: str
    head: int | None
    units: torch.Tensor


def neuron_rows(module: nn.Module) -> torch.Tensor:
    """Input weights of each output neuron of a projection, bias appended as the last column.

    Args:
        module: ``nn.Linear`` (weight (d_out, d_in)) or GPT-2 ``Conv1D`` (weight (d_in, d_out)).

    Returns:
        (d_out, d_in [+ 1]) float32 CPU tensor, a detached copy.

    Raises:
        TypeError: for any other module type.
    """
    if isinstance(module, nn.Linear):
        w = module.weight
    elif isinstance(module, Conv1D):
        w = module.weight.T
    else:
        raise TypeError(f"no neuron layout for {type(module).__name__}")
    # always a copy: a view of the live parameter would follow it through training
    rows = w.detach().to("cpu", torch.float32, copy=True)
    if getattr(module, "bias", None) is not None:
        rows = torch.cat([rows, module.bias.detach().to("cpu", torch.float32)[:, None]], dim=1)
    return rows


def attention_units(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    n_head: int, d_in: int, n_kv_head: int | None = None) -> list[UnitSet]:
    """Whole-layer and per-head unit sets of one attention layer.

    Args:
        layer: layer index.
        q: (n_head * d_head, d_in [+1]) rows of W_Q; k, v: (n_kv_head * d_head, d_in [+1]).
        n_head: query heads; d_in: input width (columns past it are biases);
        n_kv_head: key/value heads (grouped-query attention), default n_head.

    Returns:
        ``attn.q``, ``attn.k``, ``attn.v`` for the layer; per head when there are >= 2 heads
        (with one head the per-head rows would repeat the layer's); ``attn.qk_heads`` when
        n_head >= 2 and n_kv_head == n_head.
    """
    n_kv_head = n_kv_head or n_head
    sets = [UnitSet(layer, "attn.q", None, q), UnitSet(layer, "attn.k", None, k),
            UnitSet(layer, "attn.v", None, v)]
    for name, rows, heads in (("attn.q", q, n_head), ("attn.k", k, n_kv_head),
                              ("attn.v", v, n_kv_head)):
        if heads >= 2:
            sets += [UnitSet(layer, name, h, chunk) for h, chunk in enumerate(rows.chunk(heads))]
    if n_head >= 2 and n_kv_head == n_head:
        # biases are left out: the bilinear form x^T W_Q^h (W_K^h)^T x acts on the input alone
        forms = [(qh[:, :d_in].T @ kh[:, :d_in]).reshape(-1)
                 for qh, kh in zip(q.chunk(n_head), k.chunk(n_head))]
        sets.append(UnitSet(layer, "attn.qk_heads", None, torch.stack(forms)))
    return sets


def _gpt2_units(model) -> list[UnitSet]:
    n_embd, n_head = model.config.n_embd, model.config.n_head
    sets = []
    for i, block in enumerate(model.transformer.h):
        q, k, v = neuron_rows(block.attn.c_attn).split(n_embd, dim=0)
        sets += attention_units(i, q, k, v, n_head, d_in=n_embd)
        sets.append(UnitSet(i, "mlp.in", None, neuron_rows(block.mlp.c_fc)))
    return sets


def _paper_units(model) -> list[UnitSet]:
    sets = []
    for i, block in enumerate(model.h):
        a = block.attn
        sets += attention_units(i, neuron_rows(a.q_proj), neuron_rows(a.k_proj),
                                neuron_rows(a.v_proj), a.n_head, d_in=a.q_proj.in_features)
        sets.append(UnitSet(i, "mlp.in", None, neuron_rows(block.mlp.fc_in)))
    return sets


READERS = {"gpt2": _gpt2_units, "condensation_paper_gpt": _paper_units}


def read_units(model: nn.Module) -> list[UnitSet]:
    """Every weight-basis unit set of ``model``, in layer order.

    Raises:
        ValueError: if the model's ``config.model_type`` has no reader (accepted: READERS keys).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in READERS:
        raise ValueError(
            f"model_type={model_type!r} has no unit reader: accepted are {sorted(READERS)}"
        )
    with torch.no_grad():
        return READERS[model_type](model)
