"""OPT (``opt``): learned positions, separate q / k / v projections with biases, ReLU MLP
``fc1`` -> ``fc2`` with biases; pre-LN (``do_layer_norm_before``), except OPT-350m (post-LN).

Merge: query rows with their key rows (exact for parallel rows: no RoPE; OPT scales the query
after the projection, which scales every row alike) and the ReLU neurons (exact for parallel
rows). Norms (pre-LN only): ``self_attn_layer_norm`` feeds q, k, v and ``final_layer_norm`` feeds
``fc1``, both folded as GPT-2's; OPT-350m's post-LN norms also feed the residual stream, so it has
no norm map and nothing is folded.
"""

from __future__ import annotations

from probes.measure.arch.base import Architecture, Block, Part, standard_sites


def blocks(c) -> list[Block]:
    """One block per layer, ``decoder.layers.<i>``; raises nothing (an OPTConfig)."""
    h = c.num_attention_heads
    parts = [Part(f"attn.{p}", f"self_attn.{p}_proj", heads=h) for p in "qkv"]
    parts.append(Part("mlp.in", "fc1", post="fc2"))
    pre_ln = getattr(c, "do_layer_norm_before", True)

    def norms(i):
        p = f"decoder.layers.{i}"
        return {**{f"self_attn.{q}_proj": f"{p}.self_attn_layer_norm" for q in "qkv"},
                "fc1": f"{p}.final_layer_norm"} if pre_ln else {}
    return [Block(i, f"decoder.layers.{i}", parts, norms=norms(i), norm_kind="layernorm")
            for i in range(c.num_hidden_layers)]


ARCH = Architecture("opt", ("opt",), blocks,
                    sites=lambda c, live: standard_sites(live, c.activation_function),
                    fold_norms=True)
