"""Condensation metrics on hand-built matrices with known answers, and the unit readers."""

import itertools

import numpy as np
import pytest
import torch

from models import apply_init_rate, build_model
from probes.measure.metrics import Condensation, relative_distance
from probes.measure.units import read_units


def planted(k, per_group, dim, noise=0.01, n_random=0, seed=0):
    """k groups of near-identical unit vectors along orthogonal directions, plus random units."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]  # k orthonormal directions
    rows = [basis[g] + noise * rng.normal(size=dim) for g in range(k) for _ in range(per_group)]
    rows += list(rng.normal(size=(n_random, dim)))
    return np.array(rows) * rng.uniform(0.5, 2.0, size=(len(rows), 1))  # norms must not matter


def brute_cos(u):
    n = len(u)
    c = np.empty((n, n))
    for i, j in itertools.product(range(n), repeat=2):
        c[i, j] = u[i] @ u[j] / np.sqrt((u[i] @ u[i]) * (u[j] @ u[j]))
    return c


@pytest.mark.parametrize("k", [1, 3, 7])
def test_planted_groups_counted_exactly(k):
    u = planted(k, per_group=6, dim=64)
    fit = Condensation().fit(u)
    assert fit.n_groups_[0.9] == k
    assert fit.n_units_ == 6 * k
    # the groups are the planted ones
    labels = fit.labels_[0.9].reshape(k, 6)
    assert all(len(set(row)) == 1 for row in labels) and len(set(labels[:, 0])) == k
    assert fit.largest_group_share_[0.9] == pytest.approx(1 / k)
    assert fit.group_ratio_[0.9] == pytest.approx(1 / 6)


def test_orthogonal_units_are_their_own_groups():
    u = np.eye(20) * np.arange(1, 21)[:, None]
    fit = Condensation().fit(u)
    for t in fit.thresholds:
        assert fit.n_groups_[t] == 20
    assert fit.mean_abs_cos_ == 0.0
    # singular values 1..20: closed forms of stable and effective rank
    s = np.arange(1, 21, dtype=float)
    assert fit.stable_rank_ == pytest.approx((s**2).sum() / 400)
    p = s / s.sum()
    assert fit.effective_rank_ == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_mean_abs_cos_matches_brute_force():
    u = np.random.default_rng(1).normal(size=(15, 7))
    c = brute_cos(u)
    off = ~np.eye(15, dtype=bool)
    fit = Condensation().fit(u)
    assert fit.mean_abs_cos_ == pytest.approx(np.abs(c[off]).mean(), abs=1e-12)
    assert np.allclose(fit.cosine_, c, atol=1e-12)


def test_every_pair_in_a_group_meets_the_threshold():
    u = planted(4, per_group=5, dim=16, noise=0.3, n_random=10, seed=2)
    fit = Condensation().fit(u)
    c = brute_cos(u)
    for t, labels in fit.labels_.items():
        for g in np.unique(labels):
            idx = np.flatnonzero(labels == g)
            assert c[np.ix_(idx, idx)].min() >= t - 1e-12


def test_zero_norm_units_dropped_and_counted():
    u = planted(2, per_group=4, dim=8)
    u = np.vstack([u, np.zeros((3, 8)), 1e-12 * np.ones((1, 8))])
    fit = Condensation().fit(u)
    assert (fit.n_units_, fit.n_dropped_) == (8, 4)
    assert fit.n_groups_[0.9] == 2
    assert dict((m, v) for m, t, v in fit.results() if t is None)["n_dropped"] == 4


def test_antipodal_merges_opposite_directions():
    v = np.array([[1.0, 0, 0], [-1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0]])
    assert Condensation().fit(v).n_groups_[0.9] == 3
    assert Condensation(antipodal=True).fit(v).n_groups_[0.9] == 2


def test_degenerate_inputs():
    assert np.isnan(Condensation().fit(np.zeros((4, 3))).mean_abs_cos_)
    one = Condensation().fit(np.ones((1, 3)))
    assert one.n_groups_[0.9] == 1 and np.isnan(one.mean_abs_cos_)
    with pytest.raises(ValueError, match="2-D"):
        Condensation().fit(np.ones(3))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Condensation(thresholds=[1.5])


def test_relative_distance():
    w0 = np.array([[3.0, 4.0]])
    assert relative_distance(w0 * 2, w0) == pytest.approx(1.0)
    assert relative_distance(w0, w0) == 0.0
    with pytest.raises(ValueError):
        relative_distance(np.ones(3), np.ones(2))


# --- unit readers: planted groups written into real modules ---------------------------------

def plant_rows(weight_rows, k, seed=0):
    """(n, d) rows holding k planted groups of n / k units each (k must divide n)."""
    n, d = weight_rows.shape
    assert n % k == 0
    return torch.tensor(planted(k, per_group=n // k, dim=d, seed=seed), dtype=torch.float32)


def find(model, layer, component, head=None):
    return next(u for u in read_units(model)
                if (u.layer, u.component, u.head) == (layer, component, head))


def test_gpt2_conv1d_orientation():
    torch.manual_seed(0)
    model = build_model("gpt2", vocab_size=128, n_positions=9, n_embd=32, n_layer=2, n_head=2,
                        d_ff=64)
    apply_init_rate(model, 0.5)
    fc = model.transformer.h[1].mlp.c_fc  # Conv1D weight (d_in=32, d_out=64): neuron = column
    with torch.no_grad():
        fc.weight.copy_(plant_rows(torch.empty(64, 32), k=4).T)
        fc.bias.zero_()
    assert find(model, 1, "mlp.in").units.shape == (64, 33)
    assert Condensation().fit(find(model, 1, "mlp.in").units).n_groups_[0.9] == 4
    # planting along rows (the nn.Linear layout) instead must not give 4 groups
    with torch.no_grad():
        fc.weight.copy_(plant_rows(torch.empty(32, 64), k=4))
    assert Condensation().fit(find(model, 1, "mlp.in").units).n_groups_[0.9] != 4


def test_gpt2_fused_c_attn_split_and_heads():
    torch.manual_seed(0)
    model = build_model("gpt2", vocab_size=128, n_positions=9, n_embd=32, n_layer=1, n_head=2)
    apply_init_rate(model, 0.5)
    attn = model.transformer.h[0].attn.c_attn  # (32, 96): q | k | v columns
    with torch.no_grad():
        attn.weight[:, 32:64] = plant_rows(torch.empty(32, 32), k=2).T  # plant into K only
    k_units = find(model, 0, "attn.k")
    assert k_units.units.shape == (32, 33)
    assert Condensation().fit(k_units.units).n_groups_[0.9] == 2
    assert Condensation().fit(find(model, 0, "attn.q").units).n_groups_[0.9] > 20
    # per head: head 0 holds the first 16 K neurons = the first planted group
    assert Condensation().fit(find(model, 0, "attn.k", 0).units).n_groups_[0.9] == 1
    qk = find(model, 0, "attn.qk_heads")
    q0 = attn.weight[:, :16].detach()
    k0 = attn.weight[:, 32:48].detach()
    assert torch.allclose(qk.units[0], (q0 @ k0.T).reshape(-1), atol=1e-6)


def test_paper_linear_rows_and_units_count():
    torch.manual_seed(0)
    model = build_model("paper", vocab_size=128, n_positions=9, n_embd=64, n_layer=2, n_head=1)
    apply_init_rate(model, 1.0)
    q = model.h[0].attn.q_proj  # Linear (32, 64): neuron = row
    with torch.no_grad():
        q.weight.copy_(plant_rows(q.weight, k=4))
    units = find(model, 0, "attn.q").units
    assert units.shape == (32, 64)  # no bias column: the paper's model has none
    assert torch.equal(units, q.weight.detach())  # Linear stores (d_out, d_in): neuron k = row k
    assert Condensation().fit(units).n_groups_[0.9] == 4
    comps = {(u.layer, u.component, u.head) for u in read_units(model)}
    assert comps == {(i, c, None) for i in (0, 1) for c in ("attn.q", "attn.k", "attn.v", "mlp.in")}


def test_unknown_model_type():
    with pytest.raises(ValueError, match="no unit reader"):
        read_units(torch.nn.Linear(3, 3))
