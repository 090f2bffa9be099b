"""Activation capture with forward hooks (a pared-down ``baukit.TraceDict``).

    with Capture(model, ["model.layers.0.self_attn.q_proj", ...]) as cap:
        model(input_ids=ids)
    cap.outputs["model.layers.0.self_attn.q_proj"]   # (n_samples, d_out) float32, CPU

A sample is one position of one input: a token for a sequence model, a pixel position of one
image for a convolution (its channels are the outputs). The hooks are removed when the block
exits, also when the forward pass raises, so the model is left as it was.
"""

from __future__ import annotations

import torch
from torch import nn


def output_rows(module: nn.Module, output: torch.Tensor, max_positions: int | None = None) -> torch.Tensor:
    """A module's output as (n_samples, d_out) float32 on CPU.

    Args:
        module: the module that produced ``output``.
        output: (..., d_out) for linear layers; (batch, channels, *spatial) for convolutions.
        max_positions: convolutions only: keep at most this many evenly spaced positions per
            input (bounds the memory of early, high-resolution layers).

    Returns:
        (n_samples, d_out) float32 CPU tensor (a copy).
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        y = output.flatten(2)  # (batch, channels, positions)
        if max_positions is not None and y.shape[2] > max_positions:
            keep = torch.linspace(0, y.shape[2] - 1, max_positions, device=y.device).round().long()
            y = y[:, :, keep]
        return y.transpose(1, 2).reshape(-1, y.shape[1]).to("cpu", torch.float32, copy=True)
    return output.reshape(-1, output.shape[-1]).to("cpu", torch.float32, copy=True)


class Capture:
    """Record the outputs of the modules at ``paths`` during forward passes.

    Args:
        model: the model.
        paths: module paths as in ``model.named_modules()``.
        max_positions: per input, for convolutions (see ``output_rows``).

    Attributes:
        outputs: path -> (n_samples, d_out) float32 CPU tensor, concatenated over every forward
            pass inside the block (read after it exits).

    Raises:
        AttributeError: a path that names no module (on entering).
    """

    def __init__(self, model: nn.Module, paths: list[str], max_positions: int | None = None):
        self.model, self.paths, self.max_positions = model, list(dict.fromkeys(paths)), max_positions
        self.handles, self._chunks, self.outputs = [], {}, {}

    def __enter__(self) -> Capture:
        for path in self.paths:
            module = self.model.get_submodule(path)
            self._chunks[path] = []
            self.handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self._chunks[path].append(output_rows(module, output, self.max_positions))
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.outputs = {p: torch.cat(c) for p, c in self._chunks.items() if c}
        self._chunks = {}
