"""Model families and the init rate: std = d_in^-gamma for every weight matrix."""

import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from models import apply_init_rate, build_model

SIZES = dict(vocab_size=512, n_positions=64, n_embd=256, n_layer=2, n_head=4)


def weight_matrices(model):
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            yield name, module.weight, module.weight.shape[1]
        elif isinstance(module, Conv1D):
            yield name, module.weight, module.weight.shape[0]
        elif isinstance(module, nn.Embedding):
            yield name, module.weight, module.weight.shape[1]


@pytest.mark.parametrize("family", ["paper", "gpt2"])
@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0])
def test_std_within_5_percent(family, gamma):
    torch.manual_seed(0)
    model = build_model(family, **SIZES)
    apply_init_rate(model, gamma)
    names = []
    for name, w, d_in in weight_matrices(model):
        expected = d_in ** -gamma
        assert abs(w.std().item() / expected - 1) < 0.05, (name, w.std().item(), expected)
        assert abs(w.mean().item()) < 0.05 * expected, name
        names.append(name)
    if family == "gpt2":  # c_proj's built-in 1/sqrt(2 n_layer) rescaling must not survive
        assert "transformer.h.0.attn.c_proj" in names and "transformer.h.1.mlp.c_proj" in names
    assert "lm_head" in names


@pytest.mark.parametrize("family", ["paper", "gpt2"])
def test_head_untied_biases_zero_norms_one(family):
    model = build_model(family, **SIZES)
    apply_init_rate(model, 0.5)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
        elif getattr(module, "bias", None) is not None and isinstance(module, (nn.Linear, Conv1D)):
            assert torch.all(module.bias == 0)


def test_part_gammas():
    model = build_model("gpt2", **SIZES)
    records = apply_init_rate(model, 0.5, {"mlp": 1.0, "head": None})
    by_name = {r["name"]: r for r in records}
    assert by_name["transformer.h.0.mlp.c_fc"]["std"] == pytest.approx(256**-1.0)
    assert by_name["transformer.h.0.mlp.c_proj"]["std"] == pytest.approx(1024**-1.0)
    assert by_name["transformer.h.0.attn.c_attn"]["std"] == pytest.approx(256**-0.5)
    assert by_name["lm_head"]["std"] == pytest.approx(256**-0.5)
    assert by_name["transformer.wte"]["part"] == "embedding"
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(1 / 256, rel=0.05)


@pytest.mark.parametrize("gamma", [0.0, -1.0, 3.5, float("nan")])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match=r"\(0, 3\]"):
        apply_init_rate(build_model("paper", **SIZES), gamma)


def test_bad_sizes():
    with pytest.raises(ValueError, match="not divisible"):
        build_model("paper", **(SIZES | {"n_head": 3}))
    with pytest.raises(ValueError, match="accepted are"):
        build_model("bert", **SIZES)


def test_paper_model_shapes_and_paper_d_head():
    model = build_model("paper", vocab_size=200, n_positions=9, n_embd=400, n_layer=2, n_head=1)
    attn, mlp = model.h[0].attn, model.h[0].mlp
    assert attn.q_proj.weight.shape == (200, 400)  # d_k = n_embd / 2
    assert mlp.fc_in.weight.shape == (1200, 400)  # d_ff = 3 n_embd
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))


def test_paper_model_reloads_with_auto_class(tmp_path):
    torch.manual_seed(0)
    model = build_model("paper", **SIZES)
    apply_init_rate(model, 0.5)
    model.eval()
    x = torch.randint(0, 512, (3, 9))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "PaperGPTForCausalLM"
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, again(input_ids=x).logits)


@pytest.mark.parametrize("family", ["paper", "gpt2"])
def test_causal(family):
    torch.manual_seed(0)
    model = build_model(family, **SIZES).eval()
    apply_init_rate(model, 0.5)
    x = torch.randint(0, 512, (2, 9))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 512
    with torch.no_grad():
        a, b = model(input_ids=x).logits, model(input_ids=y).logits
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_init_std_examples_from_paper():
    # docs/science.md: at d_in = 400, gamma 0.1 -> 0.55, 0.5 -> 0.05, 0.8 -> 0.0083
    for gamma, std in ((0.1, 0.55), (0.5, 0.05), (0.8, 0.0083)):
        assert math.isclose(400**-gamma, std, rel_tol=0.01)


@pytest.mark.parametrize("family", ["paper", "gpt2"])
@pytest.mark.parametrize("n_layer", [1, 3])
def test_last_position_only_gives_the_full_forwards_last_logits(family, n_layer):
    # the independent computation: the full forward, every position, then its last row
    torch.manual_seed(0)
    model = build_model(family, **SIZES | dict(n_layer=n_layer, n_positions=9)).eval()
    apply_init_rate(model, 0.5)
    x = torch.randint(0, SIZES["vocab_size"], (32, 9))
    with torch.no_grad():
        full = model(input_ids=x).logits[:, -1]
        last = model(input_ids=x, logits_to_keep=1).logits
    assert last.shape == (32, 1, SIZES["vocab_size"])
    torch.testing.assert_close(last[:, 0], full, rtol=1e-5, atol=1e-5)


def test_last_position_only_gradients_match_and_bad_values_refused():
    torch.manual_seed(0)
    model = build_model("paper", **SIZES | dict(n_positions=9))
    apply_init_rate(model, 0.5)
    x, y = torch.randint(0, SIZES["vocab_size"], (16, 9)), torch.randint(0, SIZES["vocab_size"], (16,))
    grads = []
    for keep in (0, 1):
        model.zero_grad()
        nn.functional.cross_entropy(model(input_ids=x, logits_to_keep=keep).logits[:, -1], y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="logits_to_keep=2"):
        model(input_ids=x, logits_to_keep=2)
    with pytest.raises(ValueError, match="logits_to_keep=1"):
        model(input_ids=x, labels=x, logits_to_keep=1)
