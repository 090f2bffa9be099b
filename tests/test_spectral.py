"""Spectral metrics against float64 SVDs to their stated tolerances (effective rank 1e-5, stable
rank 1e-6 relative) on the default route (float64 Gram, SVD only past 1e-5) and the opt-in float32
route, the float32 route's fallback where float32 Gram matrices cannot resolve the spectrum
(planted low rank, near-square shapes), its error model, and the weight-only columns and the
power-law alpha against independent computations, and the stable ranks alone (Lanczos, no
spectrum). The 4096 x 4096 and 11008 x 4096 sets are marked slow."""

import numpy as np
import pytest
import torch

import models
from probes.measure.arch import layout_for
from probes.measure.family_units import all_units
from probes.measure.metrics import Condensation
from probes.measure.spectral import (
    FAST_RANK_TOL,
    FAST_TOP_TOL,
    SPECTRAL_METRICS,
    entropy_error,
    powerlaw_alpha,
    stable_spectrum,
    top_eigenvalue,
)
from probes.measure.units import ModelTensors, base_prefix, block_units, read_units


def svd_ranks(u):
    """(stable rank, effective rank) from numpy's float64 SVD."""
    s = np.linalg.svd(np.asarray(u, np.float64), compute_uv=False)
    p = s[s > 0] / s.sum()
    return (s**2).sum() / s[0] ** 2, np.exp(-(p * np.log(p)).sum())


def float32_fit():
    """A Condensation(spectral="float32") whose float32 route applies from any size (as on large
    layers)."""
    fit = Condensation(order=False, spectral="float32")
    fit.float32_gram_work = 0
    return fit


def planted_low_rank(n, dim, rank, noise, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, rank)), rng.standard_normal((rank, dim))
    return ((a @ b / np.sqrt(rank) + noise * rng.standard_normal((n, dim))) * 0.02).astype(np.float32)


def random_units(n, dim, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, dim)) * 0.02).astype(np.float32)


@pytest.mark.parametrize("shape", [(1200, 400), (400, 1200)])
def test_float32_route_meets_its_tolerances(shape):
    u = random_units(*shape)
    fit = float32_fit().fit(u)
    assert fit.spectral_route_ == "float32"
    stable, effective = svd_ranks(u)
    assert fit.stable_rank_ == pytest.approx(stable, rel=FAST_TOP_TOL)
    assert fit.effective_rank_ == pytest.approx(effective, rel=FAST_RANK_TOL)
    exact = Condensation(order=False, spectral="exact").fit(u)
    assert exact.spectral_route_ == "float64"
    assert exact.effective_rank_ == pytest.approx(effective, rel=1e-9)


def test_float32_route_falls_back_where_float32_cannot_resolve():
    # planted rank 16 + noise 1e-3: most singular values lie below float32's Gram resolution
    u = planted_low_rank(1200, 400, 16, 1e-3)
    fit = float32_fit().fit(u)
    assert fit.spectral_route_ in ("float64", "svd")
    stable, effective = svd_ranks(u)
    assert fit.effective_rank_ == pytest.approx(effective, rel=1e-9)
    assert fit.stable_rank_ == pytest.approx(stable, rel=1e-9)
    # near-square and float64 units never take it, nor do the other settings
    assert float32_fit().fit(random_units(500, 400)).spectral_route_ == "float64"
    assert float32_fit().fit(random_units(1200, 400).astype(np.float64)).spectral_route_ == "float64"
    for setting in (True, "fast", "exact"):
        fit = Condensation(order=False, spectral=setting)
        fit.float32_gram_work = 0
        assert fit.fit(random_units(1200, 400)).spectral_route_ == "float64"


def test_default_tolerance_spares_the_svd():
    """Singular values from 1 down to 1e-6: float64 Gram rounding could move the effective rank by
    more than 1e-8 (spectral="exact" takes the SVD) but not by 1e-5 (the default keeps the Gram)."""
    rng = np.random.default_rng(7)
    q1, q2 = np.linalg.qr(rng.normal(size=(90, 90)))[0], np.linalg.qr(rng.normal(size=(60, 60)))[0]
    u = q1[:, :60] @ np.diag(np.logspace(0, -6, 60)) @ q2
    exact, default = (Condensation(order=False, spectral=s).fit(u) for s in ("exact", True))
    assert (exact.spectral_route_, default.spectral_route_) == ("svd", "float64")
    stable, effective = svd_ranks(u)
    assert exact.effective_rank_ == pytest.approx(effective, rel=1e-12)
    bound = default._spectrum(u).rank_error
    assert 0 < bound <= FAST_RANK_TOL
    assert abs(np.log(default.effective_rank_ / effective)) <= bound
    assert default.stable_rank_ == pytest.approx(stable, rel=1e-12)


