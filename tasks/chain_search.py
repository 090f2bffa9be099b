"""Multi-step chain search with hop anchors: ``chain_search_hops`` (registered also under its first
name ``chain_search``, kept so that existing configs and run ids stay valid). This is the suite's
own variant, not the authors' task: the group's chain search (arXiv 2405.15302; generators
understanding_dl ``multi-step_reasoning_code/data.py`` and complexity_control
``code_for_anchor_func/data_generator/chain_search.py``) is ``tasks.chain_search_authors``. What
this variant changes, and why: the step count k is asked for by two hop-anchor tokens (k = a1 + a2,
in the manner of the composite task's anchor pair, arXiv 2405.05409) so that k varies within one
data set; ood holds out step sizes (default k = 4) instead of the authors' unseen node tokens; the
train/test split is by start value and depth instead of the authors' edge step (child - parent)
mod 5, so the edge steps are uniform in every split.

Layout: ``n_chains`` random chains of ``chain_len`` distinct node tokens each (all nodes of a sample
distinct, drawn from [key_low, key_high]). Their n_chains * (chain_len - 1) edges are written as
adjacent token pairs (parent, child), in shuffled order; then the query: the start node s and two
hop anchors a1, a2 (tokens 1..n_hop_anchors; anchor a means "a hops forward"):

    u1 v1 u2 v2 ... uE vE  s a1 a2   ->   the node a1 + a2 hops after s on its chain

The query mirrors the composite task's anchor pair: (a1, a2) composes two hop functions, and the
step size is k = a1 + a2. Step sizes are split: pairs whose k is in ``ood_hops`` are never trained
(default: k = 4, i.e. (1, 3), (3, 1), (2, 2) held out; (1, 1), (1, 2), (2, 1), (2, 3), (3, 2),
(3, 3) trained, so every anchor is trained in both slots but no training sample asks for 4 hops).
The start's depth d (its 0-based index on its chain) is uniform over [0, chain_len - 1 - k].
Start values are split by value and depth like the composite's keys: (s, d) is a test key iff
(s - d) % split_modulus == 0.

Candidate answers on ood, by where the answer lies (every node of a sample is distinct):
``inferential`` (k hops from s), ``fewer_hops`` (0..k-1 hops from s on its chain: stopped early,
the start and the 1-hop answer included), ``more_hops`` (beyond k hops), ``other_node`` (a node
behind s on its chain, or on another chain), ``other`` (no node of the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.common import (
    NOT_IN_INPUT,
    SPLIT_RULES,
    KeySplit,
    ReasoningTask,
    check_sizes,
    histogram,
    parse_ints,
)

OTHER_NODE = -99  # ood_offsets code of an answer that is a node off the start's forward path


def walked_along(pred: np.ndarray, chain: np.ndarray, depth: np.ndarray,
                 nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each prediction lies on its sample's chain (both chain-search tasks).

    Args:
        pred: (n,) int predictions; chain: (n, L) the start's chain in order; depth: (n,) the
            start's index on it; nodes: (n, m) every node token of the input (the edge tokens).

    Returns:
        (on_path, walked, is_node), each (n,): whether pred is the start or a node after it on its
        chain (bool), how many hops after the start it is there (int; meaningful where on_path),
        and whether it is any node of the input (bool).
    """
    on_chain = chain == pred[:, None]
    walked = on_chain.argmax(axis=1) - depth
    on_path = on_chain.any(axis=1) & (walked >= 0)
    is_node = (nodes == pred[:, None]).any(axis=1)
    return on_path, walked, is_node


