"""Alignment across runs and steps: linear CKA (biased and debiased) against an independent
implementation written with explicit centering matrices and loops, its invariances, and
Hungarian matching of group centroids on planted permutations."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from probes.measure.alignment import align_groups, group_centroids, linear_cka, match_groups


def hsic_full(k: np.ndarray, m: np.ndarray, debiased: bool) -> float:
    """HSIC of two n x n kernels, written out: biased tr(K H L H) / (n-1)^2 with the centering
    matrix H = I - 11'/n; unbiased by Song et al. (2012) eq. 5 with explicit loops for the sums."""
    n = len(k)
    if not debiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(k @ h @ m @ h)) / (n - 1) ** 2
    kt, lt = k.copy(), m.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    trace = sum(kt[i, j] * lt[j, i] for i in range(n) for j in range(n))
    sum_k = sum(kt[i, j] for i in range(n) for j in range(n))
    sum_l = sum(lt[i, j] for i in range(n) for j in range(n))
    cross = sum(kt[i, j] * lt[j, m2] for i in range(n) for j in range(n) for m2 in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3))


def cka_full(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """CKA from the raw (uncentered) kernels x x', y y'."""
    k, m = x @ x.T, y @ y.T
    return hsic_full(k, m, debiased) / np.sqrt(hsic_full(k, k, debiased) * hsic_full(m, m, debiased))


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_equals_the_written_out_estimator(debiased):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 6)) + 3.0  # an offset: the kernels must be centered
    y = x @ rng.normal(size=(6, 4)) + 0.5 * rng.normal(size=(25, 4))
    assert linear_cka(x, y, debiased) == pytest.approx(cka_full(x, y, debiased), abs=1e-10)
    # more features than inputs takes the Gram path
    wide = rng.normal(size=(25, 40))
    assert linear_cka(wide, x, debiased) == pytest.approx(cka_full(wide, x, debiased), abs=1e-10)


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_invariances(debiased):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 10)) @ np.diag(np.linspace(0.2, 3.0, 10))
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(10, random_state=2)
    assert linear_cka(x, 7.5 * x @ q, debiased) == pytest.approx(1.0, abs=1e-12)
    y = rng.normal(size=(200, 5))
    assert linear_cka(x @ q * 0.01, y, debiased) == pytest.approx(linear_cka(x, y, debiased),
                                                                  abs=1e-12)
    # an invertible map that is not orthogonal times a scale changes it, by a clear margin
    a = np.diag([30.0, *np.ones(9)]) @ q
    assert np.linalg.matrix_rank(a) == 10
    assert linear_cka(x, x @ a, debiased) < 0.7


def test_debiased_cka_of_independent_data_is_near_zero_and_biased_is_not():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 100)), rng.normal(size=(200, 100))
    biased, debiased = linear_cka(x, y, debiased=False), linear_cka(x, y)
    # biased ~ p / (n + p) for independent Gaussians: 1/3 here
    assert 0.25 < biased < 0.4
    assert abs(debiased) < 0.02


