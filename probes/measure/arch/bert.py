"""BERT / RoBERTa encoders (``bert``, ``roberta``): learned absolute positions, post-LN, q / k /
v projections with biases (``attention.self.query`` ...), GELU MLP ``intermediate.dense`` ->
``output.dense``.

Merge: query rows with their key rows (exact for parallel rows with absolute positions; the
scores need no causal mask for this) and the MLP neurons (GELU: exact for equal rows only).
``probes.measure.merge.merge_model`` merges any of these models; the checkpoint merge probe
(``probes.checkpoint.merge``) scores next-token loss, so it takes only the causal-LM classes
(``BertLMHeadModel``, ``RobertaForCausalLM``) and refuses masked-LM encoders.

Norms: the unit reader maps each part to the LayerNorm whose output it reads (the previous
layer's ``output.LayerNorm``, or the embeddings' for layer 0; ``attention.output.LayerNorm`` for
the MLP), so that ``--fold_norms`` measures folded rows. Folding them into a live model is not
function-preserving (post-LN: that norm's output is also the residual stream), so nothing is
folded here.
"""

from __future__ import annotations

from probes.measure.arch.base import Architecture, Block, Part, standard_sites


def blocks(c) -> list[Block]:
    """One block per layer, ``encoder.layer.<i>``; raises nothing (a BertConfig / RobertaConfig)."""
    h = c.num_attention_heads
    parts = [Part(f"attn.{p}", f"attention.self.{name}", heads=h)
             for p, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    parts.append(Part("mlp.in", "intermediate.dense", post="output.dense"))

    def norms(i):
        before = "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm"
        return {**{f"attention.self.{n}": before for n in ("query", "key", "value")},
                "intermediate.dense": f"encoder.layer.{i}.attention.output.LayerNorm"}
    return [Block(i, f"encoder.layer.{i}", parts, norms=norms(i), norm_kind="layernorm")
            for i in range(c.num_hidden_layers)]


ARCH = Architecture("bert", ("bert", "roberta"), blocks,
                    sites=lambda c, live: standard_sites(live, c.hidden_act))
