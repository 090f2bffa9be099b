"""This project's two-layer net (``condensation_mlp``, models/mlp.py):
f(x) = sum_k a_k sigma(w_k . x + b_k); hidden neuron k = (w_k, b_k), ``hidden`` -> ``output``.

Merge: the hidden neurons (exact for parallel rows under ReLU, equal rows otherwise). No norm.
"""

from __future__ import annotations

from probes.measure.arch.base import Architecture, Block, Part, mlp_site


def blocks(c) -> list[Block]:
    """One block (layer 0) at the model's top; raises nothing (a TwoLayerConfig)."""
    return [Block(0, "", [Part("mlp.in", "hidden", post="output")])]


ARCH = Architecture("two_layer", ("condensation_mlp",), blocks,
                    sites=lambda c, live: [mlp_site(b, m, c.activation) for b, m in live])
