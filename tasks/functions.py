"""Regression targets for the two-layer baseline (``model_family: mlp``), trained on the mean
squared error.

- ``four_points``: the 1-D example of the condensation overview (Xu, Zhang, Zhou, arXiv
  2504.09484, and its public notebook): the four points x = -1, -1/3, 1/3, 1 of
  y(x) = 0.2 relu(x - 1/3) + 0.2 relu(-x - 1/3), i.e. y = 2/15, 0, 0, 2/15.
- ``sin_sum``: y(x) = 3.5 sum_k sin(5 x_k + 1) with x uniform in [-4, 2]^d, the smooth target of
  the initial-condensation experiments (Zhou et al., NeurIPS 2022, arXiv 2105.11686, public
  code); any input dimension d = ``in_dim``. The authors' input dimension is 5; the suite's
  config default is 1 (a 1-D target, whose neurons' (w, b) angles the 1-D probes read:
  ``configs/mlp_initial.yaml`` says why it uses d = 1).
- ``sine``: y(x) = sin(pi x) on an even grid of ``n_train`` points of [-1, 1]. An odd target on
  a symmetric interval: the matrix M = mean_i y_i (x_i, 1)(x_i, 1)^T that drives a small-init
  net with an activation of multiplicity 2 (x tanh x) has eigenvalues +c and -c, so both signs of
  output weight grow and two lines can condense (arXiv 2105.11686); with sin_sum at data_seed 0,
  M is positive definite and only one line can.

Splits: ``train`` and ``test`` with columns ``inputs`` (n, d) float32 and ``target`` (n, 1)
float32. Scores: ``train_loss`` (MSE on the training points), ``rel_err_train``
(sum (f - y)^2 / sum y^2 on them), ``test_loss`` (MSE on the test points); a run is ``fitted``
when rel_err_train <= 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # imported where used: datasets takes a second to import
    from datasets import DatasetDict

from tasks.objective import Evaluation

FIT_REL_ERR = 0.01


def four_points_target(x: np.ndarray) -> np.ndarray:
    """y = 0.2 relu(x - 1/3) + 0.2 relu(-x - 1/3) (arXiv 2504.09484): x (n, 1) -> (n, 1)."""
    return 0.2 * np.maximum(x - 1 / 3, 0) + 0.2 * np.maximum(-x - 1 / 3, 0)


def sine_target(x: np.ndarray) -> np.ndarray:
    """y = sin(pi x): x (n, 1) -> (n, 1)."""
    return np.sin(np.pi * x)


def sin_sum_target(x: np.ndarray) -> np.ndarray:
    """y = 3.5 sum_k sin(5 x_k + 1) (arXiv 2105.11686): x (n, d) -> (n, 1)."""
    return 3.5 * np.sin(5 * x + 1).sum(axis=1, keepdims=True)


class RegressionTask:
    """Shared half of the regression tasks: the MSE objective and its scores."""

    families = ("mlp",)
    batch_columns = ("inputs", "target")
    score_names = ("rel_err_train", "test_loss")
    ood_scores = ()
    out_dim = 1

    @staticmethod
    def _splits(x_train, x_test, target) -> DatasetDict:
        from datasets import Dataset, DatasetDict

        def columns(x):
            x = np.asarray(x, dtype=np.float64)
            return {"inputs": x.astype(np.float32), "target": target(x).astype(np.float32)}
        return DatasetDict(train=Dataset.from_dict(columns(x_train)).with_format("numpy"),
                           test=Dataset.from_dict(columns(x_test)).with_format("numpy"))

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean squared error over the batch and outputs: mean (f(x) - y)^2."""
        return F.mse_loss(model(batch["inputs"]), batch["target"])

    @torch.no_grad()
    def evaluate(self, model, data: dict, device) -> Evaluation:
        """train_loss and rel_err_train on ``data["train"]``, test_loss on ``data["test"]``."""
        def errors(split):
            x = torch.as_tensor(data[split]["inputs"], device=device)
            y = torch.as_tensor(data[split]["target"], device=device)
            return (model(x).float() - y).pow(2).sum().item(), y.pow(2).sum().item(), y.numel()

        sq, ysq, n = errors("train")
        sq_test, _, n_test = errors("test")
        scores = {"train_loss": sq / n, "rel_err_train": sq / ysq if ysq > 0 else float("nan"),
                  "test_loss": sq_test / n_test if n_test else float("nan")}
        counts = {"train_loss": n, "rel_err_train": n, "test_loss": n_test}
        return Evaluation(scores, counts)

    def fitted(self, scores: dict) -> bool:
        """Fitted when the training points are fitted to 1%: rel_err_train <= 0.01."""
        return bool(scores["rel_err_train"] <= FIT_REL_ERR)


