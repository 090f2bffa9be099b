"""The two-layer network of the condensation papers, f(x) = sum_k a_k sigma(w_k . x + b_k).

Luo, Xu, Ma, Zhang, "Phase diagram for two-layer ReLU neural networks at infinite-width limit"
(JMLR 2021, arXiv 2007.07497); Zhou et al., "Towards understanding the condensation of neural
networks at initial training" (NeurIPS 2022, arXiv 2105.11686); Zhang and Xu, "Implicit
regularization of dropout" (TPAMI 2024). A ``PreTrainedModel`` registered with ``AutoConfig`` /
``AutoModel``, so checkpoints reload with ``AutoModel.from_pretrained`` once ``models`` is imported.

Init (``phase_init``): the phase-diagram parametrization with alpha = 1,
a_k ~ N(0, beta1^2), (w_k, b_k) ~ N(0, beta2^2 I), beta1 = m^-(gamma + gamma')/2,
beta2 = m^-(gamma - gamma')/2 for width m, so that
gamma = -log(beta1 beta2) / log m and gamma' = -log(beta1 / beta2) / log m exactly.
gamma' = 0 gives beta1 = beta2 = m^-gamma/2: gamma 0.5 is the NTK-like linear regime, 1 the
critical (mean-field-like) line, > 1 the condensed regime.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

# The largest phase-diagram gamma accepted. Here gamma = 2t for the std m^-t that the group's code
# draws every weight and bias of the net from (gamma' = 0), so 6 reaches t = 3 (std 400^-3 = 1.6e-8
# at width 400, the scale of the init rate's gamma 3 at d_in 400); the init rate itself (std =
# d_in^-gamma, the other families) stops at 3.
MAX_GAMMA = 6.0

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": nn.functional.softplus,
    "xtanh": lambda z: z * torch.tanh(z),  # multiplicity 2 at 0 (arXiv 2105.11686)
}


def check_activation(name: str) -> str:
    """Return ``name``. Raises ValueError unless it is one of ACTIVATIONS."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is unknown: accepted are {list(ACTIVATIONS)}")
    return name


class TwoLayerConfig(PretrainedConfig):
    """Config of ``TwoLayerNet``.

    Args:
        in_dim: input dimension d.
        width: hidden neurons m.
        out_dim: outputs (1 for the regression targets).
        activation: one of ACTIVATIONS.
        dropout: dropout probability on the hidden neurons' outputs (Zhang and Xu, TPAMI 2024).
    """

    model_type = "condensation_mlp"

    def __init__(self, in_dim: int = 1, width: int = 100, out_dim: int = 1,
                 activation: str = "relu", dropout: float = 0.0, **kwargs):
        self.in_dim, self.width, self.out_dim = in_dim, width, out_dim
        self.activation, self.dropout = activation, dropout
        super().__init__(**kwargs)


class TwoLayerNet(PreTrainedModel):
    """f(x) = sum_k a_k sigma(w_k . x + b_k): ``hidden`` holds (w_k, b_k), ``output`` holds a_k
    (no output bias, as in the papers).

    ``forward(inputs)``: inputs (n, in_dim) float -> (n, out_dim) float.
    """

    config_class = TwoLayerConfig
    main_input_name = "inputs"

    def __init__(self, config: TwoLayerConfig):
        super().__init__(config)
        check_activation(config.activation)
        self.hidden = nn.Linear(config.in_dim, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Linear(config.width, config.out_dim, bias=False)
        self.post_init()

    def _init_weights(self, module):
        # placeholder draw; runs re-draw every weight with phase_init
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, module.in_features ** -0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        h = ACTIVATIONS[self.config.activation](self.hidden(inputs))
        return self.output(self.dropout(h))


def build_mlp(in_dim: int, width: int, out_dim: int = 1, activation: str = "relu",
              dropout: float = 0.0) -> TwoLayerNet:
    """An untrained ``TwoLayerNet``.

    Raises:
        ValueError: in_dim, width or out_dim < 1, an unknown activation, dropout outside [0, 1).
    """
    for name, value in dict(in_dim=in_dim, width=width, out_dim=out_dim).items():
        if value < 1:
            raise ValueError(f"{name}={value} is invalid: accepted is an integer >= 1")
    check_activation(activation)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout} is invalid: accepted is a number in [0, 1)")
    return TwoLayerNet(TwoLayerConfig(in_dim=in_dim, width=width, out_dim=out_dim,
                                      activation=activation, dropout=dropout))


def phase_stds(width: int, gamma: float, gamma_prime: float = 0.0) -> tuple[float, float]:
    """(beta1, beta2): std of the output weights a and of the input weights (w, b) at width m.

    beta1 = m^-(gamma + gamma')/2, beta2 = m^-(gamma - gamma')/2 (alpha = 1), so that
    -log(beta1 beta2)/log m = gamma and -log(beta1/beta2)/log m = gamma' (Luo et al., JMLR 2021).
    """
    return width ** (-(gamma + gamma_prime) / 2), width ** (-(gamma - gamma_prime) / 2)


@torch.no_grad()
def phase_init(model: TwoLayerNet, gamma: float, gamma_prime: float = 0.0,
               generator: torch.Generator | None = None) -> list[dict]:
    """Draw a ~ N(0, beta1^2) and (w, b) ~ N(0, beta2^2) in place (``phase_stds``).

    Returns:
        init records {"name", "part", "d_in", "gamma", "std"} for ``hidden`` (weight and bias,
        one record) and ``output``; "gamma" is the model's gamma (gamma' is in the run config).
    """
    m = model.config.width
    beta1, beta2 = phase_stds(m, gamma, gamma_prime)
    model.hidden.weight.normal_(0.0, beta2, generator=generator)
    model.hidden.bias.normal_(0.0, beta2, generator=generator)
    model.output.weight.normal_(0.0, beta1, generator=generator)
    return [
        {"name": "hidden", "part": "mlp", "d_in": model.config.in_dim + 1, "gamma": gamma,
         "std": beta2},
        {"name": "output", "part": "head", "d_in": m, "gamma": gamma, "std": beta1},
    ]


def ntk_scale(width: int, gamma: float, gamma_prime: float = 0.0) -> float:
    """m (beta1^2 + beta2^2) / 2: the size of the tangent kernel of f at initialization per unit
    input (sum over neurons of |df/da_k|^2 + |df/d(w_k, b_k)|^2 is of this order). It is
    m^(1 - gamma) at gamma' = 0. Dividing the learning rate by max(1, ntk_scale) keeps full-batch
    gradient descent stable and its number of steps width-independent in the linear regime
    (gamma < 1), and leaves it unchanged from gamma = 1 on."""
    beta1, beta2 = phase_stds(width, gamma, gamma_prime)
    return width * (beta1**2 + beta2**2) / 2


AutoConfig.register(TwoLayerConfig.model_type, TwoLayerConfig)
AutoModel.register(TwoLayerConfig, TwoLayerNet)