def chain_outcomes(on_path: np.ndarray, walked: np.ndarray, is_node: np.ndarray,
                   hops: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint, covering candidate classes from ``walked_along``'s output and the (n,) hops asked:
    inferential, fewer_hops, more_hops, other_node, other (see the module docstring)."""
    return {
        "inferential": on_path & (walked == hops),
        "fewer_hops": on_path & (walked < hops),
        "more_hops": on_path & (walked > hops),
        "other_node": is_node & ~on_path,
        "other": ~is_node,
    }


def offset_histogram(on_path: np.ndarray, walked: np.ndarray, is_node: np.ndarray,
                     hops: np.ndarray) -> dict[int, int]:
    """Histogram of hops walked minus hops asked; ``OTHER_NODE`` (-99) for a node off the start's
    forward path, ``NOT_IN_INPUT`` (-100) for a token that is no node: offset -> count."""
    code = np.where(is_node, OTHER_NODE, NOT_IN_INPUT)
    return histogram(np.where(on_path, walked - hops, code))


# the answers on a chain's ood split, in runs.csv order (both chain tasks score them alike)
CHAIN_OOD_SCORES = ("ood_inferential", "ood_fewer_hops", "ood_more_hops", "ood_other_node",
                    "ood_other")


class ChainScoring:
    """The ood scoring both chain tasks share: a subclass gives ``_walked(pred, batch)``, the
    (hops walked, on the chain, in the input) of each prediction (``walked_along``)."""

    score_names = ("acc_train", "acc_test_id", *CHAIN_OOD_SCORES)
    ood_scores = CHAIN_OOD_SCORES

    def ood_outcomes(self, pred: np.ndarray, batch: dict) -> dict[str, np.ndarray]:
        """Which candidate each prediction is.

        Args:
            pred: (n,) int predictions; batch: numpy columns of the same samples.

        Returns:
            dict of (n,) bool arrays, disjoint and covering: inferential, fewer_hops, more_hops,
            other_node, other (see the module docstring).
        """
        return chain_outcomes(*self._walked(pred, batch), batch["hops"])

    def ood_offsets(self, pred: np.ndarray, ood: dict) -> dict[int, int]:
        """Histogram of hops walked minus hops asked: offset -> count.

        0 is the inferential answer, -k the start itself, +j j hops too far; a node behind the
        start or on another chain counts as ``OTHER_NODE`` (-99), a token that is no node as
        ``NOT_IN_INPUT`` (-100).
        """
        if len(pred) == 0:
            return {}
        return offset_histogram(*self._walked(pred, ood), ood["hops"])


@dataclass
class ChainSearchTask(ChainScoring, ReasoningTask):
    """Generator of ``chain_search_hops``, the suite's chain-search variant with hop anchors (see
    the module docstring; the authors' task is ``tasks.chain_search_authors``) as a DatasetDict.

    Args:
        n_chains: chains per sample (>= 1).
        chain_len: nodes per chain; >= 2 * n_hop_anchors + 1 so that the longest query fits.
        n_hop_anchors: hop anchors are the tokens 1..n_hop_anchors (>= 2).
        ood_hops: step sizes k = a1 + a2 held out of train and test_id, as an int or
            comma-separated ints in [2, 2 * n_hop_anchors]; None means "4".
        key_low, key_high: node values; key_low > n_hop_anchors, and the range must hold
            n_chains * chain_len distinct nodes.
        split_modulus: (start s, depth d) is a test key iff (s - d) % split_modulus == 0.
        n_train, n_test_id, n_ood: split sizes (samples).
        seed: seed of the data generator.

    ``seq_len`` = 2 * n_chains * (chain_len - 1) + 3 (31 with the defaults) follows from these.

    Splits: ``train`` (trained step sizes, train keys), ``test_id`` (trained step sizes, test keys),
    ``ood`` (held-out step sizes, every key). Columns: ``input_ids`` (n, seq_len), ``chain``
    (n, chain_len) the start's chain in order, and (n,) int64 ``target`` (the node k hops after s),
    ``key`` (s), ``depth`` (d), ``anchor_pair`` (10*a1 + a2), ``hops`` (k).

    Raises:
        ValueError: on any option outside the ranges above, or a held-out set that leaves no trained
            pair, no ood pair, or an anchor untrained in one slot.
    """

    n_chains: int = 2
    chain_len: int = 8
    n_hop_anchors: int = 3
    ood_hops: str | int | None = None
    key_low: int = 20
    key_high: int = 99
    split_modulus: int = 7
    n_train: int = 20000
    n_test_id: int = 2000
    n_ood: int = 2000
    seed: int = 0

    ood_label = "answers at held-out step sizes"
    offset_label = "hops walked - hops asked (-99: another node, -100: not a node)"

    def __post_init__(self):
        check_sizes(self)
        a = self.n_hop_anchors
        if a < 2:
            raise ValueError(f"n_hop_anchors={a} is invalid: need >= 2 (anchors 1..n, some pairs "
                             f"trained, some held out)")
        if self.n_chains < 1:
            raise ValueError(f"n_chains={self.n_chains} is invalid: need >= 1")
        if self.chain_len < 2 * a + 1:
            raise ValueError(f"chain_len={self.chain_len} is too short: need >= {2 * a + 1} so that "
                             f"a {2 * a}-hop query fits on a chain")
        if not a < self.key_low <= self.key_high:
            raise ValueError(f"key range [{self.key_low}, {self.key_high}] is invalid: need {a} < "
                             f"key_low <= key_high so that no node is a hop anchor (1..{a})")
        if self.n_nodes > self.key_high - self.key_low + 1:
            raise ValueError(f"key range [{self.key_low}, {self.key_high}] is too small: need at "
                             f"least n_chains * chain_len = {self.n_nodes} distinct nodes")
        held = set(parse_ints("4" if self.ood_hops is None else self.ood_hops, "ood_hops"))
        if not held or not held <= set(range(2, 2 * a + 1)):
            raise ValueError(f"ood_hops={self.ood_hops!r} is invalid: accepted are step sizes in "
                             f"[2, {2 * a}] (sums of two anchors 1..{a})")
        pairs = [(a1, a2) for a1 in range(1, a + 1) for a2 in range(1, a + 1)]
        self.held_pairs = [p for p in pairs if sum(p) in held]
        self.trained_pairs = [p for p in pairs if sum(p) not in held]
        for anchor in range(1, a + 1):
            if not any(p[0] == anchor for p in self.trained_pairs) or not any(
                    p[1] == anchor for p in self.trained_pairs):
                raise ValueError(f"ood_hops={self.ood_hops!r} leaves hop anchor {anchor} untrained "
                                 f"in one slot: every anchor must stay trained in both slots")
        # depths 0 .. chain_len - 3: the shortest query has 2 hops
        self.key_split = KeySplit(self.key_low, self.key_high, self.split_modulus,
                                  tuple(range(self.chain_len - 2)))
        self.key_split.check()

    # --- what the task is -------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.n_chains * self.chain_len

    @property
    def n_edges(self) -> int:
        return self.n_chains * (self.chain_len - 1)

    @property
    def seq_len(self) -> int:
        return 2 * self.n_edges + 3

    @property
    def vocab_min_size(self) -> int:
        """Smallest vocabulary that holds every input token and target."""
        return self.key_high + 1

    # --- generation -------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, n: int, split: str) -> dict:
        """Draw ``n`` samples of ``split`` as numpy columns.

        Args:
            rng: numpy generator.
            n: number of samples.
            split: "train", "test_id" or "ood" (see the class docstring).

        Returns:
            dict: input_ids (n, seq_len) int64, chain (n, chain_len) int64, and (n,) int64 target,
            key, depth, anchor_pair, hops.

        Raises:
            ValueError: if ``split`` is unknown.
        """
        if split not in SPLIT_RULES:
            raise ValueError(f"split={split!r} is unknown: accepted are {list(SPLIT_RULES)}")
        pairs = np.array(self.held_pairs if split == "ood" else self.trained_pairs)
        pair = pairs[rng.integers(0, len(pairs), size=n)]
        hops = pair.sum(axis=1)
        depth = (rng.random(n) * (self.chain_len - hops)).astype(np.int64)  # uniform in [0, L-1-k]
        start = self.key_split.draw(rng, depth, SPLIT_RULES[split])
        rows = np.arange(n)

        # all nodes, start first; then move the start to its chain and depth by a column swap
        # (the other nodes are an exchangeable random sample, so the swap keeps them uniform)
        nodes = self._distinct_nodes(rng, start)
        slot = rng.integers(0, self.n_chains, size=n) * self.chain_len + depth
        nodes[:, 0] = nodes[rows, slot]
        nodes[rows, slot] = start
        chains = nodes.reshape(n, self.n_chains, self.chain_len)

        parents = chains[:, :, :-1].reshape(n, self.n_edges)
        children = chains[:, :, 1:].reshape(n, self.n_edges)
        order = np.argsort(rng.random((n, self.n_edges)), axis=1)  # a random edge order per row
        ids = np.empty((n, self.seq_len), dtype=np.int64)
        ids[:, 0:2 * self.n_edges:2] = np.take_along_axis(parents, order, axis=1)
        ids[:, 1:2 * self.n_edges:2] = np.take_along_axis(children, order, axis=1)
        ids[:, -3], ids[:, -2], ids[:, -1] = start, pair[:, 0], pair[:, 1]

        chain = chains[rows, slot // self.chain_len]
        return {
            "input_ids": ids,
            "chain": chain,
            "target": chain[rows, depth + hops],
            "key": start,
            "depth": depth,
            "anchor_pair": (10 * pair[:, 0] + pair[:, 1]).astype(np.int64),
            "hops": hops.astype(np.int64),
        }

    def _distinct_nodes(self, rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
        """(n, n_nodes) distinct values per row from [key_low, key_high], column 0 = ``start``:
        a partial Fisher-Yates shuffle run on all rows at once."""
        n, n_values = len(start), self.key_high - self.key_low + 1
        rows = np.arange(n)
        table = np.broadcast_to(np.arange(n_values, dtype=np.int16), (n, n_values)).copy()
        first = start - self.key_low
        table[rows, first] = 0  # swap the start's value into slot 0
        table[:, 0] = first
        for j in range(1, self.n_nodes):
            pick = j + (rng.random(n) * (n_values - j)).astype(np.int64)
            held = table[:, j].copy()
            table[:, j] = table[rows, pick]
            table[rows, pick] = held
        return table[:, :self.n_nodes].astype(np.int64) + self.key_low

    # --- scoring ----------------------------------------------------------------------------
    def _walked(self, pred: np.ndarray, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``walked_along`` on this task's columns (nodes: the edge tokens)."""
        return walked_along(pred, batch["chain"], batch["depth"],
                            batch["input_ids"][:, :2 * self.n_edges])


ChainSearchHopsTask = ChainSearchTask  # the variant's clear name
