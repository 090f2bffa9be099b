"""Outputs record what was done, not what was asked: one row per option that cannot always be
applied as asked. Each row either checks that the recorded value is what happened (found
independently: by inspecting the model, the dtypes a training step produced, or a probe run with
the option off), or that the combination is refused with one ``error:`` line before any work."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tokenizers import Tokenizer, models, pre_tokenizers

import probes
from models import build_for_run
from probes.config import ConfigError, expand, load_config
from probes.measure.arch import UnsupportedModel, fold_norm_gains, merge_sites
from probes.run import main
from probes.train.loop import Run
from tasks import make_task
from tasks.objective import objective_for

TINY = "tests/tiny.yaml"


def tiny(**changes):
    """The first run of tests/tiny.yaml with ``changes``, its task and its data."""
    cfg = dataclasses.replace(expand(load_config(TINY))[0], n_probes=2, save_every=0,
                              save_checkpoints="none", **changes)
    task = make_task(cfg.task, **cfg.task_options())
    splits = task.build()
    return cfg, task, {s: splits[s][:] for s in splits}


def refused(argv, capsys, *names) -> None:
    """``argv`` exits with code 2 and one ``error:`` line naming each of ``names``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    for name in names:
        assert name in err[0], (name, err[0])


# --- training -----------------------------------------------------------------------------------

def last_position_only_with_dropout(family, tmp_path, capsys):
    """last_position_only is the same run computed faster: with dropout 0.1 the gradient of a
    step (same seed, same batch) equals the full forward's to float rounding (the last block used
    to draw its dropout masks over the last position alone: other masks, 2.5e-2 apart)."""
    cfg, task, data = tiny(model_family=family, dropout=0.1, output_dir=str(tmp_path))
    torch.manual_seed(0)
    model, _ = build_for_run(cfg, task)
    model.train()
    batch = {c: torch.as_tensor(data["train"][c][:64]) for c in ("input_ids", "target")}
    grads = []
    for last_only in (False, True):
        model.zero_grad()
        torch.manual_seed(1)
        objective_for(task, last_only).loss(model, batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    scale = max(g.abs().max().item() for g in grads[0].values())
    worst = max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])
    assert grads[0].keys() == grads[1].keys()
    assert worst <= 1e-5 * scale, (worst, scale)
    # and dropout draws do matter: another seed gives another gradient
    model.zero_grad()
    torch.manual_seed(2)
    objective_for(task, True).loss(model, batch).backward()
    other = max((p.grad - grads[1][n]).abs().max().item() for n, p in model.named_parameters()
                if p.grad is not None)
    assert other > 1e-3 * scale


def mixed_precision_is_the_dtype_trained_in(precision, tmp_path, capsys):
    """runs.csv's mixed_precision is the precision the training steps ran in: the dtype of every
    nn.Linear output during the steps (bf16 under autocast, float32 without)."""
    AcceleratorState._reset_state(True)
    seen = set()

    def hook(module, args, out):
        if module.training and isinstance(module, torch.nn.Linear):
            seen.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        cfg, task, data = tiny(steps=3, mixed_precision=precision, output_dir=str(tmp_path))
        row = Run(cfg, task, data, Accelerator(cpu=True, mixed_precision=precision)).train().row
    finally:
        handle.remove()
        AcceleratorState._reset_state(True)
    assert seen == {{"no": torch.float32, "bf16": torch.bfloat16}[row["mixed_precision"]]}
    assert row["mixed_precision"] == precision


def mixed_precision_not_the_config_s_is_refused(tmp_path, capsys):
    """A run whose accelerator trains in another precision than its config (and its run id)
    names is refused rather than recorded under the config's precision."""
    AcceleratorState._reset_state(True)
    try:
        cfg, task, data = tiny(steps=1, mixed_precision="no", output_dir=str(tmp_path))
        with pytest.raises(ValueError, match="mixed_precision='bf16'.*names 'no'"):
            Run(cfg, task, data, Accelerator(cpu=True, mixed_precision="bf16")).train()
    finally:
        AcceleratorState._reset_state(True)


