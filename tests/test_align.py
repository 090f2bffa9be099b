"""``condensation-probes align A B``: a model against itself and against a copy whose units are
permuted (same function) aligns fully, two independent models do not; one unit set's matching
and CKA recomputed here with scipy's linkage, brute-force matching and the explicit unbiased
HSIC; bad input is one line, exit 2, nothing written."""

import contextlib
import copy
import io
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from safetensors.numpy import load_file
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from test_bad_input import snapshot, tokenizer
from test_checkpoints import planted

from probes.run import main
from probes.store import ALIGN_COLUMNS

D, HEADS, VOCAB = 32, 4, 64


def build(seed):
    """A tiny GPT-2 with 4 planted groups in each layer's mlp.in and 2 in layer 0's attn.q."""
    torch.manual_seed(seed)
    m = T.GPT2LMHeadModel(T.GPT2Config(n_embd=D, n_head=HEADS, n_layer=2, n_inner=64,
                                       vocab_size=VOCAB, n_positions=16))
    with torch.no_grad():
        for i, block in enumerate(m.transformer.h):
            u, _ = planted(4, 12, 16, D + 1, seed=10 * seed + i)
            block.mlp.c_fc.weight.copy_(u[:, :D].T)
            block.mlp.c_fc.bias.copy_(u[:, D])
        u, _ = planted(2, 12, 8, D + 1, seed=10 * seed + 5)
        attn = m.transformer.h[0].attn.c_attn
        attn.weight[:, :D] = u[:, :D].T
        attn.bias[:D] = u[:, D]
    return m.eval()


def permuted(model, seed=0):
    """The same function with its units permuted: MLP neurons (c_fc columns, c_proj rows) and,
    inside each head, the query / key dimensions together and the value dimensions (with the
    output projection's rows)."""
    m, g, dh = copy.deepcopy(model), torch.Generator().manual_seed(seed), D // HEADS
    with torch.no_grad():
        for block in m.transformer.h:
            fc, proj, attn = block.mlp.c_fc, block.mlp.c_proj, block.attn
            p = torch.randperm(fc.weight.shape[1], generator=g)
            fc.weight.copy_(fc.weight[:, p])
            fc.bias.copy_(fc.bias[p])
            proj.weight.copy_(proj.weight[p])
            qk, v = (torch.cat([h * dh + torch.randperm(dh, generator=g) for h in range(HEADS)])
                     for _ in range(2))
            cols = torch.cat([qk, D + qk, 2 * D + v])
            attn.c_attn.weight.copy_(attn.c_attn.weight[:, cols])
            attn.c_attn.bias.copy_(attn.c_attn.bias[cols])
            attn.c_proj.weight.copy_(attn.c_proj.weight[v])
    return m


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    a = build(1)
    b = permuted(a)
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.allclose(a(x).logits, b(x).logits, atol=1e-5)  # the permutation keeps the function
    wide = T.GPT2LMHeadModel(T.GPT2Config(n_embd=2 * D, n_head=HEADS, n_layer=2, n_inner=64,
                                          vocab_size=VOCAB, n_positions=16))
    for name, model in (("a", a), ("b", b), ("c", build(2)), ("run/checkpoint-0", a),
                        ("run/checkpoint-3", b), ("wide", wide)):
        model.save_pretrained(root / name)
        tokenizer(root / name, VOCAB)
    lines = [" ".join(f"w{(7 * i + 3 * j) % (VOCAB - 1)}" for j in range(12)) for i in range(20)]
    (root / "lines.txt").write_text("\n".join(lines) + "\n")
    return root


def align(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["align", *map(str, args), "--num_threads", "1"])  # a busy core spins otherwise
    return code, err.getvalue()


@pytest.fixture(scope="module")
def tables(folders):
    out = {}
    for pair in (("a", "a"), ("a", "b"), ("a", "c"), ("run@0", "run@3")):
        dest = folders / ("out_" + "_".join(pair).replace("@", ""))
        code, err = align(*(folders / p for p in pair), "--probe_inputs", folders / "lines.txt",
                          "--output_dir", dest)
        assert code == 0, err
        out[pair] = (pd.read_csv(dest / "align.csv"), err)
    return out


def wide(table):
    keys = ["layer", "component", "head", "threshold"]
    return table.set_index([*keys, "metric"])["value"].unstack("metric")


@pytest.mark.parametrize("pair", [("a", "a"), ("a", "b"), ("run@0", "run@3")])
def test_same_model_or_permuted_copy_aligns_fully(tables, pair):
    table, err = tables[pair]
    assert list(table.columns) == ALIGN_COLUMNS
    assert set(table["a_run"]) == {pair[0]} and set(table["b_run"]) == {pair[1]}
    assert ("not steps of one run" in err) == (pair == ("a", "b"))
    groups = table[table["metric"] != "cka"]
    w = wide(groups.fillna({"head": -1}))
    has = w["n_condensed_a"] > 0
    assert (w["n_condensed_a"] == w["n_condensed_b"]).all()
    assert (w.loc[has, "matched_share"] == 1).all()
    assert np.allclose(w.loc[has, "mean_matched_cos"], 1, atol=1e-9)
    assert w.loc[~has, ["matched_share", "mean_matched_cos"]].isna().all().all()
    # the planted groups: 4 per layer's MLP at 0.9, 2 in layer 0's W_Q
    assert w.loc[(0, "mlp.in", -1, 0.9), "n_condensed_a"] == 4
    assert w.loc[(1, "mlp.in", -1, 0.9), "n_condensed_a"] == 4
    assert w.loc[(0, "attn.q", -1, 0.9), "n_condensed_a"] == 2
    cka = table[table["metric"] == "cka"]
    assert len(cka) == 2 * (4 + 3 * HEADS) and np.allclose(cka["value"], 1, atol=1e-9)


