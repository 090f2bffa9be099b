"""Unit readers: which vectors of a model are the "neurons" that condensation metrics compare.

A unit is one row vector compared with its peers in the same layer and component (docs/science.md,
"How condensation is measured"):
- ``mlp.in``: MLP input neuron k = its input weights, concatenated with its bias when it has one;
  gated MLPs (Llama's gate_proj / up_proj) give ``mlp.gate`` and ``mlp.up``, one component each.
- ``attn.q`` / ``attn.k`` / ``attn.v``: rows of W_Q, W_K, W_V (the output neurons of each
  projection, bias appended where present), for the whole layer (head empty) and per head;
  grouped-query attention keeps its own (smaller) number of K/V heads.
- ``attn.qk_heads``: heads as units, query head h's flattened W_Q^h (W_K^g)^T (d_in x d_in
  bilinear form, g = the K/V head that h reads), when the layer has >= 2 query heads.
- ``conv.*``: a convolution's output channel c = its kernel flattened (in_ch * kh * kw), plus bias.

Layers are numbered from 0 like the module paths (layer 0 is the paper's "layer 1").
Storage differs by module: ``nn.Linear`` is (d_out, d_in), so neuron k is row k; GPT-2's
``Conv1D`` is (d_in, d_out), so neuron k is column k; a convolution is (out, in, kh, kw).

Each architecture is described once (one file in probes/measure/arch/). The same description
serves a live model (``read_units``), a checkpoint on disk read one tensor at a time
(``block_units`` over any tensor source, see probes/checkpoint/discover.py) and the activation
basis (the same parts' outputs, captured with forward hooks, see probes/measure/capture.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from probes.measure.arch import Block, base_prefix, layout_for

KINDS = ("linear", "conv1d", "conv")
MATRIX_KINDS = ("linear", "conv1d")  # a weight matrix, not a convolution's kernels


@dataclass
class UnitSet:
    """Units of one (layer, component, head): ``units`` is (n_units, dim), float32, on CPU;
    ``dead`` (activation basis only) is an (n_units,) bool mask of units whose output after the
    nonlinearity is constant on every probe input, or None when not known; ``bias_columns``: when
    the rows are rows of one Linear / Conv1D weight matrix W (weight basis), how many trailing
    columns are its bias (0: none), so that W alone can be measured; None for anything else
    (activations, head forms, convolution kernels)."""

    layer: int
    component: str
    head: int | None
    units: torch.Tensor
    dead: torch.Tensor | None = None
    bias_columns: int | None = None


# --- tensors -> unit rows ---------------------------------------------------------------------

def unit_rows(weight: torch.Tensor, bias: torch.Tensor | None, kind: str) -> tuple[torch.Tensor, int]:
    """Rows of units from a projection's stored weight (and bias).

    Args:
        weight: ``linear`` (d_out, d_in), ``conv1d`` (d_in, d_out) or ``conv`` (out, in, *k).
        bias: (d_out,) or None.
        kind: one of KINDS.

    Returns:
        ((d_out, d_in [+ 1]) float32 CPU copy, bias appended as the last column; d_in, the
        number of weight columns).

    Raises:
        ValueError: unknown ``kind`` or a weight whose shape does not fit it.
    """
    if kind == "linear" and weight.ndim == 2:
        w = weight
    elif kind == "conv1d" and weight.ndim == 2:
        w = weight.T
    elif kind == "conv" and weight.ndim >= 3:
        w = weight.reshape(weight.shape[0], -1)
    else:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit kind={kind!r}: "
                         f"accepted are {KINDS} with 2-D (linear, conv1d) or >= 3-D (conv) weights")
    # always a copy (one): a view of a live parameter would follow it through training
    rows = torch.empty(w.shape[0], w.shape[1] + (bias is not None), dtype=torch.float32)
    rows[:, : w.shape[1]] = w.detach()
    if bias is not None:
        rows[:, -1] = bias.detach()
    return rows, w.shape[1]


def head_forms(q: torch.Tensor, k: torch.Tensor, n_head: int, n_kv_head: int, d_in: int) -> torch.Tensor:
    """Heads as units: query head h's flattened W_Q^h (W_K^g)^T, g = h // (n_head / n_kv_head).

    Args:
        q: (n_head * d_head, d_in [+1]) rows of W_Q; k: (n_kv_head * d_head, d_in [+1]).
        n_head, n_kv_head: query and key/value heads (grouped-query attention: query heads
            h = g * r ... g * r + r - 1 share K/V head g, r = n_head / n_kv_head, as transformers'
            ``repeat_kv`` lays them out); d_in: input width (columns past it are biases).

    Returns:
        (n_head, d_in * d_in) float32.
    """
    # biases are left out: the bilinear form x^T W_Q^h (W_K^g)^T x acts on the input alone
    r = n_head // n_kv_head
    ks = k.chunk(n_kv_head)
    return torch.stack([(qh[:, :d_in].T @ ks[h // r][:, :d_in]).reshape(-1)
                        for h, qh in enumerate(q.chunk(n_head))])


def layer_unit_sets(layer: int, comps: dict, qk_heads: bool = True,
                    matrices: frozenset | set = frozenset()) -> list[UnitSet]:
    """Unit sets of one layer from its components' rows.

    Args:
        layer: layer index.
        comps: component -> (rows (n, dim), heads, d_in): the rows split into ``heads``
            consecutive chunks; d_in = weight columns (the rest are bias columns).
        qk_heads: add ``attn.qk_heads`` when ``attn.q`` and ``attn.k`` are there with >= 2 query
            heads (weights only: in the activation basis it is not defined).
        matrices: components whose rows are a Linear / Conv1D weight matrix: their sets (whole
            and per head) get ``bias_columns`` = dim - d_in.

    Returns:
        per component the whole-layer set (head None), then one set per head when heads >= 2.

    Raises:
        ValueError: a component's rows do not split evenly into its heads.
    """
    sets = []
    for comp, (rows, heads, d_in) in comps.items():
        if heads >= 2 and len(rows) % heads:
            raise ValueError(f"layer {layer} {comp}: {len(rows)} units do not split into {heads} heads")
        bias = rows.shape[1] - d_in if comp in matrices else None
        sets.append(UnitSet(layer, comp, None, rows, bias_columns=bias))
        if heads >= 2:
            sets += [UnitSet(layer, comp, h, chunk, bias_columns=bias)
                     for h, chunk in enumerate(rows.chunk(heads))]
    if qk_heads and "attn.q" in comps and "attn.k" in comps:
        (q, n_head, d_in), (k, n_kv_head, _) = comps["attn.q"], comps["attn.k"]
        if n_head >= 2 and n_head % n_kv_head == 0:
            sets.append(UnitSet(layer, "attn.qk_heads", None,
                                head_forms(q, k, n_head, n_kv_head, d_in)))
    return sets


# --- reading ----------------------------------------------------------------------------------

class DictTensors:
    """Tensor source over an in-memory name -> tensor mapping (``self.tensors``)."""

    tensors: dict

    def names(self) -> list[str]:
        """Every tensor name."""
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` as stored (no copy). Raises KeyError if absent."""
        return self.tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``. Raises KeyError if absent."""
        return tuple(self.tensors[name].shape)


class ModelTensors(DictTensors):
    """Tensor source over a live model's state dict (views, no copies)."""

    def __init__(self, model: nn.Module):
        self.tensors = model.state_dict()


