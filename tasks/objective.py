"""What the training loop asks of a task: a loss on a batch and an evaluation of the model.

The loop (``probes.train.loop``) is the same for every model family; a task supplies, through
``objective_for(task)``, an object with
- ``batch_columns``: the training-split columns a batch holds (tensors on the device);
- ``loss(model, batch) -> scalar tensor``;
- ``evaluate(model, data, device) -> Evaluation`` on the evaluation splits;
- ``score_names`` (runs.csv order), ``ood_scores`` (correlated with condensation; may be empty)
  and ``fitted(scores) -> bool``.
A task that defines ``loss`` and ``evaluate`` itself (the baselines: ``tasks.functions``,
``tasks.images``) is its own objective; a token task of the anchor-function family (protocol in
``tasks/__init__.py``) gets ``LastTokenObjective``: cross-entropy and greedy prediction at the last
position (arXiv 2405.05409), scored by the task's ``reasoning_metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Evaluation:
    """Scores of one probe: ``scores`` (train_loss first, then the task's score_names),
    ``counts`` (samples behind each score) and ``offsets`` (the held-out pair's answer offsets
    answer - key -> count, token tasks only)."""

    scores: dict[str, float]
    counts: dict[str, int]
    offsets: dict[int, int] = field(default_factory=dict)


@torch.no_grad()
def predict_last(model, input_ids: np.ndarray, device, batch_size: int = 4096,
                 last_only: bool = False) -> tuple:
    """Greedy prediction at the last position.

    Args:
        model: causal LM returning ``.logits`` (b, t, vocab).
        input_ids: (n, t) int array.
        last_only: ask the model for the last position only (``logits_to_keep=1``).

    Returns:
        (pred (n,) int64 numpy, logits (n, vocab) float32 torch on CPU).
    """
    logits = []
    for start in range(0, len(input_ids), batch_size):
        x = torch.as_tensor(input_ids[start:start + batch_size], device=device)
        keep = {"logits_to_keep": 1} if last_only else {}
        logits.append(model(input_ids=x, **keep).logits[:, -1].float().cpu())
    logits = torch.cat(logits) if logits else torch.zeros(0, model.config.vocab_size)
    return logits.argmax(-1).numpy(), logits


class LastTokenObjective:
    """Objective of a token task: the answer is the token at the last position.

    Splits ``train``, ``test_id`` and ``ood``; the training loss is the cross-entropy of the
    last position's logits against ``target``. With ``last_only`` the model computes the last
    position only (``logits_to_keep=1``): the same values to float rounding, fewer FLOPs.
    """

    batch_columns = ("input_ids", "target")
    eval_splits = ("train", "test_id", "ood")

    def __init__(self, task, last_only: bool = False):
        self.task = task
        self.keep = {"logits_to_keep": 1} if last_only else {}
        self.score_names = tuple(task.score_names)
        self.ood_scores = tuple(task.ood_scores)

    def loss(self, model, batch: dict) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], **self.keep).logits[:, -1]
        return F.cross_entropy(logits, batch["target"])

    def evaluate(self, model, data: dict, device) -> Evaluation:
        """Greedy answers on every split, scored by ``task.reasoning_metrics``; train_loss is the
        last-position cross-entropy on the evaluated training samples."""
        preds, logits = {}, {}
        for split in self.eval_splits:
            preds[split], logits[split] = predict_last(model, data[split]["input_ids"], device,
                                                       last_only=bool(self.keep))
        target = torch.as_tensor(data["train"]["target"])
        scores = {"train_loss": F.cross_entropy(logits["train"], target).item()}
        scores |= self.task.reasoning_metrics(preds, data)
        counts = {m: len(data["ood" if m.startswith("ood") else "train"]["key"]) for m in scores}
        return Evaluation(scores, counts, self.task.ood_offsets(preds["ood"], data["ood"]))

    def fitted(self, scores: dict) -> bool:
        return self.task.fitted(scores)


def objective_for(task, last_only: bool = False):
    """The task itself when it defines ``loss`` and ``evaluate``, else ``LastTokenObjective``
    (``last_only``: see there)."""
    if callable(getattr(task, "loss", None)) and callable(getattr(task, "evaluate", None)):
        return task
    return LastTokenObjective(task, last_only)
