"""Nothing is measured on weights the files do not hold: every tensor the model built from
config.json expects is checked against the safetensors headers before any work (names as
transformers maps them, and shapes), the error names every mismatched tensor, and tied weights
pass only where the config ties them. The expected sets come from this file's own header parse
and shape derivation, not from the suite."""

import json
import struct
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from probes.run import main

KEEP = torch.tensor([0, 1, 2, 4, 5, 7])  # 6 of 8 MLP neurons


def header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    h.pop("__metadata__", None)
    return {k: tuple(v["shape"]) for k, v in h.items()}


def llama(tie=False) -> T.LlamaForCausalLM:
    torch.manual_seed(0)
    return T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=8, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        tie_word_embeddings=tie))


def narrow(names):
    def edit(sd):
        for n in names:
            key = f"model.layers.0.mlp.{n}.weight"
            sd[key] = sd[key][:, KEEP] if n == "down_proj" else sd[key][KEEP]
    return edit


def drop(*keys):
    def edit(sd):
        for k in keys:
            del sd[k]
    return edit


def untie(cfg):
    cfg["tie_word_embeddings"] = False


# name, model, weights edit, config.json edit, expected bad tensors (None: accepted)
CASES = [
    ("gate up down narrowed", llama, narrow(["gate_proj", "up_proj", "down_proj"]), None,
     ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.gate_proj.weight",
      "model.layers.0.mlp.up_proj.weight"]),
    ("only down_proj narrowed (never read)", llama, narrow(["down_proj"]), None,
     ["model.layers.0.mlp.down_proj.weight"]),
    ("final norm missing", llama, drop("model.norm.weight"), None, ["model.norm.weight"]),
    ("a layer's norm and v_proj missing", llama,
     drop("model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.v_proj.weight"), None,
     ["model.layers.1.input_layernorm.weight", "model.layers.1.self_attn.v_proj.weight"]),
    ("untied head missing", llama, drop("lm_head.weight"), None, ["lm_head.weight"]),
    ("tied config, head not stored", lambda: llama(tie=True), None, None, None),
    ("tie undone in config.json, head not stored", lambda: llama(tie=True), None, untie,
     ["lm_head.weight"]),
    ("GPT-NeoX head stored as embed_out", lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32)), None, None, None),
    ("GPT-2 base model, stored without its prefix", lambda: T.GPT2Model(T.GPT2Config(
        vocab_size=32, n_embd=16, n_layer=2, n_head=2, n_positions=32)), None, None, None),
]


@pytest.mark.parametrize("name, build, edit_weights, edit_config, bad", CASES,
                         ids=[c[0] for c in CASES])
def test_every_expected_tensor_is_held(tmp_path, capsys, name, build, edit_weights, edit_config,
                                       bad):
    folder, out = tmp_path / "ckpt", tmp_path / "out"
    build().save_pretrained(folder)
    if edit_weights is not None:
        path = folder / "model.safetensors"
        sd = load_file(str(path))
        edit_weights(sd)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})
    if edit_config is not None:
        cfg = json.loads((folder / "config.json").read_text())
        edit_config(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    rc = main(["--checkpoint", str(folder), "--output_dir", str(out), "--num_threads", "1"])
    err = capsys.readouterr().err
    if bad is None:
        assert rc == 0, err
        assert (out / "metrics.csv").is_file()
        return
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and not out.exists(), err
    # the table's set is what this file's own header parse finds against the config's model
    cfg = T.LlamaConfig.from_pretrained(folder)
    want = {k: tuple(v.shape) for k, v in T.LlamaForCausalLM(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        del want["lm_head.weight"]
    held = header(folder / "model.safetensors")
    assert sorted(k for k in want if held.get(k) != want[k]) == bad
    assert all(repr(b) in errors[0] for b in bad), errors[0]
    assert f"in {len(bad)} tensor(s)" in errors[0]