def test_top_eigenvalue_certificate_holds():
    u = random_units(900, 300, seed=4)
    gram = u.T @ u
    theta, bound = top_eigenvalue(u, gram)
    s_max2 = np.linalg.svd(u.astype(np.float64), compute_uv=False)[0] ** 2
    assert bound < FAST_TOP_TOL
    assert theta <= s_max2 * (1 + 1e-12) and s_max2 <= theta * (1 + bound)
    wide_theta, _ = top_eigenvalue(u.T.copy(), u.T @ u)  # the u u^T form
    assert wide_theta == pytest.approx(s_max2, rel=1e-10)


def test_entropy_error_bounds_random_eigenvalue_errors():
    rng = np.random.default_rng(2)
    s = np.sort(rng.uniform(0, 1, 300) ** 3)[::-1]
    lam = s**2
    noise = 1e-6 * lam[0]
    bound = entropy_error(lam, noise)

    def log_eff(lam):
        root = np.sqrt(np.where(lam > noise, lam, 0.0))
        p = root[root > 0] / root.sum()
        return -(p * np.log(p)).sum()

    changes = [abs(log_eff(np.maximum(lam + rng.choice([-1, 1], lam.size) * noise, 0)) - log_eff(lam))
               for _ in range(20)]
    assert 0 < max(changes) <= bound
    assert entropy_error(np.zeros(5), 1e-9) == np.inf


def test_weight_columns_leave_out_the_bias():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((120, 80))
    w[:, 0] *= 10  # a dominant direction, so that the bias changes the spectrum
    b = rng.standard_normal(120) * 5
    fit = Condensation(order=False).fit(np.c_[w, b], bias_columns=1)
    assert fit.stable_rank_weight_ == pytest.approx(svd_ranks(w)[0], rel=1e-10)
    assert fit.stable_rank_ == pytest.approx(svd_ranks(np.c_[w, b])[0], rel=1e-10)
    assert abs(fit.stable_rank_ - fit.stable_rank_weight_) > 0.1
    assert fit.alpha_ == pytest.approx(powerlaw_alpha(np.linalg.svd(w, compute_uv=False) ** 2),
                                       rel=1e-10)
    same = Condensation(order=False).fit(w, bias_columns=0)
    assert same.stable_rank_weight_ == same.stable_rank_
    names = [m for m, _, _ in fit.results()]
    assert [m for m in names if m in SPECTRAL_METRICS] == list(SPECTRAL_METRICS)
    # under 50 eigenvalues: no alpha row; without bias_columns: no weight rows at all
    small = Condensation(order=False).fit(w[:40], bias_columns=0)
    assert np.isnan(small.alpha_) and "alpha" not in [m for m, _, _ in small.results()]
    assert "stable_rank_weight" not in [m for m, _, _ in Condensation().fit(w).results()]
    for bad in (80 + 1, -1, 1.5, True):
        with pytest.raises(ValueError, match="bias_columns"):
            Condensation().fit(np.c_[w, b], bias_columns=bad)
    for bad in ("float16", 1, 0.0, "STABLE"):
        with pytest.raises(ValueError, match="'stable'"):
            Condensation(spectral=bad)


@pytest.mark.parametrize("n, dim, bias", [(120, 81, 1), (60, 81, 1), (81, 83, 3), (40, 43, 3)])
def test_weight_spectrum_from_the_units_gram_matches_its_own_svd(n, dim, bias):
    """W's spectrum is cut from [W | b]'s Gram matrix (its leading block, or u u^T - b b^T for
    wide units, or a Gram of its own in between): each against W's own float64 SVD."""
    rng = np.random.default_rng(n)
    u = rng.standard_normal((n, dim))
    u[:, -bias:] *= 5
    w = u[:, :dim - bias]
    fit = Condensation(order=False).fit(u, bias_columns=bias)
    s = np.linalg.svd(w, compute_uv=False)
    assert fit.stable_rank_weight_ == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-10)
    assert fit.stable_rank_ == pytest.approx(svd_ranks(u)[0], rel=1e-10)
    expected = powerlaw_alpha(s**2)
    assert np.isnan(fit.alpha_) if np.isnan(expected) else fit.alpha_ == pytest.approx(expected,
                                                                                      rel=1e-9)


