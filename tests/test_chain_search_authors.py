"""The authors' chain search (arXiv 2405.15302) against the rules of their generator
(understanding_dl multi-step_reasoning_code/data.py, task_single_chain), read again row by row from
the token sequences alone, independently of tasks.chain_search_authors."""

import numpy as np
import pytest

from tasks import TASKS, make_task

# the authors' rules, written out again
TRAIN_STEPS, TEST_STEPS = {0, 1, 4}, {2, 3}  # (child - parent) mod 5 of every edge
SIZES = dict(n_train=2000, n_test_id=1000, n_ood=1000)


def read_row(ids):
    """(edges, start, chain) of one row: the (parent, child) pairs, the last token, and the chain
    from root to tail rebuilt from the edges alone."""
    ids = [int(t) for t in ids]
    edges = [(ids[i], ids[i + 1]) for i in range(0, len(ids) - 1, 2)]
    succ = dict(edges)
    assert len(succ) == len(edges), "a node has two children"
    assert len({v for _, v in edges}) == len(edges), "a node has two parents"
    roots = [u for u, _ in edges if u not in {v for _, v in edges}]
    assert len(roots) == 1, "not one single chain"
    chain = [roots[0]]
    while chain[-1] in succ:
        chain.append(succ[chain[-1]])
    assert len(chain) == len(edges) + 1 and len(set(chain)) == len(chain)
    return edges, ids[-1], chain


def hop(chain, start, k):
    return chain[chain.index(start) + k]


@pytest.fixture(scope="module")
def data():
    d = make_task("chain_search_authors", seed=11, **SIZES).build()
    return {s: d[s][:] for s in d}


@pytest.mark.parametrize("split", ["train", "test_id", "ood"])
def test_targets_and_edge_step_split(data, split):
    d = data[split]
    assert d["input_ids"].shape == (SIZES[f"n_{split}"], 13)  # the authors' seq_len 13
    steps_seen = set()
    for i, ids in enumerate(d["input_ids"]):
        edges, start, chain = read_row(ids)
        assert len(chain) == 7
        assert d["target"][i] == hop(chain, start, 2)  # k = 2 hops, no hop token in the input
        assert d["key"][i] == start and list(d["chain"][i]) == chain
        assert d["depth"][i] == chain.index(start) and d["hops"][i] == 2
        steps = {(v - u) % 5 for u, v in edges}
        steps_seen |= steps
        if split == "train":
            assert steps <= TRAIN_STEPS
            assert all(1 <= x <= 99 for x in chain)
        elif split == "test_id":
            assert steps <= TEST_STEPS
            assert all(1 <= x <= 99 for x in chain)
        else:  # ood: nodes 101..199 but the target and its parent, moved down by 100
            target, parent = hop(chain, start, 2), hop(chain, start, 1)
            assert {x for x in chain if x <= 100} == {target, parent}
            assert all(1 <= x <= 99 for x in (target, parent))
            assert all(101 <= x <= 199 for x in chain if x not in (target, parent))
    assert steps_seen == {"train": TRAIN_STEPS, "test_id": TEST_STEPS, "ood": set(range(5))}[split]


def test_starts_depths_and_shuffled_edges(data):
    train = data["train"]
    assert set(train["depth"]) == set(range(5))  # every start with 2 hops after it
    counts = np.bincount(train["depth"], minlength=5) / len(train["depth"])
    assert np.all(np.abs(counts - 0.2) < 0.04)
    # the edges are shuffled: the root's edge is first in about 1 row of 6
    root_first = [read_row(ids)[2][0] == ids[0] for ids in train["input_ids"]]
    assert abs(np.mean(root_first) - 1 / 6) < 0.04
    # train and test_id keep the nodes of 1..99, residue class 0 included
    nodes = np.concatenate([data[s]["chain"].ravel() for s in ("train", "test_id")])
    assert set(nodes) == set(range(1, 100))


def test_task_shape_and_vocab():
    task = make_task("chain_search_authors")
    assert (task.seq_len, task.vocab_min_size) == (13, 200)
    t = make_task("chain_search_authors", hops=1, chain_nodes=4, n_train=300, n_test_id=10,
                  n_ood=300, seed=2)
    assert t.seq_len == 7
    d = t.build()
    for ids, target in zip(d["train"]["input_ids"][:], d["train"]["target"][:]):
        _, start, chain = read_row(ids)
        assert target == hop(chain, start, 1)
    for ids, target in zip(d["ood"]["input_ids"][:], d["ood"]["target"][:]):
        _, start, chain = read_row(ids)
        # k = 1: the target's parent is the start itself, so the query token is moved too
        assert target == hop(chain, start, 1) and start <= 99 and target <= 99
        assert sum(x <= 100 for x in chain) == 2


