"""Architectures, one file each: which projections of a model give which unit components (see
``probes.measure.units``), where ``probes.measure.merge`` merges, and which norms fold.

Each file (``gpt2``, ``paper``, ``llama``, ``gpt_neox``, ``opt``, ``bert``, ``resnet``,
``two_layer``) defines one ``Architecture`` (``base.py``): its blocks and unit parts, its merge
sites built from those same parts, and whether its ``Block.norms`` fold. ``REGISTRY`` maps each
``config.model_type`` to its architecture; ``layout_for``, ``merge_sites``, ``fold_norm_gains``
and ``check_mergeable`` look it up. ``discover_layout`` is the fallback for any other model with
Linear / Conv1D / convolution layers inside numbered blocks, ``module_layout`` the one for any
``nn.Module`` (each such layer a unit set named by its module path); ``live_layout`` picks among
the three for a live model. The same description serves a live model, a checkpoint on disk read
one tensor at a time and the activation basis.
"""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from probes.measure.arch import bert, gpt2, gpt_neox, llama, opt, paper, resnet, two_layer
from probes.measure.arch.base import (
    Architecture,
    AttnSite,
    Block,
    GatedMlpSite,
    Layout,
    MlpSite,
    Part,
    Site,
    UnsupportedModel,
    base_prefix,
    fold_block_norms,
    live_blocks,
)

__all__ = ["ARCHITECTURES", "REGISTRY", "MERGEABLE", "MAX_QK_FORM_FLOATS", "Architecture", "Part",
           "Block", "Layout", "UnsupportedModel", "MlpSite", "GatedMlpSite", "AttnSite", "Site",
           "base_prefix", "layout_for", "discover_layout", "module_layout", "live_layout",
           "check_mergeable", "merge_sites", "fold_norm_gains"]

ARCHITECTURES: tuple[Architecture, ...] = (
    gpt2.ARCH, paper.ARCH, llama.ARCH, gpt_neox.ARCH, opt.ARCH, bert.ARCH, resnet.ARCH,
    two_layer.ARCH,
)
REGISTRY: dict[str, Architecture] = {t: a for a in ARCHITECTURES for t in a.model_types}
MERGEABLE = tuple(t for t, a in REGISTRY.items() if a.merges(t))

# qk_heads builds n_head x d_in^2 floats; above this many it is skipped (a 4096-wide model
# would need 2 GB for it), and the skip is reported by the layout's notes.
MAX_QK_FORM_FLOATS = 2**26


