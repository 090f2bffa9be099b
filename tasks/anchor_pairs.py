"""Composite anchor tasks without a deliberate exception: the no-twist variant of the composite task
(arXiv 2405.05409) and multi-anchor composition with 9 anchors (arXiv 2501.08537; generator
complexity_control ``code_for_anchor_func/data_generator/composition_more_anchor.py``).

Layout (as the composite task, ``tasks/composite.py``): ``seq_len`` tokens with exactly one pair of
adjacent anchors (a1, a2); the token just before the pair is the key x, every other token is noise
from [key_low, key_high]. Anchor a shifts a number by shift(a); every pair's target is the composite
x + shift(a1) + shift(a2), read at the last position. No pair is trained on a wrong target.

Held-out pairs are never trained on. Since the composite is symmetric in (a1, a2), a held-out pair
whose reverse is trained could be answered by copying the reverse pair: so the held-out set must be
closed under reversal, and on it the candidate answers are
    ``inferential``  x + shift(a1) + shift(a2)  (composed the two single-anchor rules),
    ``first_only``   x + shift(a1)              (applied the first anchor only),
    ``second_only``  x + shift(a2)              (applied the second anchor only),
    ``other``        anything else (its offset answer - key is in ``ood_offsets``).
The three named candidates must be distinct (shift(a1), shift(a2) nonzero and different), so that the
four shares are disjoint and sum to 1.

Which held-out samples form the ood split, ``ood_scoring``:
- "authors" (default): keys of the train type only, and only pair (4, 3) when it is held out, as the
  group's code scores these tasks (its ``43_xel`` data set, "x else", in complexity_control
  ``code_for_anchor_func``); a held-out set without (4, 3) (multi_anchor's default, the suite's own
  design) keeps all its pairs, with train-type keys.
- "pooled": every held-out pair with keys of both types, the suite's ood before issue 17.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tasks.common import (
    SPLIT_RULES,
    KeySplit,
    ReasoningTask,
    anchor_sequences,
    check_sizes,
    histogram,
    parse_ints,
)
from tasks.composite import HELD_OUT_PAIR, check_ood_scoring, pair_code
from tasks.composite import SHIFTS as COMPOSITE_SHIFTS


@dataclass
class AnchorPairTask(ReasoningTask):
    """Base of the anchor-pair tasks: subclasses set ``SHIFTS`` (anchor token -> shift; anchors are
    the tokens 1..len(SHIFTS)) and ``DEFAULT_HELD_OUT``.

    Args:
        seq_len: tokens per sequence (paper: 9). The key sits at 0-based position p in
            [0, seq_len - 3], the anchors at p + 1 and p + 2.
        key_low, key_high: keys and noise are drawn uniformly from [key_low, key_high] (paper 20, 99);
            key_low must exceed the largest anchor token, so noise never looks like an anchor.
        split_modulus: a (key, position p) is a test key iff (key - p) % split_modulus == 0, i.e.
            key % split_modulus == p for p < split_modulus (paper: 7; see ``KeySplit``).
        held_out: the held-out ordered pairs as comma-separated codes 10*a1 + a2 (e.g. "34,43"), or
            None for the task's default. Must be closed under reversal, and each pair's anchors must
            have distinct nonzero shifts (so (a, a) always stays trained: every anchor is trained in
            both slots).
        n_train, n_test_id, n_ood: split sizes (samples).
        seed: seed of the data generator (independent of the model seed).
        ood_scoring: "authors" (train-type keys; pair (4, 3) alone when held out) or "pooled"
            (every held-out pair, every key); see the module docstring.

    Splits: ``train`` (trained pairs, train keys), ``test_id`` (trained pairs, test keys), ``ood``
    (``ood_pairs``, every position; train-type keys, or every key when "pooled"). Columns:
    ``input_ids`` (n, seq_len), and (n,) int64 ``target`` (the composite; on ``ood`` the
    inferential answer), ``anchor_pair`` (10*a1 + a2), ``key``, ``position`` (of the key),
    ``target_inferential``, ``target_first_only``, ``target_second_only``.

    Raises:
        ValueError: on sizes < 0, seq_len < 3, a bad key range or modulus, a bad held-out set, or
            an unknown ood_scoring.
    """

    seq_len: int = 9
    key_low: int = 20
    key_high: int = 99
    split_modulus: int = 7
    held_out: str | int | None = None
    n_train: int = 20000
    n_test_id: int = 2000
    n_ood: int = 2000
    seed: int = 0
    ood_scoring: str = "authors"

    SHIFTS: ClassVar[dict[int, int]] = {}
    DEFAULT_HELD_OUT: ClassVar[str] = ""

    score_names = ("acc_train", "acc_test_id", "ood_inferential", "ood_first_only",
                   "ood_second_only", "ood_other")
    ood_scores = ("ood_inferential", "ood_first_only", "ood_second_only", "ood_other")
    ood_label = "held-out pairs' answers"
    offset_label = "answer - key on held-out pairs"

    def __post_init__(self):
        check_sizes(self)
        self.ood_keys = check_ood_scoring(self.ood_scoring)
        if self.seq_len < 3:
            raise ValueError(f"seq_len={self.seq_len} is too short: need >= 3 (key + 2 anchors)")
        if not self.n_anchors < self.key_low <= self.key_high:
            raise ValueError(
                f"key range [{self.key_low}, {self.key_high}] is invalid: need {self.n_anchors} < "
                f"key_low <= key_high so that no key or noise token is an anchor (1..{self.n_anchors})")
        if self.key_low + min(self._offsets()) < 0:
            raise ValueError(f"key_low={self.key_low} is too small: need >= {-min(self._offsets())} "
                             f"so that every target x + shift(a1) + shift(a2) is a token (>= 0)")
        self.held_pairs = self._held_pairs()
        self.trained_pairs = [p for p in self.all_pairs if p not in self.held_pairs]
        authors_pair = HELD_OUT_PAIR in self.held_pairs and self.ood_scoring == "authors"
        self.ood_pairs = [HELD_OUT_PAIR] if authors_pair else list(self.held_pairs)
        self.key_split = KeySplit(self.key_low, self.key_high, self.split_modulus,
                                  tuple(range(self.seq_len - 2)))
        self.key_split.check()

    # --- what the task is -------------------------------------------------------------------
    @property
    def n_anchors(self) -> int:
        return len(self.SHIFTS)

    @property
    def all_pairs(self) -> list[tuple[int, int]]:
        return [(a1, a2) for a1 in self.SHIFTS for a2 in self.SHIFTS]

    @property
    def vocab_min_size(self) -> int:
        """Smallest vocabulary that holds every input token and target."""
        return self.key_high + max(0, max(self._offsets())) + 1

    def _offsets(self) -> list[int]:
        return [self.SHIFTS[a1] + self.SHIFTS[a2] for a1, a2 in self.all_pairs]

    def _held_pairs(self) -> list[tuple[int, int]]:
        spec = self.DEFAULT_HELD_OUT if self.held_out is None else self.held_out
        pairs = []
        for code in parse_ints(spec, "held_out"):
            pair = divmod(code, 10)
            if pair not in self.all_pairs:
                raise ValueError(f"held_out={spec!r}: {code} is no anchor pair: accepted are codes "
                                 f"10*a1 + a2 with anchors a1, a2 in 1..{self.n_anchors}")
            if pair not in pairs:
                pairs.append(pair)
        if not pairs:
            raise ValueError(f"held_out={spec!r} is empty: the ood split needs at least one pair")
        for a1, a2 in pairs:
            if (a2, a1) not in pairs:
                raise ValueError(
                    f"held_out={spec!r} holds out ({a1}, {a2}) but trains ({a2}, {a1}): the composite "
                    f"is symmetric, so hold out {pair_code(a2, a1)} too")
            s1, s2 = self.SHIFTS[a1], self.SHIFTS[a2]
            if s1 == 0 or s2 == 0 or s1 == s2:
                raise ValueError(
                    f"held_out={spec!r}: pair ({a1}, {a2}) has shifts ({s1}, {s2}), which make the "
                    f"inferential, first-only and second-only answers coincide: accepted are pairs "
                    f"of anchors with distinct nonzero shifts")
        # (a, a) can never be held out (equal shifts), so every anchor stays trained in both slots
        return pairs

    # --- generation -------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int, split: str) -> dict:
        """Draw ``n`` samples of ``split`` as numpy columns.

        Args:
            rng: numpy generator.
            n: number of samples.
            split: "train" (trained pairs, train keys), "test_id" (trained pairs, test keys) or
                "ood" (``ood_pairs``; train-type keys, or every key when ood_scoring is "pooled").

        Returns:
            dict: input_ids (n, seq_len) int64, and (n,) int64 columns target, anchor_pair, key,
            position, target_inferential, target_first_only, target_second_only.

        Raises:
            ValueError: if ``split`` is unknown.
        """
        if split not in SPLIT_RULES:
            raise ValueError(f"split={split!r} is unknown: accepted are {list(SPLIT_RULES)}")
        pairs = np.array(self.ood_pairs if split == "ood" else self.trained_pairs)
        position = rng.integers(0, self.seq_len - 2, size=n)
        key = self.key_split.draw(rng, position, self.ood_keys if split == "ood" else SPLIT_RULES[split])
        ids, pair = anchor_sequences(rng, key, position, pairs, self.seq_len, self.key_low,
                                     self.key_high)

        shift = np.zeros(self.n_anchors + 1, dtype=np.int64)  # indexed by anchor token
        for anchor, s in self.SHIFTS.items():
            shift[anchor] = s
        first, second = shift[pair[:, 0]], shift[pair[:, 1]]
        return {
            "input_ids": ids.astype(np.int64),
            "target": key + first + second,
            "anchor_pair": (10 * pair[:, 0] + pair[:, 1]).astype(np.int64),
            "key": key,
            "position": position.astype(np.int64),
            "target_inferential": key + first + second,
            "target_first_only": key + first,
            "target_second_only": key + second,
        }

    # --- scoring ----------------------------------------------------------------------------
    def ood_outcomes(self, pred: np.ndarray, batch: dict) -> dict[str, np.ndarray]:
        """Which candidate each prediction is.

        Args:
            pred: (n,) int predictions at the last position.
            batch: numpy columns of the same samples (see ``sample``).

        Returns:
            dict of (n,) bool arrays, disjoint and covering: inferential, first_only, second_only,
            other.
        """
        out = {name: pred == batch[f"target_{name}"]
               for name in ("inferential", "first_only", "second_only")}
        out["other"] = ~(out["inferential"] | out["first_only"] | out["second_only"])
        return out

    def ood_offsets(self, pred: np.ndarray, ood: dict) -> dict[int, int]:
        """Histogram of the ood answers' offsets (answer - key): offset -> count."""
        return histogram(pred - ood["key"])


