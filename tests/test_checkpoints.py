"""``probes/run.py --checkpoint``: every architecture's unit reader on a model built from a tiny
config with planted groups, series, safety and bad input. Everything goes through the CLI entry
in-process and is read back from the CSVs it writes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T

import models
from probes.run import main

ROOT = Path(__file__).resolve().parent.parent


# --- planted groups, checked independently ---------------------------------------------------

def planted(k, per_group, n_random, dim, seed=0, noise=0.05):
    """(k * per_group + n_random, dim) units: k groups of near-identical directions (orthogonal
    between groups) then random units, with random norms. Returns (units, expected groups at 0.9),
    the expectation checked by brute force: every pair inside a group has cosine >= 0.95, every
    other pair < 0.85, so complete linkage at 0.9 must find exactly the groups and singletons."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]
    rows = [directions[g] + noise * rng.normal(size=dim) / np.sqrt(dim)
            for g in range(k) for _ in range(per_group)]
    rows += list(rng.normal(size=(n_random, dim)))
    u = np.array(rows) * rng.uniform(0.5, 2.0, size=(len(rows), 1))
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos = unit @ unit.T
    label = np.r_[np.repeat(np.arange(k), per_group), k + np.arange(n_random)]
    same = label[:, None] == label[None, :]
    assert cos[same].min() >= 0.95 and cos[~same].max() < 0.85, "bad planted fixture"
    return torch.tensor(u, dtype=torch.float32), k + n_random


def plant_linear(module, units):
    """Write units (d_out, d_in [+1]) into an nn.Linear (rows) or a conv (flattened kernels)."""
    w = module.weight
    with torch.no_grad():
        w.copy_(units[:, : w[0].numel()].reshape(w.shape))
        if module.bias is not None:
            module.bias.copy_(units[:, -1] if units.shape[1] > w[0].numel() else 0)


# --- one checkpoint per architecture ---------------------------------------------------------
# Each builder returns (model, [(layer, component, expected n_groups at 0.9, n_units)]).

def build_gpt2(rows=False):
    m = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_inner=64, vocab_size=64,
                                       n_positions=16))
    fc = m.transformer.h[1].mlp.c_fc  # Conv1D: weight (d_in 32, d_out 64), neuron k = column k
    if rows:  # planted along rows (the nn.Linear layout): must not be found
        u, _ = planted(4, 8, 0, 64, seed=1)
        with torch.no_grad():
            fc.weight.copy_(u)
            fc.bias.zero_()
        return m, []
    u, g = planted(4, 12, 16, 33, seed=1)
    attn = m.transformer.h[0].attn.c_attn  # (32, 96): q | k | v columns
    uk, gk = planted(2, 12, 8, 33, seed=2)
    with torch.no_grad():
        fc.weight.copy_(u[:, :32].T)
        fc.bias.copy_(u[:, 32])
        attn.weight[:, 32:64] = uk[:, :32].T
        attn.bias[32:64] = uk[:, 32]
    return m, [(1, "mlp.in", g, 64), (0, "attn.k", gk, 32)]


def llama_like(cls, cfg_cls, bias=False, **extra):
    cfg = cfg_cls(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  num_hidden_layers=2, intermediate_size=64, vocab_size=64, **extra)
    return cls(cfg)


def build_llama():
    m = llama_like(T.LlamaForCausalLM, T.LlamaConfig)
    attn, mlp = m.model.layers[0].self_attn, m.model.layers[1].mlp
    uk, gk = planted(2, 6, 4, 32, seed=3)  # K has 2 heads x 8 = 16 units
    ug, gg = planted(3, 16, 16, 32, seed=4)
    plant_linear(attn.k_proj, uk)
    plant_linear(mlp.gate_proj, ug)
    q1 = m.model.layers[1].self_attn.q_proj.weight
    with torch.no_grad():  # layer 1: query heads 0 and 1 equal; both read K/V head 0
        q1[8:16] = q1[0:8]
    return m, [(0, "attn.k", gk, 16), (1, "mlp.gate", gg, 64)]


