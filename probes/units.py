"""Unit readers: which vectors of a model are the "neurons" that condensation metrics compare.

A unit is one row vector compared with its peers in the same layer and component (DESIGN.md):
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

Each architecture is described once, as a list of ``Block`` s (a layer's module path and its
``Part`` s: which projection gives which component). The same description serves a live model
(``read_units``), a checkpoint on disk read one tensor at a time (``block_units`` over any tensor
source, see probes/checkpoints.py) and the activation basis (the same parts' outputs, captured
with forward hooks, see probes/capture.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# qk_heads builds n_head x d_in^2 floats; above this many it is skipped (a 4096-wide model
# would need 2 GB for it), and the skip is reported by ``layout_notes``.
MAX_QK_FORM_FLOATS = 2**26
KINDS = ("linear", "conv1d", "conv")


@dataclass
class UnitSet:
    """Units of one (layer, component, head): ``units`` is (n_units, dim), float32, on CPU."""

    layer: int
    component: str
    head: int | None
    units: torch.Tensor


@dataclass
class Part:
    """One projection of a block whose output neurons are the units of ``component``.

    Args:
        component: report name, e.g. ``attn.q``.
        module: module path inside the block, e.g. ``self_attn.q_proj``; its tensors are
            ``<module>.weight`` and (optional) ``<module>.bias``.
        kind: weight storage: ``linear`` (d_out, d_in), ``conv1d`` (GPT-2 Conv1D, (d_in, d_out))
            or ``conv`` (out_ch, in_ch, *kernel).
        select: indices of this component's neurons among the module's outputs, in head order
            (fused projections such as GPT-2's c_attn); None for all of them.
        heads: heads the selected neurons split into, consecutively (1: no per-head rows).
        optional: a missing tensor skips the part (ResNet shortcuts exist only where the shape
            changes) instead of raising.
    """

    component: str
    module: str
    kind: str = "linear"
    select: torch.Tensor | slice | None = None
    heads: int = 1
    optional: bool = False


@dataclass
class Block:
    """One layer of units: ``path`` is its module path below the model's base (``layers.3``;
    empty when the parts sit at the top)."""

    layer: int
    path: str
    parts: list[Part]
    qk_heads: bool = True  # whether attn.q / attn.k give head forms (False: too large)

    def module(self, part: Part) -> str:
        """The module path of ``part`` below the model's base."""
        return f"{self.path}.{part.module}" if self.path else part.module


@dataclass
class Layout:
    """How to read an architecture's units: its blocks, in layer order, and notes for the user."""

    blocks: list[Block]
    reader: str  # the reader's name, or "discovered" for the module-path fallback
    notes: list[str] = field(default_factory=list)


