"""Model builders from a config, and the init-rate re-initialization.

Families: ``gpt2`` (transformers' GPT-2, pre-LN, GELU, biases) and ``paper`` (the post-LN,
bias-free, ReLU model of arXiv 2405.05409), the language models; and the baselines ``mlp`` (the
two-layer net f(x) = sum_k a_k sigma(w_k . x + b_k) of the condensation papers, drawn with the
phase-diagram parametrization) and ``resnet`` (transformers' ResNet-18 image classifier).
Importing this package registers ``paper`` and ``mlp`` with the ``Auto*`` classes so their
checkpoints reload with ``AutoModelForCausalLM`` / ``AutoModel.from_pretrained``.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from models.init_rate import apply_init_rate, check_gamma
from models.mlp import ACTIVATIONS, TwoLayerConfig, TwoLayerNet, build_mlp, phase_init
from models.paper_gpt import PaperGPTConfig, PaperGPTForCausalLM
from models.resnet import build_resnet

LM_FAMILIES = ("paper", "gpt2")
FAMILIES = (*LM_FAMILIES, "mlp", "resnet")


def build_model(
    family: str, *, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int,
    d_ff: int | None = None, dropout: float = 0.0, head_bias: bool = False,
) -> PreTrainedModel:
    """Build an untrained causal LM of ``family`` (output head untied from the embedding).

    Args:
        family: "paper" or "gpt2".
        vocab_size, n_positions, n_embd, n_layer, n_head: the usual sizes.
        d_ff: MLP width (default 3 * n_embd for paper, 4 * n_embd for gpt2).
        dropout: dropout probability on embeddings, attention and MLP outputs.
        head_bias: paper only: a bias on the output head (PyTorch's default init, which the init
            rate leaves as drawn).

    Raises:
        ValueError: unknown family, non-positive sizes, n_embd not divisible by n_head, or
            head_bias for gpt2.
    """
    if family not in LM_FAMILIES:
        raise ValueError(f"model_family={family!r} is unknown: accepted are {list(LM_FAMILIES)} "
                         f"(the baselines are built by build_for_run)")
    for name, value in dict(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                            n_layer=n_layer, n_head=n_head).items():
        if value < 1:
            raise ValueError(f"{name}={value} is invalid: accepted is an integer >= 1")
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
    if head_bias and family != "paper":
        raise ValueError(f"head_bias=True applies to model_family 'paper' only, not {family!r}")
    if family == "paper":
        config = PaperGPTConfig(
            vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
            n_head=n_head, d_head=n_embd // (2 * n_head) or 1, d_ff=d_ff, dropout=dropout,
            head_bias=head_bias,
        )
        return PaperGPTForCausalLM(config)
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, n_inner=d_ff, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        tie_word_embeddings=False, use_cache=False,
        # GPT-2's own ids (50256) lie outside a small vocabulary; as in GPT-2, the last id. The
        # loss never reads them: training is the same with any value
        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1,
    )
    return GPT2LMHeadModel(config)


def build_for_run(cfg, task) -> tuple[PreTrainedModel, list[dict]]:
    """Build a run's untrained model and draw it at the run's init rate.

    Args:
        cfg: the run's ``probes.config.RunConfig`` (model_family, sizes, gamma, ...).
        task: the run's task; it gives the shapes the model must take: ``seq_len`` and the
            vocabulary for the language models, ``in_dim`` / ``out_dim`` for ``mlp``,
            ``num_channels`` / ``num_labels`` for ``resnet``.

    Returns:
        (model, init records). ``mlp`` is drawn with ``phase_init(gamma, gamma_prime)``
        (std of a: m^-(gamma+gamma')/2, of (w, b): m^-(gamma-gamma')/2); every other family with
        ``apply_init_rate`` (std = d_in^-gamma, per-part gammas).

    Raises:
        ValueError: as the family's builder does.
    """
    family = cfg.model_family
    if family == "mlp":
        model = build_mlp(task.in_dim, cfg.width, task.out_dim, cfg.activation, cfg.dropout)
        return model, phase_init(model, cfg.gamma, cfg.gamma_prime)
    if family == "resnet":
        model = build_resnet(task.num_channels, task.num_labels)
    else:
        model = build_model(family, vocab_size=cfg.vocab_size, n_positions=task.seq_len,
                            n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
                            d_ff=cfg.d_ff, dropout=cfg.dropout, head_bias=cfg.head_bias)
    return model, apply_init_rate(model, cfg.gamma, cfg.part_gammas)


__all__ = [
    "ACTIVATIONS", "FAMILIES", "LM_FAMILIES", "PaperGPTConfig", "PaperGPTForCausalLM",
    "TwoLayerConfig", "TwoLayerNet", "apply_init_rate", "build_for_run", "build_mlp",
    "build_model", "build_resnet", "check_gamma", "phase_init",
]
