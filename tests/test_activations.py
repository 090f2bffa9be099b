"""Activation basis: forward-hook capture, and ``--probe_inputs`` (task, text, images) checked
against the projection outputs computed by hand."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from PIL import Image

import models
from probes.measure.capture import Capture
from probes.run import main
from tasks import make_task


def mean_abs_cos(outputs):
    """Mean |cosine| between the columns (units) of (n_samples, n_units) outputs, by hand."""
    u = np.asarray(outputs, dtype=np.float64).T
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    c = np.abs(u @ u.T)
    n = len(c)
    return (c.sum() - np.trace(c)) / (n * (n - 1))


def row(metrics, layer, component, metric="mean_abs_cos", basis="activation", head=None):
    m = metrics[(metrics["layer"] == layer) & (metrics["component"] == component)
                & (metrics["metric"] == metric) & (metrics["basis"] == basis)]
    m = m[m["head"].isna()] if head is None else m[m["head"] == head]
    assert len(m) == 1
    return m.iloc[0]


def test_capture_records_outputs_and_removes_hooks():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Conv1d(2, 5, 3))
    lin, conv = net[0], net[2]
    x = torch.randn(3, 7, 4)
    with Capture(net, ["0"]) as cap:
        net[0](x)
        net[0](x[:1])
    assert torch.allclose(cap.outputs["0"], torch.cat([lin(x), lin(x[:1])]).reshape(-1, 6))
    assert not lin._forward_hooks
    y = torch.randn(2, 2, 9)  # convolution: channels are the units, positions the samples
    with Capture(net, ["2"], max_positions=3) as cap:
        conv(y)
    full = conv(y)  # (2, 5, 7): positions 0, 3, 6 kept
    assert torch.allclose(cap.outputs["2"], full[:, :, [0, 3, 6]].transpose(1, 2).reshape(-1, 5))
    with pytest.raises(RuntimeError), Capture(net, ["0", "2"]):
        conv(torch.randn(1, 3, 4))  # wrong channels: the forward raises inside the block
    assert not lin._forward_hooks and not conv._forward_hooks


def test_task_inputs_on_own_model(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("paper", vocab_size=128, n_positions=9, n_embd=32, n_layer=2,
                               n_head=2)
    models.apply_init_rate(model, 0.5)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--output_dir", str(out),
                 "--probe_inputs", "composite", "--probe_samples", "500"]) == 0
    metrics, runs = pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "runs.csv")
    assert runs["n_samples"].tolist() == [500] and runs["probe_inputs"].tolist() == ["composite"]
    # by hand: layer 0's input is token + position embedding; q = x W_Q^T on the first 500
    # positions of the task's first training sequences
    ids = torch.as_tensor(make_task("composite").build()["train"][:56]["input_ids"])
    with torch.no_grad():
        x = model.wte(ids) + model.wpe(torch.arange(ids.shape[1]))
        q = (x @ model.h[0].attn.q_proj.weight.T).reshape(-1, 16)[:500]
    r = row(metrics, 0, "attn.q")
    assert r["n_units"] == 16 and r["value"] == pytest.approx(mean_abs_cos(q), abs=1e-6)
    assert row(metrics, 0, "attn.q", head=1)["n_units"] == 8
    assert not ((metrics["basis"] == "activation") & (metrics["component"] == "attn.qk_heads")).any()
    assert set(metrics["basis"]) == {"weight", "activation"}


def word_tokenizer(words):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tm

    tok = Tokenizer(tm.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_text_inputs_on_gqa_llama(tmp_path):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        num_hidden_layers=2, intermediate_size=64, vocab_size=40)
    model = T.LlamaForCausalLM(cfg).eval()
    words = [f"w{i}" for i in range(39)]
    folder = tmp_path / "llama"
    model.save_pretrained(folder)
    tokenizer = word_tokenizer(words)
    tokenizer.save_pretrained(folder)
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=rng.integers(5, 12))) for _ in range(12)]
    (tmp_path / "lines.txt").write_text("\n".join(lines[:6] + [""] + lines[6:]) + "\n")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--output_dir", str(out),
                 "--probe_inputs", str(tmp_path / "lines.txt")]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    # by hand: layer 1's k_proj input is its input norm of the hidden state after layer 0
    ks = []
    with torch.no_grad():
        for line in lines:
            ids = tokenizer(line, return_tensors="pt")["input_ids"]
            h = model(ids, output_hidden_states=True).hidden_states[1]
            layer = model.model.layers[1]
            ks.append((layer.input_layernorm(h) @ layer.self_attn.k_proj.weight.T)[0])
    k = torch.cat(ks)
    r = row(metrics, 1, "attn.k")
    assert r["n_units"] == 16 and r["value"] == pytest.approx(mean_abs_cos(k), abs=1e-5)
    assert row(metrics, 1, "attn.k", head=1)["value"] == pytest.approx(mean_abs_cos(k[:, 8:]), abs=1e-5)
    heads = metrics[(metrics["basis"] == "activation") & (metrics["component"] == "attn.v")]
    assert sorted(heads["head"].dropna().unique()) == [0, 1]
    assert pd.read_csv(out / "runs.csv")["n_samples"].tolist() == [len(k)]


def test_image_inputs_on_resnet(tmp_path):
    torch.manual_seed(0)
    model = T.ResNetForImageClassification(T.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        layer_type="basic", num_labels=3)).eval()
    folder = tmp_path / "resnet"
    model.save_pretrained(folder)
    processor = T.ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--output_dir", str(out), "--probe_inputs",
                 str(images), "--probe_samples", "100000"]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    pixels = processor(images=[Image.open(images / f"{i}.png").convert("RGB") for i in range(3)],
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():  # the stem: 7x7 stride 2 padding 3, no bias; channels are the units
        y = F.conv2d(pixels, model.resnet.embedder.embedder.convolution.weight, stride=2, padding=3)
    y = y.permute(0, 2, 3, 1).reshape(-1, 8)
    r = row(metrics, 0, "conv.stem")
    assert r["n_units"] == 8 and r["value"] == pytest.approx(mean_abs_cos(y), abs=1e-6)
    assert pd.read_csv(out / "runs.csv")["n_samples"].tolist() == [3 * 16 * 16]
    assert (out / "figures" / "cosine_resnet_conv_stem.png").stat().st_size > 1000