@pytest.mark.parametrize("units", [random_units(900, 300, seed=6), random_units(300, 900, seed=7),
                                   planted_low_rank(700, 400, 20, 0.05), random_units(100, 60)],
                         ids=["tall", "wide", "planted", "dense-top"])
def test_stable_route_gives_the_stable_rank_without_a_spectrum(units):
    """spectral="stable": s_max^2 by Lanczos (or a dense solver on small sets), certified to
    FAST_TOP_TOL; the stable rank against numpy's float64 SVD, and no other spectral row."""
    found = stable_spectrum(units)
    assert found is not None and found.s is None and found.top_error <= FAST_TOP_TOL
    assert found.stable_rank == pytest.approx(svd_ranks(units)[0], rel=FAST_TOP_TOL)
    b = np.random.default_rng(8).standard_normal((len(units), 1)).astype(np.float32) * 0.1
    fit = Condensation(order=False, spectral="stable").fit(np.c_[units, b], bias_columns=1)
    assert fit.stable_rank_ == pytest.approx(svd_ranks(np.c_[units, b])[0], rel=FAST_TOP_TOL)
    assert fit.stable_rank_weight_ == pytest.approx(svd_ranks(units)[0], rel=FAST_TOP_TOL)
    assert fit.effective_rank_ is None and fit.alpha_ is None
    names = [m for m, _, _ in fit.results()]
    assert [m for m in names if m in SPECTRAL_METRICS] == ["stable_rank", "stable_rank_weight"]


def test_weight_spectrum_exact_under_a_dominant_bias():
    """A bias 1e7 times the weights (wide units: u u^T = W W^T + b b^T is summed, never
    differenced): W's stable rank and alpha equal its own SVD's."""
    rng = np.random.default_rng(11)
    w, b = rng.standard_normal((64, 64)), rng.standard_normal((64, 1)) * 1e7
    fit = Condensation(order=False).fit(np.c_[w, b], bias_columns=1)
    s = np.linalg.svd(w, compute_uv=False)
    assert fit.stable_rank_weight_ == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-12)
    assert fit.alpha_ == pytest.approx(powerlaw_alpha(s**2), rel=1e-10)


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e20, 1e30])
def test_stable_route_at_any_float32_scale(scale):
    """Lanczos's float32 products are scaled by the largest entry: no underflow or overflow,
    the lanczos route holds and the stable rank is the SVD's."""
    u = (np.random.default_rng(12).standard_normal((300, 201)) * scale).astype(np.float32)
    found = stable_spectrum(u)
    assert found is not None and found.route == "lanczos"
    assert found.stable_rank == pytest.approx(svd_ranks(u)[0], rel=FAST_TOP_TOL)


def test_stable_route_falls_back_on_a_zero_weight():
    """A weight of zeros has no top direction: the certificate fails and the float64 route
    gives the stable rank NaN, as on the default route."""
    u = np.c_[np.zeros((50, 40), np.float32), np.ones((50, 1), np.float32)]
    fit = Condensation(order=False, spectral="stable").fit(u, bias_columns=1)
    assert np.isnan(fit.stable_rank_weight_) and fit.stable_rank_ == pytest.approx(1.0)


def alpha_by_definition(evals, thresh=1e-5):
    """Clauset-Shalizi-Newman MLE per candidate xmin and the KS distance written out with the
    empirical CDF of the tail, the first smallest distance winning (WeightWatcher's choice)."""
    x = sorted(v for v in evals if v > thresh)
    best = (np.inf, None)
    for i, xmin in enumerate(x[:-1]):
        tail = x[i:]
        alpha = 1 + len(tail) / sum(np.log(t / xmin) for t in tail)
        if alpha <= 1:
            continue
        dist = max(abs((1 - (t / xmin) ** (1 - alpha)) - k / len(tail)) for k, t in enumerate(tail))
        if dist < best[0]:
            best = (dist, alpha)
    return best[1]


