"""Issue 15: the authors' schedule (warm-up start, cosine floor), the paper family's head bias and
configs/authors_reference.yaml; at their defaults the new keys change nothing."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)

from models import apply_init_rate, build_model
from probes.config import ConfigError, RunConfig, expand, load_config
from probes.config.load import validate
from probes.run import main
from probes.train.loop import make_scheduler

ROOT = Path(__file__).resolve().parent.parent

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
AUTHORS = CONFIGS / "authors_reference.yaml"


def schedule(cfg: RunConfig, steps: int) -> list[float]:
    """The learning rates of scheduler steps 0 .. steps - 1 (as the loop reads them)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, lrs = make_scheduler(cfg, opt), []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


def transformers_schedule(cfg: RunConfig, steps: int) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    if cfg.lr_schedule == "constant":
        sched = get_constant_schedule_with_warmup(opt, cfg.warmup_steps)
    else:
        sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("kind", ["cosine", "constant"])
@pytest.mark.parametrize("warmup, steps", [(100, 2000), (0, 50), (7, 7), (30, 20)])
def test_defaults_are_the_old_schedule_step_by_step(kind, warmup, steps):
    cfg = RunConfig(lr_schedule=kind, warmup_steps=warmup, steps=steps, lr=1e-3)
    assert schedule(cfg, steps + 5) == transformers_schedule(cfg, steps + 5)  # float for float


def test_authors_schedule_against_hand_formula():
    (cfg,) = [r for r in expand(load_config(AUTHORS)) if r.gamma == 0.5]
    assert (cfg.lr, cfg.lr_warmup_start, cfg.lr_min) == (2e-4, 0.05, 1e-5)
    assert (cfg.warmup_steps, cfg.steps) == (3700, 77700)

    def authors(s):  # GradualWarmupScheduler(x20 over 3,700) then CosineAnnealingLR(74,000, 1e-5)
        if s < 3700:
            return 1e-5 * ((20 - 1) * s / 3700 + 1)
        return 1e-5 + (2e-4 - 1e-5) * (1 + math.cos(math.pi * (s - 3700) / 74000)) / 2

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(cfg, opt)
    lr_at = sched.lr_lambdas[0]
    for s in (0, 1, 1850, 3699, 3700, 3701, 40700, 77699, 77700):
        assert cfg.lr * lr_at(s) == pytest.approx(authors(s), rel=1e-9, abs=1e-15), s
    assert cfg.lr * lr_at(0) == pytest.approx(1e-5)
    assert cfg.lr * lr_at(3700) == pytest.approx(2e-4)
    assert cfg.lr * lr_at(40700) == pytest.approx((2e-4 + 1e-5) / 2)
    assert cfg.lr * lr_at(77700) == pytest.approx(1e-5)


def test_the_authors_keys_enter_the_run_id_where_training_reads_them():
    cfg = RunConfig()
    changed = RunConfig(lr_min=1e-5)
    assert changed.run_id != cfg.run_id and changed.identity()["lr_min"] == 1e-5
    assert RunConfig(head_bias=True).run_id != cfg.run_id
    # the constant schedule never reads the cosine floor; gpt2 has no head_bias key
    assert "lr_min" not in RunConfig(lr_schedule="constant").identity()
    assert "head_bias" not in RunConfig(model_family="gpt2").identity()


@pytest.mark.parametrize("kw, names", [
    (dict(lr_warmup_start=1.5), "lr_warmup_start=1.5"),
    (dict(lr_warmup_start=-0.1), "lr_warmup_start=-0.1"),
    (dict(lr_min=1e-3, lr=1e-3), "lr_min=0.001"),
    (dict(lr_min=-1e-5), "lr_min=-1e-05"),
    (dict(lr_min=1e-5, lr_schedule="constant"), "lr_min=1e-05"),
    (dict(head_bias=True, model_family="gpt2"), "head_bias"),
])
def test_bad_values_one_line(kw, names):
    with pytest.raises(ConfigError) as e:
        validate(RunConfig(**kw))
    msg = str(e.value)
    assert names in msg and "accepted" in msg and "\n" not in msg


def test_head_bias_keeps_pytorchs_draw():
    sizes = dict(vocab_size=50, n_positions=9, n_embd=16, n_layer=1, n_head=1)
    assert build_model("paper", **sizes).lm_head.bias is None
    model = build_model("paper", **sizes, head_bias=True)
    drawn = model.lm_head.bias.detach().clone()
    records = apply_init_rate(model, 0.8)
    bias = model.lm_head.bias.detach()
    assert torch.equal(bias, drawn)  # not redrawn, not zeroed by the init rate
    bound = 1 / math.sqrt(16)  # nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert bias.abs().max() <= bound and bias.abs().max() > bound / 4
    head = [r for r in records if r["name"] == "lm_head"][0]
    assert head["std"] == pytest.approx(16 ** -0.8)
    with pytest.raises(ValueError, match="head_bias"):
        build_model("gpt2", **sizes, head_bias=True)