@dataclass
class FourPointsTask(RegressionTask):
    """The overview's 4-point example (arXiv 2504.09484): fit y = 2/15, 0, 0, 2/15 at
    x = -1, -1/3, 1/3, 1 with a two-layer net.

    Args:
        n_test_id: test points, an even grid on [-1, 1] of the same target function (2000: the
            value every run of configs/mlp_phase.yaml and mlp_dropout.yaml was trained with).

    Raises:
        ValueError: n_test_id < 1.
    """

    n_test_id: int = 2000
    in_dim = 1

    def __post_init__(self):
        if self.n_test_id < 1:  # test_loss is a mean over them
            raise ValueError(f"n_test_id={self.n_test_id} is invalid: accepted is an integer >= 1")

    def build(self) -> DatasetDict:
        x_train = np.linspace(-1, 1, 4)[:, None]
        x_test = np.linspace(-1, 1, self.n_test_id)[:, None]
        return self._splits(x_train, x_test, four_points_target)


@dataclass
class SinSumTask(RegressionTask):
    """y(x) = 3.5 sum_k sin(5 x_k + 1) on x uniform in [-4, 2]^d (arXiv 2105.11686).

    Args:
        in_dim: input dimension d.
        n_train, n_test_id: training and test points (uniform draws).
        seed: seed of the data generator.

    Raises:
        ValueError: in_dim < 1, n_train < 1 or n_test_id < 1.
    """

    in_dim: int = 1
    n_train: int = 80
    n_test_id: int = 2000  # the value every run of the suite has been trained with
    seed: int = 0

    def __post_init__(self):
        if self.in_dim < 1:
            raise ValueError(f"in_dim={self.in_dim} is invalid: accepted is an integer >= 1")
        if self.n_train < 1:
            raise ValueError(f"n_train={self.n_train} is invalid: accepted is an integer >= 1")
        if self.n_test_id < 1:  # test_loss is a mean over them
            raise ValueError(f"n_test_id={self.n_test_id} is invalid: accepted is an integer >= 1")

    def build(self) -> DatasetDict:
        rng = np.random.default_rng(self.seed)
        x_train = rng.uniform(-4, 2, size=(self.n_train, self.in_dim))
        x_test = rng.uniform(-4, 2, size=(self.n_test_id, self.in_dim))
        return self._splits(x_train, x_test, sin_sum_target)


@dataclass
class SineTask(RegressionTask):
    """y(x) = sin(pi x) on ``n_train`` evenly spaced points of [-1, 1]; test: ``n_test_id``
    evenly spaced points of the same interval.

    Raises:
        ValueError: n_train < 2 or n_test_id < 1.
    """

    n_train: int = 40
    n_test_id: int = 2000  # the value every run of the suite has been trained with
    in_dim = 1

    def __post_init__(self):
        if self.n_train < 2:
            raise ValueError(f"n_train={self.n_train} is invalid: accepted is an integer >= 2")
        if self.n_test_id < 1:  # test_loss is a mean over them
            raise ValueError(f"n_test_id={self.n_test_id} is invalid: accepted is an integer >= 1")

    def build(self) -> DatasetDict:
        return self._splits(np.linspace(-1, 1, self.n_train)[:, None],
                            np.linspace(-1, 1, self.n_test_id)[:, None], sine_target)