def trained(cfg, task, data, accelerator):
    """The runs row and the train log (one row per step) of ``cfg`` trained on ``accelerator``."""
    run = Run(cfg, task, data, accelerator)
    try:
        row = run.train().row
    finally:
        AcceleratorState._reset_state(True)
    return row, pd.DataFrame(run.train_log)


def lr_peak_is_the_highest_rate_an_update_used(tmp_path, capsys, steps, warmup):
    """runs.csv's lr_peak is the highest learning rate a weight update used: the largest `lr`
    of the train log (every step logged), and, by the warm-up's formula, lr * (steps - 1) /
    warmup_steps when the warm-up does not end (lr_warmup_start 0), else lr itself."""
    AcceleratorState._reset_state(True)
    cfg, task, data = tiny(steps=steps, warmup_steps=warmup, log_every=1, lr_warmup_start=0.0,
                           output_dir=str(tmp_path))
    row, log = trained(cfg, task, data, Accelerator(cpu=True))
    assert len(log) == steps and row["skipped_steps"] == 0
    assert row["lr_peak"] == pytest.approx(log["lr"].max(), rel=1e-12)
    expected = cfg.lr * (steps - 1) / warmup if warmup >= steps else cfg.lr
    assert row["lr_peak"] == pytest.approx(expected, rel=1e-12)
    assert (row["lr_peak"] < cfg.lr) == (warmup >= steps)


def fp16_skipped_steps_are_counted(tmp_path, capsys):
    """runs.csv's skipped_steps counts the optimizer steps fp16's gradient scaler skipped. On
    CPU accelerate makes no scaler and no autocast for fp16; given a torch GradScaler and
    ``native_amp`` it runs as on a GPU: forward in float16 under autocast, the loss scaled,
    gradients unscaled before clipping, a step whose gradients overflowed skipped. The scaler
    starts at 2^24 (float16 gradients overflow) and never grows (growth_interval past the run),
    so each skipped step halves its scale once and no other step changes it: the count is
    log2(start / end). The steps logged with a non-finite gradient norm are the same ones, and
    lr_peak counts the updates alone (the scheduler waits on a skipped step)."""
    AcceleratorState._reset_state(True)
    cfg, task, data = tiny(steps=8, warmup_steps=40, log_every=1, lr_warmup_start=0.0,
                           mixed_precision="fp16", output_dir=str(tmp_path))
    acc = Accelerator(cpu=True, mixed_precision="fp16")
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=10**6)
    acc.native_amp = True
    scaler = acc.scaler
    row, log = trained(cfg, task, data, acc)
    halvings = np.log2(2.0**24 / scaler.get_scale())
    assert halvings == int(halvings) and 1 <= halvings < cfg.steps - 1
    assert row["skipped_steps"] == int(halvings) == int((~np.isfinite(log["grad_norm"])).sum())
    updates = cfg.steps - row["skipped_steps"]
    assert row["lr_peak"] == pytest.approx(cfg.lr * (updates - 1) / cfg.warmup_steps, rel=1e-12)
    assert row["lr_peak"] == pytest.approx(log.loc[np.isfinite(log["grad_norm"]), "lr"].max())
    assert row["steps"] == cfg.steps and row["mixed_precision"] == "fp16"


