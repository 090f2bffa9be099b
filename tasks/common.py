"""Pieces shared by the tasks of the anchor-function family (arXiv 2401.08309, arXiv 2405.05409):
the key split by value and position, option parsing, and the task protocol's generic half
(``build``, ``train_sampler``, ``reasoning_metrics``, ``fitted``).

A task built on ``ReasoningTask`` supplies ``sample(rng, n, split)`` (numpy columns of ``n`` samples
of one split), ``ood_outcomes(pred, batch)`` (one disjoint boolean array per candidate answer on the
out-of-distribution split) and the class attributes ``score_names`` and ``ood_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: datasets takes a second to import
    from datasets import Dataset, DatasetDict

SPLITS = ("train", "test_id", "ood")
# key rule of each split: train keys, test keys, or every key (the ood split)
SPLIT_RULES = {"train": "train", "test_id": "test", "ood": "all"}
# ood_offsets code of an answer that is no token of the input (identity, chain search)
NOT_IN_INPUT = -100


def share(hit: np.ndarray) -> float:
    """Mean of a boolean array as a float; NaN for an empty array."""
    return float(np.mean(hit)) if len(hit) else float("nan")


def histogram(values: np.ndarray) -> dict[int, int]:
    """Counts of each distinct int value: value -> count."""
    keys, counts = np.unique(values, return_counts=True)
    return {int(k): int(c) for k, c in zip(keys, counts)}


def to_dataset(columns: dict) -> Dataset:
    """Numpy columns (equal first dimension) as a ``datasets.Dataset`` in numpy format."""
    from datasets import Dataset

    return Dataset.from_dict(columns).with_format("numpy")


def parse_ints(value, name: str) -> tuple[int, ...]:
    """Read a config value holding integers: an int, or a string of comma-separated ints.

    A string keeps the value hashable and one config key long (a YAML list would expand a grid).

    Raises:
        ValueError: if ``value`` is neither, or a part is not an integer.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, str):
        try:
            return tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            pass
    raise ValueError(f"{name}={value!r} is invalid: accepted is an int or comma-separated ints, "
                     f"e.g. '13,31'")


def anchor_sequences(rng: np.random.Generator, key: np.ndarray, position: np.ndarray,
                     pairs: np.ndarray, seq_len: int, key_low: int, key_high: int):
    """Noise sequences with a key and an anchor pair after it (arXiv 2405.05409's inputs).

    Args:
        rng: numpy generator (draws the pairs, then the noise).
        key, position: (n,) int keys and their 0-based positions (<= seq_len - 3).
        pairs: (n_pairs, 2) anchor pairs to draw from, uniformly.
        seq_len: tokens per sequence; key_low, key_high: noise tokens are uniform in that range.

    Returns:
        (input_ids (n, seq_len) int64 with the key at ``position`` and the pair's anchors at
        ``position + 1`` and ``position + 2``; pair (n, 2) the drawn pairs).
    """
    n = len(key)
    pair = pairs[rng.integers(0, len(pairs), size=n)]
    ids = rng.integers(key_low, key_high + 1, size=(n, seq_len))
    rows = np.arange(n)
    ids[rows, position] = key
    ids[rows, position + 1] = pair[:, 0]
    ids[rows, position + 2] = pair[:, 1]
    return ids, pair


def check_sizes(task) -> None:
    """Raise ValueError if ``n_train`` < 1 or ``n_test_id`` / ``n_ood`` < 0 (a task needs training
    samples; an empty test split is allowed)."""
    for split in SPLITS:
        n, low = getattr(task, f"n_{split}"), 1 if split == "train" else 0
        if n < low:
            raise ValueError(f"n_{split}={n} is invalid: accepted is an integer >= {low}")


