"""GPT-NeoX / Pythia (``gpt_neox``): one fused ``attention.query_key_value`` whose outputs are
laid out per head as (head, q | k | v, d_head); GELU MLP ``dense_h_to_4h`` -> ``dense_4h_to_h``
with biases; pre-LN; rotary positions on the first rotary_pct * d_head rows of each head.

Merge: query rows with their key rows, as per-head views of the fused weight (its query rows
interleave with the key and value rows, so they have no 2-D view; the per-head view is one, and
a merge writes through it). ``rope`` is set: a group among a head's rotary rows does not merge
exactly, one among its remaining rows does (they enter the scores as learned-position rows do).
MLP neurons: GELU, exact for equal rows only. ``use_parallel_residual`` changes what the MLP's
norm reads, not which rows read it, so it does not matter here. Norms: ``input_layernorm`` feeds
``query_key_value``, ``post_attention_layernorm`` feeds ``dense_h_to_4h``; both folded.
"""

from __future__ import annotations

import torch

from probes.measure.arch.base import Architecture, AttnSite, Block, Part, Site, mlp_site

QKV = "attention.query_key_value"


def per_head(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """The fused projection's outputs (3 * n_head * d_head, ...) as (n_head, 3, d_head, ...): a
    view; [:, 0] are the query rows, [:, 1] the key rows, [:, 2] the value rows."""
    return t.unflatten(0, (n_head, 3, -1))


def blocks(c) -> list[Block]:
    """One block per layer, ``layers.<i>``; raises nothing (a GPTNeoXConfig)."""
    h = c.num_attention_heads
    idx = per_head(torch.arange(3 * c.hidden_size), h)
    parts = [Part(f"attn.{p}", QKV, select=idx[:, j].reshape(-1), heads=h) for j, p in enumerate("qkv")]
    parts.append(Part("mlp.in", "mlp.dense_h_to_4h", post="mlp.dense_4h_to_h"))
    return [Block(i, f"layers.{i}", parts, norm_kind="layernorm", norms={
        QKV: f"layers.{i}.input_layernorm", "mlp.dense_h_to_4h": f"layers.{i}.post_attention_layernorm"})
        for i in range(c.num_hidden_layers)]


def sites(c, live) -> list[Site]:
    """Per layer the attention site (per-head views (n_head, d_head, d) of the query and key rows
    of ``query_key_value``, biases (n_head, d_head)) and the MLP site."""
    out = []
    for block, module in live:
        qkv = module.get_submodule(QKV)
        w = per_head(qkv.weight.data, c.num_attention_heads)
        b = None if qkv.bias is None else per_head(qkv.bias.data, c.num_attention_heads)
        out += [AttnSite(block.layer, w[:, 0], None if b is None else b[:, 0], w[:, 1],
                         None if b is None else b[:, 1], c.num_attention_heads, rope=True),
                mlp_site(block, module, c.hidden_act)]
    return out


ARCH = Architecture("gpt_neox", ("gpt_neox",), blocks, sites=sites, fold_norms=True)
