"""What every architecture file of ``probes.measure.arch`` describes with: the unit layout
(``Part``, ``Block``, ``Layout``), the merge sites (``MlpSite``, ``GatedMlpSite``, ``AttnSite``:
views into a live model's parameters) and the ``Architecture`` record that ties them together.

The merge sites are built from the same ``Block`` s as the unit readers (``mlp_site``,
``attn_site``), so a merge acts on the rows that the condensation metrics measured; the norm
folding (``fold_block_norms``) is read from ``Block.norms`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


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
    """The model has no unit reader (or no merge), or its weights do not match its reader."""


@dataclass
class MlpSite:
    """One MLP layer, as views into its parameters in (d_out, d_in) orientation: ``w_in`` (m, d),
    ``b_in`` (m,) or None, ``w_out`` (out, m); ``activation`` by name."""

    layer: int
    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_out: torch.Tensor
    activation: str
    component: str = "mlp.in"

    def tensors(self) -> list[torch.Tensor]:
        """The views that a merge writes."""
        return [t for t in (self.w_in, self.b_in, self.w_out) if t is not None]


@dataclass
class GatedMlpSite:
    """One gated MLP layer, out = W_down (act(W_gate x) * (W_up x)): ``gate`` and ``up`` (m, d),
    ``w_out`` (out, m) (``down_proj``), no biases (Llama family); ``activation`` of the gate."""

    layer: int
    gate: torch.Tensor
    up: torch.Tensor
    w_out: torch.Tensor
    activation: str
    component: str = "mlp.gate_up"

    def tensors(self) -> list[torch.Tensor]:
        """The views that a merge writes."""
        return [self.gate, self.up, self.w_out]


@dataclass
class AttnSite:
    """One attention layer's query rows and key rows, as views into the model's parameters.

    ``q_w`` is either rows (n_head * d_head, d) split into consecutive chunks of d_head per head,
    or already per head (n_head, d_head, d) (a fused projection whose heads interleave q, k and
    v rows, as GPT-NeoX's, has no 2-D view of its query rows); ``k_w`` likewise with n_kv_head
    heads; biases (n_head * d_head,) or (n_head, d_head), or None. Query head h reads key head
    h // (n_head / n_kv_head). ``rope``: positions enter as rotations of q / k row pairs (Llama
    family: every row; GPT-NeoX: the first rotary_pct * d_head rows of each head), where the
    query-row merge is not exact (``probes.measure.merge``).
    """

    layer: int
    q_w: torch.Tensor
    q_b: torch.Tensor | None
    k_w: torch.Tensor
    k_b: torch.Tensor | None
    n_head: int
    n_kv_head: int | None = None
    rope: bool = False
    component: str = "attn.q"

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head

    def tensors(self) -> list[torch.Tensor]:
        """The views that a merge writes."""
        return [t for t in (self.q_w, self.q_b, self.k_w, self.k_b) if t is not None]

    def per_head(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """(q (n_head, d_head, d), q_b (n_head, d_head) or None, k (n_kv_head, d_head, d), k_b):
        views of the site's tensors, so that writing into them writes into the model."""

        def split(t, heads, ndim):
            # splitting the row dimension is always a view, whatever the strides
            return t if t is None or t.ndim == ndim else t.unflatten(0, (heads, -1))
        return (split(self.q_w, self.n_head, 3), split(self.q_b, self.n_head, 2),
                split(self.k_w, self.n_kv_head, 3), split(self.k_b, self.n_kv_head, 2))


Site = MlpSite | GatedMlpSite | AttnSite
LiveBlock = tuple[Block, nn.Module]  # a block and its module in a live model


@dataclass(frozen=True)
class Architecture:
    """One architecture, described once: its unit layout, merge sites and norm-folding rule.

    Args:
        name: the file's name (``gpt2``, ``llama``, ...).
        model_types: the ``config.model_type`` s that ``blocks`` reads.
        blocks: config -> the unit layout, list of ``Block`` in layer order.
        sites: (config, live blocks) -> the merge sites in layer order (attention before MLP),
            views of the live model's parameters; None: no merge (ResNet).
        mergeable: the model types ``sites`` serves (default: all of ``model_types`` when
            ``sites`` is given); a type read but not merged raises ``UnsupportedModel`` there.
        fold_norms: ``Block.norms`` are pre-norms that feed only the parts mapped to them, so
            folding their gains into those parts (``fold_block_norms``) keeps the function. False
            where a norm also feeds the residual stream (post-LN: BERT) or there is none.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: Callable[[object], list[Block]]
    sites: Callable[[object, list[LiveBlock]], list[Site]] | None = None
    mergeable: tuple[str, ...] | None = None
    fold_norms: bool = False

    def merges(self, model_type: str) -> bool:
        """Whether ``sites`` serves ``model_type``."""
        return self.sites is not None and model_type in (self.mergeable or self.model_types)


def base_prefix(names, layout: Layout) -> str:
    """The key prefix in front of the layout's block paths (``model.``, ``transformer.``, ...).

    A checkpoint saved from a head class (``LlamaForCausalLM``) and one saved from its base model
    differ only in this prefix; the shortest prefix that holds the first block's first weight wins.

    Args:
        names: every tensor name (a state dict's keys, a checkpoint's tensor names).

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


def _join(prefix: str, path: str) -> str:
    return ".".join(p for p in (prefix.rstrip("."), path) if p)


