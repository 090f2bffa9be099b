"""Architectures: which projections of a model give which unit components (see ``units``).

Each architecture is described once, as a list of ``Block`` s (a layer's module path and its
``Part`` s: which projection gives which component). ``layout_for(config)`` returns the reader of
a known ``model_type``; ``discover_layout(model)`` is the fallback for any other model with
Linear / Conv1D / convolution layers inside numbered blocks. The same description serves a live
model, a checkpoint on disk read one tensor at a time and the activation basis.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

# qk_heads builds n_head x d_in^2 floats; above this many it is skipped (a 4096-wide model
# would need 2 GB for it), and the skip is reported by the layout's notes.
MAX_QK_FORM_FLOATS = 2**26


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
        post: module path inside the block whose INPUT holds this part's neurons after the
            nonlinearity (the MLP's output projection: act(W x) for a plain MLP, act(gate) * up
            for a gated one); None where there is none (attention projections, convolutions).
    """

    component: str
    module: str
    kind: str = "linear"
    select: torch.Tensor | slice | None = None
    heads: int = 1
    optional: bool = False
    post: str | None = None


@dataclass
class Block:
    """One layer of units: ``path`` is its module path below the model's base (``layers.3``;
    empty when the parts sit at the top)."""

    layer: int
    path: str
    parts: list[Part]
    qk_heads: bool = True  # whether attn.q / attn.k give head forms (False: too large)
    # the norm whose output each part reads: part module -> norm path below the model's base,
    # and its kind ("layernorm": centred, gain and bias; "rmsnorm": gain only); see units.fold_norm
    norms: dict[str, str] = field(default_factory=dict)
    norm_kind: str | None = None

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


def _gpt2(c) -> list[Block]:
    e, h = c.n_embd, c.n_head
    parts = [Part("attn.q", "attn.c_attn", "conv1d", slice(0, e), h),  # c_attn columns: q | k | v
             Part("attn.k", "attn.c_attn", "conv1d", slice(e, 2 * e), h),
             Part("attn.v", "attn.c_attn", "conv1d", slice(2 * e, 3 * e), h),
             Part("mlp.in", "mlp.c_fc", "conv1d", post="mlp.c_proj")]
    return [Block(i, f"h.{i}", parts, norms={"attn.c_attn": f"h.{i}.ln_1", "mlp.c_fc": f"h.{i}.ln_2"},
                  norm_kind="layernorm") for i in range(c.n_layer)]


def _paper(c) -> list[Block]:
    parts = [Part(f"attn.{p}", f"attn.{p}_proj", heads=c.n_head) for p in "qkv"]
    parts.append(Part("mlp.in", "mlp.fc_in", post="mlp.fc_out"))
    # post-LN, trained by this project: its raw rows are what the paper measured (no norm map)
    return [Block(i, f"h.{i}", parts) for i in range(c.n_layer)]


def _llama(c) -> list[Block]:
    """Llama, Mistral, Qwen2/3, Gemma, SmolLM: separate q/k/v (fewer K/V heads with GQA), gated MLP."""
    h = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or h
    parts = [Part("attn.q", "self_attn.q_proj", heads=h), Part("attn.k", "self_attn.k_proj", heads=kv),
             Part("attn.v", "self_attn.v_proj", heads=kv),
             Part("mlp.gate", "mlp.gate_proj", post="mlp.down_proj"),
             Part("mlp.up", "mlp.up_proj", post="mlp.down_proj")]
    return [Block(i, f"layers.{i}", parts, norm_kind="rmsnorm", norms={
        **{f"self_attn.{p}_proj": f"layers.{i}.input_layernorm" for p in "qkv"},
        "mlp.gate_proj": f"layers.{i}.post_attention_layernorm",
        "mlp.up_proj": f"layers.{i}.post_attention_layernorm"}) for i in range(c.num_hidden_layers)]


def _gpt_neox(c) -> list[Block]:
    """GPT-NeoX / Pythia: query_key_value's outputs are laid out per head as (head, q|k|v, d_head)."""
    h = c.num_attention_heads
    idx = torch.arange(3 * c.hidden_size).view(h, 3, c.hidden_size // h)
    parts = [Part(f"attn.{p}", "attention.query_key_value", select=idx[:, j].reshape(-1), heads=h)
             for j, p in enumerate("qkv")]
    parts.append(Part("mlp.in", "mlp.dense_h_to_4h", post="mlp.dense_4h_to_h"))
    return [Block(i, f"layers.{i}", parts, norm_kind="layernorm", norms={
        "attention.query_key_value": f"layers.{i}.input_layernorm",
        "mlp.dense_h_to_4h": f"layers.{i}.post_attention_layernorm"})
        for i in range(c.num_hidden_layers)]


def _opt(c) -> list[Block]:
    h = c.num_attention_heads
    parts = [Part(f"attn.{p}", f"self_attn.{p}_proj", heads=h) for p in "qkv"]
    parts.append(Part("mlp.in", "fc1", post="fc2"))
    pre_ln = getattr(c, "do_layer_norm_before", True)  # OPT-350m normalizes after: nothing to fold

    def norms(i):
        p = f"decoder.layers.{i}"
        return {**{f"self_attn.{q}_proj": f"{p}.self_attn_layer_norm" for q in "qkv"},
                "fc1": f"{p}.final_layer_norm"} if pre_ln else {}
    return [Block(i, f"decoder.layers.{i}", parts, norms=norms(i), norm_kind="layernorm")
            for i in range(c.num_hidden_layers)]


def _bert(c) -> list[Block]:
    """BERT / RoBERTa encoders: the same attention names as decoders (no causal mask here)."""
    h = c.num_attention_heads
    parts = [Part(f"attn.{p}", f"attention.self.{name}", heads=h)
             for p, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    parts.append(Part("mlp.in", "intermediate.dense", post="output.dense"))

    def norms(i):  # post-LN: a layer reads the previous layer's output norm
        before = "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm"
        return {**{f"attention.self.{n}": before for n in ("query", "key", "value")},
                "intermediate.dense": f"encoder.layer.{i}.attention.output.LayerNorm"}
    return [Block(i, f"encoder.layer.{i}", parts, norms=norms(i), norm_kind="layernorm")
            for i in range(c.num_hidden_layers)]


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
    return [Block(0, "", [Part("mlp.in", "hidden", post="output")])]


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
