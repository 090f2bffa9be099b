"""GPT-2 (``gpt2``): learned positions, pre-LN, GELU MLP, GPT-2's Conv1D weights (d_in, d_out).

Units: ``c_attn``'s output columns are q | k | v (``attn.q`` / ``attn.k`` / ``attn.v``, n_head
heads each), ``c_fc``'s are ``mlp.in`` (read by ``c_proj``). Merge: query rows with their key
rows (exact for parallel rows, biases included: learned positions) and the MLP neurons (GELU:
exact for equal rows only). Norms: ``ln_1`` feeds ``c_attn``, ``ln_2`` feeds ``c_fc``, both
folded (pre-LN).
"""

from __future__ import annotations

from probes.measure.arch.base import Architecture, Block, Part, standard_sites


def blocks(c) -> list[Block]:
    """One block per layer, ``h.<i>``; raises nothing (a GPT2Config)."""
    e, h = c.n_embd, c.n_head
    parts = [Part("attn.q", "attn.c_attn", "conv1d", slice(0, e), h),
             Part("attn.k", "attn.c_attn", "conv1d", slice(e, 2 * e), h),
             Part("attn.v", "attn.c_attn", "conv1d", slice(2 * e, 3 * e), h),
             Part("mlp.in", "mlp.c_fc", "conv1d", post="mlp.c_proj")]
    return [Block(i, f"h.{i}", parts, norms={"attn.c_attn": f"h.{i}.ln_1", "mlp.c_fc": f"h.{i}.ln_2"},
                  norm_kind="layernorm") for i in range(c.n_layer)]


ARCH = Architecture("gpt2", ("gpt2",), blocks,
                    sites=lambda c, live: standard_sites(live, c.activation_function),
                    fold_norms=True)
