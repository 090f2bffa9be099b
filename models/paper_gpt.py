"""The GPT-like model of Zhang, Zhang, Xu et al. (NeurIPS 2024, arXiv 2405.05409).

Post-LayerNorm blocks, learned positional embedding, causal attention with d_k = d_v = n_embd / 2
per head (single head in the paper), ReLU MLP of width d_ff, and no biases in any projection;
optionally (``head_bias``) a bias on the output head, as in the authors' reference implementation.
A ``PreTrainedModel`` registered with the ``Auto*`` classes, so ``save_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` work once ``models`` is imported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutput


class PaperGPTConfig(PretrainedConfig):
    """Config of ``PaperGPTForCausalLM``.

    Args:
        vocab_size: tokens.
        n_positions: maximum sequence length.
        n_embd: model width d_model.
        n_layer: blocks.
        n_head: attention heads.
        d_head: per-head d_k = d_v; default n_embd // 2 (the paper's 200 at n_embd 400).
        d_ff: MLP width; default 3 * n_embd (the paper's 1200 at 400).
        dropout: dropout on attention output, MLP output and embeddings.
        layer_norm_eps: LayerNorm epsilon.
        head_bias: give the output head a bias (vocab_size,), drawn by PyTorch's default
            U(-1/sqrt(n_embd), 1/sqrt(n_embd)) and left so by the init rate, as in the authors'
            reference implementation (understanding_dl, book_jupyter_composition_task).
    """

    model_type = "condensation_paper_gpt"

    def __init__(
        self,
        vocab_size: int = 128,
        n_positions: int = 9,
        n_embd: int = 64,
        n_layer: int = 2,
        n_head: int = 1,
        d_head: int | None = None,
        d_ff: int | None = None,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        head_bias: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.d_head = d_head if d_head is not None else n_embd // 2
        self.d_ff = d_ff if d_ff is not None else 3 * n_embd
        self.dropout = dropout
        self.layer_norm_eps = layer_norm_eps
        self.head_bias = head_bias
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


def last_dropout(drop: nn.Dropout, y: torch.Tensor, t: int) -> torch.Tensor:
    """``drop`` applied to ``y`` (b, 1, n), the last position of a (b, t, n) output, with the
    mask that ``drop`` draws for the whole (b, t, n) output: the random stream, and so the run,
    is the full forward's. (A dropout over (b, 1, n) alone would draw other masks and shift every
    later draw: another run, not the same one computed faster.)"""
    if not drop.training or drop.p == 0:
        return y
    return y * drop(torch.ones(y.shape[0], t, y.shape[2], dtype=y.dtype, device=y.device))[:, -1:]


class PaperAttention(nn.Module):
    def __init__(self, config: PaperGPTConfig):
        super().__init__()
        inner = config.n_head * config.d_head
        self.n_head, self.d_head = config.n_head, config.d_head
        self.q_proj = nn.Linear(config.n_embd, inner, bias=False)
        self.k_proj = nn.Linear(config.n_embd, inner, bias=False)
        self.v_proj = nn.Linear(config.n_embd, inner, bias=False)
        self.o_proj = nn.Linear(inner, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x (b, t, n_embd) -> (b, t, n_embd), or (b, 1, n_embd) for the last position only
        (its query attends to every position, so no mask is needed)."""
        b, t, _ = x.shape

        def heads(y):  # (b, t', n_head * d_head) -> (b, n_head, t', d_head)
            return y.view(b, y.shape[1], self.n_head, self.d_head).transpose(1, 2)

        q = heads(self.q_proj(x[:, -1:] if last_only else x))
        k, v = heads(self.k_proj(x)), heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=not last_only)
        y = y.transpose(1, 2).reshape(b, q.shape[2], self.n_head * self.d_head)
        return last_dropout(self.dropout, self.o_proj(y), t) if last_only else self.dropout(self.o_proj(y))


class PaperMLP(nn.Module):
    def __init__(self, config: PaperGPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, config.d_ff, bias=False)
        self.fc_out = nn.Linear(config.d_ff, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """x (b, t', n_embd) -> (b, t', n_embd); ``t``: x is the last position of a length-t
        output (``last_dropout``), None: x is the whole output."""
        y = self.fc_out(F.relu(self.fc_in(x)))
        return self.dropout(y) if t is None else last_dropout(self.dropout, y, t)


class PaperBlock(nn.Module):
    """Post-LN: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, config: PaperGPTConfig):
        super().__init__()
        self.attn = PaperAttention(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = PaperMLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x (b, t, n_embd) -> (b, t, n_embd), or (b, 1, n_embd) when ``last_only``: the other
        positions' outputs of a last block feed nothing, so they are not computed."""
        t = x.shape[1] if last_only else None
        x = self.ln_1((x[:, -1:] if last_only else x) + self.attn(x, last_only))
        return self.ln_2(x + self.mlp(x, t))


class PaperGPTForCausalLM(PreTrainedModel, GenerationMixin):
    """The paper's decoder. ``forward(input_ids (b, t) int64)`` -> ``CausalLMOutput`` with
    ``logits`` (b, t, vocab_size) float and, given ``labels`` (b, t), the shifted LM ``loss``.
    ``logits_to_keep=1`` (transformers' name) gives the last position's logits (b, 1, vocab_size)
    only and skips the last block's work at every other position: the same values (to float
    rounding) at about 60% of the FLOPs of a 2-layer model, for tasks scored at the last position.

    Raises:
        ValueError: if t > n_positions.
    """

    config_class = PaperGPTConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["PaperBlock"]

    def __init__(self, config: PaperGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(PaperBlock(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.head_bias)
        # models.init_rate.apply_init_rate leaves these biases as PyTorch drew them
        self.init_rate_keeps_bias = ("lm_head",) if config.head_bias else ()
        self.post_init()

    def _init_weights(self, module):
        # Placeholder init; experiments re-initialize with models.init_rate.apply_init_rate.
        # Linear biases (only the optional head bias) keep PyTorch's default draw.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, labels=None, attention_mask=None, logits_to_keep: int = 0,
                **kwargs):
        t = input_ids.shape[1]
        if t > self.config.n_positions:
            raise ValueError(f"sequence length {t} exceeds n_positions={self.config.n_positions}")
        if logits_to_keep not in (0, 1) or (logits_to_keep and labels is not None):
            raise ValueError(f"logits_to_keep={logits_to_keep!r} is not supported: accepted are 0 "
                             "(every position) and 1 (the last position, without labels)")
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for i, block in enumerate(self.h):
            x = block(x, last_only=bool(logits_to_keep) and i == len(self.h) - 1)
        logits = self.lm_head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            )
        return CausalLMOutput(loss=loss, logits=logits)


AutoConfig.register(PaperGPTConfig.model_type, PaperGPTConfig)
AutoModelForCausalLM.register(PaperGPTConfig, PaperGPTForCausalLM)
