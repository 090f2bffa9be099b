"""Numbers that only look like condensation: norm gains split arbitrarily between a norm and the
weights after it (folded, as TransformerLens's fold_ln), and dead units (a ReLU that never fires)
in the activation basis. Expected values come from forward passes and hooks written here."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T

from probes.checkpoint.activations import dead_mask
from probes.measure.metrics import Condensation
from probes.measure.units import fold_norm
from probes.run import main


def layer_norm(x):
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)


def test_fold_norm_matches_the_layer_it_replaces():
    """W (g * x_hat + beta) + c equals the folded rows applied to x_hat (LayerNorm, centred) and
    W (g * x_hat) equals them for RMSNorm (no centring, no bias)."""
    torch.manual_seed(0)
    n, d = 12, 16
    w, c, g, beta = torch.randn(n, d), torch.randn(n), torch.rand(d) + 0.5, torch.randn(d)
    x_hat = layer_norm(torch.randn(50, d)).double()
    rows = torch.cat([w, c[:, None]], dim=1)
    folded = fold_norm(rows, d, g, beta, center=True).double()
    expected = (g.double() * x_hat + beta.double()) @ w.double().T + c.double()
    assert torch.allclose(x_hat @ folded[:, :d].T + folded[:, d], expected, atol=1e-4)
    assert torch.allclose(folded[:, :d].sum(1), torch.zeros(n, dtype=torch.float64), atol=1e-5)
    rms = fold_norm(w, d, g)  # no bias anywhere: no bias column
    assert rms.shape == (n, d) and torch.allclose(rms, w * g, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        fold_norm(w, d, torch.ones(d + 1))
    # the RMSNorm fold multiplies in float32: bit for bit the float64 product rounded to float32
    for gain in (g, g.bfloat16()):
        exact = torch.cat([(w.double() * gain.double()).float(), c[:, None]], dim=1)
        assert torch.equal(fold_norm(rows, d, gain), exact)


def probe(folder, out, *args):
    assert main(["--checkpoint", str(folder), "--output_dir", str(out), "--num_threads", "1",
                 *args]) == 0
    return pd.read_csv(out / "metrics.csv")


def weight_values(metrics, component):
    m = metrics[(metrics["component"] == component) & metrics["head"].isna()
                & (metrics["basis"] == "weight")]
    return m.set_index(["layer", "metric", "threshold"])["value"].sort_index()


def llama_pair():
    """Two Llamas computing the same function: B's post-attention RMSNorm gain of channel j is
    0.01 and its gate/up columns j are 100 times A's (A's are planted to dominate)."""
    torch.manual_seed(0)
    a = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.model.layers[0].post_attention_layernorm.weight[7] = 0.01
        for lin in (b.model.layers[0].mlp.up_proj, b.model.layers[0].mlp.gate_proj):
            lin.weight[:, 7] *= 100
    return a, b, ("mlp.up", "mlp.gate")


def gpt2_pair():
    """Two GPT-2s computing the same function: B's ln_2 gain of channel j is 0.01 with c_fc's row
    j 100 times A's, and B's ln_1 bias is shifted by delta with c_attn's bias moved back by
    -delta @ W (Conv1D: y = x @ W + b)."""
    torch.manual_seed(0)
    a = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4,
                                       n_positions=32)).eval()  # no dropout
    b = copy.deepcopy(a)
    block = b.transformer.h[0]
    with torch.no_grad():
        block.ln_2.weight[5] = 0.01 * a.transformer.h[0].ln_2.weight[5]
        block.mlp.c_fc.weight[5] *= 100
        delta = torch.randn(32)
        block.ln_1.bias += delta
        block.attn.c_attn.bias -= delta @ block.attn.c_attn.weight
    return a, b, ("mlp.in", "attn.q", "attn.k", "attn.v")


@pytest.mark.parametrize("pair", [llama_pair, gpt2_pair], ids=["rmsnorm", "layernorm"])
def test_function_preserving_reparametrization_gives_the_same_groups(tmp_path, pair):
    a, b, components = pair()
    ids = torch.randint(0, 64, (2, 16))
    assert (a(ids).logits - b(ids).logits).abs().max() < 1e-4  # the same function
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    folded = [probe(tmp_path / x, tmp_path / f"out_{x}") for x in "ab"]
    raw = [probe(tmp_path / x, tmp_path / f"raw_{x}", "--fold_norms", "false") for x in "ab"]
    for comp in components:
        pd.testing.assert_series_equal(weight_values(folded[0], comp), weight_values(folded[1], comp),
                                       atol=1e-4, rtol=1e-4)
    moved = components[0]
    assert not np.allclose(weight_values(raw[0], moved), weight_values(raw[1], moved), atol=1e-3)
    runs = pd.read_csv(tmp_path / "out_a" / "runs.csv")
    assert runs["fold_norms"].tolist() == [True]
    assert pd.read_csv(tmp_path / "raw_a" / "runs.csv")["fold_norms"].tolist() == [False]


def test_dead_mask_on_a_hand_built_matrix():
    post = torch.tensor([[0.0, 1.0, 2.0, 5.0], [0.0, 3.0, 2.0, 5.0], [0.0, 0.5, 2.0 + 1e-9, 5.0]])
    assert dead_mask(post).tolist() == [True, False, True, True]  # constant (range <= 1e-6 * 2.5)
    assert dead_mask(torch.zeros(4, 3)).tolist() == [True, True, True]


@pytest.fixture(scope="module")
def relu_gpt2(tmp_path_factory):
    """GPT-2 with a ReLU MLP whose neurons 0-15 have tiny weights and bias -50: they never fire."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("dead") / "gpt2"
    torch.manual_seed(0)
    m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, n_positions=64,
                                       n_inner=128, activation_function="relu"))
    with torch.no_grad():
        fc = m.transformer.h[0].mlp.c_fc  # Conv1D (d_in, d_out): neuron k = column k
        fc.weight[:, :16] = 0.01 * torch.randn(32, 16)
        fc.bias[:16] = -50.0
    m.save_pretrained(folder)
    words = ["[UNK]"] + [f"w{i}" for i in range(63)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    text = folder.parent / "probe.txt"
    lines = [" ".join(f"w{(i * 7 + j) % 63}" for j in range(20)) for i in range(40)]
    text.write_text("\n".join(lines))
    # the expected post-ReLU outputs, captured here with a hook on the activation module
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    m.eval()  # no dropout, as the probe runs it
    acts = []
    hook = m.transformer.h[0].mlp.act.register_forward_hook(lambda mod, i, o: acts.append(o[0]))
    with torch.no_grad():
        for line in lines:
            m(**tokenizer(line, return_tensors="pt"))
    hook.remove()
    return folder, text, torch.cat(acts)[:1024]


def activation_rows(metrics, component="mlp.in"):
    m = metrics[(metrics["component"] == component) & metrics["head"].isna()
                & (metrics["basis"] == "activation")]
    return {(r.metric, r.threshold if r.threshold == r.threshold else None): (r.value, r.n_units)
            for r in m.itertuples()}


@pytest.mark.parametrize("point", ["pre", "post"])
def test_dead_units_are_counted_and_left_out(tmp_path, capsys, relu_gpt2, point):
    folder, text, post = relu_gpt2
    expected_dead = int((post.abs().amax(0) == 0).sum())
    assert expected_dead == 16
    metrics = probe(folder, tmp_path / "out", "--probe_inputs", str(text), "--activation_point", point)
    assert "16 dead units" in capsys.readouterr().err
    rows = activation_rows(metrics)
    assert rows[("n_dead", None)] == (16, 112) and rows[("n_dropped", None)][0] == 16
    weight = metrics[(metrics["component"] == "mlp.in") & (metrics["basis"] == "weight")]
    assert "n_dead" not in set(weight["metric"])  # dead units are known from inputs only
    if point == "post":  # the kept units' vectors are their post-ReLU outputs
        alive = post[:, 16:].T.numpy()
        fit = Condensation().fit(alive)
        assert rows[("mean_abs_cos", None)][0] == pytest.approx(fit.mean_abs_cos_, abs=1e-5)
        assert rows[("n_groups", 0.9)][0] == fit.n_groups_[0.9]
    assert pd.read_csv(tmp_path / "out" / "runs.csv")["activation_point"].tolist() == [point]
