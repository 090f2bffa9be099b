"""``--reference``: rd and unit angles of every weight-basis unit set against a step-0 checkpoint,
recomputed here with numpy straight from the safetensors files (norm folding included); the
rows a training run writes for the same models; a reference that does not match is refused
before any work."""

import contextlib
import io
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from safetensors.numpy import load_file

import probes
from probes.measure.fitting import Fitter
from probes.measure.probe import measure_units
from probes.measure.series import SeriesProbe
from probes.measure.units import read_units
from probes.run import main

D, HEADS = 16, 2
DRIFT = ("rd", "angle_mean", "angle_median", "angle_max")


def gpt2(**kw):
    c = dict(n_embd=D, n_head=HEADS, n_layer=2, n_inner=32, vocab_size=32, n_positions=8) | kw
    return T.GPT2LMHeadModel(T.GPT2Config(**c))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """my-run/checkpoint-0 (init) and checkpoint-5: every tensor moved (norm gains and biases
    too, so folding matters), mlp.in of layer 1 grown by 3x (rd large, angles unchanged by that)
    and its neuron 0 zeroed (no angle)."""
    root = tmp_path_factory.mktemp("reference") / "my-run"
    torch.manual_seed(0)
    m = gpt2()
    m.save_pretrained(root / "checkpoint-0")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.005 * torch.randn_like(p))  # a quarter of the init scale
        fc = m.transformer.h[1].mlp.c_fc
        fc.weight.mul_(3.0)
        fc.bias.mul_(3.0)
        fc.weight[:, 0] = 0
        fc.bias[0] = 0
    m.save_pretrained(root / "checkpoint-5")
    return root


