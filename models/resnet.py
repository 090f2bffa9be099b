"""The vision baseline: transformers' ``ResNetForImageClassification`` in its ResNet-18 shape.

ResNet-18 (He et al., CVPR 2016): basic blocks, depths 2, 2, 2, 2, widths 64, 128, 256, 512, a
64-channel 7x7 stride-2 stem with max pooling, global average pooling and one linear classifier.
The init rate (``models.init_rate.apply_init_rate``) draws every conv kernel with
std = (in_channels * kh * kw)^-gamma and the classifier with std = 512^-gamma (part "head");
BatchNorm starts at weight 1, bias 0.
"""

from __future__ import annotations

from transformers import ResNetConfig, ResNetForImageClassification

RESNET18 = dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                layer_type="basic", hidden_act="relu", downsample_in_first_stage=False)


def build_resnet(num_channels: int = 1, num_labels: int = 10) -> ResNetForImageClassification:
    """An untrained ResNet-18 classifier for images of ``num_channels`` channels.

    ``model(pixel_values=x).logits``: x (n, num_channels, h, w) float -> (n, num_labels) float.

    Raises:
        ValueError: num_channels < 1 or num_labels < 2.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels={num_channels} is invalid: accepted is an integer >= 1")
    if num_labels < 2:
        raise ValueError(f"num_labels={num_labels} is invalid: accepted is an integer >= 2")
    config = ResNetConfig(num_channels=num_channels, num_labels=num_labels, **RESNET18)
    return ResNetForImageClassification(config)