def fold_norm(rows: torch.Tensor, d_in: int, gain: torch.Tensor, beta: torch.Tensor | None = None,
              center: bool = False) -> torch.Tensor:
    """Fold the gain (and bias) of the norm a projection reads into its rows, as TransformerLens's
    ``fold_ln`` does: W (g * x_hat + beta) + c = (W diag g) x_hat + (W beta + c).

    With ``center`` (LayerNorm, whose x_hat has zero mean over features) each folded row also
    loses its mean, which leaves W x_hat unchanged. The function is the same; the rows are then
    those of a model whose norm has gain 1 and bias 0, so moving scale between a gain and the
    weights after it (a function-preserving reparametrization) no longer changes them.

    Args:
        rows: (n_units, d_in [+ 1]) float32 unit rows (``unit_rows``), bias last when present.
        d_in: weight columns; gain: (d_in,) the norm's weight; beta: (d_in,) its bias or None
            (either on any device: read where ``rows`` are).
        center: subtract each folded row's mean (LayerNorm only; not RMSNorm).

    Returns:
        (n_units, d_in [+ 1]) float32: a bias column when the rows or the norm had one.

    Raises:
        ValueError: gain or beta not of length d_in.
    """
    if gain.shape != (d_in,) or (beta is not None and beta.shape != (d_in,)):
        raise ValueError(f"norm of {tuple(gain.shape)} does not fit rows of {d_in} inputs: "
                         f"accepted is the norm the projection reads")
    # a live model's norm may sit on an accelerator; the rows are always CPU copies
    gain = gain.to(rows.device)
    beta = None if beta is None else beta.to(rows.device)
    if (beta is None and not center and rows.dtype == torch.float32
            and gain.dtype in (torch.float32, torch.bfloat16, torch.float16)):
        # RMSNorm: one float32 product is correctly rounded, so it equals the float64 product
        # rounded to float32 (the general path below) bit for bit, without float64 copies
        out = rows.clone()
        out[:, :d_in] *= gain.float()[None, :]
        return out
    w = rows[:, :d_in].double()
    has_bias = rows.shape[1] > d_in or beta is not None
    out = torch.empty(len(rows), d_in + has_bias, dtype=torch.float64)  # no concatenated copy
    folded = torch.mul(w, gain.double()[None, :], out=out[:, :d_in])
    if center:
        folded -= folded.mean(dim=1, keepdim=True)
    if has_bias:
        out[:, d_in] = rows[:, d_in].double() if rows.shape[1] > d_in else 0.0
        if beta is not None:
            out[:, d_in] += w @ beta.double()
    return out.float()