def test_independent_models_do_not_align(tables):
    table, err = tables[("a", "c")]
    assert "not steps of one run" in err
    w = wide(table[table["head"].isna() & (table["metric"] != "cka")].fillna({"head": -1}))
    mlp = w.xs("mlp.in", level="component")
    assert (mlp["n_condensed_a"] > 0).all() and (mlp["matched_share"] == 0).all()
    assert (mlp["mean_matched_cos"] < 0.5).all()
    cka = table[(table["metric"] == "cka") & table["head"].isna()]
    assert len(cka) == 8 and (cka["value"].abs() < 0.5).all()


def unbiased_cka(x, y):
    """Debiased linear CKA with the kernels written out: K~ = K with zero diagonal and the
    unbiased HSIC of Song et al. (JMLR 2012, eq. 5)."""
    def hsic(kx, ky):
        n = len(kx)
        kx, ky = kx - np.diag(np.diag(kx)), ky - np.diag(np.diag(ky))
        one = np.ones(n)
        return (np.trace(kx @ ky) + (one @ kx @ one) * (one @ ky @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * (one @ kx @ ky @ one)) / (n * (n - 3))
    x, y = x - x.mean(0), y - y.mean(0)
    kx, ky = x @ x.T, y @ y.T
    return hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky))


def groups_and_match(ua, ub, tau):
    """Complete linkage at 1 - tau (scipy), centroids of the groups of >= 2 units, and the best
    one-to-one matching by brute force."""
    cents = []
    for u in (ua, ub):
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        lab = fcluster(linkage(pdist(u, "cosine"), "complete"), 1 - tau, criterion="distance")
        c = np.array([u[lab == g].mean(0) for g in np.unique(lab) if (lab == g).sum() >= 2])
        cents.append(c / np.linalg.norm(c, axis=1, keepdims=True))
    cos = cents[0] @ cents[1].T
    ka, kb = cos.shape
    small = cos if ka <= kb else cos.T  # each group of the smaller side gets a partner
    best = max((sum(small[i, j] for i, j in enumerate(perm)), perm)
               for perm in itertools.permutations(range(small.shape[1]), len(small)))[1]
    matched = np.array([small[i, j] for i, j in enumerate(best)])
    return (matched >= tau).sum() / max(ka, kb), matched.mean(), ka, kb


def test_one_unit_set_against_numpy(folders, tmp_path):
    out = tmp_path / "out"
    code, err = align(folders / "a", folders / "c", "--probe_inputs", folders / "lines.txt",
                      "--fold_norms", "false", "--thresholds", "0.7,0.9", "--output_dir", out)
    assert code == 0, err
    table = pd.read_csv(out / "align.csv")
    got = table[(table["layer"] == 1) & (table["component"] == "mlp.in") & table["head"].isna()]
    units = []
    for name in ("a", "c"):
        t = load_file(folders / name / "model.safetensors")
        units.append(np.c_[t["transformer.h.1.mlp.c_fc.weight"].T, t["transformer.h.1.mlp.c_fc.bias"]]
                     .astype(np.float64))
    for tau in (0.7, 0.9):
        at = got[got["threshold"] == tau].set_index("metric")["value"]
        share, mean_cos, ka, kb = groups_and_match(*units, tau)
        assert (at["n_condensed_a"], at["n_condensed_b"]) == (ka, kb)
        assert at["matched_share"] == pytest.approx(share)
        assert at["mean_matched_cos"] == pytest.approx(mean_cos, abs=1e-9)
    acts = []
    for name in ("a", "c"):
        model = T.GPT2LMHeadModel.from_pretrained(folders / name).eval()
        tok = T.AutoTokenizer.from_pretrained(folders / name)
        seen = []

        def keep(mod, args, y, seen=seen):
            seen.append(y.reshape(-1, y.shape[-1]))
        hook = model.transformer.h[1].mlp.c_fc.register_forward_hook(keep)
        with torch.no_grad():
            for line in (folders / "lines.txt").read_text().splitlines():
                model(**tok(line, return_tensors="pt"))
        hook.remove()
        acts.append(torch.cat(seen).double().numpy())
    want = unbiased_cka(*acts)
    assert got[got["metric"] == "cka"]["value"].item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("args, words", [
    (["NOPE", "a"], "does not exist"),
    (["run", "a"], "holds 2 step checkpoints: accepted is one checkpoint, or"),
    (["run@7", "a"], "has no step 7: accepted are its steps 0, 3"),
    (["a"], "align takes two checkpoints A B, not 1"),
    (["a", "a", "--gamma", "1"], "unknown key 'gamma'"),
    (["a", "a", "--thresholds", "2"], "thresholds=[2] is invalid"),
    (["a", "a", "--probe_samples", "0"], "probe_samples=0 is invalid"),
    (["a", "a", "FOREIGN"], "holds files this command did not write"),
    (["a", "wide"], "have no unit set in common (same layer, component and unit dimension)"),
])
def test_bad_input_one_line_exit_2_nothing_written(folders, tmp_path, args, words):
    out = tmp_path / "out"
    if "FOREIGN" in args:
        out.mkdir()
        (out / "mine.txt").write_text("keep")
        args = args[:-1]
    before = snapshot(out)
    code, err = align(*(folders / a if a in ("a", "run", "run@7", "NOPE", "wide") else a
                        for a in args),
                      "--output_dir", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0] and "accepted" in lines[0], lines[0]
    assert snapshot(out) == before and not any(tmp_path.glob(".out*"))