def repeated_thresholds_are_refused(tmp_path, capsys):
    """A repeated threshold would give its rows twice (metrics.csv, lineage.csv): refused by the
    config, the --checkpoint command line and the Python API."""
    refused(["--config", TINY, "--thresholds", "[0.9, 0.7, 0.9]", "--output_dir",
             str(tmp_path / "a")], capsys, "thresholds=[0.9, 0.7, 0.9]", "distinct")
    with pytest.raises(ConfigError, match="distinct"):
        expand(load_config(TINY, {"thresholds": "0.9,0.9"}))
    refused(["--checkpoint", str(tmp_path), "--thresholds", "0.9,0.9", "--output_dir",
             str(tmp_path / "b")], capsys, "thresholds=[0.9, 0.9] repeats", "distinct")
    with pytest.raises(ValueError, match="distinct"):
        probes.measure(torch.nn.Sequential(torch.nn.Linear(4, 4)), thresholds=[0.5, 0.5])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def merge_probe_on_resnet_is_refused(tmp_path, capsys):
    """merge_probe on a ResNet would write no merge row at all (its layers have no merge sites,
    as merge_sites says of the built model): refused instead of recorded as done."""
    refused(["--config", "resnet_digits", "--merge_probe", "true", "--output_dir",
             str(tmp_path / "out")], capsys, "merge_probe=true", "'resnet'")
    cfg = expand(load_config("resnet_digits"))[0]
    model, _ = build_for_run(cfg, make_task(cfg.task, **cfg.task_options()))
    with pytest.raises(UnsupportedModel):
        merge_sites(model)
    assert not (tmp_path / "out").exists()


# --- checkpoint probes --------------------------------------------------------------------------

def save_lm(model, folder, vocab: int = 64) -> None:
    """Save ``model`` with a word-level tokenizer, and a text file of probe lines beside it."""
    model.save_pretrained(folder)
    words = ["[UNK]"] + [f"w{i}" for i in range(vocab - 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    lines = [" ".join(f"w{(i * 7 + j) % (vocab - 1)}" for j in range(16)) for i in range(30)]
    (folder.parent / "probe.txt").write_text("\n".join(lines))


def probe(folder, out, *args) -> tuple[pd.DataFrame, pd.Series]:
    """metrics.csv and the runs.csv row of ``--checkpoint folder args``."""
    assert main(["--checkpoint", str(folder), "--output_dir", str(out), "--num_threads", "1",
                 "--spectral_metrics", "false", *args]) == 0
    return pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "runs.csv").iloc[0]


def rows(metrics, basis="weight", component=None) -> pd.Series:
    m = metrics[metrics["basis"] == basis]
    if component is not None:
        m = m[m["component"] == component]
    return m.set_index(["layer", "component", "head", "metric", "threshold"])["value"].sort_index()


def gpt2(folder):
    torch.manual_seed(0)
    m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=32, n_inner=64))
    with torch.no_grad():  # gains far from 1: folding them changes the rows
        for block in m.transformer.h:
            block.ln_1.weight.uniform_(0.2, 3.0)
            block.ln_2.weight.uniform_(0.2, 3.0)
    save_lm(m, folder)


def opt_post_ln(folder):
    torch.manual_seed(0)
    save_lm(T.OPTForCausalLM(T.OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=32, word_embed_proj_dim=32,
                                         do_layer_norm_before=False)), folder)


def gpt_neo(folder):  # no reader: a discovered layout, whose parts have no post point
    torch.manual_seed(0)
    save_lm(T.GPTNeoForCausalLM(T.GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2,
                                               num_heads=4, attention_types=[[["global"], 2]],
                                               max_position_embeddings=32, intermediate_size=64)),
            folder)


def fold_norms_records_whether_gains_were_folded(tmp_path, capsys, build, folds: bool):
    """runs.csv's fold_norms says whether norm gains were folded into the weight-basis rows:
    true only when the metrics differ from a probe with --fold_norms false, with a note when
    asked and not done (OPT-350m-style post-LN has no norm to fold)."""
    build(tmp_path / "model")
    folded, row = probe(tmp_path / "model", tmp_path / "folded")
    raw, raw_row = probe(tmp_path / "model", tmp_path / "raw", "--fold_norms", "false")
    same = rows(folded).equals(rows(raw))
    assert bool(row["fold_norms"]) == (not same) == folds
    assert not raw_row["fold_norms"] and pd.isna(raw_row["notes"])
    if folds:
        assert pd.isna(row["notes"])
    else:
        assert "fold_norms: no norm feeds" in row["notes"]