def test_powerlaw_alpha_matches_its_definition_and_recovers_a_planted_exponent():
    rng = np.random.default_rng(5)
    pareto = 0.5 * rng.uniform(size=5000) ** (-1 / 1.5)  # density ~ x^-2.5 above 0.5
    evals = np.r_[pareto, rng.uniform(0.01, 0.5, size=1000)]  # and a bulk below it
    assert powerlaw_alpha(evals) == pytest.approx(2.5, abs=0.06)  # ~3 standard errors
    few = np.r_[pareto[:300], rng.uniform(0.01, 0.5, size=100)]
    assert powerlaw_alpha(few) == pytest.approx(alpha_by_definition(few), rel=1e-12)
    assert np.isnan(powerlaw_alpha(np.r_[np.ones(49) * 2.0 ** np.arange(49), np.zeros(100)]))


def test_reader_marks_linear_and_conv1d_weight_rows():
    """Linear (BERT) and Conv1D (GPT-2) rows carry their bias column count; head forms and
    convolution kernels (ResNet) carry None; the ResNet classifier is a Linear."""
    import transformers as T

    torch.manual_seed(0)
    bert = T.BertModel(T.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64))
    layout = layout_for(bert.config)
    source = ModelTensors(bert)
    sets = block_units(source, base_prefix(source.names(), layout), layout.blocks[0])
    marks = {(u.component, u.head): u.bias_columns for u in sets}
    assert marks[("attn.q", None)] == marks[("attn.q", 1)] == marks[("mlp.in", None)] == 1
    assert marks[("attn.qk_heads", None)] is None
    gpt2 = models.build_model("gpt2", vocab_size=50, n_positions=8, n_embd=32, n_layer=1, n_head=2)
    marks = {(u.component, u.head): (u.bias_columns, u.units.shape[1]) for u in read_units(gpt2)}
    assert marks[("attn.k", None)] == marks[("mlp.in", None)] == (1, 33)
    resnet = {u.component: u.bias_columns for u in all_units(models.build_resnet())}
    assert resnet.pop("classifier") == 1 and set(resnet.values()) == {None}


# --- Llama-7B-sized sets: the tolerances where they are meant to hold -------------------------

@pytest.mark.slow
@pytest.mark.parametrize("shape", [(4096, 4096), (11008, 4096)])
@pytest.mark.parametrize("kind", ["random", "planted"])
def test_large_sets_within_tolerance(shape, kind):
    u = random_units(*shape) if kind == "random" else planted_low_rank(*shape, 256, 1e-2)
    ref = Condensation(order=False, spectral="exact")._spectrum(u)
    assert ref.route in ("float64", "svd")
    for setting in (True, "float32"):
        got = Condensation(order=False, spectral=setting)._spectrum(u)
        assert got.stable_rank == pytest.approx(ref.stable_rank, rel=FAST_TOP_TOL)
        assert got.effective_rank == pytest.approx(ref.effective_rank, rel=FAST_RANK_TOL)
        # float32 Gram matrices only for the random rectangular set; the others fall back
        assert (got.route == "float32") == (setting == "float32" and kind == "random"
                                            and shape[0] > shape[1])
    stable = Condensation(order=False, spectral="stable")._spectrum(u)
    assert stable.route == "lanczos"
    assert stable.stable_rank == pytest.approx(ref.stable_rank, rel=FAST_TOP_TOL)


@pytest.mark.parametrize("kind", ["random", "planted exact rank", "spike", "column scales"])
def test_float32_gram_error_model(kind):
    """The model behind the float32 route: every eigenvalue of the float32 Gram matrix is within
    sqrt(N) eps32 max_j |u_j|^2 of the float64 one (measured: <= 0.34 of it)."""
    rng = np.random.default_rng(6)
    n, dim = 1200, 400
    u = {"random": lambda: rng.standard_normal((n, dim)),
         "planted exact rank": lambda: rng.standard_normal((n, 8)) @ rng.standard_normal((8, dim)),
         "spike": lambda: 0.1 * rng.standard_normal((n, dim)) + rng.standard_normal(dim),
         "column scales": lambda: rng.standard_normal((n, dim)) * np.logspace(-2, 1, dim)}[kind]()
    u = u.astype(np.float32)
    g32, g64 = u.T @ u, u.T.astype(np.float64) @ u.astype(np.float64)
    noise = np.sqrt(dim) * np.finfo(np.float32).eps * np.diag(g64).max()
    gap = np.abs(np.linalg.eigvalsh(g32.astype(np.float64)) - np.linalg.eigvalsh(g64)).max()
    assert gap <= 0.5 * noise