@dataclass
class CompositeNoTwistTask(AnchorPairTask):
    """The composite anchor task without the twist (arXiv 2405.05409, the variant with no
    deliberately wrong pair; generator complexity_control ``code_for_anchor_func/data_generator/
    composition.py`` without its (3, 4) exception).

    Anchors 1, 2, 3, 4 shift by +5, +1, -2, -8 (as ``tasks.composite``); both (3, 4) and (4, 3) are
    held out (``held_out`` default "34,43") and every trained pair is trained on its composite. On
    the held-out pairs the inferential answer is x - 10; first-only is x - 2 on (3, 4) and x - 8 on
    (4, 3); second-only the reverse. A "symmetric" answer does not exist here: the reversed pair is
    held out too. By default (``ood_scoring="authors"``) the ood split is (4, 3) with train-type
    keys, as the authors score it; "pooled" gives the suite's earlier ood, (3, 4) and (4, 3) over
    every key. Targets span [key_low - 16, key_high + 10]: with the paper's keys 20..99 the
    smallest target, 4 (key 20, pair (4, 4)), shares its token with anchor 4 as an output only.
    See ``AnchorPairTask`` for the layout, options, splits and columns.
    """

    SHIFTS: ClassVar[dict[int, int]] = dict(COMPOSITE_SHIFTS)
    DEFAULT_HELD_OUT: ClassVar[str] = "34,43"