def block_parts(source, prefix: str, block: Block, fold: bool = False) -> dict:
    """Rows of each part of ``block`` read from ``source`` (``names``/``__contains__``/``get``).

    Args:
        fold: fold the gain (and bias) of the norm each part reads into its rows (``fold_norm``;
            only parts that ``block.norms`` maps).

    Returns:
        component -> (rows (n_units, dim) float32, heads, d_in), parts in order.

    Raises:
        KeyError: a required tensor is missing (the message names it).
    """
    comps = {}
    for part in block.parts:
        name = prefix + block.module(part)
        if part.optional and f"{name}.weight" not in source:
            continue
        if f"{name}.weight" not in source:
            raise KeyError(f"tensor {name}.weight is missing")
        bias = source.get(f"{name}.bias") if f"{name}.bias" in source else None
        rows, d_in = unit_rows(source.get(f"{name}.weight"), bias, part.kind)
        norm = block.norms.get(part.module) if fold else None
        if norm is not None:
            layer_norm = block.norm_kind == "layernorm"
            beta = f"{prefix}{norm}.bias"
            rows = fold_norm(rows, d_in, source.get(f"{prefix}{norm}.weight"),
                             source.get(beta) if layer_norm and beta in source else None,
                             center=layer_norm)
        if part.select is not None:
            rows = rows[part.select]
        comps[part.component] = (rows, part.heads, d_in)
    return comps


def block_units(source, prefix: str, block: Block, fold: bool = False) -> list[UnitSet]:
    """Every weight-basis unit set of one block (tensors read from ``source`` one at a time);
    ``fold``: norm gains folded into the rows (``block_parts``). Linear and Conv1D parts carry
    ``bias_columns``."""
    matrices = {p.component for p in block.parts if p.kind in MATRIX_KINDS}
    return layer_unit_sets(block.layer, block_parts(source, prefix, block, fold), block.qk_heads,
                           matrices)


def read_units(model: nn.Module) -> list[UnitSet]:
    """Every weight-basis unit set of ``model``, in layer order.

    Args:
        model: a transformers model whose ``config.model_type`` has a reader (a live model:
            parameters materialized, any device or dtype).

    Returns:
        list of UnitSet, (n_units, dim) float32 CPU copies.

    Raises:
        UnsupportedModel (a ValueError): the model type has no reader (accepted:
            ``probes.measure.arch.REGISTRY`` keys).
    """
    layout = layout_for(getattr(model, "config", None))
    source = ModelTensors(model)
    prefix = base_prefix(source.names(), layout)
    with torch.no_grad():
        return [u for block in layout.blocks for u in block_units(source, prefix, block)]
