"""The Python API: ``probes.measure`` on a live module, a transformers model, a checkpoint folder
and a run's series, ``probes.CondensationCallback`` in a ``Trainer`` run, and the lazy exports.
Values are checked against cosines, complete-linkage groups and singular values recomputed here
with numpy / scipy from the module's own weights (unit = weight row, bias appended)."""

import contextlib
import copy
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from torch import nn

import models
import probes

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = (0.7, 0.9, 0.95, 0.99)

# The README's "Python API" examples, run verbatim (in order, one namespace) by the tests below.
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The first python block of README's "Python API" section, as it stands."""
    text = README.read_text().split("## Python API", 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def reference(units, thresholds=THRESHOLDS) -> dict:
    """Condensation of ``units`` (n, dim) recomputed independently: the cosine matrix, scipy's
    complete linkage on cosine distance cut at 1 - tau, and the singular values."""
    u = np.asarray(units, dtype=np.float64)
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    cos = unit @ unit.T
    off = ~np.eye(len(u), dtype=bool)
    tree = linkage(pdist(u, "cosine"), method="complete")
    out = {("mean_abs_cos", None): np.abs(cos[off]).mean()}
    for t in thresholds:
        labels = fcluster(tree, 1 - t, criterion="distance")
        out[("n_groups", t)] = len(np.unique(labels))
        out[("largest_group_share", t)] = np.bincount(labels).max() / len(u)
    s = np.linalg.svd(u, compute_uv=False)
    p = s[s > 0] / s.sum()  # an all-zero bias column gives an exact zero
    out[("stable_rank", None)] = (s**2).sum() / s[0] ** 2
    out[("effective_rank", None)] = np.exp(-(p * np.log(p)).sum())
    return out


def measured(df, component, layer="any", head=None, basis="weight") -> dict:
    """{(metric, threshold or None): value} of one unit set of a measure() frame."""
    rows = df[(df["component"] == component) & (df["basis"] == basis)]
    rows = rows[rows["head"].isna()] if head is None else rows[rows["head"] == head]
    if layer != "any":
        rows = rows[rows["layer"].isna()] if layer is None else rows[rows["layer"] == layer]
    assert len(rows), (component, layer, head)
    return {(m, None if pd.isna(t) else t): v
            for m, t, v in zip(rows["metric"], rows["threshold"], rows["value"])}


def assert_matches(got: dict, want: dict, rel: float = 1e-6):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-9), key


def planted(k, per_group, n_random, dim, seed=0, noise=0.05) -> torch.Tensor:
    """k groups of near-identical directions (orthogonal between groups), then random rows."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:k]
    rows = [directions[g] + noise * rng.normal(size=dim) / np.sqrt(dim)
            for g in range(k) for _ in range(per_group)]
    rows += list(rng.normal(size=(n_random, dim)))
    return torch.tensor(np.array(rows) * rng.uniform(0.5, 2, size=(len(rows), 1)),
                        dtype=torch.float32)


@pytest.fixture
def examples(tmp_path, monkeypatch) -> dict:
    """The README's examples run in a fresh folder; their namespace."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), ns)
    return ns


# --- README examples against independent computations -----------------------------------------

def test_module_example_rows_are_the_units_condensation(examples):
    net, df = examples["net"], examples["df"]
    assert list(df.columns) == ["run_id", "step", "layer", "component", "head", "basis", "metric",
                                "threshold", "value", "n_units"]
    # every Linear is a unit set named by its module path; layer = the integer in the path
    assert examples["groups"][["layer", "component", "n_units"]].values.tolist() == [[0, "0", 32],
                                                                                     [2, "2", 2]]
    assert set(df["run_id"]) == {"Sequential"} and df["step"].isna().all()
    for name in ("0", "2"):
        lin = net.get_submodule(name)
        units = torch.cat([lin.weight, lin.bias[:, None]], dim=1).detach()  # bias appended
        assert_matches(measured(df, name), reference(units))
    # planted groups in the first layer: found as scipy finds them
    with torch.no_grad():
        rows = planted(4, 6, 8, 9, seed=1)
        net[0].weight.copy_(rows[:, :8])
        net[0].bias.copy_(rows[:, 8])
    got, want = measured(probes.measure(net), "0"), reference(rows)
    assert want[("n_groups", 0.9)] == 12  # 4 planted groups + 8 random rows
    assert_matches(got, want)