@dataclass(frozen=True)
class KeySplit:
    """The family's split of key values by position (arXiv 2405.05409, Sec. 3; 2401.08309).

    A key at position p is a test key iff ``(key - p) % modulus == 0``: for 0 <= p < modulus this is
    the paper's ``key % modulus == p``; larger positions wrap around, as in the group's public
    code, which draws x = v + p with v a multiple of the modulus for test data.

    Args:
        low, high: key values are the ints in [low, high].
        modulus: the split modulus (>= 1).
        positions: every position a key can take (what "position" means is the task's choice).
    """

    low: int
    high: int
    modulus: int
    positions: tuple[int, ...]

    def is_test(self, key: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Boolean array: which (key, position) pairs are test keys."""
        return (np.asarray(key) - np.asarray(position)) % self.modulus == 0

    def check(self) -> None:
        """Raise ValueError unless every position has both a train and a test key."""
        if self.modulus < 1:
            raise ValueError(f"split_modulus={self.modulus} is invalid: need >= 1")
        values = np.arange(self.low, self.high + 1)
        for p in self.positions:
            n_test = int(self.is_test(values, p).sum())
            if n_test == 0 or n_test == len(values):
                side = "test" if n_test == 0 else "train"
                raise ValueError(
                    f"split_modulus={self.modulus} leaves no {side} key in [{self.low}, {self.high}] "
                    f"at position {p}: choose a modulus in [2, {len(values)}]")

    def draw(self, rng: np.random.Generator, position: np.ndarray, rule: str) -> np.ndarray:
        """Keys drawn uniformly among those the rule allows at each position.

        Args:
            rng: numpy generator.
            position: (n,) int array of positions, each in ``self.positions``.
            rule: "train" (not a test key), "test" (a test key) or "all".

        Returns:
            (n,) int64 keys.

        Raises:
            ValueError: on an unknown rule.
        """
        if rule not in ("train", "test", "all"):
            raise ValueError(f"rule={rule!r} is unknown: accepted are 'train', 'test', 'all'")
        values = np.arange(self.low, self.high + 1)
        n_rows = max(self.positions) + 1
        table = np.zeros((n_rows, len(values)), dtype=np.int64)
        counts = np.ones(n_rows, dtype=np.int64)  # rows of unused positions are never indexed
        for p in self.positions:
            test = self.is_test(values, p)
            allowed = values if rule == "all" else values[test if rule == "test" else ~test]
            table[p, :len(allowed)] = allowed
            counts[p] = len(allowed)
        # one uniform index per row into that row's allowed keys: no Python loop over samples
        idx = (rng.random(len(position)) * counts[position]).astype(np.int64)
        return table[position, idx]


class ReasoningTask:
    """The generic half of the task protocol (see ``tasks/__init__.py``).

    Subclasses are dataclasses with fields ``n_train``, ``n_test_id``, ``n_ood`` and ``seed``, and
    define ``sample``, ``ood_outcomes``, ``ood_offsets``, ``seq_len``, ``vocab_min_size`` and the class
    attributes ``score_names`` (``acc_train``, ``acc_test_id``, then ``ood_scores``) and
    ``ood_scores`` (``ood_<candidate>`` for each key of ``ood_outcomes``, in order).
    """

    fit_threshold = 0.95

    def sample(self, rng: np.random.Generator, n: int, split: str) -> dict:  # pragma: no cover
        raise NotImplementedError

    def ood_outcomes(self, pred: np.ndarray, batch: dict) -> dict:  # pragma: no cover
        raise NotImplementedError

    def build(self) -> DatasetDict:
        """Generate the splits train, test_id, ood (in that order, from one generator seeded with
        ``seed``): deterministic in ``seed``."""
        from datasets import DatasetDict

        rng = np.random.default_rng(self.seed)
        return DatasetDict({s: to_dataset(self.sample(rng, getattr(self, f"n_{s}"), s))
                            for s in SPLITS})

    def train_sampler(self, rng: np.random.Generator, n: int) -> dict:
        """``n`` fresh training samples as numpy columns (same columns as ``build()['train']``)."""
        return self.sample(rng, n, "train")

    def reasoning_metrics(self, preds: dict, data: dict) -> dict[str, float]:
        """Accuracies and out-of-distribution shares, in ``score_names`` order.

        Args:
            preds: split name -> (n,) int predictions (last position) for train, test_id, ood.
            data: split name -> numpy columns of the same samples.

        Returns:
            acc_train, acc_test_id (share of predictions equal to ``target``) and, for each
            candidate answer on the ood split, ``ood_<candidate>``: the share of ood predictions in
            that (disjoint) class; they sum to 1. An empty split gives NaN.
        """
        scores = {f"acc_{s}": share(preds[s] == data[s]["target"]) for s in ("train", "test_id")}
        if len(preds["ood"]) == 0:  # an empty split may come back without its 2-D shape
            return scores | dict.fromkeys(self.ood_scores, float("nan"))
        for name, hit in self.ood_outcomes(preds["ood"], data["ood"]).items():
            scores[f"ood_{name}"] = share(hit)
        return scores

    def fitted(self, scores: dict) -> bool:
        """A run counts as fitted iff acc_test_id >= 0.95 (NaN is not fitted)."""
        return bool(scores["acc_test_id"] >= self.fit_threshold)
