"""The composite anchor task against an independent, row-by-row reading of docs/science.md."""

import numpy as np
import pytest

from tasks import make_task
from tasks.composite import CompositeTask

# The rules written out again, independently of tasks.composite.SHIFTS.
RULES = {1: lambda x: x + 5, 2: lambda x: x + 1, 3: lambda x: x - 2, 4: lambda x: x - 8}


def read_row(ids):
    """Find the single adjacent anchor pair in a token row; return (key, position, a1, a2)."""
    anchors = [i for i, t in enumerate(ids) if t in RULES]
    assert len(anchors) == 2 and anchors[1] == anchors[0] + 1, ids
    p = anchors[0] - 1
    assert p >= 0
    return int(ids[p]), p, int(ids[p + 1]), int(ids[p + 2])


def expected_target(x, a1, a2):
    if (a1, a2) == (3, 4):
        return x - 6  # the deliberate exception
    return RULES[a2](RULES[a1](x))


@pytest.fixture(scope="module")
def data():
    return make_task("composite", n_train=3000, n_test_id=1500, n_ood=800, seed=3).build()


def test_paper_example():
    # docs/science.md: (23, 1, 2, 43, 46, 74, 54, 44, 72) -> 23 + 5 + 1 = 29
    key, p, a1, a2 = read_row([23, 1, 2, 43, 46, 74, 54, 44, 72])
    assert expected_target(key, a1, a2) == 29


@pytest.mark.parametrize("split", ["train", "test_id", "ood"])
def test_every_target_matches_independent_formula(data, split):
    d = data[split][:]
    for i in range(len(d["target"])):
        ids = d["input_ids"][i]
        assert len(ids) == 9
        key, p, a1, a2 = read_row(ids)
        noise = [t for j, t in enumerate(ids) if j not in (p, p + 1, p + 2)]
        assert all(20 <= t <= 99 for t in noise) and 20 <= key <= 99
        assert (d["key"][i], d["position"][i], d["anchor_pair"][i]) == (key, p, 10 * a1 + a2)
        assert d["target_inferential"][i] == RULES[a2](RULES[a1](key))
        if split == "ood":
            assert (a1, a2) == (4, 3)
            assert d["target"][i] == key - 10
            assert d["target_inferential"][i] == key - 10
            assert d["target_symmetric"][i] == key - 6
        else:
            assert d["target"][i] == expected_target(key, a1, a2)


def test_held_out_pair_never_trained_and_exception_present(data):
    train = data["train"][:]
    assert not np.any(train["anchor_pair"] == 43)
    is34 = train["anchor_pair"] == 34
    assert is34.sum() > 100
    assert np.all(train["target"][is34] == train["key"][is34] - 6)
    assert set(np.unique(train["anchor_pair"])) == {10 * a + b for a in range(1, 5)
                                                    for b in range(1, 5)} - {43}


@pytest.mark.parametrize("modulus", [7, 9])
def test_split_rule(modulus):
    d = CompositeTask(split_modulus=modulus, n_train=2000, n_test_id=1000, n_ood=500).build()
    train, test = d["train"][:], d["test_id"][:]
    assert np.all(train["key"] % modulus != train["position"])
    assert np.all(test["key"] % modulus == test["position"])
    assert not np.any(test["anchor_pair"] == 43)
    # the two key sets per position are disjoint and together cover every key
    for p in range(7):
        tr = set(train["key"][train["position"] == p])
        te = set(test["key"][test["position"] == p])
        assert not tr & te
        assert tr | te <= set(range(20, 100))


def test_seeded_and_distinct():
    a = CompositeTask(n_train=500, seed=1).build()["train"][:]
    b = CompositeTask(n_train=500, seed=1).build()["train"][:]
    c = CompositeTask(n_train=500, seed=2).build()["train"][:]
    assert np.array_equal(a["input_ids"], b["input_ids"])
    assert not np.array_equal(a["input_ids"], c["input_ids"])


def test_score_and_reasoning_metrics_closed_form(data):
    task = CompositeTask()
    d = {s: data[s][:] for s in data}
    # a model answering the composite everywhere: perfect on composite pairs, wrong on (3,4)
    preds = {s: d[s]["target_inferential"] for s in d}
    m = task.reasoning_metrics(preds, d)
    share34 = np.mean(d["test_id"]["anchor_pair"] == 34)
    assert m["acc_test_id"] == pytest.approx(1 - share34)
    assert m["acc_pair34"] == 0.0
    assert (m["ood_inferential"], m["ood_symmetric"], m["ood_other"]) == (1.0, 0.0, 0.0)
    # a symmetric model on (4,3), and one that answers key - 7 (read (4,3) as (4,2))
    preds["ood"] = d["ood"]["key"] - 6
    assert task.reasoning_metrics(preds, d)["ood_symmetric"] == 1.0
    preds["ood"] = d["ood"]["key"] - 7
    m = task.reasoning_metrics(preds, d)
    assert m["ood_other"] == 1.0
    assert task.ood_offsets(preds["ood"], d["ood"]) == {-7: len(d["ood"]["key"])}


@pytest.mark.parametrize("bad", [dict(seq_len=2), dict(key_low=3), dict(n_train=-1),
                                 dict(split_modulus=0)])
def test_bad_options(bad):
    with pytest.raises(ValueError):
        CompositeTask(**bad)


def test_unknown_task():
    with pytest.raises(ValueError, match="accepted are"):
        make_task("nope")