def test_transformers_example_reads_units_through_the_architecture(examples):
    model, cos = examples["model"], examples["cos"]
    assert set(cos["component"]) == {"attn.q", "attn.k", "attn.v", "attn.qk_heads", "mlp.in"}
    assert sorted(set(cos["layer"])) == [0, 1]
    df = probes.measure(model, fold_norms=False)
    fc = model.transformer.h[1].mlp.c_fc  # Conv1D (d_in, d_out): neuron k = column k
    units = torch.cat([fc.weight.T, fc.bias[:, None]], dim=1).detach()
    assert_matches(measured(df, "mlp.in", 1), reference(units))
    attn = model.transformer.h[0].attn.c_attn  # q | k | v columns, 2 heads of 16 each
    q = torch.cat([attn.weight.T, attn.bias[:, None]], dim=1).detach()[:32]
    assert_matches(measured(df, "attn.q", 0, head=1), reference(q[16:]))
    # folded (the default): ln_2's gain 1 and bias 0 at init leave W - mean(W) per row (LayerNorm
    # centres its input) and the bias
    centred = torch.cat([fc.weight.T - fc.weight.T.mean(1, keepdim=True), fc.bias[:, None]], 1)
    assert_matches(measured(probes.measure(model), "mlp.in", 1), reference(centred.detach()))


def test_folder_example_gives_the_live_models_rows(examples):
    live = probes.measure(examples["model"], run_id="ckpt")
    pd.testing.assert_frame_equal(examples["same"], live)


@pytest.mark.parametrize("build", [
    lambda: models.build_model("paper", vocab_size=64, n_positions=9, n_embd=32, n_layer=2,
                               n_head=2),
    lambda: models.build_mlp(in_dim=5, width=16),
    lambda: T.DistilBertModel(T.DistilBertConfig(dim=32, n_heads=4, hidden_dim=64, n_layers=2,
                                                 vocab_size=64)),  # no reader: by module path
], ids=["paper", "mlp", "distilbert"])
def test_live_model_and_its_saved_folder_give_the_same_rows(build, tmp_path):
    torch.manual_seed(7)
    model = build()
    model.save_pretrained(tmp_path / "saved")
    with pytest.warns(UserWarning, match="no unit reader") if "Bert" in type(model).__name__ \
            else contextlib.nullcontext() as found:
        live = probes.measure(model, run_id="saved", thresholds=[0.8])
        on_disk = probes.measure(tmp_path / "saved", thresholds=[0.8])
    # the note points at the caller's line, not at the package
    assert found is None or {Path(w.filename) for w in found} == {Path(__file__)}
    pd.testing.assert_frame_equal(live, on_disk)
    assert len(live) > 0 and live["layer"].notna().all()


def test_run_series_is_measured_step_by_step(tmp_path):
    torch.manual_seed(1)
    model = T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    run = tmp_path / "runs" / "my-run"
    want = []
    for step in (0, 7):
        with torch.no_grad():
            model.transformer.h[0].mlp.c_fc.weight.mul_(1.5 if step else 1.0).add_(0.1 * step)
        model.save_pretrained(run / f"checkpoint-{step}")
        want.append(probes.measure(model, run_id="my-run", step=step, thresholds=[0.9]))
    got = probes.measure(run, thresholds=[0.9])
    pd.testing.assert_frame_equal(got, pd.concat(want, ignore_index=True))
    assert got["step"].unique().tolist() == [0, 7]


# --- other kinds of module, the activation basis, the merge -----------------------------------

def test_convolutions_and_conv1d_in_a_plain_module():
    torch.manual_seed(2)
    net = nn.ModuleDict({"conv": nn.Conv2d(3, 8, 3), "proj": T.pytorch_utils.Conv1D(16, 8),
                         "blocks": nn.ModuleList([nn.Linear(4, 6, bias=False)])})
    df = probes.measure(net, thresholds=[0.5])
    sets = df[["layer", "component", "n_units"]].drop_duplicates().values.tolist()
    assert sets == [[pd.NA, "conv", 8], [pd.NA, "proj", 16], [0, "blocks.0", 6]]
    conv = torch.cat([net["conv"].weight.reshape(8, -1), net["conv"].bias[:, None]], 1)  # 27 + 1
    proj = torch.cat([net["proj"].weight.T, net["proj"].bias[:, None]], 1)  # (nx, nf) stored
    for name, units in (("conv", conv), ("proj", proj), ("blocks.0", net["blocks"][0].weight)):
        assert_matches(measured(df, name), reference(units.detach(), [0.5]))


