"""Bad input of every kind ends in one ``error:`` line, exit 2, no traceback, and an output folder
left byte for byte as it was (configs, command-line values, checkpoint folders that disagree with
their config or index, probe inputs, output folders). Everything runs in-process through the
entry point; an exception escaping it would fail the test as a traceback would."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from probes.run import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "tiny.yaml")


def snapshot(folder: Path) -> dict | None:
    """relative path -> bytes of every file under ``folder`` (None when it does not exist)."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {".": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tokenizer(path: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]"] + [f"w{i}" for i in range(vocab - 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)


def tiny_llama(**kw) -> T.LlamaForCausalLM:
    torch.manual_seed(kw.pop("seed", 0))
    c = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return T.LlamaForCausalLM(T.LlamaConfig(**(c | kw)))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama (GQA) with its tokenizer, and a sharded copy of a larger one."""
    root = tmp_path_factory.mktemp("bad_input")
    tiny_llama().save_pretrained(root / "llama")
    tokenizer(root / "llama", 64)
    tiny_llama(hidden_size=64, intermediate_size=128, num_hidden_layers=3).save_pretrained(
        root / "sharded", max_shard_size="20KB")
    return root


def edit_config(folder: Path, change) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def stale_index(folder: Path) -> None:
    """The index forgets one shard that is on disk."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def shard_lacks_tensor(folder: Path) -> None:
    """A shard loses a tensor that the index still names."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.layers.1.mlp.up_proj.weight"
    shard = folder / index["weight_map"][name]
    tensors = load_file(shard)
    tensors.pop(name)
    save_file(tensors, shard, metadata={"format": "pt"})


def nan_weights(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.mlp.gate_proj.weight"][3, 5] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def small_vocab(folder: Path) -> None:
    """The model's vocabulary (32) is smaller than its tokenizer's (64)."""
    tiny_llama(vocab_size=32).save_pretrained(folder)


# (name, kind, setup of the checkpoint copy or None, extra arguments, words the error names)
CASES = [
    # configs and command-line values of an experiment
    ("gamma out of range", "run", None, ["--gamma", "0"], "gamma"),
    ("unknown task", "run", None, ["--task", "nope"], "task='nope'"),
    ("heads do not divide", "run", None, ["--n_embd", "30", "--n_head", "4"], "n_embd=30"),
    ("negative lr", "run", None, ["--lr", "-1e-3"], "lr=-0.001"),
    ("lr not a number", "run", None, ["--lr", "abc"], "lr='abc'"),
    ("unknown key", "run", None, ["--gama", "1"], "did you mean"),
    ("missing config file", "run", None, ["--config", "MISSING"], "does not exist"),
    ("config not a mapping", "run", "list_yaml", [], "does not hold a mapping"),
    ("config not YAML", "run", "bad_yaml", [], "not valid YAML"),
    ("dropout 1.5", "run", None, ["--dropout", "1.5"], "dropout=1.5"),
    ("threshold 1.5", "run", None, ["--thresholds", "[0.9, 1.5]"], "thresholds"),
    ("zero steps", "run", None, ["--steps", "0"], "steps=0"),
    ("negative seed", "run", None, ["--seed", "-1"], "seed=-1"),
    ("negative data_seed", "run", None, ["--data_seed", "-3"], "data_seed=-3"),
    ("stray argument", "run", None, ["foo"], "unexpected argument 'foo'"),
    ("empty grid", "run", None, ["--gamma", "[]"], "empty grid"),
    ("output_dir is a file", "run", "out_file", [], "is a file"),
    ("output_dir below a file", "run", "out_below_file", [], "is a file"),
    # checkpoint folders whose config disagrees with the weights, or whose index with the shards
    ("num_hidden_layers missing", "ckpt", lambda f: edit_config(f, lambda c: c.pop("num_hidden_layers")),
     [], "lack"),
    ("config gives more layers", "ckpt", lambda f: edit_config(f, lambda c: c.update(num_hidden_layers=4)),
     [], "lack"),
    ("config gives fewer layers", "ckpt", lambda f: edit_config(f, lambda c: c.update(num_hidden_layers=1)),
     [], "fewer layers"),
    ("hidden_size missing", "ckpt", lambda f: edit_config(f, lambda c: c.pop("hidden_size")), [],
     "in the weights and"),
    ("num_key_value_heads 3", "ckpt", lambda f: edit_config(f, lambda c: c.update(num_key_value_heads=3)),
     [], "disagrees with its weights"),
    ("heads missing", "ckpt", lambda f: edit_config(f, lambda c: (c.pop("num_attention_heads"),
                                                                   c.pop("num_key_value_heads"))),
     [], "disagrees with its weights"),
    ("intermediate_size wrong", "ckpt", lambda f: edit_config(f, lambda c: c.update(intermediate_size=96)),
     [], "in the weights and"),
    ("stale shard index", "sharded", stale_index, [], "not named in"),
    ("shard lacks a tensor", "sharded", shard_lacks_tensor, [], "does not hold it"),
    ("pickle weights", "ckpt", lambda f: (torch.save(load_file(f / "model.safetensors"),
                                                     f / "pytorch_model.bin"),
                                          (f / "model.safetensors").unlink()), [], "--allow_pickle"),
    ("non-finite weights", "ckpt", nan_weights, [], "NaN or inf"),
    # probe inputs against the model
    ("token ids outside the vocabulary", "ckpt", small_vocab, ["--probe_inputs", "TEXT"], "vocab_size=32"),
    ("probe text missing", "ckpt", None, ["--probe_inputs", "no_such.txt"], "no_such.txt"),
    ("probe text empty", "ckpt", None, ["--probe_inputs", "EMPTY"], "no non-empty line"),
    ("activation point", "ckpt", None, ["--activation_point", "mid"], "activation_point='mid'"),
    ("fold_norms not a bool", "ckpt", None, ["--fold_norms", "maybe"], "fold_norms='maybe'"),
    ("spectral_metrics not a bool", "ckpt", None, ["--spectral_metrics", "1.5"],
     "spectral_metrics='1.5'"),
    ("spectral_metrics not a choice", "ckpt", None, ["--spectral_metrics", "effective"],
     "spectral_metrics='effective'"),
    # output folders
    ("ckpt output_dir is a file", "ckpt", "out_file", [], "is a file"),
    ("ckpt output_dir holds other files", "ckpt", "out_foreign", [], "did not write"),
]


@pytest.mark.parametrize("name, kind, setup, args, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(base, tmp_path, capsys, name, kind, setup, args, words):
    out = tmp_path / "out"
    if setup == "out_file":
        out.write_text("a file")
    elif setup == "out_below_file":
        (tmp_path / "f").write_text("a file")
        out = tmp_path / "f" / "out"
    elif setup == "out_foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    (tmp_path / "lines.txt").write_text("w1 w2 w3 w60 w61\nw5 w6\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bad.yaml").write_text("gamma: [0.5\n")
    subs = {"TEXT": str(tmp_path / "lines.txt"), "EMPTY": str(tmp_path / "empty.txt"),
            "MISSING": str(tmp_path / "missing.yaml")}
    args = [subs.get(a, a) for a in args]
    if kind == "run":
        config = {"list_yaml": "list.yaml", "bad_yaml": "bad.yaml"}.get(setup)
        # a case that names its own --config replaces the tiny one (a key given twice is refused)
        argv = args if "--config" in args else ["--config", str(tmp_path / config) if config else TINY, *args]
    else:
        folder = tmp_path / "ckpt"
        shutil.copytree(base / ("sharded" if kind == "sharded" else "llama"), folder)
        if callable(setup):
            setup(folder)
        argv = ["--checkpoint", str(folder), *args]
    before = snapshot(out)
    capsys.readouterr()
    assert main([*argv, "--output_dir", str(out), "--num_threads", "1"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert words in errors[0], errors[0]
    assert "accepted" in errors[0] or "rerun with" in errors[0] or "need" in errors[0], errors[0]
    assert snapshot(out) == before


def test_long_probe_inputs_are_cut_to_the_position_table(base, tmp_path, capsys):
    """Lines longer than max_position_embeddings are cut, with a note, not refused."""
    folder = tmp_path / "ckpt"
    tiny_llama(max_position_embeddings=8).save_pretrained(folder)
    tokenizer(folder, 64)
    (tmp_path / "long.txt").write_text(" ".join(f"w{i % 60}" for i in range(30)) + "\n")
    assert main(["--checkpoint", str(folder), "--probe_inputs", str(tmp_path / "long.txt"),
                 "--output_dir", str(tmp_path / "out"), "--num_threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "cut to 8 tokens" in err
    import pandas as pd

    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs["n_samples"].iloc[0] == 8  # one line of 30 tokens, cut to the 8 positions


def test_checkpoint_output_is_replaced_whole(base, tmp_path):
    """A second probe into the same folder replaces the first one's files, figures included."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    tiny_llama(seed=1).save_pretrained(a)
    tiny_llama(seed=2).save_pretrained(b)
    for ckpt in (a, b):
        assert main(["--checkpoint", str(ckpt), "--output_dir", str(out), "--num_threads", "1"]) == 0
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["cosine_b_attn_q.png"]
    import pandas as pd

    assert pd.read_csv(out / "metrics.csv")["run_id"].unique().tolist() == ["b"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_experiment_report_is_published_as_one_set(tmp_path, monkeypatch, capsys):
    """A report that fails part-way leaves the previous one as it was; a new report removes the
    report files of an earlier grid (not other files)."""
    from probes.report.figures import experiment as figures

    out = tmp_path / "out"
    argv = ["--config", TINY, "--output_dir", str(out), "--num_threads", "1", "--gamma", "0.5"]
    assert main(argv) == 0
    (out / "phase_diagram.csv").write_text("from an earlier grid\n")
    (out / "figures" / "old.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "draw_all", broken)
    with pytest.raises(RuntimeError):
        main([*argv, "--report_only", "true"])
    assert snapshot(out) == before
    monkeypatch.undo()
    assert main([*argv, "--report_only", "true"]) == 0
    assert not (out / "phase_diagram.csv").exists() and not (out / "figures" / "old.png").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "metrics.csv").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_yaml_numbers_with_exponents(tmp_path):
    """1e-3, 3E-4 and 5e-1 are numbers in config files and on the command line (YAML 1.2)."""
    from probes.config import expand, load_config, load_yaml

    assert [load_yaml(s) for s in ("1e-3", "3E-4", "5e-1", "-2e2", "1.0e-3", "1_000")] == \
        [0.001, 0.0003, 0.5, -200.0, 0.001, 1000]
    assert [load_yaml(s) for s in ("1e", "e5", "abc", "0x1f")] == ["1e", "e5", "abc", 31]
    (tmp_path / "c.yaml").write_text("lr: 3e-4\ngamma: [5e-1, 1e0]\nweight_decay: 1E-2\n")
    cfgs = expand(load_config(tmp_path / "c.yaml", {"dropout": load_yaml("1e-1")}))
    assert [(c.lr, c.gamma, c.weight_decay, c.dropout) for c in cfgs] == \
        [(0.0003, 0.5, 0.01, 0.1), (0.0003, 1.0, 0.01, 0.1)]


def test_launcher_shows_only_the_error_line(tmp_path):
    """``accelerate launch -q`` (docs/running.md's form for bad input) prints the child's error line
    and no launcher traceback."""
    launcher = str(Path(sys.executable).parent / "accelerate")  # the venv's, activated or not
    proc = subprocess.run([launcher, "launch", "-q", "--cpu", "--num_processes", "1",
                           "probes/run.py", "--gamma", "0"], cwd=ROOT, capture_output=True,
                          text=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and any(line.startswith("error: gamma") for line in lines)


@pytest.mark.parametrize("argv", [["--lr", "abc", "--output_dir", "OUT"],
                                  ["--steps", "0", "--output_dir", "OUT"],
                                  ["measure", "OUT", "OUT2"],
                                  ["probe", "OUT/none"],
                                  ["--no_such_key", "1"]])
def test_bad_input_is_said_once_under_a_launcher(argv, tmp_path, monkeypatch, capsys):
    """Every process of ``accelerate launch`` meets the same bad value; only the first (RANK 0)
    says so, and every one exits with 2 without writing anything."""
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    said = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 2
        said.append(capsys.readouterr().err)
    assert said[0].startswith("error: ") and said[0].count("\n") == 1 and "accepted" in said[0]
    assert said[1] == ""
    assert not (tmp_path / "out").exists()