class UnsupportedModel(ValueError):
    """The model has no unit reader and no Linear / Conv1D / convolution layers in blocks."""


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
        kind = "linear"
    elif isinstance(module, Conv1D):
        kind = "conv1d"
    else:
        raise TypeError(f"no neuron layout for {type(module).__name__}")
    return unit_rows(module.weight, getattr(module, "bias", None), kind)[0]


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
        n_head >= 2.
    """
    n_kv_head = n_kv_head or n_head
    comps = {"attn.q": (q, n_head, d_in), "attn.k": (k, n_kv_head, d_in),
             "attn.v": (v, n_kv_head, d_in)}
    return layer_unit_sets(layer, comps)


def layer_unit_sets(layer: int, comps: dict, qk_heads: bool = True) -> list[UnitSet]:
    """Unit sets of one layer from its components' rows.

    Args:
        layer: layer index.
        comps: component -> (rows (n, dim), heads, d_in): the rows split into ``heads``
            consecutive chunks; d_in = weight columns (the rest are bias columns).
        qk_heads: add ``attn.qk_heads`` when ``attn.q`` and ``attn.k`` are there with >= 2 query
            heads (weights only: in the activation basis it is not defined).

    Returns:
        per component the whole-layer set (head None), then one set per head when heads >= 2.

    Raises:
        ValueError: a component's rows do not split evenly into its heads.
    """
    sets = []
    for comp, (rows, heads, _) in comps.items():
        if heads >= 2 and len(rows) % heads:
            raise ValueError(f"layer {layer} {comp}: {len(rows)} units do not split into {heads} heads")
        sets.append(UnitSet(layer, comp, None, rows))
        if heads >= 2:
            sets += [UnitSet(layer, comp, h, chunk) for h, chunk in enumerate(rows.chunk(heads))]
    if qk_heads and "attn.q" in comps and "attn.k" in comps:
        (q, n_head, d_in), (k, n_kv_head, _) = comps["attn.q"], comps["attn.k"]
        if n_head >= 2 and n_head % n_kv_head == 0:
            sets.append(UnitSet(layer, "attn.qk_heads", None,
                                head_forms(q, k, n_head, n_kv_head, d_in)))
    return sets


# --- architectures ----------------------------------------------------------------------------

def _gpt2(c) -> list[Block]:
    e, h = c.n_embd, c.n_head
    parts = [Part("attn.q", "attn.c_attn", "conv1d", slice(0, e), h),  # c_attn columns: q | k | v
             Part("attn.k", "attn.c_attn", "conv1d", slice(e, 2 * e), h),
             Part("attn.v", "attn.c_attn", "conv1d", slice(2 * e, 3 * e), h),
             Part("mlp.in", "mlp.c_fc", "conv1d")]
    return [Block(i, f"h.{i}", parts) for i in range(c.n_layer)]


def _paper(c) -> list[Block]:
    parts = [Part(f"attn.{p}", f"attn.{p}_proj", heads=c.n_head) for p in "qkv"]
    parts.append(Part("mlp.in", "mlp.fc_in"))
    return [Block(i, f"h.{i}", parts) for i in range(c.n_layer)]


def _llama(c) -> list[Block]:
    """Llama, Mistral, Qwen2/3, Gemma, SmolLM: separate q/k/v (fewer K/V heads with GQA), gated MLP."""
    h = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or h
    parts = [Part("attn.q", "self_attn.q_proj", heads=h), Part("attn.k", "self_attn.k_proj", heads=kv),
             Part("attn.v", "self_attn.v_proj", heads=kv), Part("mlp.gate", "mlp.gate_proj"),
             Part("mlp.up", "mlp.up_proj")]
    return [Block(i, f"layers.{i}", parts) for i in range(c.num_hidden_layers)]


def _gpt_neox(c) -> list[Block]:
    """GPT-NeoX / Pythia: query_key_value's outputs are laid out per head as (head, q|k|v, d_head)."""
    h = c.num_attention_heads
    idx = torch.arange(3 * c.hidden_size).view(h, 3, c.hidden_size // h)
    parts = [Part(f"attn.{p}", "attention.query_key_value", select=idx[:, j].reshape(-1), heads=h)
             for j, p in enumerate("qkv")]
    parts.append(Part("mlp.in", "mlp.dense_h_to_4h"))
    return [Block(i, f"layers.{i}", parts) for i in range(c.num_hidden_layers)]


def _opt(c) -> list[Block]:
    h = c.num_attention_heads
    parts = [Part(f"attn.{p}", f"self_attn.{p}_proj", heads=h) for p in "qkv"]
    parts.append(Part("mlp.in", "fc1"))
    return [Block(i, f"decoder.layers.{i}", parts) for i in range(c.num_hidden_layers)]


def _bert(c) -> list[Block]:
    """BERT / RoBERTa encoders: the same attention names as decoders (no causal mask here)."""
    h = c.num_attention_heads
    parts = [Part(f"attn.{p}", f"attention.self.{name}", heads=h)
             for p, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    parts.append(Part("mlp.in", "intermediate.dense"))
    return [Block(i, f"encoder.layer.{i}", parts) for i in range(c.num_hidden_layers)]


def _resnet(c) -> list[Block]:
    """ResNet: layer 0 is the stem convolution, layer b + 1 the b-th residual block (forward order
    across stages); components ``conv.1`` .. ``conv.3`` are the block's convolutions in order and
    ``conv.shortcut`` its projection shortcut, where it has one."""
    n_conv = 3 if c.layer_type == "bottleneck" else 2
    blocks = [Block(0, "embedder.embedder", [Part("conv.stem", "convolution", "conv")])]
    for s, depth in enumerate(c.depths):
        for j in range(depth):
            parts = [Part(f"conv.{k + 1}", f"layer.{k}.convolution", "conv") for k in range(n_conv)]
            parts.append(Part("conv.shortcut", "shortcut.convolution", "conv", optional=True))
            blocks.append(Block(len(blocks), f"encoder.stages.{s}.layers.{j}", parts))
    return blocks


def _two_layer(c) -> list[Block]:
    """This project's two-layer net f(x) = sum_k a_k sigma(w_k . x + b_k): hidden neuron k = (w_k, b_k)."""
    return [Block(0, "", [Part("mlp.in", "hidden")])]


READERS: dict[str, Callable] = {
    "gpt2": _gpt2, "condensation_paper_gpt": _paper, "condensation_mlp": _two_layer,
    "llama": _llama, "mistral": _llama, "qwen2": _llama, "qwen3": _llama,
    "gpt_neox": _gpt_neox, "opt": _opt, "bert": _bert, "roberta": _bert, "resnet": _resnet,
}


def _d_model(config) -> int | None:
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def layout_for(config) -> Layout:
    """The reader of ``config.model_type``.

    Raises:
        UnsupportedModel: the model type has no reader (accepted: READERS keys; see
            ``discover_layout`` for the fallback).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in READERS:
        raise UnsupportedModel(f"model_type={model_type!r} has no unit reader: accepted are "
                               f"{sorted(READERS)}")
    blocks, notes = READERS[model_type](config), []
    d, heads = _d_model(config), getattr(config, "num_attention_heads", getattr(config, "n_head", 0))
    if d and heads and heads * d * d > MAX_QK_FORM_FLOATS:
        for b in blocks:
            b.qk_heads = False
        notes.append(f"attn.qk_heads skipped: {heads} heads x {d}^2 floats is over {MAX_QK_FORM_FLOATS}")
    return Layout(blocks, model_type, notes)


_LAYER_INDEX = re.compile(r"^(.*?)\.(\d+)\.(.+)$")


def discover_layout(model: nn.Module) -> Layout:
    """Fallback for an architecture without a reader: every ``nn.Linear``, GPT-2 ``Conv1D`` and
    convolution inside a numbered block (a module path ``<stack>.<i>.<rest>``) is a component.

    The layer is the first number in the path; the component is ``<rest>``. A model with several
    stacks (an encoder and a decoder) has its blocks numbered through the stacks in module order
    and components named ``<stack>.<rest>``. No per-head rows: the head layout of an unknown
    architecture is not known. The model may live on the meta device.

    Args:
        model: the model (parameters need not be materialized).

    Returns:
        a Layout whose ``reader`` is ``discovered`` and whose notes name what was found.

    Raises:
        UnsupportedModel: no such layer was found.
    """
    found = []  # (stack, index, rest, kind)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            kind = "linear"
        elif isinstance(module, Conv1D):
            kind = "conv1d"
        elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            kind = "conv"
        else:
            continue
        m = _LAYER_INDEX.match(name)
        if m:
            found.append((m.group(1), int(m.group(2)), m.group(3), kind))
    if not found:
        raise UnsupportedModel(
            f"{type(model).__name__} has no unit reader and no nn.Linear / Conv1D / convolution "
            f"layers inside numbered blocks: accepted model types are {sorted(READERS)}")
    stacks = list(dict.fromkeys(s for s, *_ in found))  # in module order
    layers = sorted({(s, i) for s, i, *_ in found}, key=lambda si: (stacks.index(si[0]), si[1]))
    blocks = {}
    for s, i in layers:
        blocks[(s, i)] = Block(i if len(stacks) == 1 else len(blocks), f"{s}.{i}", [], qk_heads=False)
    for s, i, rest, kind in found:
        comp = rest if len(stacks) == 1 else f"{s}.{rest}"
        blocks[(s, i)].parts.append(Part(comp, rest, kind))
    comps = sorted({p.component for b in blocks.values() for p in b.parts})
    note = (f"{type(model).__name__} has no unit reader: discovered {len(found)} projections by "
            f"module path in {len(blocks)} blocks of {', '.join(stacks)}; components: "
            f"{', '.join(comps)}")
    return Layout(list(blocks.values()), "discovered", [note])


# --- reading ----------------------------------------------------------------------------------

class DictTensors:
    """Tensor source over an in-memory name -> tensor mapping (``self.tensors``)."""

    tensors: dict

    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]


class ModelTensors(DictTensors):
    """Tensor source over a live model's state dict (views, no copies)."""

    def __init__(self, model: nn.Module):
        self.tensors = model.state_dict()


def base_prefix(names, layout: Layout) -> str:
    """The key prefix in front of the layout's block paths (``model.``, ``transformer.``, ...).

    A checkpoint saved from a head class (``LlamaForCausalLM``) and one saved from its base model
    differ only in this prefix; the shortest prefix that holds the first block's first weight wins.

    Raises:
        UnsupportedModel: no tensor ends with that block's first weight name.
    """
    block = layout.blocks[0]
    part = next(p for p in block.parts if not p.optional)
    suffix = f"{block.module(part)}.weight"
    found = sorted((n[: len(n) - len(suffix)] for n in names
                    if n == suffix or n.endswith("." + suffix)), key=len)
    if not found:
        raise UnsupportedModel(f"no tensor named like {suffix!r}: the weights do not match the "
                               f"{layout.reader!r} reader")
    return found[0]


def block_parts(source, prefix: str, block: Block) -> dict:
    """Rows of each part of ``block`` read from ``source`` (``names``/``__contains__``/``get``).

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
        if part.select is not None:
            rows = rows[part.select]
        comps[part.component] = (rows, part.heads, d_in)
    return comps


def block_units(source, prefix: str, block: Block) -> list[UnitSet]:
    """Every weight-basis unit set of one block (tensors read from ``source`` one at a time)."""
    return layer_unit_sets(block.layer, block_parts(source, prefix, block), block.qk_heads)


def read_units(model: nn.Module) -> list[UnitSet]:
    """Every weight-basis unit set of ``model``, in layer order.

    Raises:
        ValueError: if the model's ``config.model_type`` has no reader (accepted: READERS keys).
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in READERS:
        raise ValueError(
            f"model_type={model_type!r} has no unit reader: accepted are {sorted(READERS)}"
        )
    layout = layout_for(config)
    source = ModelTensors(model)
    prefix = base_prefix(source.names(), layout)
    with torch.no_grad():
        return [u for block in layout.blocks for u in block_units(source, prefix, block)]
