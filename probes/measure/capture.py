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
    during forward passes of ``model``, each call of a module kept apart.

    A module may run several times in one forward pass (ALBERT runs one shared layer at every
    depth; any weight-tied block): its k-th call in each pass is its own record, never pooled
    with the others into one vector per neuron.

    Args:
        model: the model (its own forward call starts a pass; modules called directly, outside
            one, count as one call each time).
        paths: module paths as in ``model.named_modules()``.
        max_positions: per input, for convolutions (see ``output_rows``).
        inputs_of: module paths whose first input is recorded (e.g. an MLP's output projection,
            whose input is the hidden layer after its nonlinearity).

    Attributes (read after the block exits):
        calls: path -> [(n_samples, d_out) float32 CPU tensor per call index], concatenated over
            the passes; one entry for a module that runs once per pass. input_calls: the same
            for ``inputs_of``.
        outputs: path -> (n_samples, d_out), for the modules of ``paths`` that ran once per pass.
        inputs: path -> (n_samples, d_in), the same for ``inputs_of``.
        repeated: path -> calls per pass, for the modules that ran more than once in a pass.
        order: the (path, call index) of the output records in the order the first pass made them.

    Raises:
        AttributeError: a path that names no module (on entering).
    """

    def __init__(self, model: nn.Module, paths: list[str], max_positions: int | None = None,
                 inputs_of: list[str] = ()):
        self.model, self.paths, self.max_positions = model, list(dict.fromkeys(paths)), max_positions
        self.inputs_of = list(dict.fromkeys(inputs_of))
        self.handles, self._chunks, self._count, self._passes = [], {}, {}, 0
        self.calls, self.input_calls, self.order = {}, {}, []

    def __enter__(self) -> Capture:
        self.handles.append(self.model.register_forward_pre_hook(self._new_pass))
        for path in self.paths:
            self._register(path, "out")
        for path in self.inputs_of:
            self._register(path, "in")
        return self

    def _new_pass(self, module, args) -> None:
        self._passes += 1
        self._count = dict.fromkeys(self._count, 0)

    def _register(self, path: str, side: str) -> None:
        module = self.model.get_submodule(path)
        self._chunks[(side, path)], self._count[(side, path)] = {}, 0
        self.handles.append(module.register_forward_hook(self._hook(path, side)))

    def _hook(self, path: str, side: str):
        def hook(module, inputs, output):
            key = (side, path)
            # calls made outside a forward of ``model`` itself have no pass to be counted in
            call = self._count[key] if self._passes else 0
            self._count[key] = call + 1
            if side == "out" and self._passes <= 1:
                self.order.append((path, call))
            value = output if side == "out" else inputs[0]
            self._chunks[key].setdefault(call, []).append(output_rows(module, value, self.max_positions))
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for (side, path), by_call in self._chunks.items():
            if not by_call:
                continue
            per_call = [torch.cat(by_call[c]) for c in sorted(by_call)]
            (self.calls if side == "out" else self.input_calls)[path] = per_call
        self._chunks = {}

    @property
    def outputs(self) -> dict:
        """path -> (n_samples, d_out) of the ``paths`` modules that ran once per pass."""
        return {p: c[0] for p, c in self.calls.items() if len(c) == 1}

    @property
    def inputs(self) -> dict:
        """path -> (n_samples, d_in) of the ``inputs_of`` modules that ran once per pass."""
        return {p: c[0] for p, c in self.input_calls.items() if len(c) == 1}

    @property
    def repeated(self) -> dict:
        """path -> calls per pass, of the modules that ran more than once in a pass."""
        return {p: len(c) for p, c in {**self.input_calls, **self.calls}.items() if len(c) > 1}