def build_mistral():
    m = llama_like(T.MistralForCausalLM, T.MistralConfig)
    u, g = planted(2, 20, 24, 32, seed=5)
    plant_linear(m.model.layers[0].mlp.up_proj, u)
    return m, [(0, "mlp.up", g, 64)]


def build_qwen2():
    m = llama_like(T.Qwen2ForCausalLM, T.Qwen2Config)
    u, g = planted(2, 6, 4, 33, seed=6)  # v_proj has a bias: 32 weights + 1
    plant_linear(m.model.layers[1].self_attn.v_proj, u)
    return m, [(1, "attn.v", g, 16)]


def build_neox():
    m = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=32, num_attention_heads=4,
                                             num_hidden_layers=2, intermediate_size=64,
                                             vocab_size=64))
    qkv = m.gpt_neox.layers[1].attention.query_key_value  # (96, 32): per head q | k | v rows
    u, g = planted(2, 12, 8, 33, seed=7)
    with torch.no_grad():
        for h in range(4):
            rows = slice(24 * h + 8, 24 * h + 16)  # head h's K rows
            qkv.weight[rows] = u[8 * h: 8 * h + 8, :32]
            qkv.bias[rows] = u[8 * h: 8 * h + 8, 32]
    return m, [(1, "attn.k", g, 32)]


def build_opt():
    m = T.OPTForCausalLM(T.OPTConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                     ffn_dim=64, vocab_size=64, word_embed_proj_dim=32,
                                     max_position_embeddings=32))
    u, g = planted(4, 12, 16, 33, seed=8)
    plant_linear(m.model.decoder.layers[1].fc1, u)
    return m, [(1, "mlp.in", g, 64)]


def encoder(cls, cfg_cls):
    return cls(cfg_cls(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                       intermediate_size=64, vocab_size=64, max_position_embeddings=40))


def build_bert():
    m = encoder(T.BertModel, T.BertConfig)
    u, g = planted(2, 12, 8, 33, seed=9)
    plant_linear(m.encoder.layer[0].attention.self.query, u)
    return m, [(0, "attn.q", g, 32)]


def build_roberta():
    m = encoder(T.RobertaModel, T.RobertaConfig)
    u, g = planted(3, 16, 16, 33, seed=10)
    plant_linear(m.encoder.layer[1].intermediate.dense, u)
    return m, [(1, "mlp.in", g, 64)]


def build_resnet():
    m = T.ResNetForImageClassification(T.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        layer_type="basic", num_labels=3))
    conv = m.resnet.encoder.stages[1].layers[0].layer[1].convolution  # (16, 16, 3, 3)
    u, g = planted(2, 6, 4, 144, seed=11)
    plant_linear(conv, u)
    return m, [(2, "conv.2", g, 16)]


def build_paper():
    m = models.build_model("paper", vocab_size=64, n_positions=9, n_embd=32, n_layer=2, n_head=2)
    u, g = planted(2, 6, 4, 32, seed=12)
    plant_linear(m.h[0].attn.q_proj, u)  # 2 heads x d_head 8
    return m, [(0, "attn.q", g, 16)]


def build_mlp():
    m = models.build_mlp(in_dim=31, width=64)
    u, g = planted(4, 12, 16, 32, seed=13)
    plant_linear(m.hidden, u)
    return m, [(0, "mlp.in", g, 64)]


def build_distilbert():  # no reader: found by module path
    m = T.DistilBertModel(T.DistilBertConfig(dim=32, n_heads=4, hidden_dim=64, n_layers=2,
                                             vocab_size=64, max_position_embeddings=40))
    u, g = planted(4, 12, 16, 33, seed=14)
    plant_linear(m.transformer.layer[1].ffn.lin1, u)
    return m, [(1, "ffn.lin1", g, 64)]


BUILDERS = {"gpt2": build_gpt2, "gpt2_rows": lambda: build_gpt2(rows=True), "llama": build_llama,
            "mistral": build_mistral, "qwen2": build_qwen2, "gpt_neox": build_neox,
            "opt": build_opt, "bert": build_bert, "roberta": build_roberta,
            "resnet": build_resnet, "paper": build_paper, "mlp": build_mlp,
            "distilbert": build_distilbert}
