"""Large layers: the metrics of a layer past ``Condensation.large_n`` units equal the dense ones,
with no more than one n x n float64 worth of memory; singular values from the Gram matrix equal
the SVD's."""

import tracemalloc

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from probes.measure.metrics import Condensation


def layer(n, dim=48, seed=0):
    """n units: 40 groups of varied tightness (so counts differ by threshold) and random units."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(40, dim))
    per = n // 80
    rows = [directions[g] + (0.02 + 0.01 * (g % 8)) * np.linalg.norm(directions[g])
            * rng.normal(size=(per, dim)) for g in range(40)]
    rows.append(rng.normal(size=(n - 40 * per, dim)))
    return np.vstack(rows)


def reference(u, thresholds, antipodal=False):
    """The dense textbook computation: full cosine matrix, scipy linkage, SVD."""
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos = np.clip(unit @ unit.T, -1, 1)
    np.fill_diagonal(cos, 1)
    sim = np.abs(cos) if antipodal else cos
    z = linkage(squareform(np.clip(1 - sim, 0, 2), checks=False), "complete")
    s = np.linalg.svd(u, compute_uv=False)
    p = s / s.sum()
    n = len(u)
    return dict(groups={t: int(fcluster(z, 1 - t, "distance").max()) for t in thresholds},
                mean=(np.abs(cos).sum() - n) / (n * (n - 1)), cos=cos,
                stable=(s**2).sum() / s[0] ** 2, effective=np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("antipodal", [False, True])
def test_large_path_equals_dense_reference(antipodal):
    u = layer(2000)
    fit = Condensation(antipodal=antipodal)
    fit.large_n, fit.block_rows = 1000, 300  # force the large-layer path
    fit.fit(u)
    ref = reference(u, fit.thresholds, antipodal)
    assert fit.cosine_.dtype == np.float32
    assert fit.n_groups_ == ref["groups"] and len(set(ref["groups"].values())) == 4
    assert fit.mean_abs_cos_ == pytest.approx(ref["mean"], rel=1e-12)
    assert np.abs(fit.cosine_ - ref["cos"]).max() < 1e-6
    assert fit.stable_rank_ == pytest.approx(ref["stable"], rel=1e-12)
    assert fit.effective_rank_ == pytest.approx(ref["effective"], rel=1e-12)
    dense = Condensation(antipodal=antipodal).fit(u)
    assert dense.cosine_.dtype == np.float64 and dense.n_groups_ == fit.n_groups_
    assert all((dense.labels_[t] == fit.labels_[t]).all() for t in fit.thresholds)


def peak_bytes(compute):
    tracemalloc.start()
    compute()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_large_path_builds_one_float64_square_at_most():
    n = 3000
    u = layer(n, dim=16)
    square = n * n * 8
    large = Condensation()
    large.large_n = 2000
    # condensed distances + the linkage's copy (one square together) + the float32 cosine
    # (half a square) + blocks
    assert peak_bytes(lambda: large.fit(u)) < 1.7 * square
    assert peak_bytes(lambda: reference(u, large.thresholds)) > 2.5 * square  # for scale


def test_gram_singular_values_match_svd_and_fall_back():
    rng = np.random.default_rng(3)
    for u in (rng.normal(size=(300, 40)), rng.normal(size=(40, 300)),
              np.c_[rng.normal(size=(200, 30)), np.zeros((200, 1))],  # zero bias column
              np.repeat(rng.normal(size=(5, 30)), 40, axis=0)):  # rank 5: exact zeros
        s = np.linalg.svd(u, compute_uv=False)
        got = Condensation()._singular_values(u)
        assert np.allclose(got[: len(s)], s, rtol=1e-9, atol=1e-9 * s[0])
    # a spectrum with values between rounding level and gram_rcond: the SVD decides, exactly
    q1, q2 = np.linalg.qr(rng.normal(size=(60, 60)))[0], np.linalg.qr(rng.normal(size=(30, 30)))[0]
    s = np.logspace(0, -6, 30)
    u = q1[:, :30] @ np.diag(s) @ q2
    assert np.allclose(Condensation()._singular_values(u), np.linalg.svd(u, compute_uv=False),
                       rtol=1e-12, atol=0)