def _d_model(config) -> int | None:
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def layout_for(config) -> Layout:
    """The unit layout of ``config.model_type`` (its architecture's ``blocks``).

    Returns:
        a Layout whose ``reader`` is the model type; ``attn.qk_heads`` is switched off (and a note
        says so) when n_head * d_model^2 floats exceed ``MAX_QK_FORM_FLOATS``.

    Raises:
        UnsupportedModel: the model type has no architecture (accepted: ``REGISTRY`` keys; see
            ``discover_layout`` for the fallback).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in REGISTRY:
        raise UnsupportedModel(f"model_type={model_type!r} has no unit reader: accepted are "
                               f"{sorted(REGISTRY)}")
    blocks, notes = REGISTRY[model_type].blocks(config), []
    d, heads = _d_model(config), getattr(config, "num_attention_heads", getattr(config, "n_head", 0))
    if d and heads and heads * d * d > MAX_QK_FORM_FLOATS:
        for b in blocks:
            b.qk_heads = False
        notes.append(f"attn.qk_heads skipped: {heads} heads x {d}^2 floats is over {MAX_QK_FORM_FLOATS}")
    return Layout(blocks, model_type, notes)


def check_mergeable(config) -> None:
    """Raise ``UnsupportedModel`` (a ValueError) unless ``merge_sites`` reads this config's type
    (accepted: ``MERGEABLE``)."""
    kind = getattr(config, "model_type", None)
    if kind not in MERGEABLE:
        raise UnsupportedModel(f"model_type={kind!r} has no merge: accepted are "
                               f"{', '.join(MERGEABLE)}")


def merge_sites(model) -> list[Site]:
    """The layers ``probes.measure.merge.merge_model`` can merge, in layer order (attention
    before MLP), built from the same blocks as the unit layout (the embedding principle: Zhang et
    al., NeurIPS 2021, arXiv 2105.14573).

    Args:
        model: a live model of a type in ``MERGEABLE``.

    Returns:
        ``AttnSite`` (query rows (n_head * d_head, d) or (n_head, d_head, d), key rows likewise),
        ``MlpSite`` (w_in (m, d), b_in (m,), w_out (out, m)) or ``GatedMlpSite``, whose tensors
        are views of the model's parameters (editing them edits the model).

    Raises:
        UnsupportedModel (a ValueError): any other model type (e.g. ResNet, Qwen3), or parameters
            that do not match the layout.
    """
    c = getattr(model, "config", None)
    check_mergeable(c)
    _, live = live_blocks(model, layout_for(c))
    return REGISTRY[c.model_type].sites(c, live)


def fold_norm_gains(model) -> bool:
    """Fold each pre-norm's gain (and bias) into the projections that read it, in place
    (``base.fold_block_norms``: W <- W diag(g), b <- b + W beta, g <- 1, beta <- 0; RMSNorm has
    no beta), so that the merge groups the rows the checkpoint probe measures with
    ``--fold_norms true``. The function is unchanged up to float rounding (~1e-7 relative in
    float32). Post-LN models (the paper's, BERT, OPT-350m) and the two-layer net are left as
    they are.

    Returns:
        True when gains were folded, False for a model left unchanged.

    Raises:
        UnsupportedModel: a model type ``merge_sites`` does not read.
    """
    c = getattr(model, "config", None)
    check_mergeable(c)
    if not REGISTRY[c.model_type].fold_norms:
        return False
    prefix, live = live_blocks(model, layout_for(c))
    return fold_block_norms(model, prefix, [b for b, _ in live])


_LAYER_INDEX = re.compile(r"^(.*?)\.(\d+)\.(.+)$")
_FIRST_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _projections(model: nn.Module) -> list[tuple[str, str]]:
    """(module path, unit kind) of every ``nn.Linear`` (``linear``), GPT-2 ``Conv1D``
    (``conv1d``) and non-transposed convolution (``conv``) of ``model``, in module order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found.append((name, "linear"))
        elif isinstance(module, Conv1D):
            found.append((name, "conv1d"))
        elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            found.append((name, "conv"))
    return found


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
    for name, kind in _projections(model):
        m = _LAYER_INDEX.match(name)
        if m:
            found.append((m.group(1), int(m.group(2)), m.group(3), kind))
    if not found:
        raise UnsupportedModel(
            f"{type(model).__name__} has no unit reader and no nn.Linear / Conv1D / convolution "
            f"layers inside numbered blocks: accepted model types are {sorted(REGISTRY)}")
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


def module_layout(model: nn.Module) -> Layout:
    """The layout of any ``nn.Module``: every ``nn.Linear``, GPT-2 ``Conv1D`` and convolution
    (``nn.Conv1d`` / ``2d`` / ``3d``) is a unit set of its own (units: its output neurons or
    channels, bias appended; a convolution's kernel flattened, in_ch * prod(kernel)).

    Its component is its whole module path (``0``, ``encoder.fc1``), so that no two sets share a
    name; its layer is the first integer in that path (``blocks.3.fc1``: 3; ``nn.Sequential``'s
    ``2``: 2), or None where the path has none. No per-head rows, no norms to fold.

    Raises:
        UnsupportedModel: ``model`` has no such layer (a root that is itself one is path ``""``,
            which is refused too: wrap it in ``nn.Sequential``).
    """
    found = [(name, kind) for name, kind in _projections(model) if name]
    if not found:
        raise UnsupportedModel(f"{type(model).__name__} has no nn.Linear, Conv1D or convolution "
                               f"submodule: accepted are modules that hold at least one")
    blocks = []
    for name, kind in found:
        m = _FIRST_INDEX.search(name)
        blocks.append(Block(int(m.group(1)) if m else None, "", [Part(name, name, kind)],
                            qk_heads=False))
    return Layout(blocks, "modules")


def live_layout(model: nn.Module) -> Layout:
    """The unit layout of a live model: its architecture's (``layout_for``) when its
    ``config.model_type`` has one; else, for a model with a config (a transformers model), the
    layout found by module path in numbered blocks (``discover_layout``, as for its checkpoint
    folder); else, or when that finds nothing, ``module_layout``.

    Raises:
        UnsupportedModel: the model has no Linear, Conv1D or convolution submodule.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) in REGISTRY:
        return layout_for(config)
    if config is not None:
        try:
            return discover_layout(model)
        except UnsupportedModel:
            pass
    return module_layout(model)