@dataclass
class MultiAnchorTask(AnchorPairTask):
    """Multi-anchor composition with 9 anchors (arXiv 2501.08537; generator complexity_control
    ``code_for_anchor_func/data_generator/composition_more_anchor.py``; splits as arXiv 2405.05409).

    Anchor a in 1..9 shifts a number by a - 5 (1 -> -4, 5 -> 0, 9 -> +4), as the authors'
    ``single_func``, so a pair shifts by -8..+8 and targets span [key_low - 8, key_high + 8] (never
    an anchor token with key_low = 20).
    Default held-out pairs ``held_out="13,31,26,62,48,84,79,97"``: the suite's own design, not the
    authors' (they hold out (3, 4) and (4, 3) and score (4, 3): ``held_out: "34,43"``, preset
    ``configs/multi_anchor_authors.yaml``). In the suite's set each anchor with a nonzero shift
    is held out with exactly one partner, both orders, and the held-out composite shifts are -6, -2,
    +2, +6, all of which trained pairs also produce (so every ood target is a trained output token);
    it tests composition across the whole anchor range rather than one pair.
    73 of the 81 pairs are trained. On a held-out pair the inferential answer is
    x + shift(a1) + shift(a2), first-only x + shift(a1), second-only x + shift(a2). Pairs with
    anchor 5 (shift 0) or two equal shifts cannot be held out (their candidates coincide).
    See ``AnchorPairTask`` for the layout, options, splits and columns.
    """

    SHIFTS: ClassVar[dict[int, int]] = {a: a - 5 for a in range(1, 10)}
    DEFAULT_HELD_OUT: ClassVar[str] = "13,31,26,62,48,84,79,97"
