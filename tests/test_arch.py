"""One home per architecture (probes.measure.arch): every model type has one architecture file
whose unit sites and merge sites are the same rows of the same modules; OPT, GPT-NeoX and BERT
merge planted groups exactly where the algebra is exact, and their norms fold (or not) as stated."""

import importlib
import pkgutil

import pytest
import torch
import torch.nn.functional as F
import transformers as T

import probes.measure.arch as arch
from models import build_mlp, build_model
from probes.measure.arch import REGISTRY, UnsupportedModel, check_mergeable, layout_for
from probes.measure.arch.gpt_neox import per_head
from probes.measure.merge import (
    AttnSite,
    fold_norm_gains,
    merge_model,
    merge_query_rows,
    merge_sites,
    site_labels,
)
from probes.measure.merge_rows import augmented
from probes.measure.units import ModelTensors, base_prefix, block_parts, unit_rows

SMALL = dict(vocab_size=50, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
             max_position_embeddings=32)


def tiny(model_type: str):
    """A random tiny model of ``model_type``, float64, eval mode."""
    torch.manual_seed(0)
    llama = dict(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    build = {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=40, n_positions=16, n_embd=16,
                                                       n_layer=2, n_head=2)),
        "condensation_paper_gpt": lambda: build_model("paper", vocab_size=24, n_positions=8,
                                                      n_embd=16, n_layer=2, n_head=2),
        "condensation_mlp": lambda: build_mlp(in_dim=3, width=10, out_dim=2),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**llama)),
        "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**llama)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**llama)),
        "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(intermediate_size=64, **SMALL)),
        "opt": lambda: T.OPTForCausalLM(T.OPTConfig(ffn_dim=64, word_embed_proj_dim=32, **SMALL)),
        "bert": lambda: T.BertModel(T.BertConfig(intermediate_size=64, **SMALL)),
        "roberta": lambda: T.RobertaModel(T.RobertaConfig(intermediate_size=64, **SMALL)),
    }[model_type]
    return build().double().eval()


def test_every_model_type_has_exactly_one_architecture_file():
    names = [m.name for m in pkgutil.iter_modules(arch.__path__) if m.name != "base"]
    files = [importlib.import_module(f"probes.measure.arch.{n}").ARCH for n in names]
    assert sorted(a.name for a in files) == sorted(names)  # each file's ARCH names its file
    assert sorted(a.name for a in arch.ARCHITECTURES) == sorted(names)
    types = [t for a in files for t in a.model_types]
    assert len(types) == len(set(types)) and set(types) == set(REGISTRY)
    assert set(names) == {"gpt2", "paper", "llama", "gpt_neox", "opt", "bert", "resnet", "two_layer"}
    for t in ("resnet", "qwen3"):  # read, not merged
        assert REGISTRY[t].blocks is not None
        with pytest.raises(UnsupportedModel, match="no merge"):
            check_mergeable(type("C", (), {"model_type": t})())
    mergeable = {t for t in REGISTRY if t not in ("resnet", "qwen3")}
    assert set(arch.MERGEABLE) == mergeable


def _path(block, module: str) -> str:
    return f"{block.path}.{module}" if block.path else module


def _modules_of(model, tensors) -> set[str]:
    """The modules whose parameters the given views share storage with."""
    by_storage = {p.untyped_storage().data_ptr(): n.rpartition(".")[0]
                  for n, p in model.named_parameters()}
    return {by_storage[t.untyped_storage().data_ptr()] for t in tensors}


@pytest.mark.parametrize("model_type", sorted(REGISTRY.keys() - {"resnet", "qwen3"}))
def test_unit_sites_and_merge_sites_are_the_same_rows(model_type):
    model = tiny(model_type)
    layout = layout_for(model.config)
    source = ModelTensors(model)
    prefix = base_prefix(source.names(), layout)
    sites = merge_sites(model)
    assert len(sites) == len(layout.blocks) * (1 if model_type == "condensation_mlp" else 2)
    for block in layout.blocks:
        comps = block_parts(source, prefix, block)  # the unit reader's rows
        parts = {p.component: p for p in block.parts}
        for site in (s for s in sites if s.layer == block.layer):
            if isinstance(site, AttnSite):
                named = {parts[c].module for c in ("attn.q", "attn.k")}
                q, qb, k, kb = site.per_head()
                d = q.shape[-1]
                for rows, w, b in ((comps["attn.q"][0], q, qb), (comps["attn.k"][0], k, kb)):
                    flat = augmented(w.reshape(-1, d), None if b is None else b.reshape(-1))
                    assert torch.equal(flat.float(), rows)
                assert (site.n_head, site.n_kv_head) == (comps["attn.q"][1], comps["attn.k"][1])
            else:
                mlp = [p for c, p in parts.items() if c.startswith("mlp.")]
                named = {p.module for p in mlp} | {mlp[0].post}
                ins = ([(site.gate, None, "mlp.gate"), (site.up, None, "mlp.up")]
                       if hasattr(site, "gate") else [(site.w_in, site.b_in, "mlp.in")])
                for w, b, comp in ins:
                    assert torch.equal(augmented(w, b).float(), comps[comp][0])
                post = source.get(f"{prefix}{_path(block, mlp[0].post)}.weight")
                assert torch.equal(site.w_out.float(), unit_rows(post, None, mlp[0].kind)[0])
            assert _modules_of(model, site.tensors()) == {prefix + _path(block, m) for m in named}