def test_cka_refuses_bad_input_and_gives_nan_for_a_constant_side():
    x = np.ones((10, 3))
    assert np.isnan(linear_cka(x, np.random.default_rng(0).normal(size=(10, 2))))
    with pytest.raises(ValueError, match="10 rows and y 9"):
        linear_cka(np.zeros((10, 2)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="finite 2-D"):
        linear_cka(np.array([np.nan, 1.0]), np.eye(2))


def planted(rng, k: int, dim: int, members: int, noise: float):
    """k random directions, ``members`` noisy unit vectors around each: (units, labels, dirs)."""
    dirs = rng.normal(size=(k, dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), members)
    units = dirs[labels] + noise * rng.normal(size=(k * members, dim))
    return units * rng.uniform(0.5, 2.0, size=(len(units), 1)), labels, dirs


def test_matching_recovers_a_planted_permutation_with_sign_flips():
    rng = np.random.default_rng(4)
    units, labels, dirs = planted(rng, 6, 32, 5, 0.02)
    perm = rng.permutation(6)
    signs = np.array([1, -1, 1, -1, -1, 1])
    cent_a, ids_a = group_centroids(units, labels)
    assert list(ids_a) == list(range(6))
    assert np.allclose(np.linalg.norm(cent_a, axis=1), 1.0)
    assert (np.einsum("ij,ij->i", cent_a, dirs) > 0.998).all()
    b = signs[:, None] * cent_a[perm]  # b's row r is a's row perm[r], turned by signs[r]
    plain = match_groups(cent_a, b)
    assert plain.matched_share == pytest.approx(3 / 6)  # only the unturned ones
    found = match_groups(cent_a, b, antipodal=True)
    assert found.matched_share == 1.0 and found.mean_cosine == pytest.approx(1.0)
    partner = dict(found.pairs.tolist())
    assert all(partner[perm[r]] == r for r in range(6))
    assert [found.signs[perm[r]] for r in range(6)] == list(signs)


def test_partial_overlap_gives_the_share_of_the_larger_side():
    rng = np.random.default_rng(5)
    q = ortho_group.rvs(16, random_state=5)
    a = q[:5]  # five orthogonal directions
    b = np.vstack([a[[3, 0, 4]], q[5:9]])  # three of them, and four new ones
    m = match_groups(a, b, threshold=0.9)
    assert (m.k_a, m.k_b) == (5, 7) and len(m.pairs) == 5
    assert m.matched_share == pytest.approx(3 / 7)
    assert sorted(p for p, c in zip(m.pairs.tolist(), m.cosines) if c >= 0.9) == \
        [[0, 1], [3, 0], [4, 2]]
    noisy = b[:3] + 0.05 * rng.normal(size=(3, 16))  # still the same directions
    assert match_groups(a, noisy).matched_share == pytest.approx(3 / 5)


def test_antipodal_centroids_add_opposite_members():
    d = np.array([[1.0, 0.0, 0.0], [-1.0, 0.05, 0.0]])  # one line, two signs
    cent, _ = group_centroids(d, np.zeros(2, dtype=int), antipodal=True)
    assert abs(cent[0, 0]) == pytest.approx(np.cos(np.arctan(0.05) / 2), abs=1e-12)
    plain, _ = group_centroids(d, np.zeros(2, dtype=int))
    assert abs(plain[0, 0]) < 0.03  # the plain mean cancels the line


def test_matching_refuses_bad_input():
    with pytest.raises(ValueError, match="dim 3 and 4"):
        match_groups(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="zero rows"):
        match_groups(np.zeros((2, 3)), np.eye(3))
    with pytest.raises(ValueError, match="threshold=0"):
        match_groups(np.eye(3), np.eye(3), threshold=0)
    with pytest.raises(ValueError, match="labels must be"):
        group_centroids(np.eye(3), np.array([0.0, 1.0, 2.0]))
    empty = match_groups(np.zeros((0, 3)), np.eye(3))
    assert empty.matched_share == 0.0 and np.isnan(empty.mean_cosine)


def test_align_groups_of_two_shuffled_unit_sets():
    rng = np.random.default_rng(6)
    units, labels, _ = planted(rng, 4, 16, 3, 0.01)
    units = np.vstack([units, rng.normal(size=(2, 16))])  # two lone units: no condensed group
    labels = np.concatenate([labels, [10, 11]])
    order = rng.permutation(len(units))
    renamed = labels[order] * 3 + 5  # other ids, other unit order, other scales
    found, ids = align_groups(units, labels, units[order] * 2.0, renamed)
    assert (found.k_a, found.k_b, found.matched_share) == (4, 4, 1.0)
    assert sorted(ids.tolist()) == [[g, g * 3 + 5] for g in range(4)]
