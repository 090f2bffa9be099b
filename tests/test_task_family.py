"""The rest of the task family (no-twist composite, multi-anchor, identity, chain search) against
independent, row-by-row readings of their rules (docs/science.md and the task docstrings; the
authors' chain search has its own file, tests/test_chain_search_authors.py)."""

import math
import time

import numpy as np
import pytest

from tasks import TASKS, make_task

# The rules written out again, independently of the task modules.
NO_TWIST_SHIFT = {1: 5, 2: 1, 3: -2, 4: -8}
MULTI_SHIFT = {1: -4, 2: -3, 3: -2, 4: -1, 5: 0, 6: 1, 7: 2, 8: 3, 9: 4}
NO_TWIST_HELD = {(3, 4), (4, 3)}
MULTI_HELD = {(1, 3), (3, 1), (2, 6), (6, 2), (4, 8), (8, 4), (7, 9), (9, 7)}
# the ood pairs scored by default: the authors score (4, 3) alone when it is held out (their
# "43_xel" data set, train-type keys); multi_anchor's own held-out set is scored whole
NO_TWIST_OOD, MULTI_OOD = {(4, 3)}, MULTI_HELD
SIZES = dict(n_train=3000, n_test_id=1500, n_ood=800)
NEW_TASKS = ["composite_no_twist", "multi_anchor", "identity", "chain_search", "chain_search_authors"]


def as_columns(dataset_dict):
    return {s: dataset_dict[s][:] for s in dataset_dict}


# --- anchor-pair tasks: no-twist composite and multi-anchor ------------------------------------
def read_pair_row(ids, shift):
    """The single adjacent anchor pair of a row: (key, position, a1, a2)."""
    anchors = [i for i, t in enumerate(ids) if t in shift]
    assert len(anchors) == 2 and anchors[1] == anchors[0] + 1, ids
    p = anchors[0] - 1
    assert p >= 0
    return int(ids[p]), p, int(ids[p + 1]), int(ids[p + 2])


@pytest.fixture(scope="module", params=[("composite_no_twist", NO_TWIST_SHIFT, NO_TWIST_HELD),
                                        ("multi_anchor", MULTI_SHIFT, MULTI_HELD)],
                ids=["no_twist", "multi_anchor"])
def pair_task(request):
    name, shift, held = request.param
    return name, shift, held, as_columns(make_task(name, seed=3, **SIZES).build())


OOD_PAIRS = {"composite_no_twist": NO_TWIST_OOD, "multi_anchor": MULTI_OOD}


@pytest.mark.parametrize("split", ["train", "test_id", "ood"])
def test_pair_targets_match_independent_formula(pair_task, split):
    name, shift, held, data = pair_task
    d = data[split]
    assert len(d["target"]) == SIZES[f"n_{split}"]
    for i in range(len(d["target"])):
        ids = d["input_ids"][i]
        assert len(ids) == 9
        x, p, a1, a2 = read_pair_row(ids, shift)
        assert all(20 <= t <= 99 for j, t in enumerate(ids) if j not in (p + 1, p + 2))
        assert (d["key"][i], d["position"][i], d["anchor_pair"][i]) == (x, p, 10 * a1 + a2)
        composite = x + shift[a1] + shift[a2]
        assert d["target"][i] == composite  # no deliberately wrong pair, in any split
        assert d["target_inferential"][i] == composite
        assert d["target_first_only"][i] == x + shift[a1]
        assert d["target_second_only"][i] == x + shift[a2]
        assert ((a1, a2) in held) == (split == "ood")
        if split == "ood":
            assert (a1, a2) in OOD_PAIRS[name]
        if split in ("train", "ood"):  # the authors' ood keys are of the train type
            assert x % 7 != p  # the paper's split: test keys have key % 7 == position
        else:
            assert x % 7 == p


