"""Model builders from a config, and the init-rate re-initialization.

Families: ``gpt2`` (transformers' GPT-2, pre-LN, GELU, biases) and ``paper`` (the post-LN,
bias-free, ReLU model of arXiv 2405.05409). Importing this package registers ``paper`` with the
``Auto*`` classes so its checkpoints reload with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from models.init_rate import apply_init_rate, check_gamma
from models.paper_gpt import PaperGPTConfig, PaperGPTForCausalLM

FAMILIES = ("paper", "gpt2")


def build_model(
    family: str, *, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int,
    d_ff: int | None = None, dropout: float = 0.0,
) -> PreTrainedModel:
    """Build an untrained causal LM of ``family`` (output head untied from the embedding).

    Args:
        family: "paper" or "gpt2".
        vocab_size, n_positions, n_embd, n_layer, n_head: the usual sizes.
        d_ff: MLP width (default 3 * n_embd for paper, 4 * n_embd for gpt2).
        dropout: dropout probability on embeddings, attention and MLP outputs.

    Raises:
        ValueError: unknown family, non-positive sizes, or n_embd not divisible by n_head.
    """
    if family not in FAMILIES:
        raise ValueError(f"model_family={family!r} is unknown: accepted are {list(FAMILIES)}")
    for name, value in dict(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                            n_layer=n_layer, n_head=n_head).items():
        if value < 1:
            raise ValueError(f"{name}={value} is invalid: accepted is an integer >= 1")
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
    if family == "paper":
        config = PaperGPTConfig(
            vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
            n_head=n_head, d_head=n_embd // (2 * n_head) or 1, d_ff=d_ff, dropout=dropout,
        )
        return PaperGPTForCausalLM(config)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, n_inner=d_ff, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        tie_word_embeddings=False, use_cache=False,
    )
    return GPT2LMHeadModel(config)


__all__ = [
    "FAMILIES", "PaperGPTConfig", "PaperGPTForCausalLM", "apply_init_rate", "build_model",
    "check_gamma",
]
