"""The Llama family: ``llama`` (SmolLM2), ``mistral``, ``qwen2``, ``qwen3``: separate q / k / v
projections (fewer K/V heads with grouped-query attention), SiLU-gated MLP, pre-RMSNorm, RoPE.

Units: ``attn.q`` / ``attn.k`` / ``attn.v`` (k and v with ``num_key_value_heads`` heads),
``mlp.gate`` and ``mlp.up`` (read by ``down_proj``). Merge (not Qwen3, whose per-head q / k norms
sit between the rows and the scores): query rows with the shared key rows (``AttnSite.rope``:
not exact under RoPE, measured) and gated neurons (``GatedMlpSite``: exact for equal gate rows
and parallel up rows). Norms: ``input_layernorm`` feeds q, k, v and ``post_attention_layernorm``
feeds gate, up; both folded (W <- W diag(g)).
"""

from __future__ import annotations

from probes.measure.arch.base import Architecture, Block, Part, standard_sites


def blocks(c) -> list[Block]:
    """One block per layer, ``layers.<i>``; raises nothing (a Llama-like config)."""
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


ARCH = Architecture("llama", ("llama", "mistral", "qwen2", "qwen3"), blocks,
                    sites=lambda c, live: standard_sites(live, c.hidden_act, rope=True),
                    mergeable=("llama", "mistral", "qwen2"), fold_norms=True)
