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
    """Record the outputs of the modules at ``paths`` (and the inputs of those at ``inputs_of``)
    during forward passes.

    Args:
        model: the model.
        paths: module paths as in ``model.named_modules()``.
        max_positions: per input, for convolutions (see ``output_rows``).
        inputs_of: module paths whose first input is recorded (e.g. an MLP's output projection,
            whose input is the hidden layer after its nonlinearity).

    Attributes:
        outputs: path -> (n_samples, d_out) float32 CPU tensor, concatenated over every forward
            pass inside the block (read after it exits).
        inputs: path -> (n_samples, d_in) float32 CPU tensor, the same for ``inputs_of``.

    Raises:
        AttributeError: a path that names no module (on entering).
    """

    def __init__(self, model: nn.Module, paths: list[str], max_positions: int | None = None,
                 inputs_of: list[str] = ()):
        self.model, self.paths, self.max_positions = model, list(dict.fromkeys(paths)), max_positions
        self.inputs_of = list(dict.fromkeys(inputs_of))
        self.handles, self._chunks, self.outputs, self.inputs = [], {}, {}, {}

    def __enter__(self) -> Capture:
        for path in self.paths:
            self._register(path, "out")
        for path in self.inputs_of:
            self._register(path, "in")
        return self

    def _register(self, path: str, side: str) -> None:
        module = self.model.get_submodule(path)
        self._chunks[(side, path)] = []
        self.handles.append(module.register_forward_hook(self._hook(path, side)))

    def _hook(self, path: str, side: str):
        def hook(module, inputs, output):
            value = output if side == "out" else inputs[0]
            self._chunks[(side, path)].append(output_rows(module, value, self.max_positions))
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        done = {key: torch.cat(c) for key, c in self._chunks.items() if c}
        self.outputs = {p: y for (side, p), y in done.items() if side == "out"}
        self.inputs = {p: y for (side, p), y in done.items() if side == "in"}
        self._chunks = {}