PLANTED = [("gpt2", 1, "mlp.in"), ("gpt2", 0, "attn.k"), ("llama", 0, "attn.k"),
           ("llama", 1, "mlp.gate"), ("mistral", 0, "mlp.up"), ("qwen2", 1, "attn.v"),
           ("gpt_neox", 1, "attn.k"), ("opt", 1, "mlp.in"), ("bert", 0, "attn.q"),
           ("roberta", 1, "mlp.in"), ("resnet", 2, "conv.2"), ("paper", 0, "attn.q"),
           ("mlp", 0, "mlp.in"), ("distilbert", 1, "ffn.lin1")]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Every architecture saved with save_pretrained, probed in one CLI call."""
    root = tmp_path_factory.mktemp("zoo")
    expected, n_params = {}, {}
    torch.manual_seed(0)
    for name, build in BUILDERS.items():
        model, plants = build()
        model.save_pretrained(root / name)
        n_params[name] = model.num_parameters()
        expected |= {(name, layer, comp): (g, n) for layer, comp, g, n in plants}
    out = root / "out"
    argv = [a for name in BUILDERS for a in ("--checkpoint", str(root / name))]
    return dict(root=root, out=out, expected=expected, n_params=n_params, argv=argv)


@pytest.fixture(scope="module")
def zoo_run(zoo):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(zoo["argv"] + ["--output_dir", str(zoo["out"])])
    assert code == 0, err.getvalue()
    metrics = pd.read_csv(zoo["out"] / "metrics.csv")
    runs = pd.read_csv(zoo["out"] / "runs.csv")
    return metrics, runs, err.getvalue()


def value(metrics, run_id, layer, component, metric="n_groups", head=None, threshold=0.9,
          basis="weight"):
    m = metrics[(metrics["run_id"] == run_id) & (metrics["layer"] == layer)
                & (metrics["component"] == component) & (metrics["metric"] == metric)
                & (metrics["basis"] == basis)]
    m = m[m["head"].isna()] if head is None else m[m["head"] == head]
    if threshold is not None:
        m = m[np.isclose(m["threshold"], threshold)]
    assert len(m) == 1, (run_id, layer, component, metric, head, len(m))
    return m.iloc[0]


@pytest.mark.parametrize("name, layer, component", PLANTED)
def test_planted_groups_are_found(zoo, zoo_run, name, layer, component):
    metrics, _, _ = zoo_run
    groups, n_units = zoo["expected"][(name, layer, component)]
    row = value(metrics, name, layer, component)
    assert (row["value"], row["n_units"]) == (groups, n_units)
    # the layer's other components are random: no group (llama's layer-1 W_Q has two equal heads)
    skip = ["attn.qk_heads", component] + (["attn.q"] if (name, layer) == ("llama", 1) else [])
    others = metrics[(metrics["run_id"] == name) & (metrics["layer"] == layer)
                     & ~metrics["component"].isin(skip) & metrics["head"].isna()
                     & (metrics["metric"] == "group_ratio") & np.isclose(metrics["threshold"], 0.9)]
    assert (others["value"] == 1.0).all()


def test_schema_and_runs(zoo, zoo_run):
    metrics, runs, _ = zoo_run
    assert list(metrics.columns) == ["run_id", "step", "layer", "component", "head", "basis",
                                     "metric", "threshold", "value", "n_units"]
    assert set(metrics["basis"]) == {"weight"} and "rd" not in set(metrics["metric"])
    assert metrics["step"].isna().all()  # foreign checkpoints: no step
    assert list(runs["run_id"]) == list(BUILDERS)
    assert dict(zip(runs["run_id"], runs["n_params"])) == zoo["n_params"]
    assert dict(zip(runs["run_id"], runs["n_layers"]))["resnet"] == 3  # stem + 2 blocks
    assert set(runs["format"]) == {"safetensors"}
    assert dict(zip(runs["run_id"], runs["unit_reader"]))["distilbert"] == "discovered"
    drawn = {"resnet": "conv_stem", "mlp": "mlp_in", "distilbert": "attention_q_lin"}
    figures = {p.name: p.stat().st_size for p in (zoo["out"] / "figures").iterdir()}
    assert set(figures) == {f"cosine_{name}_{drawn.get(name, 'attn_q')}.png" for name in BUILDERS}
    assert min(figures.values()) > 1000


def test_gpt2_conv1d_planted_in_rows_is_not_found(zoo_run):
    metrics, _, _ = zoo_run
    # gpt2_rows planted 4 groups along the rows of c_fc's (32, 64) weight: read as columns
    # (GPT-2's Conv1D layout), there are not 4 groups of 64 units
    row = value(metrics, "gpt2_rows", 1, "mlp.in")
    assert row["n_units"] == 64 and row["value"] != 4


def test_gqa_units_heads_and_head_forms(zoo_run):
    metrics, _, _ = zoo_run
    llama = metrics[(metrics["run_id"] == "llama") & (metrics["metric"] == "mean_abs_cos")]
    units = llama[llama["head"].isna()].groupby("component")["n_units"].first().to_dict()
    assert units == {"attn.q": 32, "attn.k": 16, "attn.v": 16, "mlp.gate": 64, "mlp.up": 64,
                     "attn.qk_heads": 4}
    heads = llama[llama["head"].notna()].groupby("component")["head"].unique()
    assert sorted(heads["attn.q"]) == [0, 1, 2, 3]
    assert sorted(heads["attn.k"]) == [0, 1] and sorted(heads["attn.v"]) == [0, 1]
    # layer 1: query heads 0 and 1 are equal and both read K/V head 0, so their forms
    # W_Q^h (W_K^0)^T are equal: 3 groups of 4 heads (4 if heads were paired with h % n_kv)
    assert value(metrics, "llama", 1, "attn.qk_heads", threshold=0.99)["value"] == 3
    assert value(metrics, "llama", 0, "attn.qk_heads", threshold=0.99)["value"] == 4
    # layer 0 K head 0 holds the first 8 planted units: 6 of group 0, 2 of group 1
    assert value(metrics, "llama", 0, "attn.k", head=0)["value"] == 2


def test_neox_fused_qkv_per_head_layout(zoo_run):
    metrics, _, _ = zoo_run
    # K head 0 = planted units 0..7, all of group 0; head 3 = units 24..31, random
    assert value(metrics, "gpt_neox", 1, "attn.k", head=0)["value"] == 1
    assert value(metrics, "gpt_neox", 1, "attn.k", head=3)["value"] == 8
    assert value(metrics, "gpt_neox", 1, "attn.q")["value"] == 32  # q rows untouched


def test_gpt2_fused_c_attn_heads(zoo_run):
    metrics, _, _ = zoo_run
    assert value(metrics, "gpt2", 0, "attn.k", head=0)["value"] == 1
    assert value(metrics, "gpt2", 0, "attn.k", head=3)["value"] == 8
    assert value(metrics, "gpt2", 0, "attn.q")["value"] == 32


def test_resnet_components(zoo_run):
    metrics, _, _ = zoo_run
    r = metrics[(metrics["run_id"] == "resnet") & (metrics["metric"] == "mean_abs_cos")]
    comps = r.groupby("layer")["component"].apply(set).to_dict()
    assert comps == {0: {"conv.stem"}, 1: {"conv.1", "conv.2"},
                     2: {"conv.1", "conv.2", "conv.shortcut"}}
    assert value(r.assign(threshold=np.nan), "resnet", 0, "conv.stem", "mean_abs_cos",
                 threshold=None)["n_units"] == 8


def test_discovered_architecture_warns(zoo_run):
    _, _, err = zoo_run
    line = next(x for x in err.splitlines() if x.startswith("warning: distilbert"))
    assert "discovered" in line and "ffn.lin1" in line and "attention.q_lin" in line


def test_pickle_weights_refused_unless_allowed(zoo, tmp_path, capsys):
    src = zoo["root"] / "llama"
    folder = tmp_path / "llama_bin"
    folder.mkdir()
    (folder / "config.json").write_text((src / "config.json").read_text())
    from safetensors.torch import load_file

    torch.save(load_file(src / "model.safetensors"), folder / "pytorch_model.bin")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pytorch_model.bin" in err and "--allow_pickle" in err
    assert not out.exists()
    assert main(["--checkpoint", str(folder), "--output_dir", str(out), "--allow_pickle"]) == 0
    got = pd.read_csv(out / "metrics.csv")
    want = pd.read_csv(zoo["out"] / "metrics.csv")
    want = want[want["run_id"] == "llama"].reset_index(drop=True)
    assert np.allclose(got["value"], want["value"], equal_nan=True)
    assert pd.read_csv(out / "runs.csv")["format"].tolist() == ["pickle"]


# --- series ----------------------------------------------------------------------------------

def test_series_of_step_checkpoints(tmp_path):
    series = tmp_path / "my-run"
    for step, k in ((10, 2), (200, 6)):
        m = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_inner=64,
                                           vocab_size=64, n_positions=16))
        u, _ = planted(k, 64 // k, 0, 32, seed=k)
        with torch.no_grad():  # the 32 q units (c_attn's first columns; zero bias)
            m.transformer.h[0].attn.c_attn.weight[:, :32] = u[:32].T
        m.save_pretrained(series / ("checkpoint-10" if step == 10 else "step_200"))
    (series / "checkpoint-10" / "optimizer.pt").write_bytes(b"not read")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(series), "--output_dir", str(out)]) == 0
    metrics, runs = pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "runs.csv")
    assert list(runs["step"]) == [10, 200] and set(runs["run_id"]) == {"my-run"}
    q = metrics[(metrics["component"] == "attn.q") & (metrics["layer"] == 0)
                & metrics["head"].isna() & (metrics["metric"] == "n_groups")
                & (metrics["threshold"] == 0.9)]
    # 32 q units: at step 10 the first half of 2 groups of 32 = 1 group; at 200, 6 groups of 10
    # (32 units = 3 full groups + 2 of group 4) = 4 groups
    assert dict(zip(q["step"], q["value"])) == {10: 1, 200: 4}
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["cosine_my-run_step200_attn_q.png", "groups_over_training.png"]


# --- safety and bad input --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "gpt2"
    T.GPT2LMHeadModel(T.GPT2Config(n_embd=16, n_head=2, n_layer=1, n_inner=32, vocab_size=32,
                                   n_positions=8)).save_pretrained(folder)
    return folder


def corrupt(folder, kind):
    data = (folder / "model.safetensors").read_bytes()
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "garbage":
        data = b"\x00\x01 definitely not safetensors" * 40
    (folder / "model.safetensors").write_bytes(data)


def copy_ckpt(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("setup, args, names", [
    ("missing", [], "does not exist"),
    ("no_config", [], "no config.json"),
    ("truncated", [], "not a valid safetensors file"),
    ("garbage", [], "not a valid safetensors file"),
    ("no_weights", [], "has no weights"),
    ("unknown_type", [], "model_type='nope'"),
    ("remote_code", [], "--trust_remote_code"),
    ("ok", ["--probe_samples", "0"], "probe_samples=0 is invalid"),
    ("ok", ["--thresholds", "[0.9, 1.5]"], "thresholds=[0.9, 1.5] is invalid"),
    ("ok", ["--heatmap_layers", "7"], "--heatmap_layers [7]"),
    ("ok", ["--heatmap_component", "mlp.gate"], "'mlp.gate'"),
    ("ok", ["--gamma", "0.5"], "unknown key 'gamma'"),
    ("ok", ["--probe_inputs", "no_such_file.txt"], "'no_such_file.txt'"),
    ("ok", ["--probe_inputs", "TEXT"], "no usable tokenizer"),
    ("gguf_missing", [], "GGUF file"),
    ("gguf_not_gguf", [], "not a GGUF file"),
])
def test_bad_input_one_line_exit_2_nothing_written(tiny_ckpt, tmp_path, capsys, setup, args, names):
    folder = tmp_path / "ckpt"
    if setup not in ("missing", "gguf_missing"):
        copy_ckpt(tiny_ckpt, folder)
    if setup == "no_config":
        (folder / "config.json").unlink()
    if setup in ("truncated", "garbage"):
        corrupt(folder, setup)
    if setup == "no_weights":
        (folder / "model.safetensors").unlink()
    if setup in ("unknown_type", "remote_code"):
        cfg = json.loads((folder / "config.json").read_text())
        cfg["model_type"] = "nope"
        if setup == "remote_code":
            cfg["auto_map"] = {"AutoConfig": "my_code.MyConfig", "AutoModel": "my_code.MyModel"}
        (folder / "config.json").write_text(json.dumps(cfg))
    if "TEXT" in args:
        (tmp_path / "lines.txt").write_text("hello world\n")
        args = [str(tmp_path / "lines.txt") if a == "TEXT" else a for a in args]
    if setup.startswith("gguf"):
        folder = f"gguf:{folder / 'config.json' if setup == 'gguf_not_gguf' else 'nope.gguf'}"
    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--output_dir", str(out)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and names in err, err
    assert "accepted" in err or "rerun with" in err or "need" in err, err
    assert not out.exists()


def test_script_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "probes/run.py", "--checkpoint", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: checkpoint {str(tmp_path / 'nope')!r} does not exist: accepted are a folder with "
        f"config.json (save_pretrained), a folder of checkpoint-N / step_N folders, gguf:FILE, "
        f"or a hub id when online"]


def test_unsupported_architecture_without_layers(tmp_path, capsys):
    class FlatConfig(T.PretrainedConfig):
        model_type = "probe_test_flat"

    class Flat(T.PreTrainedModel):
        config_class = FlatConfig

        def __init__(self, config):
            super().__init__(config)
            self.proj = torch.nn.Linear(4, 4)
            self.post_init()

    T.AutoConfig.register("probe_test_flat", FlatConfig)
    T.AutoModel.register(FlatConfig, Flat)
    Flat(FlatConfig()).save_pretrained(tmp_path / "flat")
    capsys.readouterr()  # transformers' own saving bar, not the probe's output
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tmp_path / "flat"), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no unit reader and no nn.Linear" in err and "accepted model types" in err
    assert "\n" not in err and not out.exists()


def test_summary_lists_a_series_in_step_order():
    """Steps are numbers: 2 before 12 (as text, "12" < "2"); the row values are their own."""
    from probes.report.checkpoint import summary

    rows = [dict(run_id="r", step=step, layer=0, component="attn.q", head=None, basis="weight",
                 metric=metric, threshold=0.9 if metric == "group_ratio" else None,
                 value=value, n_units=8)
            for step, value in ((12, 0.25), (2, 0.5), (0, 1.0))
            for metric in ("group_ratio", "mean_abs_cos")]
    text = summary(pd.DataFrame(rows), 0.9).splitlines()
    lines = [line.split() for line in text[3:]]
    assert [line[-6] for line in lines] == ["0", "2", "12"]  # step, component, 4 values
    assert [float(line[-4]) for line in lines] == [1.0, 0.5, 0.25]


def test_summary_skips_a_set_with_every_unit_dropped():
    """A set of zero rows (every unit dropped) has NaN values: the lowest layer is the lowest
    measured one, and a component with no measured layer has none (no crash)."""
    from probes.report.checkpoint import summary

    nan = float("nan")
    rows = [dict(run_id="r", step=0, layer=layer, component=comp, head=None, basis="weight",
                 metric=metric, threshold=0.9 if metric == "group_ratio" else None,
                 value=value, n_units=8)
            for comp, layer, value in (("attn.q", 0, nan), ("attn.q", 1, 0.5), ("attn.q", 2, 0.75),
                                       ("attn.qk_heads", 0, nan))
            for metric in ("group_ratio", "mean_abs_cos")]
    text = summary(pd.DataFrame(rows), 0.9).splitlines()
    q = next(line.split() for line in text if "attn.q " in line + " ")
    assert q[-3:-1] == ["0.5", "1.0"]  # lowest 0.5, in layer 1
    heads = next(line.split() for line in text if "attn.qk_heads" in line)
    assert heads[-4:] == ["NaN", "NaN", "NaN", "NaN"]
