"""Merging condensed groups (probes.measure.merge): planted, exactly condensed layers merge to one
unit per group with the same function; a random layer merges nothing."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator

from models import apply_init_rate, build_mlp, build_model
from probes.config import expand, load_config
from probes.measure.family_units import all_units
from probes.measure.merge import (
    UnsupportedModel,
    group_labels,
    merge_model,
    merge_neurons,
    merge_query_rows,
    merge_sites,
)
from probes.measure.metrics import Condensation
from probes.train.loop import Run
from tasks import make_task

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "tiny.yaml"
MERGE_METRICS = ("merged_width", "loss_merged", "rel_loss_change", "max_abs_logit_diff")


def planted_rows(n_groups: int, per_group: int, dim: int, gen: torch.Generator):
    """(n_groups * per_group, dim) rows c_k u_g with random directions u_g and norms c_k in
    [0.5, 2.5], members of a group shuffled over the layer; also the labels and the norms."""
    u = torch.randn(n_groups, dim, generator=gen, dtype=torch.float64)
    u /= u.norm(dim=1, keepdim=True)
    labels = torch.arange(n_groups).repeat_interleave(per_group)
    labels = labels[torch.randperm(len(labels), generator=gen)]
    c = 0.5 + 2 * torch.rand(len(labels), generator=gen, dtype=torch.float64)
    return c[:, None] * u[labels], labels, c, u


def test_planted_relu_mlp_merges_exactly_to_its_groups():
    gen = torch.Generator().manual_seed(0)
    model = build_mlp(in_dim=3, width=20, out_dim=2, activation="relu").double().eval()
    rows, labels, c, u = planted_rows(4, 5, 4, gen)  # (w, b) of 20 neurons in 4 directions
    with torch.no_grad():
        model.hidden.weight.copy_(rows[:, :3])
        model.hidden.bias.copy_(rows[:, 3])
        model.output.weight.copy_(torch.randn(2, 20, generator=gen, dtype=torch.float64))
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    merged = merge_model(model, 0.99)
    assert merged.widths == [dict(layer=0, component="mlp.in", n_units=20, merged_width=4)]
    assert (merged.model.hidden.weight.norm(dim=1) > 0).sum() == 4
    # independent: the narrow net of width 4 written out by hand, a_g = sum_{k in g} c_k a_k
    a = model.output.weight.detach()
    a_narrow = torch.stack([(a[:, labels == g] * c[labels == g]).sum(1) for g in range(4)], dim=1)
    narrow = torch.relu(x @ u[:, :3].T + u[:, 3]) @ a_narrow.T
    with torch.no_grad():
        wide, out = model(x), merged.model(x)
    assert wide.abs().max() > 0.1  # the check is not trivial
    assert (out - wide).abs().max() < 1e-5
    assert (narrow - wide).abs().max() < 1e-5
    # the original is untouched
    assert torch.equal(model.hidden.weight, rows[:, :3])


def test_planted_relu_mlp_in_float32_within_1e5():
    gen = torch.Generator().manual_seed(1)
    model = build_mlp(in_dim=5, width=60, out_dim=1).eval()
    rows, _, _, _ = planted_rows(6, 10, 6, gen)
    with torch.no_grad():
        model.hidden.weight.copy_(rows[:, :5].float())
        model.hidden.bias.copy_(rows[:, 5].float())
        model.output.weight.normal_(0, 0.3, generator=gen)
    merged = merge_model(model, 0.99)
    x = torch.randn(400, 5, generator=gen)
    with torch.no_grad():
        diff = (merged.model(x) - model(x)).abs().max().item()
    assert merged.widths[0]["merged_width"] == 6 and diff < 1e-5


def test_random_layer_merges_nothing_at_0_9():
    gen = torch.Generator().manual_seed(2)
    model = build_mlp(in_dim=16, width=30, out_dim=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1, generator=gen)
    units = torch.cat([model.hidden.weight, model.hidden.bias[:, None]], 1).detach().numpy()
    unit = units / np.linalg.norm(units, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert (cos[~np.eye(30, dtype=bool)] < 0.9).all()
    merged = merge_model(model, 0.9)
    assert merged.widths[0]["merged_width"] == 30
    x = torch.randn(100, 16, generator=gen)
    with torch.no_grad():
        assert torch.equal(merged.model(x), model(x))
    for p, q in zip(model.parameters(), merged.model.parameters()):
        assert torch.equal(p, q)


def test_tanh_merge_is_exact_for_equal_rows_only():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    a = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    x = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    labels = np.array([1, 1, 1, 2, 2, 2])

    def f(w_in, w_out):
        return torch.tanh(x @ w_in.T) @ w_out.T

    equal = w.repeat_interleave(3, dim=0)  # equal rows: mean row, summed outputs, exact
    w2, _, a2, kept = merge_neurons(equal, None, a, labels, homogeneous=False)
    assert len(kept) == 2 and (f(w2, a2) - f(equal, a)).abs().max() < 1e-12
    scaled = equal * torch.tensor([0.5, 1.0, 2.0, 0.5, 1.0, 2.0], dtype=torch.float64)[:, None]
    w3, _, a3, _ = merge_neurons(scaled, None, a, labels, homogeneous=False)
    assert (f(w3, a3) - f(scaled, a)).abs().max() > 1e-3  # parallel is not enough for tanh
    # the same parallel rows under ReLU merge exactly
    w4, _, a4, _ = merge_neurons(scaled, None, a, labels, homogeneous=True)
    relu = (torch.relu(x @ w4.T) @ a4.T - torch.relu(x @ scaled.T) @ a.T).abs().max()
    assert relu < 1e-12


def test_query_rows_merge_keeps_the_scores():
    gen = torch.Generator().manual_seed(4)
    rows, labels, c, u = planted_rows(3, 4, 10, gen)
    k = torch.randn(12, 10, generator=gen, dtype=torch.float64)
    x = torch.randn(7, 10, generator=gen, dtype=torch.float64)
    q2, _, k2, _, kept = merge_query_rows(rows, None, k, None, labels.numpy() + 1)
    assert len(kept) == 3 and (q2.norm(dim=1) > 0).sum() == 3
    # independent: scores with one query row u_g and key row sum_r c_r k_r per group
    k_narrow = torch.stack([(c[labels == g, None] * k[labels == g]).sum(0) for g in range(3)])
    narrow = (x @ u.T) @ (x @ k_narrow.T).T
    scores = (x @ rows.T) @ (x @ k.T).T
    assert (narrow - scores).abs().max() < 1e-10
    assert ((x @ q2.T) @ (x @ k2.T).T - scores).abs().max() < 1e-10


def paper_with_planted_queries(gen):
    model = build_model("paper", vocab_size=24, n_positions=8, n_embd=16, n_layer=2, n_head=1)
    apply_init_rate(model, 0.3)  # std 16^-0.3 = 0.43: logits of order one
    rows, _, _, _ = planted_rows(2, 4, 16, gen)  # d_head is 8: 8 rows in 2 directions
    with torch.no_grad():
        model.h[0].attn.q_proj.weight.copy_(rows.float())
    return model.eval()


def test_planted_query_rows_in_the_paper_model():
    torch.manual_seed(5)  # the model's own init draws from the global generator
    gen = torch.Generator().manual_seed(5)
    model = paper_with_planted_queries(gen)
    merged = merge_model(model, 0.9, only=(0, "attn.q"))
    assert merged.widths == [dict(layer=0, component="attn.q", n_units=8, merged_width=2)]
    ids = torch.randint(0, 24, (64, 8), generator=gen)
    with torch.no_grad():
        before, after = model(input_ids=ids).logits, merged.model(input_ids=ids).logits
    assert before.std() > 0.1
    # float32 sums in another order: exact up to rounding (a wrong merge is off by O(1))
    assert (after - before).abs().max() < 1e-5 * before.abs().max()
    # the other layers are untouched; only the query and key rows of the merged head changed
    changed = {n for (n, p), q in zip(model.named_parameters(), merged.model.parameters())
               if not torch.equal(p, q)}
    assert changed == {"h.0.attn.q_proj.weight", "h.0.attn.k_proj.weight"}
    # dropping the members without moving their keys onto the kept row changes the logits
    naive = merge_model(model, 0.9, only=(0, "attn.q")).model
    with torch.no_grad():
        dead = naive.h[0].attn.q_proj.weight.norm(dim=1) == 0
        naive.h[0].attn.k_proj.weight.copy_(model.h[0].attn.k_proj.weight * ~dead[:, None])
        naive.h[0].attn.q_proj.weight.copy_(model.h[0].attn.q_proj.weight * ~dead[:, None])
        assert (naive(input_ids=ids).logits - before).abs().max() > 1e-3


def test_gpt2_query_rows_with_biases_merge_exactly():
    gen = torch.Generator().manual_seed(6)
    model = build_model("gpt2", vocab_size=24, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    apply_init_rate(model, 0.3)
    rows, _, _, _ = planted_rows(2, 4, 17, gen)  # head 0: 8 rows (w, b) in 2 directions
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[:, :8] = rows[:, :16].T.float()
        model.transformer.h[0].attn.c_attn.bias[:8] = rows[:, 16].float()
    model.eval()
    merged = merge_model(model, 0.99, only=(0, "attn.q"))
    # head 0 falls to 2 rows; head 1 (random rows) keeps its 8
    assert merged.widths[0]["merged_width"] == 2 + 8
    ids = torch.randint(0, 24, (32, 8), generator=gen)
    with torch.no_grad():
        diff = (merged.model(input_ids=ids).logits - model(input_ids=ids).logits).abs().max()
    assert diff < 1e-5


def test_all_sites_and_bad_input():
    model = build_model("paper", vocab_size=24, n_positions=8, n_embd=16, n_layer=2, n_head=1)
    sites = [(s.layer, s.component) for s in merge_sites(model)]
    assert sites == [(0, "attn.q"), (0, "mlp.in"), (1, "attn.q"), (1, "mlp.in")]
    merged = merge_model(model, 0.9)
    assert [(w["layer"], w["component"], w["n_units"]) for w in merged.widths] == [
        (0, "attn.q", 8), (0, "mlp.in", 48), (1, "attn.q", 8), (1, "mlp.in", 48)]
    with pytest.raises(ValueError, match="names no merge site"):
        merge_model(model, 0.9, only=(5, "mlp.in"))
    with pytest.raises(ValueError, match="thresholds"):
        merge_model(model, 1.5)
    with pytest.raises(UnsupportedModel, match="no merge"):
        merge_sites(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="shapes do not fit"):
        merge_neurons(torch.ones(3, 2), None, torch.ones(1, 4), [1, 1, 1], True)


def test_zero_units_are_dropped_from_the_width():
    w = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = group_labels(w, 0.99)
    assert labels[2] == 0 and labels[0] == labels[1] != labels[3]
    a = torch.tensor([[1.0, 1.0, 5.0, 1.0]], dtype=torch.float64)
    w2, _, a2, kept = merge_neurons(w, None, a, labels, homogeneous=True)
    assert kept.tolist() == [1, 3]  # the group's largest-norm member holds it
    assert torch.allclose(w2[1], torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert a2[0].tolist() == [0.0, 3.0, 0.0, 1.0]  # 1 * 1 + 2 * 1; the zero unit's 5 is gone


# --- the merge probe of a training run ------------------------------------------------------

def _train(config: Path, overrides: dict, tmp_path):
    (cfg,) = expand(load_config(config, {"save_every": 0, "save_checkpoints": "none",
                                         "output_dir": str(tmp_path), **overrides}))
    t = make_task(cfg.task, **cfg.task_options())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = Run(cfg, t, {k: v[:] for k, v in t.build().items()}, Accelerator(cpu=True)).train()
    finally:
        torch.set_num_threads(threads)
    return cfg, pd.DataFrame(result.metrics), result.model


def test_merge_probe_rows_of_a_paper_run(tmp_path):
    overrides = {"gamma": 1.0, "steps": 20, "n_probes": 3, "merge_probe": True,
                 "thresholds": [0.5, 0.99]}
    cfg, m, model = _train(TINY, overrides, tmp_path)
    off_cfg, off, _ = _train(TINY, overrides | {"merge_probe": False, "steps": 2}, tmp_path / "off")
    assert "merge_probe" not in off_cfg.identity() and "merge_probe" not in cfg.identity()
    merge = m[m["metric"].isin(MERGE_METRICS) | m["metric"].str.endswith("_merged")]
    assert set(merge["step"]) == {20}  # the final probe only
    sites = [(None if np.isnan(layer) else int(layer), comp) for layer, comp in
             merge[["layer", "component"]].drop_duplicates().itertuples(index=False)]
    assert sites == [(0, "attn.q"), (0, "mlp.in"), (1, "attn.q"), (1, "mlp.in"), (None, "all")]
    scores = m[(m["component"] == "output") & (m["step"] == 20)].set_index("metric")["value"]
    names = {"acc_test_id_merged", "ood_inferential_merged", "ood_symmetric_merged"}
    assert names <= set(merge["metric"])
    model.eval()
    for (layer, comp, tau), r in merge.groupby(["layer", "component", "threshold"], dropna=False):
        v = r.set_index("metric")["value"]
        assert v["rel_loss_change"] == pytest.approx(
            (v["loss_merged"] - scores["train_loss"]) / scores["train_loss"], rel=1e-9, abs=1e-12)
        # independent: the merged width is the number of groups Condensation finds in the units
        only = None if comp == "all" else (int(layer), comp)
        tau = float(tau)
        units = [u for u in all_units(model) if u.head is None and u.component in ("mlp.in", "attn.q")
                 and (only is None or (u.layer, u.component) == only)]
        groups = sum(Condensation([tau]).fit(u.units).n_groups_[tau] for u in units)
        assert v["merged_width"] == groups
        assert r["n_units"].iloc[0] == sum(len(u.units) for u in units)
        if groups == r["n_units"].iloc[0]:  # nothing merged: the same function
            assert v["max_abs_logit_diff"] == 0 and v["rel_loss_change"] == 0
    assert not off["metric"].isin(MERGE_METRICS).any()


def test_merge_probe_of_a_two_layer_net(tmp_path):
    cfg, m, _ = _train(ROOT / "configs" / "mlp_phase.yaml",
                       {"width": 50, "gamma": 1.75, "seed": 0, "steps": 30, "n_probes": 2,
                        "merge_probe": True, "thresholds": [0.99]}, tmp_path)
    rows = m[(m["threshold"] == 0.99) & (m["component"] == "mlp.in")].set_index("metric")["value"]
    assert {"merged_width", "loss_merged", "rel_loss_change", "max_abs_logit_diff",
            "rel_err_train_merged", "test_loss_merged"} <= set(rows.index)
    assert 1 <= rows["merged_width"] <= 50