def probe(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def units(folder, layer, component, fold, head=None):
    """The unit rows, independently: GPT-2's Conv1D stores neuron k as column k; folding a
    LayerNorm (gain g, bias beta) gives rows w * g minus their mean, bias b + w . beta."""
    t = {k.removeprefix("transformer."): v.astype(np.float64)
         for k, v in load_file(folder / "model.safetensors").items()}
    h = f"h.{layer}."
    if component == "attn.q":
        w, b, ln = t[h + "attn.c_attn.weight"][:, :D].T, t[h + "attn.c_attn.bias"][:D], h + "ln_1"
    else:
        w, b, ln = t[h + "mlp.c_fc.weight"].T, t[h + "mlp.c_fc.bias"], h + "ln_2"
    if fold:
        rows = w * t[ln + ".weight"]
        rows = rows - rows.mean(axis=1, keepdims=True)
        b = b + w @ t[ln + ".bias"]
    else:
        rows = w
    u = np.c_[rows, b]
    return u if head is None else u[head * D // HEADS:(head + 1) * D // HEADS]


def expected(run, layer, component, fold, head=None):
    now, ref = (units(run / f"checkpoint-{s}", layer, component, fold, head) for s in (5, 0))
    rd = np.sqrt(((now - ref) ** 2).sum() / (ref**2).sum())
    na, nb = np.linalg.norm(now, axis=1), np.linalg.norm(ref, axis=1)
    ok = (na > 0) & (nb > 0)
    cos = np.clip((now[ok] * ref[ok]).sum(axis=1) / (na[ok] * nb[ok]), -1, 1)
    angles = np.arccos(cos) * 180 / np.pi
    return dict(rd=rd, angle_mean=angles.mean(), angle_median=np.median(angles),
                angle_max=angles.max()), int(ok.sum())


def got(metrics, step, layer, component, head=None):
    m = metrics[(metrics["step"].isna() if step is None else metrics["step"] == step)
                & (metrics["layer"] == layer)
                & (metrics["component"] == component)]
    m = m[m["head"].isna()] if head is None else m[m["head"] == head]
    m = m[m["metric"].isin(["rd", "angle_mean", "angle_median", "angle_max"])]
    return dict(zip(m["metric"], m["value"])), dict(zip(m["metric"], m["n_units"]))


@pytest.mark.parametrize("fold", [True, False])
def test_rd_and_angles_equal_numpy(run, tmp_path, fold):
    out = tmp_path / "out"
    code, err = probe(["--checkpoint", str(run), "--reference", str(run / "checkpoint-0"),
                       "--output_dir", str(out), "--fold_norms", str(fold).lower()])
    assert code == 0, err
    metrics = pd.read_csv(out / "metrics.csv")
    for layer, component, head in ((0, "attn.q", None), (0, "attn.q", 1), (1, "mlp.in", None)):
        want, n_angles = expected(run, layer, component, fold, head)
        values, n_units = got(metrics, 5, layer, component, head)
        assert values == pytest.approx(want, rel=1e-6, abs=1e-6), (layer, component, head)
        at_start, _ = got(metrics, 0, layer, component, head)
        assert at_start == {k: 0.0 for k in want}  # the reference against itself
        assert n_units["angle_mean"] == n_angles
    # layer 1 mlp.in: grown 3x, so rd > 1.9 while the units barely turned; neuron 0 has no angle
    values, n_units = got(metrics, 5, 1, "mlp.in")
    assert values["rd"] > 1.9 and values["angle_max"] < 30
    assert (n_units["rd"], n_units["angle_mean"]) == (31, 31)  # rd's n_units: the fit's kept units
    every = metrics[metrics["basis"] == "weight"].groupby(["step", "layer", "component", "head"],
                                                          dropna=False)["metric"]
    assert every.apply(lambda m: "rd" in set(m) and "angle_median" in set(m)).all()
    assert pd.read_csv(out / "runs.csv")["reference"].tolist() == [str(run / "checkpoint-0")] * 2
    assert "would add" not in err


def test_rd_rows_are_the_training_runs_rows(run, tmp_path):
    """A training run's SeriesProbe, given the step-0 units, writes the same rd and angle rows
    (raw rows, as training measures them: --fold_norms false)."""
    out = tmp_path / "out"
    assert probe(["--checkpoint", str(run / "checkpoint-5"), "--reference",
                  str(run / "checkpoint-0"), "--output_dir", str(out), "--fold_norms", "false",
                  "--thresholds", "0.9"])[0] == 0
    metrics = pd.read_csv(out / "metrics.csv")
    models = [T.GPT2LMHeadModel.from_pretrained(run / f"checkpoint-{s}") for s in (0, 5)]
    start = {(u.layer, u.component, u.head): u.units for u in read_units(models[0])}
    series = SeriesProbe("checkpoint-5", None, None, "cpu", [0.9], units0=start)
    with Fitter([0.9], 1) as fitter:
        found = measure_units([read_units(models[1])], fitter, dict(run_id="checkpoint-5", step=5),
                              drift=series.drift_from_start)
    trained = [r for r in found.metrics if r["metric"] in DRIFT]
    mine = metrics[metrics["metric"].isin(DRIFT)]
    assert len(trained) == len(mine) > 0 and set(mine["metric"]) == set(DRIFT)
    cols = ["layer", "component", "head", "basis", "metric", "threshold", "value", "n_units"]
    theirs = pd.read_csv(io.StringIO(pd.DataFrame(trained)[cols].to_csv(index=False)))
    pd.testing.assert_frame_equal(mine[cols].reset_index(drop=True), theirs, check_dtype=False)


def test_series_with_step_0_says_reference_would_give_rd(run, tmp_path):
    code, err = probe(["--checkpoint", str(run), "--output_dir", str(tmp_path / "out")])
    assert code == 0
    assert "rd" not in set(pd.read_csv(tmp_path / "out" / "metrics.csv")["metric"])
    note = [x for x in err.splitlines() if x.startswith("my-run: its step 0")]
    assert len(note) == 1 and f"--reference {run / 'checkpoint-0'}" in note[0]


def test_api_series_hint_is_an_attr_not_a_warning(run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        df = probes.measure(run, thresholds=[0.9])
    assert sorted(set(df["step"])) == [0, 5] and "rd" not in set(df["metric"])
    (hint,) = df.attrs["hints"]
    assert hint.startswith("my-run: its step 0 is in the series") and str(run / "checkpoint-0") in hint


def test_api_reference_path_or_module(run):
    ref, now = run / "checkpoint-0", run / "checkpoint-5"
    on_disk = probes.measure(now, reference=ref, thresholds=[0.9])
    want = {}
    for layer, component in ((0, "attn.q"), (1, "mlp.in")):
        values, _ = got(on_disk, None, layer, component)  # a folder alone has no step
        want[(layer, component)] = values
        assert values == pytest.approx(expected(run, layer, component, True)[0], rel=1e-6)
    live = probes.measure(T.GPT2LMHeadModel.from_pretrained(now), run_id="x", step=5,
                          reference=T.GPT2LMHeadModel.from_pretrained(ref), thresholds=[0.9])
    assert got(live, 5, 1, "mlp.in")[0] == pytest.approx(want[(1, "mlp.in")], rel=1e-6)
    with pytest.raises(TypeError, match="reference of type int"):
        probes.measure(now, reference=3)
    with pytest.raises(ValueError, match="heads is 4 in the reference and 2"):
        probes.measure(gpt2(), reference=gpt2(n_head=4))


@pytest.mark.parametrize("make, words", [
    (lambda p: gpt2(n_head=4).save_pretrained(p), "layer 0 attn.q heads is 4 in the reference and 2"),
    (lambda p: gpt2(n_inner=64).save_pretrained(p),
     "h.0.mlp.c_fc.weight is [16, 64] in the reference and [16, 32]"),
    (lambda p: gpt2(n_layer=1).save_pretrained(p), "layers is [0] in the reference and [0, 1]"),
    (lambda p: T.LlamaForCausalLM(T.LlamaConfig(
        hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=32,
        vocab_size=32)).save_pretrained(p), "model_type is llama in the reference and gpt2"),
    (None, "holds 2 step checkpoints (steps 0, 5)"),
    (lambda p: None, "--reference: checkpoint"),
])
def test_mismatched_reference_refused_before_any_work(run, tmp_path, make, words):
    ref = run if make is None else tmp_path / "ref"
    if make is not None:
        make(ref)
    out = tmp_path / "out"
    code, err = probe(["--checkpoint", str(run / "checkpoint-5"), "--reference", str(ref),
                       "--output_dir", str(out)])
    lines = [x for x in err.splitlines() if x and not x.startswith("[transformers]")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: --reference") and words in lines[0], lines[0]
    assert "accepted" in lines[0]
    assert not out.exists() and not any(tmp_path.glob(".out*"))