def live_blocks(model: nn.Module, layout: Layout) -> tuple[str, list[LiveBlock]]:
    """The base prefix of ``model`` (``base_prefix``) and each block of ``layout`` with its module.

    Raises:
        UnsupportedModel: the model's parameters do not match the layout.
    """
    prefix = base_prefix([n for n, _ in model.named_parameters()], layout)
    return prefix, [(b, model.get_submodule(_join(prefix, b.path))) for b in layout.blocks]


def _rows(module: nn.Module, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A projection's (d_out, d_in) weight view (Conv1D transposed) and its (d_out,) bias view."""
    w = module.weight.data
    return (w.T if kind == "conv1d" else w), (None if module.bias is None else module.bias.data)


def mlp_site(block: Block, module: nn.Module, activation: str) -> MlpSite | GatedMlpSite:
    """The MLP merge site of one live block, from its ``mlp.in`` part (or ``mlp.gate`` and
    ``mlp.up``) and that part's ``post`` projection.

    Args:
        block: the layout's block; module: that block's module in the live model.
        activation: the MLP's (or the gate's) activation by name.

    Returns:
        ``MlpSite`` (w_in (m, d), b_in (m,) or None, w_out (out, m)) or ``GatedMlpSite`` (gate,
        up (m, d), w_out (out, m)), views of the model's parameters.

    Raises:
        UnsupportedModel: a gated MLP with biases (``GatedMlpSite`` has none).
    """
    parts = {p.component: p for p in block.parts}
    if "mlp.gate" in parts:
        gate, up = parts["mlp.gate"], parts["mlp.up"]
        (g, gb), (h, hb) = (_rows(module.get_submodule(p.module), p.kind) for p in (gate, up))
        if gb is not None or hb is not None:
            raise UnsupportedModel(f"layer {block.layer}: a gated MLP with biases has no merge: "
                                   f"accepted are bias-free gate and up projections")
        w_out, _ = _rows(module.get_submodule(gate.post), gate.kind)
        return GatedMlpSite(block.layer, g, h, w_out, activation)
    p = parts["mlp.in"]
    w_in, b_in = _rows(module.get_submodule(p.module), p.kind)
    w_out, _ = _rows(module.get_submodule(p.post), p.kind)
    return MlpSite(block.layer, w_in, b_in, w_out, activation)


def attn_site(block: Block, module: nn.Module, rope: bool = False) -> AttnSite:
    """The attention merge site of one live block, from its ``attn.q`` and ``attn.k`` parts
    (their ``select`` a slice or None: one 2-D view of the rows; heads from ``Part.heads``).

    Returns:
        an ``AttnSite`` whose rows (n_head * d_head, d) are views of the model's parameters.

    Raises:
        UnsupportedModel: a part that selects rows by an index tensor (no view: build the
            per-head views in the architecture's file, as ``gpt_neox`` does).
    """
    views = []
    for part in (p for c in ("attn.q", "attn.k") for p in block.parts if p.component == c):
        if isinstance(part.select, torch.Tensor):
            raise UnsupportedModel(f"{part.component} of {part.module} selects rows by index: "
                                   f"accepted are a slice or None")
        w, b = _rows(module.get_submodule(part.module), part.kind)
        rows = slice(None) if part.select is None else part.select
        views.append((w[rows], None if b is None else b[rows], part.heads))
    (q, qb, n_head), (k, kb, n_kv) = views
    return AttnSite(block.layer, q, qb, k, kb, n_head, n_kv, rope=rope)


def standard_sites(live: list[LiveBlock], activation: str, rope: bool = False) -> list[Site]:
    """Per block its attention site (``attn_site``), then its MLP site (``mlp_site``)."""
    return [s for b, m in live for s in (attn_site(b, m, rope), mlp_site(b, m, activation))]


@torch.no_grad()
def fold_block_norms(model: nn.Module, prefix: str, blocks: list[Block]) -> bool:
    """Fold each norm of ``Block.norms`` into the projections that read it, in place.

    LayerNorm y = g * x^ + beta: W <- W diag(g), b <- b + W beta, g <- 1, beta <- 0 (a bias is
    added to a bias-free projection when beta is not zero); RMSNorm y = g * x^: W <- W diag(g),
    g <- 1. GPT-2's Conv1D (d_in, d_out) is scaled by rows. Only valid where the norm feeds
    nothing else (``Architecture.fold_norms``); then the function is unchanged up to float
    rounding (~1e-7 relative in float32).

    Args:
        model: the live model; prefix: its base prefix (``live_blocks``); blocks: the layout's.

    Returns:
        True when some norm was folded, False when the blocks map no norm (or none has a gain).
    """
    folded = False
    for block in blocks:
        feeds: dict[str, list[Part]] = {}
        for part in {p.module: p for p in block.parts}.values():  # c_attn feeds q, k, v once
            if part.module in block.norms:
                feeds.setdefault(block.norms[part.module], []).append(part)
        for norm_path, parts in feeds.items():
            norm = model.get_submodule(_join(prefix, norm_path))
            if getattr(norm, "weight", None) is None:  # elementwise_affine=False: nothing to fold
                continue
            beta = getattr(norm, "bias", None) if block.norm_kind == "layernorm" else None
            for part in parts:
                lin = model.get_submodule(_join(prefix, block.module(part)))
                w = lin.weight.T if part.kind == "conv1d" else lin.weight  # (d_out, d_in) view
                if beta is not None and (lin.bias is not None or beta.any()):
                    shift = w @ beta.to(w)  # before W changes: W beta
                    if lin.bias is None:
                        lin.bias = nn.Parameter(torch.zeros_like(shift))
                    lin.bias.add_(shift)
                w.mul_(norm.weight[None, :].to(w))
            norm.weight.fill_(1.0)
            if beta is not None:
                beta.zero_()
            folded = True
    return folded