def activation_point_records_what_was_captured(tmp_path, capsys, build, post):
    """With --activation_point post, a component without a point after a nonlinearity
    (attention, every part of a discovered layout) is captured pre: its rows equal a pre
    probe's, the others' differ, and runs.csv says post only when some unit set was captured
    post, naming the components that stayed pre."""
    build(tmp_path / "model")
    text = str(tmp_path / "probe.txt")
    asked_post, row = probe(tmp_path / "model", tmp_path / "post", "--probe_inputs", text,
                            "--activation_point", "post")
    pre, pre_row = probe(tmp_path / "model", tmp_path / "pre", "--probe_inputs", text)
    components = sorted(set(asked_post.loc[asked_post["basis"] == "activation", "component"]))
    captured_post = [c for c in components
                     if not np.allclose(rows(asked_post, "activation", c), rows(pre, "activation", c))]
    assert captured_post == post
    assert row["activation_point"] == ("post" if post else "pre")
    assert pre_row["activation_point"] == "pre" and "activation_point" not in str(pre_row["notes"])
    note = next(n for n in row["notes"].split("; ") if n.startswith("activation_point post: "))
    named = note.removeprefix("activation_point post: ").split(" ha")[0].split(", ")
    assert sorted(named) == [c for c in components if c not in post]



def bert_decoder(folder):
    torch.manual_seed(0)
    save_lm(T.BertLMHeadModel(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=64,
                                           max_position_embeddings=32, is_decoder=True)), folder)


def merge_of_post_ln_norms_is_recorded_unfolded(tmp_path, capsys):
    """--merge_probe with --fold_norms true on BERT (post-LN): the weight basis folds its norms'
    gains, the merge cannot (folding them into the live model changes its function), and the
    runs row says so. What the merge did is checked on the model: fold_norm_gains folds nothing
    and leaves every norm as it was."""
    bert_decoder(tmp_path / "model")
    _, row = probe(tmp_path / "model", tmp_path / "out", "--probe_inputs",
                   str(tmp_path / "probe.txt"), "--merge_probe", "true")
    assert row["fold_norms"]  # the weight basis: folded
    assert "not applied to the merge probe" in row["notes"]
    model = T.BertLMHeadModel.from_pretrained(tmp_path / "model")
    norms = {n: p.clone() for n, p in model.named_parameters() if "LayerNorm" in n}
    assert fold_norm_gains(model) is False
    assert all(torch.equal(p, norms[n]) for n, p in model.named_parameters() if n in norms)
    gpt2(tmp_path / "gpt2")  # a pre-LN model folds for the merge too: no note
    _, row = probe(tmp_path / "gpt2", tmp_path / "out2", "--probe_inputs",
                   str(tmp_path / "probe.txt"), "--merge_probe", "true")
    assert row["fold_norms"] and pd.isna(row["notes"])



def api_attrs_say_what_was_done(tmp_path, capsys, build, asked: dict, flags: list,
                                 folded: bool, point: str, note: str | None):
    """probes.measure's ``df.attrs`` say what was done as ``--checkpoint``'s runs.csv row does
    for the same folder and options (fold_norms, activation_point, notes), and what they say is
    what happened: fold_norms is true only when the weight rows differ from a measure with
    fold_norms=False; activation_point is post only when the mlp.in activation rows differ from
    a measure at pre. A series gives one runs row per step, the shared values on top."""
    build(tmp_path / "model")
    text = str(tmp_path / "probe.txt")
    kw = dict(spectral=False, num_threads=1, **asked)
    if "basis" in asked:
        kw["inputs"] = text
        flags = [*flags, "--probe_inputs", text]
    df = probes.measure(tmp_path / "model", **kw)
    _, row = probe(tmp_path / "model", tmp_path / "cli", *flags)
    blank = lambda v: "" if pd.isna(v) else v  # noqa: E731 (a blank CSV field reads as NaN)
    assert (df.attrs["fold_norms"], df.attrs["activation_point"], df.attrs["notes"]) == (
        bool(row["fold_norms"]), blank(row["activation_point"]), blank(row["notes"]))
    assert (df.attrs["fold_norms"], df.attrs["activation_point"]) == (folded, point)
    assert (note in df.attrs["notes"]) if note else df.attrs["notes"] == ""
    assert [r["fold_norms"] for r in df.attrs["runs"]] == [folded]
    raw = probes.measure(tmp_path / "model", **(kw | dict(fold_norms=False)))
    assert (not rows(df).equals(rows(raw))) == folded
    if point:
        pre = probes.measure(tmp_path / "model", **(kw | dict(activation_point="pre")))
        differ = not np.allclose(rows(df, "activation", "mlp.in"), rows(pre, "activation", "mlp.in"))
        assert differ == (point == "post")
    for step in (0, 5):  # the same checkpoint as a series of two steps
        shutil.copytree(tmp_path / "model", tmp_path / "run" / f"checkpoint-{step}")
    series = probes.measure(tmp_path / "run", **kw)
    assert [r["step"] for r in series.attrs["runs"]] == [0, 5]
    assert {k: series.attrs[k] for k in ("fold_norms", "activation_point", "notes")} == {
        k: df.attrs[k] for k in ("fold_norms", "activation_point", "notes")}
    assert series.query("step == 5").attrs["notes"] == df.attrs["notes"]  # kept by pandas


