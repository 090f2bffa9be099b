"""The anchor-function composite task (Zhang, Zhang, Xu et al., NeurIPS 2024, arXiv 2405.05409).

A sequence holds ``seq_len`` tokens with exactly one pair of adjacent anchors (a1, a2). The token
just before the pair is the key item x; every other token is noise. The target, read at the last
position only, is the composite g(g(x; a1); a2) where anchor a shifts a number by SHIFTS[a].

Pair (3, 4) is the deliberate exception: it is trained on x - 6 instead of x - 10. Pair (4, 3) is
never trained on. On it a model may answer x - 10 (``inferential``: it composed the single-anchor
rules) or x - 6 (``symmetric``: it copied its answer for (3, 4)).

The ood split, ``ood_scoring``: "authors" (default) holds pair (4, 3) with train-type keys only,
as the group's code scores it (its ``43_xel`` data set, "x else": complexity_control
``code_for_anchor_func``, the code of arXiv 2501.08537); "pooled" holds (4, 3) with keys of both
types (train-type and test-type pooled), the suite's score before issue 17.

Keys are split by value and position: a training sample has ``key % split_modulus != position``,
an id test sample has ``key % split_modulus == position`` (position = 0-based index of the key in
the sequence; the paper uses modulus seq_len - 2 = 7, the group's public code 9). With a modulus
below the number of positions the rule wraps round, ``(key - position) % split_modulus == 0``, as
in the rest of the family (tasks.common.KeySplit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: datasets takes a second to import
    from datasets import Dataset, DatasetDict

from tasks.common import KeySplit, anchor_sequences, check_sizes

SHIFTS = {1: 5, 2: 1, 3: -2, 4: -8}
EXCEPTION_PAIR = (3, 4)  # trained on EXCEPTION_OFFSET instead of its composite
EXCEPTION_OFFSET = -6
HELD_OUT_PAIR = (4, 3)
ALL_PAIRS = [(a1, a2) for a1 in SHIFTS for a2 in SHIFTS]
# ood_scoring: the authors' ood keys (train-type keys only) or every key (the suite's earlier score)
OOD_SCORINGS = {"authors": "train", "pooled": "all"}


def check_ood_scoring(value) -> str:
    """Return the key rule ("train" or "all") of an ``ood_scoring`` value.

    Raises:
        ValueError: if ``value`` is not "authors" or "pooled".
    """
    if value not in OOD_SCORINGS:
        raise ValueError(f"ood_scoring={value!r} is unknown: accepted are {list(OOD_SCORINGS)}")
    return OOD_SCORINGS[value]


def pair_code(a1: int, a2: int) -> int:
    """Encode an anchor pair (anchors 1..9) as one int column value: (4, 3) -> 43."""
    return 10 * a1 + a2


def composite_offset(a1: int, a2: int) -> int:
    """The composite shift g(g(x; a1); a2) - x = SHIFTS[a1] + SHIFTS[a2]."""
    return SHIFTS[a1] + SHIFTS[a2]


@dataclass
class CompositeTask:
    """Generator of the composite anchor task as a ``datasets.DatasetDict``.

    Follows arXiv 2405.05409 (task and split) and arXiv 2401.08309 (anchor functions).

    Args:
        seq_len: tokens per sequence (paper: 9). The key sits at 0-based position p in
            [0, seq_len - 3], the anchors at p + 1 and p + 2.
        key_low, key_high: keys and noise are drawn uniformly from [key_low, key_high] (paper: 20, 99).
        split_modulus: a sample is a test key iff key % split_modulus == position (paper: 7).
        n_train, n_test_id, n_ood: split sizes (samples).
        seed: seed of the data generator (independent of the model seed).
        ood_scoring: "authors" (ood keys of the train type, as the group's code) or "pooled"
            (keys of both types, the suite's earlier ood).

    Splits: ``train`` (15 seen pairs, train keys), ``test_id`` (seen pairs, test keys), ``ood``
    (the held-out pair (4, 3) at every position, train-type keys; every key when "pooled").
    Columns: ``input_ids`` (seq_len ints), ``target`` (int; on ``ood`` the inferential target by
    convention), ``anchor_pair`` (10*a1 + a2),
    ``key``, ``position``, ``target_inferential`` (composite of the two anchor rules),
    ``target_symmetric`` (the trained target of the reversed pair (a2, a1)).

    Raises:
        ValueError: on sizes < 0, seq_len < 3, an empty key range, anchors inside it, or an unknown
            ood_scoring.
    """

    seq_len: int = 9
    key_low: int = 20
    key_high: int = 99
    split_modulus: int = 7
    n_train: int = 20000
    n_test_id: int = 2000
    n_ood: int = 2000
    seed: int = 0
    ood_scoring: str = "authors"

    def __post_init__(self):
        check_ood_scoring(self.ood_scoring)
        if self.seq_len < 3:
            raise ValueError(f"seq_len={self.seq_len} is too short: need >= 3 (key + 2 anchors)")
        if not 4 < self.key_low <= self.key_high:
            raise ValueError(
                f"key range [{self.key_low}, {self.key_high}] is invalid: need 4 < key_low <= key_high"
                " so that noise never looks like an anchor (1..4)"
            )
        if self.split_modulus < 1:
            raise ValueError(f"split_modulus={self.split_modulus} is invalid: need >= 1")
        check_sizes(self)

    # --- what the task is -------------------------------------------------------------------
    @property
    def seen_pairs(self) -> list[tuple[int, int]]:
        return [p for p in ALL_PAIRS if p != HELD_OUT_PAIR]

    @property
    def vocab_min_size(self) -> int:
        """Smallest vocabulary that holds every input token and target."""
        max_shift = max(composite_offset(*p) for p in ALL_PAIRS)
        return max(self.key_high, self.key_high + max_shift) + 1

    @property
    def n_positions(self) -> int:
        return self.seq_len - 2

    # --- generation -------------------------------------------------------------------------
    def build(self) -> DatasetDict:
        """Generate the three splits (train, test_id, ood); deterministic in ``seed``."""
        from datasets import DatasetDict

        rng = np.random.default_rng(self.seed)
        seen = np.array(self.seen_pairs)
        held = np.array([HELD_OUT_PAIR])
        return DatasetDict(
            train=self._dataset(self.sample(rng, self.n_train, seen, keys="train")),
            test_id=self._dataset(self.sample(rng, self.n_test_id, seen, keys="test")),
            ood=self._dataset(self.sample(rng, self.n_ood, held,
                                          keys=check_ood_scoring(self.ood_scoring))),
        )

    def sample(self, rng: np.random.Generator, n: int, pairs: np.ndarray, keys: str) -> dict:
        """Draw ``n`` samples as numpy columns.

        Args:
            rng: numpy generator.
            n: number of samples.
            pairs: int array (n_pairs, 2) of anchor pairs to draw from uniformly.
            keys: "train" (key % m != position), "test" (key % m == position) or "all".

        Returns:
            dict of numpy arrays: input_ids (n, seq_len) int64, and (n,) int64 columns target,
            anchor_pair, key, position, target_inferential, target_symmetric.

        Raises:
            ValueError: if ``keys`` is unknown or no key satisfies the rule at some position.
        """
        if keys not in ("train", "test", "all"):
            raise ValueError(f"keys={keys!r} is unknown: accepted are 'train', 'test', 'all'")
        position = rng.integers(0, self.n_positions, size=n)
        key = self._draw_keys(rng, position, keys)
        ids, pair = anchor_sequences(rng, key, position, pairs, self.seq_len, self.key_low,
                                     self.key_high)

        shift = np.zeros(5, dtype=np.int64)
        for anchor, s in SHIFTS.items():
            shift[anchor] = s
        inferential = key + shift[pair[:, 0]] + shift[pair[:, 1]]
        is_exception = (pair[:, 0] == EXCEPTION_PAIR[0]) & (pair[:, 1] == EXCEPTION_PAIR[1])
        trained = np.where(is_exception, key + EXCEPTION_OFFSET, inferential)
        # symmetric answer = what training taught for the reversed pair (a2, a1)
        rev_is_exception = (pair[:, 1] == EXCEPTION_PAIR[0]) & (pair[:, 0] == EXCEPTION_PAIR[1])
        symmetric = np.where(rev_is_exception, key + EXCEPTION_OFFSET, inferential)
        return {
            "input_ids": ids.astype(np.int64),
            "target": trained.astype(np.int64),
            "anchor_pair": (10 * pair[:, 0] + pair[:, 1]).astype(np.int64),
            "key": key.astype(np.int64),
            "position": position.astype(np.int64),
            "target_inferential": inferential.astype(np.int64),
            "target_symmetric": symmetric.astype(np.int64),
        }

    def _draw_keys(self, rng: np.random.Generator, position: np.ndarray, keys: str) -> np.ndarray:
        # The family's key split (tasks.common.KeySplit): for positions below the modulus its rule
        # (key - p) % m == 0 is the paper's key % m == p, and its draws are the same.
        split = KeySplit(self.key_low, self.key_high, self.split_modulus, tuple(range(self.n_positions)))
        split.check()
        return split.draw(rng, position, keys)

    @staticmethod
    def _dataset(columns: dict) -> Dataset:
        from datasets import Dataset

        return Dataset.from_dict(columns).with_format("numpy")

    # --- scoring ----------------------------------------------------------------------------
    @staticmethod
    def score(pred: np.ndarray, batch: dict) -> dict:
        """Per-sample outcomes of predictions against every candidate target.

        Args:
            pred: (n,) int predicted token at the last position.
            batch: numpy columns of the same n samples (see ``sample``).

        Returns:
            dict of (n,) bool arrays: ``correct`` (== target), ``inferential``, ``symmetric``,
            ``other`` (neither), and (n,) int ``offset`` = pred - key.
        """
        inferential = pred == batch["target_inferential"]
        symmetric = pred == batch["target_symmetric"]
        return {
            "correct": pred == batch["target"],
            "inferential": inferential,
            "symmetric": symmetric,
            "other": ~(inferential | symmetric),
            "offset": pred - batch["key"],
        }

    def train_sampler(self, rng: np.random.Generator, n: int) -> dict:
        """``n`` fresh training samples (seen pairs, train keys), as numpy columns."""
        return self.sample(rng, n, np.array(self.seen_pairs), keys="train")

    # --- the task's summary scores ----------------------------------------------------------
    score_names = ("acc_train", "acc_test_id", "acc_pair34", "ood_inferential", "ood_symmetric",
                   "ood_other")
    ood_scores = ("ood_inferential", "ood_symmetric", "ood_other")
    ood_label = "held-out pair (4,3) answers"
    offset_label = "answer - key on (4,3)  (inferential -10, symmetric -6)"
    fit_threshold = 0.95

    def reasoning_metrics(self, preds: dict, data: dict) -> dict[str, float]:
        """Accuracies and out-of-distribution shares (arXiv 2405.05409, Sec. 3).

        Args:
            preds: split name -> (n,) int predictions for ``train``, ``test_id`` and ``ood``.
            data: split name -> numpy columns of the same samples.

        Returns:
            acc_train, acc_test_id, acc_pair34 (test keys of the seen exception pair (3, 4): a model
            that has not learned the exception answers (4, 3) "inferentially" by accident),
            ood_inferential, ood_symmetric, ood_other (shares of the held-out pair's answers).
            An empty split gives NaN.
        """
        def mean(x):
            return float(np.mean(x)) if len(x) else float("nan")

        train = self.score(preds["train"], data["train"])
        test = self.score(preds["test_id"], data["test_id"])
        ood = self.score(preds["ood"], data["ood"])
        is34 = data["test_id"]["anchor_pair"] == pair_code(*EXCEPTION_PAIR)
        return {
            "acc_train": mean(train["correct"]),
            "acc_test_id": mean(test["correct"]),
            "acc_pair34": mean(test["correct"][is34]),
            "ood_inferential": mean(ood["inferential"]),
            "ood_symmetric": mean(ood["symmetric"]),
            "ood_other": mean(ood["other"]),
        }

    def ood_offsets(self, pred: np.ndarray, ood: dict) -> dict[int, int]:
        """Histogram of the held-out pair's answer offsets (answer - key): offset -> count.
        Inferential is -10, symmetric -6; anything else is named by its offset."""
        values, counts = np.unique(pred - ood["key"], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def fitted(self, metrics: dict) -> bool:
        """A run counts as fitted iff acc_test_id and acc_pair34 are both >= 0.95."""
        return bool(metrics["acc_test_id"] >= self.fit_threshold
                    and metrics["acc_pair34"] >= self.fit_threshold)
