"""Where ``probes.measure.merge`` can merge: the MLP layers and attention layers of a live model,
as views into its parameters, and the norm gains folded into the rows that read them.

Model types (``merge_sites``):
- ``condensation_mlp`` (the two-layer net), ``condensation_paper_gpt`` (the paper's model, learned
  positions, post-LN, ReLU MLP), ``gpt2`` (learned positions, GELU MLP; Conv1D weights read
  transposed, ``c_attn`` split into q | k | v);
- the Llama family ``llama`` (SmolLM2), ``mistral``, ``qwen2``: SiLU-gated MLP (``GatedMlpSite``:
  a neuron is a (gate row, up row) pair with one column of ``down_proj``), grouped-query attention
  (``n_kv_head`` key heads, each read by n_head / n_kv_head query heads) and RoPE
  (``AttnSite.rope``: the query-row merge is not exact there, see ``merge.py``).
Any other type raises ``UnsupportedModel`` (Qwen3's per-head q/k norms, Gemma's 1 + w gains, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probes.measure.architectures import UnsupportedModel

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
MERGEABLE = ("condensation_mlp", "condensation_paper_gpt", "gpt2", *LLAMA_FAMILY)


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
    """One attention layer: query rows ``q_w`` (n_head * d_head, d) and key rows ``k_w``
    (n_kv_head * d_head, d) (views), their biases (or None); rows split into consecutive chunks of
    d_head per head; query head h reads key head h // (n_head / n_kv_head). ``rope``: positions
    enter as rotations of the q / k row pairs (i, i + d_head / 2) (Llama family)."""

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


Site = MlpSite | GatedMlpSite | AttnSite


def check_mergeable(config) -> None:
    """Raise ``UnsupportedModel`` (a ValueError) unless ``merge_sites`` reads this config's type."""
    kind = getattr(config, "model_type", None)
    if kind not in MERGEABLE:
        raise UnsupportedModel(f"model_type={kind!r} has no merge: accepted are "
                               f"{', '.join(MERGEABLE)}")


def _bias(lin) -> torch.Tensor | None:
    return None if lin.bias is None else lin.bias.data


def _llama_sites(model) -> list[Site]:
    c = model.config
    base = getattr(model, "model", model)  # LlamaForCausalLM.model, or the bare LlamaModel
    n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    sites: list[Site] = []
    for i, b in enumerate(base.layers):
        a, m = b.self_attn, b.mlp
        sites += [AttnSite(i, a.q_proj.weight.data, _bias(a.q_proj), a.k_proj.weight.data,
                           _bias(a.k_proj), c.num_attention_heads, n_kv, rope=True),
                  GatedMlpSite(i, m.gate_proj.weight.data, m.up_proj.weight.data,
                               m.down_proj.weight.data, c.hidden_act)]
    return sites


def merge_sites(model) -> list[Site]:
    """The layers ``merge.merge_model`` can merge, in layer order (attention before MLP).

    Args:
        model: a live model of a type in ``MERGEABLE`` (module docstring).

    Returns:
        sites whose tensors are views of the model's parameters (editing them edits the model).

    Raises:
        UnsupportedModel (a ValueError): any other model type (e.g. ResNet, Qwen3).
    """
    c = getattr(model, "config", None)
    check_mergeable(c)
    kind = c.model_type
    if kind == "condensation_mlp":
        return [MlpSite(0, model.hidden.weight.data, model.hidden.bias.data,
                        model.output.weight.data, c.activation)]
    if kind in LLAMA_FAMILY:
        return _llama_sites(model)
    sites: list[Site] = []
    if kind == "condensation_paper_gpt":
        for i, b in enumerate(model.h):
            a = b.attn
            sites += [AttnSite(i, a.q_proj.weight.data, None, a.k_proj.weight.data, None, c.n_head),
                      MlpSite(i, b.mlp.fc_in.weight.data, None, b.mlp.fc_out.weight.data, "relu")]
        return sites
    e = c.n_embd  # gpt2
    for i, b in enumerate(model.transformer.h):
        w, bias = b.attn.c_attn.weight.data, b.attn.c_attn.bias.data  # (e, 3e), (3e,)
        sites += [AttnSite(i, w[:, :e].T, bias[:e], w[:, e:2 * e].T, bias[e:2 * e], c.n_head),
                  MlpSite(i, b.mlp.c_fc.weight.data.T, b.mlp.c_fc.bias.data,
                          b.mlp.c_proj.weight.data.T, c.activation_function)]
    return sites


@torch.no_grad()
def fold_norm_gains(model) -> bool:
    """Fold each pre-norm's gain (and bias) into the projections that read it, in place, so that
    the merge groups the rows the checkpoint probe measures with ``--fold_norms true``.

    Llama family: RMSNorm y = g * x^ feeds q, k, v (``input_layernorm``) and gate, up
    (``post_attention_layernorm``): W <- W diag(g), g <- 1. GPT-2: LayerNorm y = g * x^ + beta
    feeds ``c_attn`` (``ln_1``) and ``c_fc`` (``ln_2``): W <- diag(g) W (Conv1D), b <- b + beta W,
    g <- 1, beta <- 0. Both leave the function unchanged up to float rounding (~1e-7 relative in
    float32). The paper's model (post-LN: the residual stream carries the gain) and the two-layer
    net (no norm) are left as they are.

    Returns:
        True when gains were folded, False for a model left unchanged.

    Raises:
        UnsupportedModel: a model type ``merge_sites`` does not read.
    """
    c = getattr(model, "config", None)
    check_mergeable(c)
    if c.model_type in LLAMA_FAMILY:
        for b in getattr(model, "model", model).layers:
            for norm, lins in ((b.input_layernorm, (b.self_attn.q_proj, b.self_attn.k_proj,
                                                    b.self_attn.v_proj)),
                               (b.post_attention_layernorm, (b.mlp.gate_proj, b.mlp.up_proj))):
                for lin in lins:
                    lin.weight.mul_(norm.weight[None, :].to(lin.weight))
                norm.weight.fill_(1.0)
        return True
    if c.model_type == "gpt2":
        for b in model.transformer.h:
            for norm, conv in ((b.ln_1, b.attn.c_attn), (b.ln_2, b.mlp.c_fc)):
                conv.bias.add_(norm.bias @ conv.weight)  # before W changes: beta W
                conv.weight.mul_(norm.weight[:, None])
                norm.weight.fill_(1.0)
                norm.bias.zero_()
        return True
    return False