def plant_mlp(fc_in, fc_out, n_groups: int, gen, parallel: bool):
    """Input rows (bias appended) c_k u_g in ``n_groups`` directions (c_k = 1: equal rows);
    returns the narrow layer of one neuron per group, x -> act(U x + b_U) A^T + b_out, written
    out by hand with a_g = sum_{k in g} c_k a_k."""
    m, d = fc_in.weight.shape
    labels = torch.arange(n_groups).repeat_interleave(m // n_groups)
    labels = labels[torch.randperm(m, generator=gen)]
    u = torch.randn(n_groups, d + 1, generator=gen, dtype=torch.float64)
    c = 0.5 + 2 * torch.rand(m, generator=gen, dtype=torch.float64) if parallel else torch.ones(m)
    with torch.no_grad():
        fc_in.weight.copy_(c[:, None] * u[labels, :d])
        fc_in.bias.copy_(c * u[labels, d])
    a = fc_out.weight.detach()
    a_narrow = torch.stack([(a[:, labels == g] * c[labels == g]).sum(1) for g in range(n_groups)], 1)
    return lambda x, act: act(x @ u[:, :d].T + u[:, d]) @ a_narrow.T + fc_out.bias.detach()


def plant_query_rows(q_w, q_b, rows, n_groups: int, gen):
    """Query rows ``rows`` (w and b) parallel within ``n_groups`` directions, norms in [0.5, 2.5]
    (times 3, so that a wrong merge shows in the scores)."""
    n, d = len(range(*rows.indices(q_w.shape[0]))), q_w.shape[1]
    u = torch.randn(n_groups, d + 1, generator=gen, dtype=torch.float64)
    c = 3 * (0.5 + 2 * torch.rand(n, 1, generator=gen, dtype=torch.float64))
    planted = c * u[torch.arange(n) % n_groups]
    with torch.no_grad():
        q_w[rows], q_b[rows] = planted[:, :d], planted[:, d]


def _logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("model_type, act", [("opt", F.relu), ("gpt_neox", F.gelu), ("bert", F.gelu)])
def test_planted_mlp_merges_exactly(model_type, act):
    gen = torch.Generator().manual_seed(1)
    model = tiny(model_type)
    layer = {"opt": lambda m: m.model.decoder.layers[1], "gpt_neox": lambda m: m.gpt_neox.layers[1],
             "bert": lambda m: m.encoder.layer[1]}[model_type]
    names = {"opt": ("fc1", "fc2"), "gpt_neox": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
             "bert": ("intermediate.dense", "output.dense")}[model_type]

    def mlp(m, x):  # the layer's MLP before any norm after it
        fc_in, fc_out = (layer(m).get_submodule(n) for n in names)
        return fc_out(act(fc_in(x)))

    narrow = plant_mlp(*(layer(model).get_submodule(n) for n in names), 8, gen,
                       parallel=model_type == "opt")  # ReLU: parallel rows; GELU: equal rows
    merged = merge_model(model, 0.99, only=(1, "mlp.in"))
    assert merged.widths == [dict(layer=1, component="mlp.in", n_units=64, merged_width=8)]
    assert (layer(merged.model).get_submodule(names[0]).weight.norm(dim=1) > 0).sum() == 8
    x = torch.randn(40, 32, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        wide = mlp(model, x)
        assert wide.abs().max() > 0.1
        assert (narrow(x, act) - wide).abs().max() < 1e-9  # the planted layer is the narrow one
        assert (mlp(merged.model, x) - wide).abs().max() < 1e-9
    ids = torch.randint(2, 50, (3, 12), generator=gen)
    assert (_logits(merged.model, ids) - _logits(model, ids)).abs().max() < 1e-9


@pytest.mark.parametrize("model_type", ["opt", "bert"])
def test_planted_query_rows_merge_exactly_without_rope(model_type):
    gen = torch.Generator().manual_seed(2)
    model = tiny(model_type)
    q = model.model.decoder.layers[0].self_attn.q_proj if model_type == "opt" else \
        model.encoder.layer[0].attention.self.query
    plant_query_rows(q.weight, q.bias, slice(0, 8), 2, gen)  # head 0 (d_head 8): 2 directions
    merged = merge_model(model, 0.99, only=(0, "attn.q"))
    assert merged.widths == [dict(layer=0, component="attn.q", n_units=32, merged_width=2 + 3 * 8)]
    ids = torch.randint(2, 50, (3, 12), generator=gen)
    before = _logits(model, ids)
    assert before.std() > 0.01 and (_logits(merged.model, ids) - before).abs().max() < 1e-9


def test_gpt_neox_query_rows_write_back_and_rope():
    gen = torch.Generator().manual_seed(3)
    model = tiny("gpt_neox")  # d_head 8, rotary_pct 0.25: rows 0, 1 of each head rotate
    qkv = model.gpt_neox.layers[0].attention.query_key_value
    w, b = per_head(qkv.weight.data, 4), per_head(qkv.bias.data, 4)  # (head, q|k|v, d_head, d)
    plant_query_rows(w[0, 0], b[0, 0], slice(2, 8), 2, gen)  # the non-rotary rows of head 0
    site = merge_sites(model)[0]
    labels = site_labels(site, [0.99])[0.99]
    # independent: the same rows merged on copies, written where the reader says they are
    q0, qb0, k0, kb0, _ = merge_query_rows(w[0, 0].clone(), b[0, 0].clone(), w[0, 1].clone(),
                                           b[0, 1].clone(), labels[0])
    merged = merge_model(model, 0.99, only=(0, "attn.q"))
    assert merged.widths[0]["merged_width"] == (2 + 2) + 3 * 8  # 2 rotary singletons + 2 groups
    new = merged.model.gpt_neox.layers[0].attention.query_key_value
    nw, nb = per_head(new.weight.data, 4), per_head(new.bias.data, 4)
    assert torch.equal(nw[0, 0], q0) and torch.equal(nw[0, 1], k0)
    assert torch.equal(nb[0, 0], qb0) and torch.equal(nb[0, 1], kb0)
    assert torch.equal(nw[:, 2], w[:, 2]) and torch.equal(nw[1:], w[1:])  # v and other heads
    ids = torch.randint(0, 50, (3, 12), generator=gen)
    before = _logits(model, ids)
    assert before.std() > 0.01 and (_logits(merged.model, ids) - before).abs().max() < 1e-9
    # a group across the rotary pair (rows 0 and 1) is merged, but not exactly (measured)
    plant_query_rows(w[1, 0], b[1, 0], slice(0, 2), 1, gen)
    rotary = merge_model(model, 0.99, only=(0, "attn.q"))
    assert rotary.widths[0]["merged_width"] == 4 + 7 + 2 * 8
    assert (_logits(rotary.model, ids) - _logits(model, ids)).abs().max() > 1e-4


@pytest.mark.parametrize("model_type", ["opt", "gpt_neox"])
def test_folding_pre_layernorms_keeps_the_function(model_type):
    gen = torch.Generator().manual_seed(4)
    model = tiny(model_type)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen) if name.endswith("weight")
                        else 0.3 * torch.randn(p.shape, generator=gen))
    layer = model.model.decoder.layers[0] if model_type == "opt" else model.gpt_neox.layers[0]
    fc, norm = ((layer.fc1, layer.final_layer_norm) if model_type == "opt"
                else (layer.mlp.dense_h_to_4h, layer.post_attention_layernorm))
    # independent: the folded MLP input rows, W diag(g) and b + W beta
    w, bias, g, beta = (t.detach().clone() for t in (fc.weight, fc.bias, norm.weight, norm.bias))
    ids = torch.randint(2, 50, (3, 12), generator=gen)
    before = _logits(model, ids)
    assert fold_norm_gains(model) is True
    assert torch.allclose(fc.weight, w * g, rtol=0, atol=1e-12)
    assert torch.allclose(fc.bias, bias + w @ beta, rtol=0, atol=1e-12)
    assert (_logits(model, ids) - before).abs().max() < 1e-9
    folded = {n: p for n, p in model.named_parameters() if "layers." in n and "norm" in n}
    assert len(folded) == 2 * 2 * 2  # two norms of two layers, gain and bias
    for n, p in folded.items():
        assert torch.equal(p, torch.ones_like(p) if n.endswith("weight") else torch.zeros_like(p))


@pytest.mark.parametrize("model_type", ["bert", "opt_post_ln"])
def test_post_layernorms_are_not_folded(model_type):
    if model_type == "bert":
        model = tiny("bert")
    else:  # OPT-350m's layout: the norms sit after the residual sum
        torch.manual_seed(0)
        model = T.OPTForCausalLM(T.OPTConfig(ffn_dim=64, word_embed_proj_dim=32,
                                             do_layer_norm_before=False, **SMALL)).double().eval()
        assert all(not b.norms for b in layout_for(model.config).blocks)
    before = {n: p.clone() for n, p in model.named_parameters()}
    assert fold_norm_gains(model) is False
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    merged = merge_model(model, 0.99, fold=True)  # fold=True is then a no-op
    assert {w["component"] for w in merged.widths} == {"attn.q", "mlp.in"}
