"""Chance baselines of the group counts (probes.measure.chance): the closed form against Monte
Carlo, planted groups far from chance, random sets at chance, the covariance-matched null, the
rows, bad arguments, and the option through training, ``measure DIR`` and ``--checkpoint``."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file
from scipy.special import gamma as gamma_fn

from probes.config import CHANCE_NULLS, RunConfig
from probes.measure import chance
from probes.measure.chance import (
    CHANCE_METRICS,
    NULL_ONLY,
    NULLS,
    ChanceBaseline,
    chance_baselines,
    chance_metric,
    chance_rows,
    isotropic_mean_abs_cos,
)
from probes.measure.metrics import Condensation
from probes.report.figures import experiment as figures
from probes.run import main
from probes.train.saved_series import stale

TAUS = (0.7, 0.9, 0.95, 0.99)
TINY = str(Path(__file__).with_name("tiny.yaml"))


def observed(units, antipodal=False):
    return Condensation(TAUS, antipodal=antipodal, order=False, spectral=False).fit(units)


def baseline(units, null="isotropic", n_draws=99, **kw):
    return ChanceBaseline(TAUS, null, n_draws, **kw).fit(units, observed(units))


# --- the closed form ------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 2, 3, 7, 50, 400])
def test_closed_form_mean_abs_cos_matches_monte_carlo(dim):
    rng = np.random.default_rng(dim)
    a, b = rng.standard_normal((2, 40_000, dim))
    c = np.abs((a * b).sum(1)) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert abs(isotropic_mean_abs_cos(dim) - c.mean()) < 4 * c.std() / math.sqrt(len(c))


def test_closed_form_known_values_and_large_dim():
    assert isotropic_mean_abs_cos(1) == pytest.approx(1.0)
    assert isotropic_mean_abs_cos(2) == pytest.approx(2 / math.pi)
    assert isotropic_mean_abs_cos(3) == pytest.approx(0.5)
    assert isotropic_mean_abs_cos(20) == pytest.approx(gamma_fn(10) / math.sqrt(math.pi) / gamma_fn(10.5))
    for d in (10**4, 10**7):  # where Gamma itself overflows
        assert isotropic_mean_abs_cos(d) == pytest.approx(math.sqrt(2 / (math.pi * d)), rel=1 / d)


# --- what the baselines say -----------------------------------------------------------------

def test_planted_groups_are_far_from_chance():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 6))
    units = np.repeat(centers, 50, axis=0) + 1e-3 * rng.standard_normal((200, 6))
    obs = observed(units)
    assert all(obs.n_groups_[t] == 4 for t in TAUS)
    for null in NULLS:
        b = ChanceBaseline(TAUS, null, 99).fit(units, obs)
        assert all(b.n_groups_p_[t] == 1 / 100 for t in TAUS), null
    iso = ChanceBaseline(TAUS, "isotropic", 99).fit(units, obs)
    # 200 random directions in 6-D: many groups at every tau, 4 is far below
    assert all(iso.n_groups_null_[t] > 10 and iso.n_groups_z_[t] < -5 for t in TAUS)
    assert iso.mean_abs_cos_p_ == 1 / 100
    assert iso.mean_abs_cos_null_ == pytest.approx(isotropic_mean_abs_cos(6))


@pytest.mark.parametrize("n, dim", [(1000, 2), (300, 200)])
def test_random_isotropic_sets_sit_at_chance(n, dim):
    units = np.random.default_rng(12345).standard_normal((n, dim))
    b = baseline(units)
    assert all(b.n_groups_p_[t] > 0.05 for t in TAUS)
    sd = b.null_mean_abs_cos_.std(ddof=1)
    assert abs(observed(units).mean_abs_cos_ - isotropic_mean_abs_cos(dim)) < 4 * sd
    assert b.mean_abs_cos_p_ > 0.05
    # the draws' own mean agrees with the closed form too
    assert abs(b.null_mean_abs_cos_.mean() - isotropic_mean_abs_cos(dim)) < 4 * sd / math.sqrt(99)
    if dim == 200:  # random directions in 200-D never reach cosine 0.7: one group per unit
        assert all(b.n_groups_null_[t] == n and b.n_groups_p_[t] == 1.0 for t in TAUS)
        assert all(math.isnan(b.n_groups_z_[t]) for t in TAUS)  # sd 0: no z


def test_isotropic_p_values_are_calibrated():
    # 40 independent random sets: p <= 0.1 about 10% of the time (at most, with ties)
    rng = np.random.default_rng(7)
    p = np.array([[baseline(rng.standard_normal((200, 2))).n_groups_p_[t] for t in TAUS]
                  for _ in range(40)])
    assert (p <= 0.1).mean(axis=0).max() <= 0.25
    assert (p > 0.5).mean() >= 0.35


def test_covariance_null_discounts_low_rank_but_not_a_shared_direction():
    rng = np.random.default_rng(3)
    cloud = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 50))  # rank 3, no clusters
    obs = observed(cloud)
    cov = ChanceBaseline(TAUS, "covariance", 99).fit(cloud, obs)
    iso = ChanceBaseline(TAUS, "isotropic", 99).fit(cloud, obs)
    assert all(cov.n_groups_p_[t] > 0.05 for t in TAUS) and cov.mean_abs_cos_p_ > 0.05
    assert all(iso.n_groups_p_[t] == 1 / 100 for t in TAUS) and iso.mean_abs_cos_p_ == 1 / 100
    # all units pointing one way: condensed under both nulls (the covariance null has no mean)
    shared = np.ones(50) + 0.005 * rng.standard_normal((300, 50))
    obs = observed(shared)
    assert obs.n_groups_[0.99] == 1
    for null in NULLS:
        b = ChanceBaseline(TAUS, null, 99).fit(shared, obs)
        assert all(b.n_groups_p_[t] == 1 / 100 for t in TAUS) and b.mean_abs_cos_p_ == 1 / 100


def test_covariance_null_draws_the_units_covariance_at_low_rank():
    rng = np.random.default_rng(4)
    units = rng.standard_normal((40, 2)) @ rng.standard_normal((2, 30)) + 5.0  # rank 2, mean 5
    for x in (units, units[:10], rng.standard_normal((12, 5))):  # n > dim, n < dim, full rank
        lam = np.linalg.eigvalsh(np.cov(x.T))  # the covariance's spectrum, its rank's top values
        scales = chance._cov_scales(x)
        assert scales**2 == pytest.approx(lam[-len(scales):], abs=1e-9)
        assert len(scales) == min(2 if x.shape[1] == 30 else 5, len(x) - 1)
    # centered rank 1: every draw lies on one line through 0, so |cos| = 1 and the groups are
    # the two signs, whatever the mean does to the observed set
    line = 5.0 + np.outer(rng.standard_normal(40), rng.standard_normal(30))
    b = baseline(line, "covariance", 19)
    assert b.mean_abs_cos_null_ == pytest.approx(1.0)
    assert all(b.n_groups_null_[t] == 2 and b.n_groups_null_sd_[t] == 0 for t in TAUS)
    same = np.ones((5, 3))  # identical units: rank 0, no null to draw
    skipped = baseline(same, "covariance")
    assert skipped.n_draws_ == 0 and "rank 0" in skipped.skipped_
    assert skipped.results() == [("null_draws_cov", None, 0.0)]


def test_seeded_draws_repeat_and_other_seeds_differ():
    units = np.random.default_rng(0).standard_normal((300, 3))
    a, b = baseline(units, "covariance", seed=1), baseline(units, "covariance", seed=1)
    assert np.array_equal(a.null_groups_, b.null_groups_) and a.results() == b.results()
    assert not np.array_equal(a.null_groups_, baseline(units, "covariance", seed=2).null_groups_)


def test_antipodal_counting_follows_the_observed_fit():
    units = np.random.default_rng(0).standard_normal((400, 2))
    obs = observed(units, antipodal=True)
    b = ChanceBaseline(TAUS, "isotropic", 49, antipodal=True).fit(units, obs)
    # v and -v in one group: half the directions, about half the groups of the plain count
    plain = baseline(units, n_draws=49)
    assert all(b.n_groups_null_[t] < 0.7 * plain.n_groups_null_[t] for t in TAUS)


# --- rows -----------------------------------------------------------------------------------

def test_rows_have_the_promised_names_and_a_skipped_set_says_so():
    units = np.random.default_rng(0).standard_normal((30, 5))
    base = dict(run_id="r", step=3, layer=0, component="attn.q", head=None, basis="weight")
    rows = chance_rows(chance_baselines(units, observed(units), "both", 9), base)
    names = {(r["metric"], r["threshold"]) for r in rows}
    per_set = {(f"{m}_{s}", None) for s in ("iso", "cov")
               for m in ("null_draws", "mean_abs_cos_null", "mean_abs_cos_p")}
    per_tau = {(f"{m}_{s}", t) for s in ("iso", "cov") for t in TAUS
               for m in ("n_groups_null", "n_groups_null_sd", "n_groups_p", "n_groups_z")}
    assert names == per_set | per_tau and len(rows) == len(names)
    assert {m for m, _ in names} == set(CHANCE_METRICS) and set(NULL_ONLY) < set(CHANCE_METRICS)
    assert all(r["n_units"] == 30 and r["step"] == 3 for r in rows)
    value = {(r["metric"], r["threshold"]): r["value"] for r in rows}
    assert value[("null_draws_iso", None)] == 9
    assert value[("mean_abs_cos_null_iso", None)] == pytest.approx(isotropic_mean_abs_cos(5))
    big = chance_rows(chance_baselines(units, observed(units), "isotropic", 9, max_units=20), base)
    assert [(r["metric"], r["value"]) for r in big] == [("null_draws_iso", 0.0)]
    assert chance_baselines(units, observed(units), "both", 0) == []
    assert chance_metric("n_groups_p", "covariance") == "n_groups_p_cov"


def test_config_choices_name_the_nulls():
    assert set(CHANCE_NULLS) == {"both", *NULLS}
    assert RunConfig(chance_draws=99, chance_nulls="isotropic").run_id == RunConfig().run_id


@pytest.mark.parametrize("kwargs, match", [
    (dict(null="uniform"), "null='uniform'"), (dict(n_draws=0), "n_draws=0"),
    (dict(n_draws=2.5), "n_draws=2.5"), (dict(seed=-1), "seed=-1"),
    (dict(max_units=1), "max_units=1"), (dict(thresholds=[1.5]), r"thresholds \[1.5\]"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChanceBaseline(**kwargs)


def test_bad_fits_raise():
    units = np.random.default_rng(0).standard_normal((20, 4))
    with pytest.raises(ValueError, match="fitted Condensation"):
        ChanceBaseline().fit(units, Condensation())
    with pytest.raises(ValueError, match="not counted"):
        ChanceBaseline((0.5,)).fit(units, observed(units))
    with pytest.raises(ValueError, match="antipodal"):
        ChanceBaseline(TAUS, antipodal=True).fit(units, observed(units))
    with pytest.raises(ValueError, match="kept"):
        ChanceBaseline(TAUS, "covariance").fit(units[:10], observed(units))
    with pytest.raises(ValueError, match="2-D"):
        ChanceBaseline(TAUS).fit(units[0], observed(units))
    for dim in (0, 2.0, True):
        with pytest.raises(ValueError, match="dim="):
            isotropic_mean_abs_cos(dim)
    with pytest.raises(ValueError, match="unknown"):
        chance_metric("n_groups", "isotropic")


# --- the figure -----------------------------------------------------------------------------

def test_groups_figure_draws_the_isotropic_chance_dashed(monkeypatch, tmp_path):
    drawn = {}
    monkeypatch.setattr(figures, "lines_over_training", lambda series, *a, **k: drawn.update(s=series))
    runs = pd.DataFrame(dict(run_id=["a", "b"], gamma=[0.5, 1.0], seed=[0, 0]))
    rows = [dict(run_id=r, step=s, layer=0, component="attn.q", head=np.nan, metric=m,
                 threshold=0.9, value=v) for r in ("a", "b") for s in (0, 10)
            for m, v in (("n_groups", 5.0 + s), ("n_groups_null_iso", 30.0 - s))]
    rows = [r for r in rows if r["run_id"] == "a" or r["metric"] == "n_groups"]
    figures.groups_over_training(runs, pd.DataFrame(rows), tmp_path / "g.png")
    dashed = [s for s in drawn["s"] if s["style"].get("ls") == "--"]
    assert [list(s["values"]) for s in dashed] == [[30.0, 20.0]]  # run b has no null rows
    assert dashed[0]["label"] == figures.CHANCE_LABEL


# --- through the public paths ---------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("chance")
    assert main(["--config", TINY, "--gamma", "1.0", "--num_threads", "1", "--output_dir", str(out),
                 "--chance_draws", "9"]) == 0
    return out


def test_training_writes_chance_rows_and_measure_repeats_them(trained):
    run = next((trained / "runs").iterdir())
    metrics = pd.read_csv(run / "metrics.csv")
    before = (run / "metrics.csv").read_bytes()
    weights = load_file(run / "model" / "model.safetensors")
    dim = weights["h.0.attn.q_proj.weight"].shape[1]
    q = metrics[(metrics["component"] == "attn.q") & (metrics["layer"] == 0)]
    for step, rows in q.groupby("step"):
        v = {(m, t if t == t else None): x for m, t, x in zip(rows["metric"], rows["threshold"],
                                                             rows["value"])}
        assert v[("null_draws_iso", None)] == v[("null_draws_cov", None)] == 9, step
        assert v[("mean_abs_cos_null_iso", None)] == pytest.approx(
            gamma_fn(dim / 2) / math.sqrt(math.pi) / gamma_fn((dim + 1) / 2))
        for t in TAUS:
            for s in ("iso", "cov"):
                assert v[(f"n_groups_p_{s}", t)] in {k / 10 for k in range(1, 11)}
                # p counts the draws with no more groups than observed: p = 1 when the null
                # has no spread and sits at or below the observed count
                null, sd = v[(f"n_groups_null_{s}", t)], v[(f"n_groups_null_sd_{s}", t)]
                if sd == 0 and null <= v[("n_groups", t)]:
                    assert v[(f"n_groups_p_{s}", t)] == 1.0
    assert yaml.safe_load((run / "config.yaml").read_text())["chance_draws"] == 9
    # measure DIR: off removes the rows, on again gives the same bytes
    assert main(["measure", str(trained), "--chance_draws", "0", "--num_threads", "1"]) == 0
    assert not pd.read_csv(run / "metrics.csv")["metric"].isin(CHANCE_METRICS).any()
    assert main(["measure", str(trained), "--chance_draws", "9", "--num_threads", "1"]) == 0
    assert (run / "metrics.csv").read_bytes() == before
    # the null-only rows stay out of correlations.csv
    corr = pd.read_csv(trained / "correlations.csv")
    assert "n_groups_p_iso" in set(corr["metric"]) and not corr["metric"].isin(NULL_ONLY).any()


def test_a_run_folder_without_the_keys_was_measured_without_baselines(trained):
    run = next((trained / "runs").iterdir())
    path = run / "config.yaml"
    text = path.read_text()
    raw = yaml.safe_load(text)
    try:
        path.write_text(yaml.safe_dump({k: v for k, v in raw.items()
                                        if k not in ("chance_draws", "chance_nulls")}))
        cfg = RunConfig(**{k: v for k, v in raw.items() if k in RunConfig.__dataclass_fields__})
        assert stale(RunConfig(**{**cfg.__dict__, "chance_draws": 9}))
        assert not stale(RunConfig(**{**cfg.__dict__, "chance_draws": 0}))
    finally:
        path.write_text(text)


def test_checkpoint_probe_gives_the_same_isotropic_rows(trained, tmp_path, capsys):
    run = next((trained / "runs").iterdir())
    out = tmp_path / "ck"
    assert main(["--checkpoint", str(run / "model"), "--output_dir", str(out), "--num_threads",
                 "1", "--chance_draws", "9", "--chance_nulls", "isotropic"]) == 0
    ck = pd.read_csv(out / "metrics.csv")
    ck = ck[ck["metric"].str.endswith("_iso") & ck["head"].isna()]
    own = pd.read_csv(run / "metrics.csv")
    own = own[own["metric"].str.endswith("_iso") & (own["step"] == own["step"].max())]
    key = ["layer", "component", "metric", "threshold"]
    both = ck.set_index(key)["value"].to_frame("ck").join(own.set_index(key)["value"], how="inner")
    assert len(both) == len(own) > 0
    np.testing.assert_array_equal(both["ck"], both["value"])  # NaN z (sd 0) equal too
    assert not ck["metric"].str.endswith("_cov").any()
    for key, bad, words in (("chance_draws", "-1", "chance_draws=-1 is invalid"),
                            ("chance_draws", "x", "chance_draws='x' has the wrong type"),
                            ("chance_nulls", "none", "chance_nulls='none' is unknown")):
        assert main(["--checkpoint", str(run / "model"), "--output_dir", str(tmp_path / "x"),
                     f"--{key}", bad]) == 2
        assert words in capsys.readouterr().err
