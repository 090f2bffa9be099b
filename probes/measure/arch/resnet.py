"""ResNet (``resnet``, transformers' ResNetModel): convolutions only.

Units: layer 0 is the stem convolution, layer b + 1 the b-th residual block (forward order across
stages); ``conv.1`` .. ``conv.3`` are the block's convolutions in order and ``conv.shortcut`` its
projection shortcut, where it has one. No merge sites (a channel feeds a batch norm and
the next convolution's kernels, which the rules of ``probes.measure.merge`` do not cover) and no
norm folding.
"""

from __future__ import annotations

from probes.measure.arch.base import Architecture, Block, Part


def blocks(c) -> list[Block]:
    """The stem, then one block per residual block; raises nothing (a ResNetConfig)."""
    n_conv = 3 if c.layer_type == "bottleneck" else 2
    out = [Block(0, "embedder.embedder", [Part("conv.stem", "convolution", "conv")])]
    for s, depth in enumerate(c.depths):
        for j in range(depth):
            parts = [Part(f"conv.{k + 1}", f"layer.{k}.convolution", "conv") for k in range(n_conv)]
            parts.append(Part("conv.shortcut", "shortcut.convolution", "conv", optional=True))
            out.append(Block(len(out), f"encoder.stages.{s}.layers.{j}", parts))
    return out


ARCH = Architecture("resnet", ("resnet",), blocks)