CASES = {
    "last_position_only + dropout, paper": lambda *a: last_position_only_with_dropout("paper", *a),
    "last_position_only + dropout, gpt2": lambda *a: last_position_only_with_dropout("gpt2", *a),
    "mixed_precision no": lambda *a: mixed_precision_is_the_dtype_trained_in("no", *a),
    "mixed_precision bf16": lambda *a: mixed_precision_is_the_dtype_trained_in("bf16", *a),
    "mixed_precision other than the config's": mixed_precision_not_the_config_s_is_refused,
    "repeated thresholds": repeated_thresholds_are_refused,
    "merge_probe on resnet": merge_probe_on_resnet_is_refused,
    "warmup_steps >= steps: lr_peak below lr": lambda *a: (
        lr_peak_is_the_highest_rate_an_update_used(*a, steps=3, warmup=5)),
    "warmup_steps < steps: lr_peak is lr": lambda *a: (
        lr_peak_is_the_highest_rate_an_update_used(*a, steps=8, warmup=5)),
    "fp16: skipped steps counted": fp16_skipped_steps_are_counted,
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_records_what_was_done(case, tmp_path, capsys):
    CASES[case](tmp_path, capsys)


PROBE_CASES = {
    "fold_norms, gpt2 (folded)": lambda *a: fold_norms_records_whether_gains_were_folded(
        *a, gpt2, True),
    "fold_norms, opt post-LN (nothing to fold)": lambda *a: (
        fold_norms_records_whether_gains_were_folded(*a, opt_post_ln, False)),
    "activation_point post, gpt2": lambda *a: activation_point_records_what_was_captured(
        *a, gpt2, ["mlp.in"]),
    "activation_point post, discovered layout": lambda *a: (
        activation_point_records_what_was_captured(*a, gpt_neo, [])),
    "fold_norms + merge_probe, bert (post-LN)": merge_of_post_ln_norms_is_recorded_unfolded,
    "probes.measure attrs, gpt2 (folded)": lambda *a: api_attrs_say_what_was_done(
        *a, gpt2, {}, [], True, "", None),
    "probes.measure attrs, opt post-LN (nothing to fold)": lambda *a: (
        api_attrs_say_what_was_done(*a, opt_post_ln, {}, [], False, "",
                                    "fold_norms: no norm feeds")),
    "probes.measure attrs, gpt2 activation post": lambda *a: api_attrs_say_what_was_done(
        *a, gpt2, dict(basis="both", activation_point="post"), ["--activation_point", "post"],
        True, "post", "activation_point post: attn.q"),
    "probes.measure attrs, discovered layout activation post": lambda *a: (
        api_attrs_say_what_was_done(*a, gpt_neo, dict(basis="both", activation_point="post"),
                                    ["--activation_point", "post"], False, "pre",
                                    "activation_point post: ")),
}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_checkpoint_probe_records_what_was_done(case, tmp_path, capsys):
    PROBE_CASES[case](tmp_path, capsys)

