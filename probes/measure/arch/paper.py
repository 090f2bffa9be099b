"""The paper's model (``condensation_paper_gpt``, models/paper_gpt.py): learned positions,
post-LN, separate bias-free q / k / v projections, ReLU MLP ``fc_in`` -> ``fc_out``.

Merge: query rows with their key rows and the ReLU neurons, both exact for parallel rows. No norm
map: trained by this project post-LN, its raw rows are what the paper measured, and folding a
post-LN gain would change the residual stream.
"""

from __future__ import annotations

from probes.measure.arch.base import Architecture, Block, Part, standard_sites


def blocks(c) -> list[Block]:
    """One block per layer, ``h.<i>``; raises nothing (a PaperGPTConfig)."""
    parts = [Part(f"attn.{p}", f"attn.{p}_proj", heads=c.n_head) for p in "qkv"]
    parts.append(Part("mlp.in", "mlp.fc_in", post="mlp.fc_out"))
    return [Block(i, f"h.{i}", parts) for i in range(c.n_layer)]


ARCH = Architecture("paper", ("condensation_paper_gpt",), blocks,
                    sites=lambda c, live: standard_sites(live, "relu"))
