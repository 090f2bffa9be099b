"""Large layers: the float32 path (float32 GEMM, float64 re-check of the pairs near the cut,
groups from those pairs alone) gives the groups of the dense float64 computation exactly, also on
pairs planted within 1e-9 of a threshold and on merge orders decided by 1e-9; singular values from
the Gram matrix equal the SVD's; memory stays below one n x n float64 matrix."""

import tracemalloc

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from probes.measure.metrics import Condensation
from probes.measure.pairs import _by_first_unit, float32_margin, groups


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
    """The dense textbook computation: full cosine matrix, scipy linkage, SVD; labels renumbered
    by first unit (as ``Condensation`` numbers them)."""
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos = np.clip(unit @ unit.T, -1, 1)
    np.fill_diagonal(cos, 1)
    sim = np.abs(cos) if antipodal else cos
    z = linkage(squareform(np.clip(1 - sim, 0, 2), checks=False), "complete")
    s = np.linalg.svd(u, compute_uv=False)
    p = s / s.sum()
    n = len(u)
    labels = {t: _by_first_unit(fcluster(z, 1 - t, "distance")) for t in thresholds}
    return dict(groups={t: int(lab.max()) for t, lab in labels.items()}, labels=labels,
                mean=(np.abs(cos).sum() - n) / (n * (n - 1)), cos=cos,
                stable=(s**2).sum() / s[0] ** 2, effective=np.exp(-(p * np.log(p)).sum()))


def float32_fit(u, **kw):
    fit = Condensation(**kw)
    fit.float32_work, fit.block_rows = 0, 300  # force the float32 path
    return fit.fit(u)


def same_as_reference(fit, ref, tol=1e-6):
    assert fit.n_groups_ == ref["groups"]
    assert all((fit.labels_[t] == ref["labels"][t]).all() for t in fit.thresholds)
    assert fit.mean_abs_cos_ == pytest.approx(ref["mean"], rel=tol, abs=tol)
    assert fit.stable_rank_ == pytest.approx(ref["stable"], rel=1e-10)
    assert fit.effective_rank_ == pytest.approx(ref["effective"], rel=1e-10)


@pytest.mark.parametrize("antipodal", [False, True])
def test_float32_path_equals_dense_reference(antipodal):
    u = layer(2000).astype(np.float32)  # units arrive as float32 from the readers
    fit = float32_fit(u, antipodal=antipodal)
    ref = reference(u.astype(np.float64), fit.thresholds, antipodal)
    same_as_reference(fit, ref)
    assert len(set(ref["groups"].values())) == 4
    assert fit.cosine_.dtype == np.float32 and np.abs(fit.cosine_ - ref["cos"]).max() < 1e-6
    dense = Condensation(antipodal=antipodal).fit(u)  # float64 GEMM: same to rounding
    assert dense.cosine_.dtype == np.float64 and dense.mean_abs_cos_ == pytest.approx(ref["mean"],
                                                                                      rel=1e-12)
    assert all((dense.labels_[t] == fit.labels_[t]).all() for t in fit.thresholds)
    quick = float32_fit(u, antipodal=antipodal, order=False)  # groups without the dendrogram
    assert quick.order_ is None and quick.cosine_ is None
    assert all((quick.labels_[t] == fit.labels_[t]).all() for t in fit.thresholds)


