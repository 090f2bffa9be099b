"""Lineage of condensed groups over training: planted splits, merges, births and deaths; the count
trend against an independent rank correlation; and the lineage.csv of a tiny run (trained, then
measured again) against the rule written out with Python sets on scipy's own clustering of its
saved checkpoints."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from scipy.cluster.hierarchy import fcluster, linkage

from probes.measure.lineage import LineageTracker, count_trend, n_condensed, transition
from probes.measure.metrics import Condensation
from probes.run import main
from probes.train.loop import probe_steps

TINY = str(Path(__file__).with_name("tiny.yaml"))
EVENTS = ["births", "deaths", "splits", "merges", "continued"]


def events(prev, cur) -> dict:
    """The lineage rule written out with sets: condensed groups (>= 2 units) H, G are linked when
    a strict majority of the smaller lies in both."""
    def groups(labels):
        out = {}
        for unit, g in enumerate(labels):
            out.setdefault(g, set()).add(unit)
        return [s for s in out.values() if len(s) >= 2]

    old, new = groups(prev), groups(cur)
    links = [(i, j) for i, h in enumerate(old) for j, g in enumerate(new)
             if len(h & g) > min(len(h), len(g)) / 2]
    out_deg = [sum(1 for i, _ in links if i == k) for k in range(len(old))]
    in_deg = [sum(1 for _, j in links if j == k) for k in range(len(new))]
    return dict(births=in_deg.count(0), deaths=out_deg.count(0),
                splits=sum(d >= 2 for d in out_deg), merges=sum(d >= 2 for d in in_deg),
                continued=sum(out_deg[i] == 1 and in_deg[j] == 1 for i, j in links))


def counts(t) -> dict:
    return {e: getattr(t, e) for e in EVENTS}


# 16 units: A = 0-5 and B = 6-11 condensed, 12-15 alone. Step 3: A splits into 0-2 and 3-5.
# Step 6: 3-5 merges into B. Step 8: 12-14 are born as a group. Step 10: 0-2 scatter (a death).
SERIES = {
    0: [0] * 6 + [1] * 6 + [2, 3, 4, 5],
    3: [0] * 3 + [7] * 3 + [1] * 6 + [2, 3, 4, 5],
    6: [0] * 3 + [1] * 9 + [2, 3, 4, 5],
    8: [0] * 3 + [1] * 9 + [2, 2, 2, 5],
    10: [20, 21, 22] + [1] * 9 + [2, 2, 2, 5],
}
EXPECTED = {  # step: (births, deaths, splits, merges, continued)
    3: (0, 0, 1, 0, 1), 6: (0, 0, 0, 1, 1), 8: (1, 0, 0, 0, 2), 10: (0, 1, 0, 0, 2),
}


def test_planted_series_gives_exactly_its_events():
    steps = sorted(SERIES)
    for prev, step in zip(steps, steps[1:]):
        # fresh ids at each step: only membership matters
        cur = np.array(SERIES[step]) * 7 + 100
        t = transition(np.array(SERIES[prev]), cur)
        assert tuple(counts(t).values()) == EXPECTED[step], step
        assert counts(t) == events(SERIES[prev], SERIES[step])
    assert [n_condensed(np.array(SERIES[s])) for s in steps] == [2, 3, 2, 3, 2]


def test_links_and_the_edge_cases_of_the_rule():
    # 3-5 join B: B continues into the merged group, and so does {3, 4, 5}
    t = transition(np.array(SERIES[3]), np.array(SERIES[6]))
    assert t.links.tolist() == [[0, 0], [1, 1], [7, 1]] and (t.n_old, t.n_new) == (3, 2)
    # two groups of 5 joining into 10 is a merge (Jaccard 1/2 would call it two deaths, a birth)
    assert counts(transition(np.repeat([0, 1], 5), np.zeros(10, int)))["merges"] == 1
    # a 2-unit group split 1 + 1 into two large groups dies (no tie links it to both)
    prev, cur = np.array([0, 0, 1, 1, 1, 2, 2, 2]), np.array([1, 2, 1, 1, 1, 2, 2, 2])
    assert counts(transition(prev, cur)) == dict(births=0, deaths=1, splits=0, merges=0,
                                                 continued=2)
    # an exchange of halves links nothing: two deaths, two births; singletons never count
    swap = transition(np.repeat([0, 1], 4), np.array([0, 0, 1, 1, 0, 0, 1, 1]))
    assert counts(swap) == dict(births=2, deaths=2, splits=0, merges=0, continued=0)
    # a group split 4 + 2 with a third unit joining the 2: a split, and nothing born
    split = transition(np.array([0] * 6 + [1, 2]), np.array([0] * 4 + [1, 1, 1, 2]))
    assert counts(split) == dict(births=0, deaths=0, splits=1, merges=0, continued=0)
    assert counts(transition(np.arange(5), np.arange(5)[::-1])) == dict.fromkeys(EVENTS, 0)


def test_random_partitions_agree_with_the_set_version():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        prev, cur = rng.integers(0, rng.integers(1, n + 1), n), rng.integers(0, rng.integers(1, n + 1), n)
        assert counts(transition(prev, cur)) == events(prev.tolist(), cur.tolist())


def test_transition_refuses_bad_labels():
    with pytest.raises(ValueError, match="prev has 3 units and cur 4"):
        transition(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="integer array"):
        transition(np.zeros(3), np.zeros(3, int))


def test_tracker_on_planted_unit_vectors():
    """Unit vectors planted around directions that split and merge, fitted by Condensation."""
    rng = np.random.default_rng(1)
    dirs = np.linalg.qr(rng.normal(size=(24, 24)))[0]  # orthogonal directions, cosine 0
    plan = {0: [0] * 6 + [1] * 6 + [10, 11, 12, 13], 3: [0] * 3 + [2] * 3 + [1] * 6 + [10, 11, 12, 13],
            6: [0] * 3 + [1] * 9 + [10, 11, 12, 13], 8: [0] * 3 + [1] * 9 + [3, 3, 3, 13],
            10: [14, 15, 16] + [1] * 9 + [3, 3, 3, 13]}
    tracker, rows = LineageTracker("r"), []
    for step, directions in plan.items():
        units = dirs[directions] + 0.01 * rng.normal(size=(16, 24))
        fit = Condensation((0.9,), order=False, spectral=False).fit(units)
        rows += tracker.rows(fit, 16, dict(step=step, layer=0, component="c", head=None))
    assert [r["prev_step"] for r in rows] == [None, 0, 3, 6, 8]
    got = pd.DataFrame(rows).set_index("step")
    assert got["n_condensed"].tolist() == [2, 3, 2, 3, 2]
    for step, expected in EXPECTED.items():
        assert tuple(got.loc[step, EVENTS]) == expected
    # a resumed tracker gives the same next row
    again = LineageTracker("r")
    again.load_state_dict(tracker.state_dict())
    units = dirs[plan[10]] + 0.01 * rng.normal(size=(16, 24))
    fit = Condensation((0.9,), order=False, spectral=False).fit(units)
    where = dict(step=12, layer=0, component="c", head=None)
    assert again.rows(fit, 16, where) == tracker.rows(fit, 16, where)


def test_dropped_units_leave_the_transitions_blank():
    rng = np.random.default_rng(2)
    units = rng.normal(size=(6, 4))
    tracker, where = LineageTracker("r"), dict(layer=0, component="c", head=None)
    fit = Condensation((0.9,), order=False, spectral=False)
    tracker.rows(fit.fit(units), 6, where | dict(step=0))
    units[2] = 0.0  # dropped: the labels no longer cover every unit
    (row,) = tracker.rows(fit.fit(units), 6, where | dict(step=1))
    assert row["n_units"] == 5 and all(row[e] is None for e in EVENTS)
    units[2] = 1.0
    (row,) = tracker.rows(fit.fit(units), 6, where | dict(step=2))
    assert row["prev_step"] == 1 and all(row[e] is None for e in EVENTS)


def spearman_by_ranks(x, y) -> float:
    """Pearson correlation of average ranks (ties share their mean rank)."""
    def ranks(v):
        v = np.asarray(v, float)
        return np.array([np.mean(np.flatnonzero(np.sort(v) == a)) + 1 for a in v])
    rx, ry = ranks(x), ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def test_count_trend_on_known_series():
    steps, series = [0, 1, 5, 30, 100, 400], [1, 2, 2, 3, 5, 4]
    t = count_trend(steps, series)
    assert (t.n_steps, t.rise_share, t.fall_share) == (6, 3 / 5, 1 / 5)
    assert t.spearman_rho == pytest.approx(spearman_by_ranks(steps, series), abs=1e-12)
    up = count_trend(steps, [1, 2, 3, 4, 5, 6])
    assert (up.rise_share, up.spearman_rho) == (1.0, pytest.approx(1.0))
    flat = count_trend(steps, [3] * 6)
    assert flat.rise_share == 0.0 and np.isnan(flat.spearman_rho)
    assert np.isnan(count_trend([0], [1]).rise_share)
    with pytest.raises(ValueError, match="strictly increasing"):
        count_trend([0, 0, 1], [1, 2, 3])


# --- the lineage.csv of a tiny training run ---------------------------------------------------

def scipy_labels(weight: np.ndarray, tau: float) -> np.ndarray:
    """Complete-linkage groups at cosine >= tau by scipy on float64 (independent of probes)."""
    unit = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    return fcluster(linkage(dist[np.triu_indices(len(unit), 1)], "complete"), 1.0 - tau,
                    "distance")


def expected_lineage(run: Path, thresholds) -> pd.DataFrame:
    """lineage rows of attn.q and mlp.in, both layers, from the saved checkpoints."""
    rows, last = [], {}
    steps = probe_steps(30, 4)
    for step in steps:
        path = run / (f"checkpoint-{step}" if step < 30 else "model") / "model.safetensors"
        weights = load_file(path)
        for layer in (0, 1):
            for component, name in (("attn.q", "attn.q_proj"), ("mlp.in", "mlp.fc_in")):
                w = weights[f"h.{layer}.{name}.weight"].double().numpy()
                for tau in thresholds:
                    lab = scipy_labels(w, tau).tolist()
                    before = last.get((layer, component, tau))
                    moved = events(before, lab) if before is not None else dict.fromkeys(EVENTS)
                    rows.append(dict(step=step, layer=layer, component=component, threshold=tau,
                                     n_groups=len(set(lab)), **moved))
                    last[(layer, component, tau)] = lab
    return pd.DataFrame(rows)


def compare(found: pd.DataFrame, run: Path, thresholds) -> int:
    """Assert the lineage.csv rows of attn.q and mlp.in equal the recomputed ones; returns the
    number of events (births + deaths + splits + merges) they hold."""
    key = ["step", "layer", "component", "threshold"]
    mine = found[found["component"].isin(["attn.q", "mlp.in"]) & found["head"].isna()]
    want = expected_lineage(run, thresholds)
    both = mine.merge(want, on=key, suffixes=("", "_want"), validate="one_to_one")
    assert len(both) == len(want) == len(mine)
    for col in ["n_groups", *EVENTS]:
        assert (both[col].astype(float).fillna(-1) == both[f"{col}_want"].astype(float).fillna(-1)).all(), col
    return int(mine[EVENTS[:4]].sum().sum())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("lineage")
    args = ["--config", TINY, "--gamma", "1.0", "--num_threads", "1",
            "--thresholds", "[0.3, 0.5, 0.7]", "--output_dir", str(out)]
    assert main(args) == 0
    return out


def test_training_writes_the_lineage_of_its_checkpoints(trained):
    (run,) = (trained / "runs").iterdir()
    found = pd.read_csv(run / "lineage.csv")
    assert found.equals(pd.read_csv(trained / "lineage.csv"))
    assert found[found["step"] == 0][EVENTS].isna().all().all()
    assert compare(found, run, (0.3, 0.5, 0.7)) > 0  # the check saw events, not only zeros
    summary = pd.read_csv(trained / "lineage_summary.csv")
    q = summary[(summary["component"] == "attn.q") & (summary["layer"] == 0)
                & (summary["threshold"] == 0.5) & (summary["count"] == "n_groups")].iloc[0]
    series = found[(found["component"] == "attn.q") & (found["layer"] == 0) & found["head"].isna()
                   & (found["threshold"] == 0.5)]
    assert q["n_steps"] == 4 and q["last"] == series["n_groups"].iloc[-1]
    assert (trained / "figures" / "lineage.png").stat().st_size > 1000


def test_measuring_again_rewrites_the_lineage(trained):
    (run,) = (trained / "runs").iterdir()
    assert main(["measure", str(trained), "--thresholds", "[0.4, 0.6]", "--num_threads", "1"]) == 0
    found = pd.read_csv(run / "lineage.csv")
    assert set(found["threshold"]) == {0.4, 0.6}
    compare(found, run, (0.4, 0.6))
    assert set(pd.read_csv(trained / "lineage_summary.csv")["threshold"]) == {0.4, 0.6}