def test_authors_reference_runs_a_few_steps(tmp_path):
    runs = expand(load_config(AUTHORS))
    assert sorted(r.gamma for r in runs) == [0.5, 0.8] and {r.seed for r in runs} == {1}
    r = runs[0]
    assert (r.model_family, r.n_layer, r.n_embd, r.n_head, r.d_ff, r.vocab_size) == (
        "paper", 2, 400, 1, 1200, 201)
    assert (r.batch_size, r.split_modulus, r.n_train, r.head_bias) == (2048, 9, 759375, True)
    assert r.steps == 210 * (r.n_train // r.batch_size)  # 210 epochs of 370 batches
    assert (r.optimizer, r.weight_decay, r.grad_clip, r.fresh_samples) == ("adamw", 0.01, 1.0, False)

    args = ["--config", str(AUTHORS), "--gamma", "0.8", "--steps", "3", "--warmup_steps", "2",
            "--n_train", "4096", "--n_test_id", "256", "--n_ood", "256", "--n_eval", "256",
            "--n_embd", "16", "--d_ff", "48", "--batch_size", "64", "--n_probes", "2",
            "--log_every", "1", "--num_threads", "1", "--output_dir", str(tmp_path)]
    assert main(args) == 0
    result = pd.read_csv(tmp_path / "runs.csv")
    assert result["steps"].tolist() == [3] and not result["diverged"].any()
    (folder,) = (tmp_path / "runs").iterdir()
    log = pd.read_csv(folder / "train_log.csv")
    # warm-up 2e-4 (0.05 + 0.95 s / 2) at s = 0, 1; then cosine at progress (2 - 2) / (3 - 2) = 0
    assert log["lr"].tolist() == pytest.approx([1e-5, 1e-5 + (2e-4 - 1e-5) / 2, 2e-4])
    model = AutoModelForCausalLM.from_pretrained(folder / "model")
    assert model.config.head_bias and model.lm_head.bias.shape == (201,)
    assert model.lm_head.bias.abs().max() > 0


def test_authors_trajectories_csv():
    csv = Path(__file__).resolve().parent.parent / "configs/authors_trajectories.csv"
    t = pd.read_csv(csv)
    assert list(t.columns[:8]) == ["gamma", "epoch", "step", "acc_train", "acc_test_id",
                                   "acc_pair34", "acc_pair34_train", "ood_inferential"]
    assert (t["step"] == 370 * t["epoch"]).all()
    last = t[t["gamma"] == 0.8].iloc[-1]
    assert (last["epoch"], last["ood_inferential"], last["ood_symmetric"]) == (209, 0.968474, 0.0)
    assert (t[(t["gamma"] == 0.5) & (t["epoch"] >= 6)]["ood_symmetric"] == 1.0).all()


def test_preset_finds_its_trajectories_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (cfg, *_) = expand(load_config("authors_reference"))
    assert Path(cfg.reference_trajectories).samefile(ROOT / "configs" / "authors_trajectories.csv")


def test_ood_over_training_against_samples_seen(tmp_path, monkeypatch):
    from probes.report.figures import experiment as figures

    runs = pd.DataFrame([dict(run_id="a", gamma=0.8, seed=1, batch_size=256)])
    metrics = pd.DataFrame([dict(run_id="a", step=s, layer=None, metric=m, value=0.5)
                            for s in (0, 10, 100) for m in ("ood_inferential", "ood_symmetric",
                                                            "acc_test_id")])
    reference = pd.read_csv(ROOT / "configs" / "authors_trajectories.csv")
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    figures.ood_over_training(runs, metrics, tmp_path / "x.png", ("ood_inferential",
                                                                  "ood_symmetric"),
                              reference, axis="samples")
    lines = [line for line in drawn["fig"].axes[0].lines if len(line.get_xdata())]
    assert list(lines[0].get_xdata()) == [0.5, 2560.0, 25600.0]  # step 0 drawn at 0.5
    ref = reference[reference["gamma"] == 0.8].sort_values("step")
    assert list(lines[3].get_xdata()) == list((ref["step"] * 2048.0).clip(lower=0.5))
    with pytest.raises(ValueError, match="batch_size"):
        figures.ood_over_training(runs.drop(columns="batch_size"), metrics, tmp_path / "y.png",
                                  ("ood_inferential",), None, axis="samples")
