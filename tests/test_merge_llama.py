"""Merging in the Llama family (probes.measure.merge, probes.checkpoint.merge): SiLU-gated MLP
neurons with equal gate rows and parallel up rows merge exactly; grouped-query attention merges a
key row only for rows grouped in every query head that reads it (exact when their coefficients
are proportional); RoPE makes the query-row merge approximate; folded norm gains keep the
function; the checkpoint probe's merge rows match an independent loss."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T

from probes.measure.merge import (
    AttnSite,
    fold_norm_gains,
    merge_model,
    merge_query_rows_shared,
    merge_site,
    merge_sites,
    site_labels,
)
from probes.report.figures.merge import merge_table
from probes.run import main

MERGE_METRICS = ("merged_width", "loss_merged", "rel_loss_change", "max_abs_logit_diff")


def tiny_llama(seed=0, **kw) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    c = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return T.LlamaForCausalLM(T.LlamaConfig(**(c | kw))).eval()


def plant_gated(mlp, n_groups: int, gen: torch.Generator, equal_gates: bool = True):
    """Gate rows equal (or only parallel) and up rows parallel within each of ``n_groups`` groups;
    returns the labels, the up norms c_k, the gate rows g_G and unit up rows h_G."""
    m, d = mlp.gate_proj.weight.shape
    labels = torch.arange(n_groups).repeat_interleave(m // n_groups)
    labels = labels[torch.randperm(m, generator=gen)]
    g = torch.randn(n_groups, d, generator=gen)
    h = torch.randn(n_groups, d, generator=gen)
    h /= h.norm(dim=1, keepdim=True)
    c = 0.5 + 2 * torch.rand(m, generator=gen)
    scale = torch.ones(m) if equal_gates else 0.5 + torch.rand(m, generator=gen)
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(scale[:, None] * g[labels])
        mlp.up_proj.weight.copy_(c[:, None] * h[labels])
    return labels, c, g, h


def test_planted_gated_mlp_merges_exactly():
    gen = torch.Generator().manual_seed(0)
    model = tiny_llama()
    mlp = model.model.layers[0].mlp
    labels, c, g, h = plant_gated(mlp, 4, gen)
    merged = merge_model(model, 0.99, only=(0, "mlp.gate_up"))
    assert merged.widths == [dict(layer=0, component="mlp.gate_up", n_units=24, merged_width=4)]
    assert (merged.model.model.layers[0].mlp.down_proj.weight.norm(dim=0) > 0).sum() == 4
    # independent: the narrow gated MLP of width 4, a_G = sum_{k in G} c_k a_k
    a = mlp.down_proj.weight.detach()
    a_narrow = torch.stack([(a[:, labels == j] * c[labels == j]).sum(1) for j in range(4)], 1)
    x = torch.randn(50, 16, generator=gen)
    narrow = (torch.nn.functional.silu(x @ g.T) * (x @ h.T)) @ a_narrow.T
    with torch.no_grad():
        wide = mlp(x)
        assert (narrow - wide).abs().max() < 1e-5 and wide.abs().max() > 0.1
        ids = torch.randint(0, 40, (4, 12), generator=gen)
        before, after = model(input_ids=ids).logits, merged.model(input_ids=ids).logits
    assert before.std() > 0.01 and (after - before).abs().max() < 1e-5


def test_gated_merge_with_parallel_gates_is_approximate():
    gen = torch.Generator().manual_seed(1)
    model = tiny_llama()
    plant_gated(model.model.layers[0].mlp, 4, gen, equal_gates=False)
    merged = merge_model(model, 0.99, only=(0, "mlp.gate_up"))
    assert merged.widths[0]["merged_width"] == 4  # parallel gate rows group at 0.99
    with torch.no_grad():
        x = torch.randn(50, 16, generator=gen)
        mlp, mlp2 = model.model.layers[0].mlp, merged.model.model.layers[0].mlp
        assert (mlp(x) - mlp2(x)).abs().max() > 1e-3  # silu is not homogeneous: measured


def test_gqa_shared_key_rows_exact_for_proportional_coefficients():
    gen = torch.Generator().manual_seed(2)
    n_heads, n, d, n_groups = 3, 8, 10, 3
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    u = torch.randn(n_heads, n_groups, d, generator=gen, dtype=torch.float64)
    alpha = 0.5 + torch.rand(n_heads, generator=gen, dtype=torch.float64)
    beta = 0.5 + torch.rand(n, generator=gen, dtype=torch.float64)
    coef = alpha[:, None] * beta[None]  # rank 1 over (head, row)
    q = coef[:, :, None] * u[:, labels]  # head h, row r: C[h, r] u_{h, group(r)}
    k = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x, y = (torch.randn(6, d, generator=gen, dtype=torch.float64) for _ in range(2))

    def scores(qh, kk):
        return (x @ qh.T) @ (y @ kk.T).T

    q2, _, k2, _, kept = merge_query_rows_shared(q, None, k, None, labels.numpy() + 1)
    assert len(kept) == n_groups and (k2.norm(dim=1) > 0).sum() == n_groups
    for h in range(n_heads):
        # independent: per group one query row u and one key row sum_r C[h, r] k_r
        kn = torch.stack([(coef[h, labels == j, None] * k[labels == j]).sum(0) for j in range(3)])
        narrow = (x @ u[h].T) @ (y @ kn.T).T
        assert (narrow - scores(q[h], k)).abs().max() < 1e-10
        assert (scores(q2[h], k2) - scores(q[h], k)).abs().max() < 1e-10
    # coefficients that are not proportional across heads: one shared key row cannot serve all
    bent = q * (0.5 + torch.rand(n_heads, n, 1, generator=gen, dtype=torch.float64))
    q3, _, k3, _, _ = merge_query_rows_shared(bent, None, k, None, labels.numpy() + 1)
    worst = max((scores(q3[h], k3) - scores(bent[h], k)).abs().max() for h in range(n_heads))
    assert worst > 1e-3


def test_gqa_groups_must_hold_in_every_query_head():
    gen = torch.Generator().manual_seed(3)
    d = 10
    u = torch.randn(2, d, generator=gen, dtype=torch.float64)
    head0 = (0.5 + torch.rand(8, 1, generator=gen, dtype=torch.float64)) * u[torch.arange(8) % 2]
    head1 = torch.randn(8, d, generator=gen, dtype=torch.float64)  # no groups
    q = torch.cat([head0, head1])
    k = torch.randn(8, d, generator=gen, dtype=torch.float64)
    site = AttnSite(0, q.clone(), None, k.clone(), None, n_head=2, n_kv_head=1)
    labels = site_labels(site, [0.99])[0.99]
    assert len(labels) == 1 and len(set(labels[0].tolist())) == 8  # all singletons
    assert merge_site(site, 0.99)["merged_width"] == 16
    assert torch.equal(site.q_w, q) and torch.equal(site.k_w, k)
    both = AttnSite(0, torch.cat([head0, 2 * head0]), None, k.clone(), None, n_head=2, n_kv_head=1)
    assert merge_site(both, 0.99)["merged_width"] == 2 * 2  # two groups kept in each head


def test_rope_query_row_merge_is_measured_not_exact():
    gen = torch.Generator().manual_seed(4)
    model = tiny_llama(num_key_value_heads=4)  # no GQA: only RoPE stands in the way
    q = model.model.layers[0].self_attn.q_proj.weight
    u = torch.randn(2, 16, generator=gen)
    with torch.no_grad():
        q[:4] = (0.5 + torch.rand(4, 1, generator=gen)) * u[torch.arange(4) % 2]
        q[:4] *= 5  # strong enough scores that a wrong rotation shows
    merged = merge_model(model, 0.99, only=(0, "attn.q"))
    assert merged.widths[0]["merged_width"] == 16 - 2
    ids = torch.randint(0, 40, (4, 12), generator=gen)
    with torch.no_grad():
        diff = (merged.model(input_ids=ids).logits - model(input_ids=ids).logits).abs().max()
    assert diff > 1e-4  # learned positions would give < 1e-5 (test_merge.py)


def test_folding_norm_gains_keeps_the_function():
    gen = torch.Generator().manual_seed(5)
    llama = tiny_llama()
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2,
                                          n_head=2, bos_token_id=0,
                                          eos_token_id=0)).eval()
    for model in (llama, gpt2):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name or ".ln_" in name:
                    p.copy_(0.5 + torch.rand(p.shape, generator=gen))
        ids = torch.randint(0, 40, (3, 10), generator=gen)
        with torch.no_grad():
            before = model(input_ids=ids).logits
            assert fold_norm_gains(model) is True
            after = model(input_ids=ids).logits
        assert (after - before).abs().max() < 1e-5
        gains = [p for n, p in model.named_parameters() if ("layernorm" in n or ".ln_" in n)
                 and n.endswith("weight") and "ln_f" not in n]  # the final norm feeds lm_head
        assert gains and all(torch.equal(p, torch.ones_like(p)) for p in gains)
    assert [s.component for s in merge_sites(llama)] == ["attn.q", "mlp.gate_up"] * 2


# --- the checkpoint merge probe (--merge_probe true) -----------------------------------------

def save_tokenizer(path: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]"] + [f"w{i}" for i in range(vocab - 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


def test_checkpoint_merge_probe(tmp_path):
    gen = torch.Generator().manual_seed(6)
    model = tiny_llama(seed=6)
    with torch.no_grad():  # random gains: the merge groups the folded rows
        model.model.layers[1].post_attention_layernorm.weight.copy_(0.5 + torch.rand(16, generator=gen))
    plant_gated(model.model.layers[1].mlp, 3, gen)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    save_tokenizer(folder, 40)
    lines = [" ".join(f"w{i}" for i in torch.randint(0, 39, (12,), generator=gen).tolist())
             for _ in range(5)]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["--checkpoint", str(folder), "--output_dir", str(out), "--probe_inputs",
            str(tmp_path / "lines.txt"), "--thresholds", "0.9,0.99", "--num_threads", "1"]
    assert main(args + ["--merge_probe", "true"]) == 0
    m = pd.read_csv(out / "metrics.csv")
    merge = m[m["metric"].isin(MERGE_METRICS)]
    sites = [(None if np.isnan(a) else int(a), b) for a, b in
             merge[["layer", "component"]].drop_duplicates().itertuples(index=False)]
    assert sites == [(0, "attn.q"), (0, "mlp.gate_up"), (1, "attn.q"), (1, "mlp.gate_up"),
                     (None, "all")]
    assert len(merge) == 5 * 2 * 4 and (merge["basis"] == "weight").all()
    # independent: the unmerged model's next-token loss, from transformers' own labels loss
    ids = [torch.tensor([[int(w[1:]) + 1 for w in line.split()]]) for line in lines]  # w_i: id i + 1
    with torch.no_grad():
        loss = sum(model(input_ids=i, labels=i).loss.item() * (i.shape[1] - 1) for i in ids)
    loss /= sum(i.shape[1] - 1 for i in ids)
    for (layer, comp, _), r in merge.groupby(["layer", "component", "threshold"], dropna=False):
        v = r.set_index("metric")["value"]
        assert v["loss_merged"] == pytest.approx(loss * (1 + v["rel_loss_change"]), rel=1e-6)
        if comp == "mlp.gate_up" and layer == 1 or comp == "all":
            assert v["merged_width"] == (3 if comp != "all" else 3 + 24 + 16 + 16)
            assert v["max_abs_logit_diff"] < 1e-5 and abs(v["rel_loss_change"]) < 1e-5
        else:  # random rows: nothing merges, the same function
            assert v["merged_width"] == r["n_units"].iloc[0]
            assert v["max_abs_logit_diff"] < 1e-5
    assert (out / "figures" / "merge_loss_vs_width.png").stat().st_size > 10000
    table = merge_table(m)  # the figure's points: kept = merged_width / n_units
    row = table[(table["component"] == "mlp.gate_up") & (table["layer"] == 1)].iloc[0]
    assert row["kept"] == pytest.approx(3 / 24)
    assert len(table) == 5 * 2 and merge_table(m[m["basis"] == "activation"]).empty
    assert main(args + ["--merge_probe", "maybe"]) == 2
    assert main(args[:4] + ["--merge_probe", "true"]) == 2  # no --probe_inputs
    base = tmp_path / "base"  # no LM head: no next-token loss
    T.LlamaModel(model.config).save_pretrained(base)
    save_tokenizer(base, 40)
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaModel"]
    assert main(["--checkpoint", str(base), "--output_dir", str(tmp_path / "o2"), "--probe_inputs",
                 str(tmp_path / "lines.txt"), "--merge_probe", "true"]) == 2