def triples(n_triples, eps, dim, seed, sign=None):
    """Triples (a, b, c) with cos(a, b) = 0.95 + e, cos(b, c) = 0.95 - e, cos(a, c) = 0.85,
    e = +-eps at random: complete linkage at tau = 0.9 merges the closer pair first, and the other
    unit stays alone, so a float32 error larger than eps would change the groups; triples lie in
    orthogonal 3-D subspaces under a random rotation; then units planted within eps of each
    threshold of a unit of their own."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    rows = []
    for t in range(n_triples):
        e = eps * (sign or rng.choice([-1, 1]))
        gram = np.array([[1, 0.95 + e, 0.85], [0.95 + e, 1, 0.95 - e], [0.85, 0.95 - e, 1]])
        vecs = np.zeros((3, dim))
        vecs[:, 3 * t:3 * t + 3] = np.linalg.cholesky(gram)
        rows.append(vecs)
    base = 3 * n_triples
    for tau in (0.7, 0.9, 0.95, 0.99):
        for e in (-eps, eps):
            x, y = np.zeros(dim), np.zeros(dim)
            x[base], y[base], y[base + 1] = 1, tau + e, np.sqrt(1 - (tau + e) ** 2)
            rows.append(np.vstack([x, y]))
            base += 2
    return np.vstack(rows) @ q.T * rng.uniform(0.5, 2, size=(1, 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_near_threshold_pairs_and_merge_orders_decided_in_float64(seed):
    dim = 256
    u = triples(70, 3e-9, dim, seed)
    assert float32_margin(dim) > 1e-5  # eps is far below what float32 can resolve
    fit = float32_fit(u)
    ref = reference(u, fit.thresholds)
    same_as_reference(fit, ref)
    # every triple: 2 groups at 0.9; a pair planted at tau + eps (tau - eps) is one group (two)
    assert ref["groups"][0.9] == 2 * 70 + 4 + 3 + 4
    for k, tau in enumerate((0.7, 0.9, 0.95, 0.99)):
        lab = fit.labels_[tau][3 * 70 + 4 * k:3 * 70 + 4 * k + 4]
        assert lab[0] != lab[1] and lab[2] == lab[3]
    for e_sign in (1, -1):  # the orders themselves (which pair merges) follow the sign of eps
        u1 = triples(5, 3e-9, 64, seed, sign=e_sign)
        lab = float32_fit(u1).labels_[0.9][:3]
        assert (lab[0] == lab[1]) == (e_sign > 0) and (lab[1] == lab[2]) == (e_sign < 0)


def test_groups_from_close_pairs_equal_one_linkage_on_every_distance():
    """Random distances (no ties): linkage per component of the pairs <= the largest cut, the
    others set to 2, cuts like one linkage on the whole matrix."""
    rng = np.random.default_rng(5)
    for n in (2, 3, 30, 300):
        dist = rng.uniform(0, 1, size=n * (n - 1) // 2) ** 3
        cuts = (0.01, 0.05, 0.1, 0.2)
        z = linkage(dist, "complete")
        i, j = np.triu_indices(n, 1)
        close = dist <= max(cuts)
        got = groups(n, i[close], j[close], dist[close], cuts)
        for t in cuts:
            assert (got[t] == _by_first_unit(fcluster(z, t, "distance"))).all()
    with pytest.raises(ValueError, match="largest cut"):
        groups(3, np.array([0]), np.array([1]), np.array([0.5]), (0.3,))


def peak_bytes(compute):
    tracemalloc.start()
    compute()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_below_one_float64_square():
    n = 3000
    u = layer(n, dim=16).astype(np.float32)
    square = n * n * 8
    # without the dendrogram: blocks of 300 rows x n (a few temporaries) and the close pairs
    assert peak_bytes(lambda: float32_fit(u, order=False)) < 0.5 * square
    # with it: condensed distances + the linkage's copy (one square together) + blocks
    assert peak_bytes(lambda: float32_fit(u)) < 1.2 * square
    assert peak_bytes(lambda: reference(u.astype(np.float64), (0.9,))) > 2.5 * square  # scale


@pytest.mark.parametrize("torch_eig_from", [0, 10**9], ids=["torch_eigvalsh", "scipy_evr"])
def test_gram_singular_values_match_svd_and_fall_back(monkeypatch, torch_eig_from):
    monkeypatch.setattr(Condensation, "torch_eig_from", torch_eig_from)  # each eigenvalue backend
    rng = np.random.default_rng(3)
    for u in (rng.normal(size=(300, 40)), rng.normal(size=(40, 300)),
              np.c_[rng.normal(size=(200, 30)), np.zeros((200, 1))],  # zero bias column
              np.repeat(rng.normal(size=(5, 30)), 40, axis=0)):  # rank 5: exact zeros
        s = np.linalg.svd(u, compute_uv=False)
        got = Condensation()._singular_values(u)
        assert np.allclose(got[: len(s)], s, rtol=1e-9, atol=1e-9 * s[0])
    # a random square matrix (smallest singular values ~ 1e-3 of the largest): the Gram decides
    u = rng.normal(size=(300, 300)).astype(np.float32)
    fit, ref = Condensation().fit(u), reference(u.astype(np.float64), (0.9,))
    assert fit.stable_rank_ == pytest.approx(ref["stable"], rel=1e-10)
    assert fit.effective_rank_ == pytest.approx(ref["effective"], rel=1e-10)
    # a spectrum with values near rounding level: the bound fails, the SVD decides, exactly
    q1, q2 = np.linalg.qr(rng.normal(size=(60, 60)))[0], np.linalg.qr(rng.normal(size=(30, 30)))[0]
    s = np.logspace(0, -6, 30)
    u = q1[:, :30] @ np.diag(s) @ q2
    assert np.allclose(Condensation()._singular_values(u), np.linalg.svd(u, compute_uv=False),
                       rtol=1e-12, atol=0)
