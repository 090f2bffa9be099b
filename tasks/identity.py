"""The identity anchor task "3 x -> x" (anchor functions, arXiv 2401.08309), as the group's public
code generates it: complexity_control ``code_for_anchor_func/data_generator/simple_task.py``
(``task_3x_to_x``; splits as in arXiv 2405.05409). Their split modulus is the sequence length
(9); the suite's ``split_modulus`` defaults to 7.

A sequence holds ``seq_len`` tokens: the anchor 3 at position q - 1, the key x right after it at
position q, noise from [key_low, key_high] everywhere else. The target, read at the last position,
is x itself.

Keys are split by value and key position as in the composite task: (x, q) is a test key iff
(x - q) % split_modulus == 0 (``tasks.common.KeySplit``). The out-of-distribution split puts the key
at a position ``ood_key_position`` where no train or test_id sample has it: there, training only
ever showed noise, or the anchor (when the key sat one further right). A model that copies "the
token after the anchor" answers x there; one that learned a copy per absolute anchor position does
not. The ood split is the suite's own design, not the authors': the anchor-function paper
(arXiv 2401.08309) defines the identity task and its key split but no out-of-distribution set for
it (held-out key values would not do: an untied output layer never learns to emit a token that is
never a target). train and test_id follow the family's rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.common import NOT_IN_INPUT, SPLIT_RULES, KeySplit, ReasoningTask, check_sizes, histogram

ANCHOR = 3  # the identity anchor of arXiv 2401.08309


@dataclass
class IdentityTask(ReasoningTask):
    """Generator of the identity anchor task "3 x -> x" (arXiv 2401.08309) as a DatasetDict.

    Args:
        seq_len: tokens per sequence (>= 3). The key sits at position q in [1, seq_len - 1], the
            anchor 3 at q - 1.
        key_low, key_high: keys and noise are drawn uniformly from [key_low, key_high] (20, 99 as
            in the composite task); key_low > 3 so that no key or noise token is the anchor.
        split_modulus: (key, q) is a test key iff (key - q) % split_modulus == 0.
        ood_key_position: the key position q of the ood split, never used by train or test_id;
            None means seq_len // 2 (4 for seq_len 9: anchor at 3, key at 4). The suite's own
            design (see the module docstring).
        n_train, n_test_id, n_ood: split sizes (samples).
        seed: seed of the data generator.

    Splits: ``train`` (key positions other than ``ood_key_position``, train keys), ``test_id`` (the
    same positions, test keys), ``ood`` (key at ``ood_key_position``, every key). Columns:
    ``input_ids`` (n, seq_len), and (n,) int64 ``target`` (= key), ``key``, ``position`` (q).

    Candidate answers on ood: ``inferential`` (the key), ``wrong_copy`` (another token of the input
    that differs from the key: the copy mechanism read the wrong position), ``other`` (no token of
    the input). ``ood_offsets`` says which position was copied, relative to the key.

    Raises:
        ValueError: on sizes < 0, seq_len < 3, a bad key range or modulus, or an ood key position
            outside [1, seq_len - 1].
    """

    seq_len: int = 9
    key_low: int = 20
    key_high: int = 99
    split_modulus: int = 7
    ood_key_position: int | None = None
    n_train: int = 20000
    n_test_id: int = 2000
    n_ood: int = 2000
    seed: int = 0

    score_names = ("acc_train", "acc_test_id", "ood_inferential", "ood_wrong_copy", "ood_other")
    ood_scores = ("ood_inferential", "ood_wrong_copy", "ood_other")
    ood_label = "answers with the key at an unseen position"
    offset_label = "copied position - key position (-100: not an input token)"

    def __post_init__(self):
        check_sizes(self)
        if self.seq_len < 3:
            raise ValueError(f"seq_len={self.seq_len} is too short: need >= 3 (two key positions, "
                             f"one of them held out)")
        if not ANCHOR < self.key_low <= self.key_high:
            raise ValueError(f"key range [{self.key_low}, {self.key_high}] is invalid: need "
                             f"{ANCHOR} < key_low <= key_high so that no key or noise token is the anchor")
        if not 1 <= self.ood_position <= self.seq_len - 1:
            raise ValueError(f"ood_key_position={self.ood_key_position} is invalid: accepted are "
                             f"1..{self.seq_len - 1} (the anchor sits just before the key)")
        self.trained_positions = np.array(
            [q for q in range(1, self.seq_len) if q != self.ood_position])
        self.key_split = KeySplit(self.key_low, self.key_high, self.split_modulus,
                                  tuple(range(1, self.seq_len)))
        self.key_split.check()

    @property
    def ood_position(self) -> int:
        return self.seq_len // 2 if self.ood_key_position is None else self.ood_key_position

    @property
    def vocab_min_size(self) -> int:
        """Smallest vocabulary that holds every input token and target."""
        return self.key_high + 1

    def sample(self, rng: np.random.Generator, n: int, split: str) -> dict:
        """Draw ``n`` samples of ``split`` as numpy columns.

        Args:
            rng: numpy generator.
            n: number of samples.
            split: "train", "test_id" or "ood" (see the class docstring).

        Returns:
            dict: input_ids (n, seq_len) int64, and (n,) int64 target, key, position.

        Raises:
            ValueError: if ``split`` is unknown.
        """
        if split not in SPLIT_RULES:
            raise ValueError(f"split={split!r} is unknown: accepted are {list(SPLIT_RULES)}")
        if split == "ood":
            position = np.full(n, self.ood_position, dtype=np.int64)
        else:
            position = self.trained_positions[rng.integers(0, len(self.trained_positions), size=n)]
        key = self.key_split.draw(rng, position, SPLIT_RULES[split])
        ids = rng.integers(self.key_low, self.key_high + 1, size=(n, self.seq_len))
        rows = np.arange(n)
        ids[rows, position - 1] = ANCHOR
        ids[rows, position] = key
        return {"input_ids": ids.astype(np.int64), "target": key, "key": key,
                "position": position.astype(np.int64)}

    def ood_outcomes(self, pred: np.ndarray, batch: dict) -> dict[str, np.ndarray]:
        """Which candidate each prediction is.

        Args:
            pred: (n,) int predictions; batch: numpy columns of the same samples.

        Returns:
            dict of (n,) bool arrays, disjoint and covering: inferential (== key), wrong_copy
            (another input token), other (not in the input).
        """
        inferential = pred == batch["target"]
        in_input = (batch["input_ids"] == pred[:, None]).any(axis=1)
        return {"inferential": inferential, "wrong_copy": in_input & ~inferential,
                "other": ~in_input}

    def ood_offsets(self, pred: np.ndarray, ood: dict) -> dict[int, int]:
        """Histogram of the copied position relative to the key: offset -> count.

        The offset of an answer is j - q for the input position j holding it that is nearest the
        key position q (the left one on a tie); 0 is the inferential answer; an answer found
        nowhere in the input counts as ``NOT_IN_INPUT`` (-100).
        """
        if len(pred) == 0:
            return {}
        match = ood["input_ids"] == pred[:, None]
        offset = np.arange(match.shape[1])[None, :] - ood["position"][:, None]  # j - q
        # rank matching positions by distance, left before right on a tie; non-matches rank last
        rank = np.where(match, 2 * np.abs(offset) + (offset > 0), np.iinfo(np.int64).max)
        nearest = offset[np.arange(len(pred)), rank.argmin(axis=1)]
        return histogram(np.where(match.any(axis=1), nearest, NOT_IN_INPUT))