def test_pair_trained_and_held_out_sets(pair_task):
    name, shift, held, data = pair_task
    every = {(a, b) for a in shift for b in shift}
    assert {divmod(int(c), 10) for c in data["train"]["anchor_pair"]} == every - held
    assert {divmod(int(c), 10) for c in data["ood"]["anchor_pair"]} == OOD_PAIRS[name]
    assert {int(p) for p in data["ood"]["position"]} == set(range(7))  # every position
    task = make_task(name)
    tokens = np.concatenate([data[s]["input_ids"].ravel() for s in data])
    targets = np.concatenate([data[s]["target"] for s in data])
    assert max(tokens.max(), targets.max()) < task.vocab_min_size
    assert task.vocab_min_size == {"composite_no_twist": 99 + 10 + 1, "multi_anchor": 99 + 8 + 1}[name]
    # every ood target is a value some trained pair also outputs
    assert set(data["ood"]["target"]) <= set(data["train"]["target"]) | set(data["test_id"]["target"])


def test_pair_scoring_closed_form(pair_task):
    name, shift, held, data = pair_task
    task = make_task(name)
    ood = data["ood"]
    n = len(ood["key"])
    preds = {s: data[s]["target"].copy() for s in data}
    m = task.reasoning_metrics(preds, data)
    assert list(m) == list(task.score_names)
    assert (m["acc_train"], m["acc_test_id"]) == (1.0, 1.0)
    assert (m["ood_inferential"], m["ood_first_only"], m["ood_second_only"], m["ood_other"]) == (1, 0, 0, 0)
    assert task.fitted(m)
    # first half of the ood rows answer first-only, the rest second-only
    half = n // 2
    a1, a2 = ood["anchor_pair"] // 10, ood["anchor_pair"] % 10
    first = np.array([k + shift[a] for k, a in zip(ood["key"], a1)])
    second = np.array([k + shift[a] for k, a in zip(ood["key"], a2)])
    preds["ood"] = np.concatenate([first[:half], second[half:]])
    m = task.reasoning_metrics(preds, data)
    assert m["ood_first_only"] == half / n and m["ood_second_only"] == (n - half) / n
    assert m["ood_inferential"] == 0 and m["ood_other"] == 0
    # copying the key: right exactly on trained pairs whose shifts cancel, "other" on held-out ones
    preds = {s: data[s]["key"] for s in data}
    m = task.reasoning_metrics(preds, data)
    cancel = [shift[c // 10] + shift[c % 10] == 0 for c in data["train"]["anchor_pair"]]
    assert m["acc_train"] == pytest.approx(np.mean(cancel))
    assert m["ood_other"] == 1.0
    assert task.ood_offsets(ood["key"] - 3, ood) == {-3: n}
    assert not task.fitted({"acc_test_id": 0.5}) and not task.fitted({"acc_test_id": math.nan})


def test_no_twist_candidates_on_held_out_pairs():
    # docs/science.md: on the held-out pairs the composite x - 10 is the inferential answer
    d = make_task("composite_no_twist", n_ood=400, seed=1, ood_scoring="pooled").build()["ood"][:]
    is34 = d["anchor_pair"] == 34
    assert np.all(d["target"] == d["key"] - 10)
    assert np.all(d["target_first_only"][is34] == d["key"][is34] - 2)
    assert np.all(d["target_first_only"][~is34] == d["key"][~is34] - 8)
    assert np.all(d["target_second_only"][is34] == d["key"][is34] - 8)


def test_pair_custom_held_out_and_wrapping_modulus():
    d = as_columns(make_task("multi_anchor", held_out="29,92", split_modulus=3, n_train=2000,
                             n_test_id=800, n_ood=200, seed=5).build())
    assert set(d["ood"]["anchor_pair"]) == {29, 92}
    assert not np.isin(d["train"]["anchor_pair"], [29, 92]).any()
    # position p >= modulus wraps: test iff key = p (mod 3)
    assert np.all(d["train"]["key"] % 3 != d["train"]["position"] % 3)
    assert np.all(d["test_id"]["key"] % 3 == d["test_id"]["position"] % 3)


# --- identity ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def identity_data():
    return as_columns(make_task("identity", seed=4, **SIZES).build())


@pytest.mark.parametrize("split", ["train", "test_id", "ood"])
def test_identity_targets_match_independent_formula(identity_data, split):
    d = identity_data[split]
    for i in range(len(d["target"])):
        ids = list(d["input_ids"][i])
        assert len(ids) == 9 and ids.count(3) == 1  # "3 x -> x": one anchor 3, never as noise
        q = ids.index(3) + 1
        x = ids[q]
        assert all(20 <= t <= 99 for j, t in enumerate(ids) if j != q - 1)
        assert d["target"][i] == x and d["key"][i] == x and d["position"][i] == q
        if split == "ood":
            assert q == 4  # default: seq_len // 2
        else:
            assert q != 4
            assert (x % 7 == q % 7) == (split == "test_id")


def test_identity_positions(identity_data):
    assert set(identity_data["train"]["position"]) == {1, 2, 3, 5, 6, 7, 8}
    d = make_task("identity", ood_key_position=8, n_train=500, n_ood=50).build()
    assert set(d["ood"]["position"]) == {8} and 8 not in set(d["train"]["position"])


def nearest_copy_offset(ids, q, value):
    """Offset j - q of the input position nearest q holding ``value`` (left on ties), or -100."""
    best = None
    for j, t in enumerate(ids):
        if t == value and (best is None or abs(j - q) < abs(best - q)):
            best = j  # scanning left to right keeps the left one on a tie
    return -100 if best is None else best - q


def test_identity_scoring_closed_form(identity_data):
    task = make_task("identity")
    data = identity_data
    ood = data["ood"]
    n = len(ood["key"])
    preds = {s: data[s]["key"] for s in data}
    m = task.reasoning_metrics(preds, data)
    assert list(m) == list(task.score_names)
    assert (m["acc_train"], m["acc_test_id"], m["ood_inferential"]) == (1.0, 1.0, 1.0)
    assert task.ood_offsets(ood["key"], ood) == {0: n}
    preds["ood"] = np.full(n, 3)  # copies the anchor: a wrong copy
    assert task.reasoning_metrics(preds, data)["ood_wrong_copy"] == 1.0
    assert task.ood_offsets(preds["ood"], ood) == {-1: n}
    preds["ood"] = np.full(n, 7)  # no token of any input
    assert task.reasoning_metrics(preds, data)["ood_other"] == 1.0
    assert task.ood_offsets(preds["ood"], ood) == {-100: n}
    # copies the token right after the key: inferential exactly where it equals the key
    nxt = ood["input_ids"][:, 5]
    preds["ood"] = nxt
    m = task.reasoning_metrics(preds, data)
    same = np.mean([int(a) == int(b) for a, b in zip(nxt, ood["key"])])
    assert m["ood_inferential"] == pytest.approx(same)
    assert m["ood_wrong_copy"] == pytest.approx(1 - same) and m["ood_other"] == 0
    expected = {}
    for ids, value in zip(ood["input_ids"], nxt):
        off = nearest_copy_offset(list(ids), 4, value)
        expected[off] = expected.get(off, 0) + 1
    assert task.ood_offsets(nxt, ood) == expected


# --- chain search -----------------------------------------------------------------------------
def read_chain_row(ids, n_edges):
    """Successor map, the chains (root to tail), and the query (s, a1, a2) of one row."""
    ids = [int(t) for t in ids]
    succ, pred = {}, {}
    for e in range(n_edges):
        u, v = ids[2 * e], ids[2 * e + 1]
        assert u not in succ and v not in pred, "a node has two children or two parents"
        succ[u], pred[v] = v, u
    chains = []
    for root in [u for u in succ if u not in pred]:
        chain = [root]
        while chain[-1] in succ:
            chain.append(succ[chain[-1]])
        chains.append(chain)
    return succ, chains, tuple(ids[-3:])


@pytest.fixture(scope="module")
def chain_data():
    return as_columns(make_task("chain_search", seed=6, **SIZES).build())


@pytest.mark.parametrize("split", ["train", "test_id", "ood"])
def test_chain_targets_match_independent_formula(chain_data, split):
    d = chain_data[split]
    for i in range(len(d["target"])):
        ids = d["input_ids"][i]
        assert len(ids) == 2 * 14 + 3
        succ, chains, (s, a1, a2) = read_chain_row(ids, 14)
        assert len(chains) == 2 and all(len(c) == 8 for c in chains)  # 2 chains of 8 nodes
        nodes = [v for c in chains for v in c]
        assert len(set(nodes)) == 16 and all(20 <= v <= 99 for v in nodes)
        assert a1 in (1, 2, 3) and a2 in (1, 2, 3)
        node = s
        for _ in range(a1 + a2):  # walk a1 + a2 hops along the edges
            node = succ[node]
        assert d["target"][i] == node
        chain = next(c for c in chains if s in c)
        depth = chain.index(s)
        assert list(d["chain"][i]) == chain
        assert (d["key"][i], d["depth"][i], d["hops"][i], d["anchor_pair"][i]) == (
            s, depth, a1 + a2, 10 * a1 + a2)
        assert ((a1 + a2) == 4) == (split == "ood")  # step size 4 held out
        if split != "ood":
            assert (s % 7 == depth) == (split == "test_id")  # depth <= 5 < 7


def test_chain_splits_cover_pairs_and_depths(chain_data):
    train, ood = chain_data["train"], chain_data["ood"]
    assert set(train["anchor_pair"]) == {11, 12, 21, 23, 32, 33}
    assert set(ood["anchor_pair"]) == {13, 31, 22}
    for k in (2, 3, 5, 6):
        assert set(train["depth"][train["hops"] == k]) == set(range(8 - k))
    assert set(ood["depth"]) == set(range(4))
    task = make_task("chain_search")
    assert task.seq_len == 31 and task.vocab_min_size == 100
    # the edge order is shuffled: the start's outgoing edge sits anywhere
    first_parent_is_root = [row[0] not in row[1:28:2] for row in train["input_ids"]]
    assert 0.1 < np.mean(first_parent_is_root) < 0.4  # 2 of 14 edges leave a root


def test_chain_scoring_closed_form(chain_data):
    task = make_task("chain_search")
    data = chain_data
    ood = data["ood"]
    n = len(ood["key"])
    preds = {s: data[s]["target"] for s in data}
    m = task.reasoning_metrics(preds, data)
    assert list(m) == list(task.score_names)
    assert (m["acc_train"], m["acc_test_id"], m["ood_inferential"]) == (1.0, 1.0, 1.0)
    assert task.ood_offsets(ood["target"], ood) == {0: n}
    # answering the start: 0 hops walked of 4
    preds["ood"] = ood["key"]
    assert task.reasoning_metrics(preds, data)["ood_fewer_hops"] == 1.0
    assert task.ood_offsets(ood["key"], ood) == {-4: n}
    # one hop past the target where the chain goes on, else the other chain's root
    answers, expected = [], {"more_hops": 0, "other_node": 0}
    for ids in ood["input_ids"]:
        succ, chains, (s, a1, a2) = read_chain_row(ids, 14)
        node = s
        for _ in range(a1 + a2 + 1):
            node = succ.get(node)
            if node is None:
                break
        if node is None:
            node = next(c for c in chains if s not in c)[0]
            expected["other_node"] += 1
        else:
            expected["more_hops"] += 1
        answers.append(node)
    preds["ood"] = np.array(answers)
    m = task.reasoning_metrics(preds, data)
    assert m["ood_more_hops"] == expected["more_hops"] / n
    assert m["ood_other_node"] == expected["other_node"] / n
    assert task.ood_offsets(preds["ood"], ood) == {k: v for k, v in
                                                   {1: expected["more_hops"],
                                                    -99: expected["other_node"]}.items() if v}
    preds["ood"] = np.full(n, 2)  # a hop anchor: in the input, but no node
    assert task.reasoning_metrics(preds, data)["ood_other"] == 1.0
    assert task.ood_offsets(preds["ood"], ood) == {-100: n}


# --- every new task ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_TASKS)
def test_seeded_and_distinct(name):
    a = make_task(name, n_train=300, n_test_id=50, n_ood=50, seed=1).build()
    b = make_task(name, n_train=300, n_test_id=50, n_ood=50, seed=1).build()
    c = make_task(name, n_train=300, n_test_id=50, n_ood=50, seed=2).build()
    for s in ("train", "test_id", "ood"):
        assert np.array_equal(a[s]["input_ids"][:], b[s]["input_ids"][:])
        assert not np.array_equal(a[s]["input_ids"][:], c[s]["input_ids"][:])
    sampler = make_task(name).train_sampler
    x, y = sampler(np.random.default_rng(7), 64), sampler(np.random.default_rng(7), 64)
    assert set(x) == set(a["train"].column_names)
    assert all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("name", NEW_TASKS)
def test_protocol_shapes_and_empty_split(name):
    task = make_task(name, n_train=200, n_test_id=100, n_ood=0)
    assert task.score_names == ("acc_train", "acc_test_id", *task.ood_scores)
    assert TASKS[name].ood_scores == task.ood_scores  # probes read it from the class
    d = as_columns(task.build())
    assert len(d["ood"]["target"]) == 0
    for s in ("train", "test_id"):
        assert d[s]["input_ids"].shape == (len(d[s]["target"]), task.seq_len)
        assert d[s]["input_ids"].dtype == np.int64 and d[s]["target"].dtype == np.int64
        assert "key" in d[s]
    preds = {s: d[s]["target"] for s in d}
    m = task.reasoning_metrics(preds, d)
    assert m["acc_test_id"] == 1.0 and all(math.isnan(m[k]) for k in task.ood_scores)
    assert task.ood_offsets(preds["ood"], d["ood"]) == {}


@pytest.mark.parametrize("name", NEW_TASKS)
def test_ood_shares_partition(name):
    task = make_task(name, n_train=10, n_test_id=10, n_ood=500, seed=9)
    d = as_columns(task.build())
    rng = np.random.default_rng(0)
    hit_target = rng.random(500) < 0.3
    preds = np.where(hit_target, d["ood"]["target"], rng.integers(0, task.vocab_min_size, 500))
    outcomes = task.ood_outcomes(preds, d["ood"])
    assert list(outcomes) == [s.removeprefix("ood_") for s in task.ood_scores]
    assert np.all(np.sum(list(outcomes.values()), axis=0) == 1)  # disjoint and covering
    assert sum(task.ood_offsets(preds, d["ood"]).values()) == 500


@pytest.mark.parametrize("name", NEW_TASKS)
def test_generation_is_fast(name):
    sampler = make_task(name).train_sampler
    start = time.perf_counter()
    batch = sampler(np.random.default_rng(0), 200_000)
    assert len(batch["target"]) == 200_000
    assert time.perf_counter() - start < 5.0  # vectorized: ~1M samples in a few seconds


@pytest.mark.parametrize("name", NEW_TASKS)
def test_runs_through_the_config(name):
    from probes.config import RunConfig, validate

    cfg = RunConfig(task=name, n_train=100, n_test_id=10, n_ood=10, vocab_size=256)
    validate(cfg)
    options = cfg.task_options()
    assert make_task(name, **options).n_train == 100


@pytest.mark.parametrize("name, bad, match", [
    ("composite_no_twist", dict(held_out="34"), "hold out 43 too"),
    ("composite_no_twist", dict(held_out="34,43,11"), "distinct nonzero shifts"),
    ("composite_no_twist", dict(held_out="95,59"), "no anchor pair"),
    ("composite_no_twist", dict(held_out="3x"), "comma-separated"),
    ("composite_no_twist", dict(held_out=""), "empty"),
    ("composite_no_twist", dict(key_low=4), "key range"),
    ("composite_no_twist", dict(seq_len=2), "seq_len"),
    ("composite_no_twist", dict(n_ood=-1), "n_ood"),
    ("composite_no_twist", dict(split_modulus=1), "split_modulus"),
    ("composite_no_twist", dict(ood_scoring="all"), "ood_scoring='all' is unknown"),
    ("multi_anchor", dict(ood_scoring=None), "ood_scoring=None is unknown"),
    ("composite", dict(ood_scoring="paper"), "accepted are \\['authors', 'pooled'\\]"),
    ("multi_anchor", dict(held_out="15,51"), "distinct nonzero shifts"),
    ("multi_anchor", dict(held_out="11"), "distinct nonzero shifts"),
    ("multi_anchor", dict(key_low=9), "key range"),
    ("identity", dict(ood_key_position=0), "ood_key_position"),
    ("identity", dict(ood_key_position=9), "ood_key_position"),
    ("identity", dict(key_low=3), "key range"),
    ("identity", dict(split_modulus=0), "split_modulus"),
    ("chain_search", dict(n_hop_anchors=1), "n_hop_anchors"),
    ("chain_search", dict(chain_len=6), "chain_len"),
    ("chain_search", dict(ood_hops="7"), "ood_hops"),
    ("chain_search", dict(ood_hops="3,4,5"), "untrained"),
    ("chain_search", dict(key_low=20, key_high=30), "distinct nodes"),
    ("chain_search", dict(key_low=3), "key range"),
    ("chain_search", dict(n_chains=0), "n_chains"),
    ("chain_search", dict(split_modulus=1), "split_modulus"),
])
def test_bad_options(name, bad, match):
    with pytest.raises(ValueError, match=match):
        make_task(name, **bad)


@pytest.mark.parametrize("ood_hops, held", [("3,5", {12, 21, 23, 32}), (6, {33}), (None, {13, 31, 22})])
def test_chain_step_sizes_configurable(ood_hops, held):
    d = as_columns(make_task("chain_search", ood_hops=ood_hops, n_train=1500, n_test_id=10,
                             n_ood=300, seed=2).build())
    assert set(d["ood"]["anchor_pair"]) == held
    assert not np.isin(d["train"]["anchor_pair"], list(held)).any()
    assert set(d["train"]["anchor_pair"]) == {10 * a + b for a in (1, 2, 3) for b in (1, 2, 3)} - held


# --- the ood set scored: the authors' (default) or the suite's earlier pooled one ---------------
def ood_key_types(ood, modulus=7):
    """Set of key types ("train", "test") of the ood rows, by the paper's rule."""
    return {"test" if k % modulus == p else "train" for k, p in zip(ood["key"], ood["position"])}


@pytest.mark.parametrize("name, options, authors_pairs, pooled_pairs", [
    ("composite", {}, {43}, {43}),
    ("composite_no_twist", {}, {43}, {34, 43}),
    ("multi_anchor", dict(held_out="34,43"), {43}, {34, 43}),  # the authors' multi-anchor choice
    ("multi_anchor", {}, {13, 31, 26, 62, 48, 84, 79, 97}, {13, 31, 26, 62, 48, 84, 79, 97}),
])
def test_ood_scoring_authors_and_pooled(name, options, authors_pairs, pooled_pairs):
    sizes = dict(n_train=500, n_test_id=100, n_ood=1500, seed=8)
    authors = make_task(name, **options, **sizes).build()
    pooled = make_task(name, ood_scoring="pooled", **options, **sizes).build()
    a, p = authors["ood"][:], pooled["ood"][:]
    assert set(a["anchor_pair"]) == authors_pairs and set(p["anchor_pair"]) == pooled_pairs
    assert ood_key_types(a) == {"train"}  # the authors' "xel": keys of the train type only
    assert ood_key_types(p) == {"train", "test"}
    assert set(a["position"]) == set(range(7))
    # the ood choice leaves the trained data as it was
    assert np.array_equal(authors["train"]["input_ids"][:], pooled["train"]["input_ids"][:])
    assert np.array_equal(authors["test_id"]["input_ids"][:], pooled["test_id"]["input_ids"][:])
    # the targets still follow the composite rule (composite's (4, 3): x - 10)
    assert np.all(a["target_inferential"] == a["target"])
    if name != "multi_anchor":
        assert np.all(a["target"] == a["key"] - 10)


def test_ood_scoring_through_the_config():
    from probes.config import RunConfig

    cfg = RunConfig(task="composite_no_twist", ood_scoring="pooled")
    assert make_task(cfg.task, **cfg.task_options()).ood_scoring == "pooled"
    # a task option: the authors' scoring (default) and the pooled one are two runs
    assert cfg.identity()["ood_scoring"] == "pooled"
    assert RunConfig(task="composite_no_twist").identity()["ood_scoring"] == "authors"
    assert RunConfig(task="composite_no_twist").run_id != cfg.run_id