def test_activation_basis_of_a_live_module_leaves_it_as_it_was():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).train()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(64, 8)
    df = probes.measure(net, basis="activation", inputs=x, thresholds=[0.9])
    assert set(df["basis"]) == {"activation"}
    with torch.no_grad():
        y = net[0](x)  # (samples, units): unit k's vector is its output over the samples
    # rank 9 (8 inputs and the bias) of 32: the rounding-level singular values move the
    # effective rank by ~1e-6 between the two computations
    assert_matches(measured(df, "0", basis="activation"), reference(y.T, [0.9]), rel=1e-5)
    assert net.training and all(m.training for m in net.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    both = probes.measure(net, basis="both", inputs=[x[:32], {"input": x[32:]}], thresholds=[0.9])
    assert set(both["basis"]) == {"weight", "activation"}
    pd.testing.assert_frame_equal(both[both["basis"] == "activation"].reset_index(drop=True), df)


def test_merge_runs_on_a_copy(tmp_path):
    torch.manual_seed(4)
    model = T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    before = copy.deepcopy(model.state_dict())
    ids = torch.randint(0, 32, (4, 12))
    # fold_norms=False: the weight basis would centre LayerNorm-read rows, the merge does not
    df = probes.measure(model, merge=True, inputs={"input_ids": ids}, thresholds=[0.3, 0.99],
                        fold_norms=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(df["basis"]) == {"weight"}  # merge rows, no activation basis asked for
    # merging mlp.in's groups leaves one neuron per group
    mlp = df[(df["component"] == "mlp.in") & df["head"].isna()].set_index(["metric", "threshold"])
    widths = [mlp.loc[("merged_width", t), "value"] for t in (0.3, 0.99)]
    assert widths == [mlp.loc[("n_groups", t), "value"] for t in (0.3, 0.99)]
    assert widths[0] < widths[1] == 64  # at 0.3 some neurons merge; at 0.99 none


# --- the Trainer callback -------------------------------------------------------------------

class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=80, seq=8, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_callback_rows_equal_measure_on_the_saved_checkpoints(tmp_path):
    torch.manual_seed(5)
    model = T.GPT2LMHeadModel(T.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                           n_positions=16))
    start = copy.deepcopy(model)
    out = tmp_path / "gpt2-run"
    args = T.TrainingArguments(output_dir=str(out), max_steps=20, per_device_train_batch_size=4,
                               learning_rate=3e-3, use_cpu=True, report_to=[], save_steps=5,
                               logging_steps=4, disable_tqdm=True, seed=0)
    callback = probes.CondensationCallback(steps=[0, 5, 10, 15, 20], thresholds=[0.7, 0.9])
    trainer = T.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
    trainer.train()
    rows = pd.read_csv(out / "metrics.csv")
    assert rows["step"].unique().tolist() == [0, 5, 10, 15, 20]
    saved = probes.measure(out, thresholds=[0.7, 0.9])  # checkpoint-5 ... checkpoint-20
    trained = rows[rows["step"] > 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(trained, pd.read_csv(_csv(saved, tmp_path / "saved.csv")))
    first = probes.measure(start, run_id="gpt2-run", step=0, thresholds=[0.7, 0.9])
    pd.testing.assert_frame_equal(rows[rows["step"] == 0].reset_index(drop=True),
                                  pd.read_csv(_csv(first, tmp_path / "first.csv")))
    # logged: per component, means over layers; only at the measured steps
    history = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    key = "condensation/mlp.in/n_groups@0.9"
    assert sorted(s for s, h in history.items() if key in h) == [5, 10, 15, 20]
    assert "loss" in history[8] and key not in history[8]
    for step in (5, 20):
        whole = rows[(rows["step"] == step) & rows["head"].isna() & (rows["component"] == "mlp.in")]
        want = whole[(whole["metric"] == "n_groups") & (whole["threshold"] == 0.9)]["value"].mean()
        assert history[step][key] == pytest.approx(want)
        cos = whole[whole["metric"] == "mean_abs_cos"]["value"].mean()
        assert history[step]["condensation/mlp.in/mean_abs_cos"] == pytest.approx(cos)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_callback_keeps_the_rows_before_a_resume(tmp_path):
    torch.manual_seed(6)
    config = T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    out = tmp_path / "resumed"

    def train(max_steps, resume=None):
        args = T.TrainingArguments(output_dir=str(out), max_steps=max_steps, save_steps=5,
                                   per_device_train_batch_size=4, use_cpu=True, report_to=[],
                                   disable_tqdm=True, logging_steps=100, seed=0)
        callback = probes.CondensationCallback(steps=[0, 5, 10], thresholds=[0.9])
        T.Trainer(model=T.GPT2LMHeadModel(config), args=args, train_dataset=Tokens(),
                  callbacks=[callback]).train(resume_from_checkpoint=resume)
        return pd.read_csv(out / "metrics.csv")

    first = train(5)
    assert first["step"].unique().tolist() == [0, 5]
    resumed = train(10, resume=str(out / "checkpoint-5"))
    assert resumed["step"].unique().tolist() == [0, 5, 10]  # 0 and 5 kept, 10 measured once
    pd.testing.assert_frame_equal(resumed[resumed["step"] <= 5], first)
    saved = probes.measure(out / "checkpoint-10", thresholds=[0.9])
    assert resumed[resumed["step"] == 10]["value"].tolist() == saved["value"].tolist()


def _csv(df, path):
    """Through a CSV as the callback's file went, so that both sides have the same dtypes."""
    df.to_csv(path, index=False)
    return path


def test_callback_schedule_is_log_spaced_with_first_and_last():
    assert probes.CondensationCallback(n_probes=5).schedule(20) == [0, 1, 3, 7, 20]
    assert probes.CondensationCallback(steps=[30, 5, 0, 5]).schedule(20) == [0, 5]


# --- bad input, exports -----------------------------------------------------------------------

@pytest.mark.parametrize("call, error, words", [
    (lambda: probes.measure(42), TypeError, "model_or_path of type int"),
    (lambda: probes.measure(nn.ReLU()), ValueError, "no nn.Linear"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), basis="neurons"), ValueError,
     "basis='neurons'"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), thresholds=[0.9, 1.5]), ValueError,
     "thresholds=[0.9, 1.5]"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), thresholds=0.9), TypeError,
     "thresholds=0.9"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), basis="activation"), ValueError,
     "needs inputs"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), basis="activation", inputs=[1]),
     TypeError, "inputs of type int"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), fold_norms="yes"), TypeError,
     "fold_norms='yes'"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), spectral="effective"), TypeError,
     "spectral='effective'"),
    (lambda: probes.CondensationCallback(spectral=1), TypeError, "spectral=1"),
    (lambda: probes.measure("no/such/folder"), ValueError, "'no/such/folder' does not exist"),
    (lambda: probes.measure(".", run_id="x"), ValueError, "run_id='x'"),
    (lambda: probes.measure(nn.Sequential(nn.Linear(2, 2)), device="cpu"), ValueError,
     "device='cpu'"),
    (lambda: probes.CondensationCallback(steps=[-1]), ValueError, "steps=[-1]"),
    (lambda: probes.CondensationCallback(n_probes=1), ValueError, "n_probes=1"),
])
def test_bad_input_names_the_value(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert words in str(info.value)


def test_import_is_cheap_and_exports_resolve():
    code = ("import sys, probes; heavy = [m for m in ('torch', 'transformers', 'pandas') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "[]"
    from probes.measure.metrics import Condensation
    from tasks import make_task

    assert probes.Condensation is Condensation and probes.make_task is make_task
    assert issubclass(probes.CondensationCallback, T.TrainerCallback)
    # importing a module of the measuring room binds the package to probes.measure: it stays
    # callable, and its modules stay reachable as attributes
    importlib.import_module("probes.measure.units")
    assert callable(probes.measure) and probes.measure.units.UnitSet
    assert set(probes.__all__) <= set(dir(probes))


def test_spectral_stable_gives_the_stable_ranks_alone():
    """``spectral="stable"``: stable_rank (rows [W | b]) and stable_rank_weight (W) against
    numpy's SVD, no effective_rank or alpha row."""
    torch.manual_seed(0)
    layer = nn.Linear(60, 90)
    df = probes.measure(nn.Sequential(layer), spectral="Stable", num_threads=1)  # (any case)
    assert df.attrs["runs"][0]["spectral_metrics"] == "stable"
    w = layer.weight.detach().double().numpy()
    u = np.c_[w, layer.bias.detach().double().numpy()]
    got = df.set_index("metric")["value"]
    assert {"effective_rank", "alpha"}.isdisjoint(df["metric"])
    for name, rows in (("stable_rank", u), ("stable_rank_weight", w)):
        s = np.linalg.svd(rows, compute_uv=False)
        assert got[name] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-6)