def test_scoring_closed_form(data):
    task = make_task("chain_search_authors")
    ood = data["ood"]
    n = len(ood["key"])
    preds = {s: data[s]["target"] for s in data}
    m = task.reasoning_metrics(preds, data)
    assert list(m) == list(task.score_names)
    assert (m["acc_train"], m["acc_test_id"], m["ood_inferential"]) == (1.0, 1.0, 1.0)
    assert task.fitted(m)
    assert task.ood_offsets(ood["target"], ood) == {0: n}
    # the target's parent: one hop short, an in-range token like the target
    parents = np.array([hop(read_row(ids)[2], int(ids[-1]), 1) for ids in ood["input_ids"]])
    preds["ood"] = parents
    assert task.reasoning_metrics(preds, data)["ood_fewer_hops"] == 1.0
    assert task.ood_offsets(parents, ood) == {-1: n}
    # one hop past the target where the chain goes on, else the root (a node before the start)
    answers, more = [], 0
    for ids in ood["input_ids"]:
        _, start, chain = read_row(ids)
        j = chain.index(start) + 3
        more += j < len(chain)
        answers.append(chain[j] if j < len(chain) else chain[0])
    preds["ood"] = np.array(answers)
    m = task.reasoning_metrics(preds, data)
    assert m["ood_more_hops"] == more / n and m["ood_other_node"] == (n - more) / n
    preds["ood"] = np.full(n, 100)  # never a node
    assert task.reasoning_metrics(preds, data)["ood_other"] == 1.0
    assert task.ood_offsets(preds["ood"], ood) == {-100: n}


@pytest.mark.parametrize("bad, match", [
    (dict(hops=0), "hops=0"), (dict(hops=7), "hops=7"), (dict(chain_nodes=1), "chain_nodes=1"),
    (dict(chain_nodes=20), "chain_nodes=20"), (dict(n_ood=-1), "n_ood"),
])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        make_task("chain_search_authors", **bad)


def test_names_and_config_keys():
    from probes.config import ConfigError, RunConfig, validate

    # the suite's variant keeps its first name (existing configs, run ids) and gets a clear one
    assert TASKS["chain_search"] is TASKS["chain_search_hops"]
    assert TASKS["chain_search_authors"] is not TASKS["chain_search"]
    cfg = RunConfig(task="chain_search_authors", hops=3, chain_nodes=9, vocab_size=201)
    validate(cfg)
    task = make_task(cfg.task, **cfg.task_options())
    assert (task.k, task.seq_len) == (3, 17)
    with pytest.raises(ConfigError, match="vocab_size=128"):
        validate(RunConfig(task="chain_search_authors"))
    with pytest.raises(ConfigError, match="hops=9"):
        validate(RunConfig(task="chain_search_authors", hops=9, vocab_size=201))
    # a task's own options enter a run's identity only for the tasks that read them
    for key in ("ood_scoring", "hops", "chain_nodes"):
        assert key not in RunConfig(task="chain_search").identity()
    assert RunConfig().identity()["ood_scoring"] == "authors"
    assert "hops" in cfg.identity() and "seq_len" not in cfg.identity()
    assert RunConfig(task="chain_search_authors", seq_len=20).run_id == \
        RunConfig(task="chain_search_authors").run_id


@pytest.mark.parametrize("preset, task, n_runs", [("chain_search_authors", "chain_search_authors", 1),
                                                  ("multi_anchor_authors", "multi_anchor", 6)])
def test_authors_presets(preset, task, n_runs):
    from pathlib import Path

    from probes.config import expand, load_config

    runs = expand(load_config(Path(__file__).resolve().parent.parent / "configs" / f"{preset}.yaml"))
    assert len(runs) == n_runs and {r.task for r in runs} == {task}
    built = make_task(task, **runs[0].task_options())
    if task == "multi_anchor":
        assert built.held_pairs == [(3, 4), (4, 3)] and built.ood_pairs == [(4, 3)]
        assert built.ood_scoring == "authors"
    else:
        assert (built.k, built.seq_len) == (1, 13) and runs[0].gamma == 1.0
