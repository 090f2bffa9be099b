"""The embedding principle's MNIST numbers from a finished ``configs/embedding_principle.yaml``
experiment (default: reports/embedding_principle), next to the paper's (Zhang, Zhang, Luo, Xu,
NeurIPS 2021, arXiv 2105.14573: 58 groups at cosine 0.9, 98.5% of predictions kept by the merged
net).

Writes into ``--out`` (default reports/measured/embedding_principle/):
- ``runs.csv``: the experiment's runs.csv;
- ``probe_rows.csv``: per run and probe step, the metrics.csv rows of the training loss, the two
  accuracies and n_groups at 0.9 of ``mlp.in`` (every neuron: input row with its bias) and
  ``mlp.active`` (the neurons that hold 99% of the output amplitude);
- ``merge_rows.csv``: the merge probe's rows at 0.9 (component ``all``: the hidden layer);
- ``summary.csv``: per run, three steps: ``plateau_end`` (the last probe whose training loss is
  still >= 99% of its value at step 0: the end of the initial loss plateau, the suite's
  initial-stage rule), ``fewest_groups`` (the probe with the fewest groups at 0.9) and ``last``;
  at each, the loss, the accuracies, the groups at 0.9 with and without the bias column
  (recounted from the saved checkpoint), the merge rows there (NaN where the preset did not merge
  at that step) and the chance count: the groups at 0.9 of the same number of units drawn
  isotropically (Gaussian) in the same dimension, the mean over 20 draws (seed 0);
- ``embedding_principle.png``: loss, groups at 0.9 and the merged net's test agreement against
  the step, one line per run, coloured by gamma, the paper's 58 and 98.5% drawn.

    python benchmarks/embedding_principle.py [--experiment reports/embedding_principle] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from probes.measure.metrics import Condensation  # noqa: E402
from probes.store import checkpoint_series  # noqa: E402

TAU = 0.9
PAPER_GROUPS, PAPER_AGREEMENT = 58, 0.985
CHANCE_DRAWS, CHANCE_SEED = 20, 0
SCORES = ("train_loss", "acc_train", "acc_test")
MERGED = ("merged_width", "pred_agreement_train", "pred_agreement_test", "acc_test_merged",
          "rel_loss_change", "max_abs_logit_diff")


def groups(units: np.ndarray) -> int:
    """Condensed groups at TAU (the suite's complete linkage on cosine distance)."""
    return Condensation([TAU], order=False, spectral=False).fit(units).n_groups_[TAU]


def chance_groups(n: int, dim: int) -> float:
    """Mean groups at TAU of ``n`` isotropic Gaussian units in ``dim`` dimensions."""
    rng = np.random.default_rng(CHANCE_SEED)
    return float(np.mean([groups(rng.standard_normal((n, dim))) for _ in range(CHANCE_DRAWS)]))


def per_probe(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, step): the scores and groups at TAU of mlp.in and mlp.active."""
    scores = metrics[(metrics["component"] == "output") & metrics["metric"].isin(SCORES)]
    table = scores.pivot_table(index=["run_id", "step"], columns="metric", values="value")
    g = metrics[(metrics["metric"] == "n_groups") & (metrics["threshold"] == TAU)
                & metrics["component"].isin(["mlp.in", "mlp.active"])]
    g = g.pivot_table(index=["run_id", "step"], columns="component", values="value")
    return table.join(g.rename(columns=lambda c: f"groups_{c.split('.')[1]}")).reset_index()


def steps_of_interest(probes: pd.DataFrame) -> dict[str, int]:
    """plateau_end, fewest_groups and last step of one run's probe table."""
    start = probes.loc[probes["step"] == 0, "train_loss"].item()
    on_plateau = probes[probes["train_loss"] >= 0.99 * start]
    fewest = probes.loc[probes["groups_in"].idxmin(), "step"]
    return {"plateau_end": int(on_plateau["step"].max()), "fewest_groups": int(fewest),
            "last": int(probes["step"].max())}


def summary(experiment: Path, metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of summary.csv (module docstring)."""
    probes = per_probe(metrics)
    merge = metrics[(metrics["component"] == "all") & (metrics["threshold"] == TAU)]
    merge = merge.pivot_table(index=["run_id", "step"], columns="metric", values="value")
    chance = {}
    rows = []
    for run in runs.itertuples():
        mine = probes[probes["run_id"] == run.run_id]
        saved = dict(checkpoint_series(experiment / "runs" / run.run_id))
        for point, step in steps_of_interest(mine).items():
            w = load_file(saved[step] / "model.safetensors")
            units = np.concatenate([w["hidden.weight"], w["hidden.bias"][:, None]], axis=1)
            at = mine[mine["step"] == step].iloc[0]
            row = {"run_id": run.run_id, "gamma": run.gamma, "seed": run.seed, "point": point,
                   "step": step, **{k: at[k] for k in SCORES},
                   "groups_with_bias": groups(units.astype(np.float64)),
                   "groups_without_bias": groups(units[:, :-1].astype(np.float64)),
                   "groups_active": at["groups_active"]}
            for dim in (units.shape[1], units.shape[1] - 1):
                chance.setdefault(dim, chance_groups(len(units), dim))
            row["chance_with_bias"] = chance[units.shape[1]]
            row["chance_without_bias"] = chance[units.shape[1] - 1]
            got = merge.loc[(run.run_id, step)] if (run.run_id, step) in merge.index else {}
            row |= {k: float(got[k]) if k in got else np.nan for k in MERGED}
            rows.append(row)
    return pd.DataFrame(rows)


def figure(probes: pd.DataFrame, merge: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Loss, groups at TAU and the merged net's test agreement against the step."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    gammas = sorted(runs["gamma"].unique())
    colours = dict(zip(gammas, plt.cm.viridis(np.linspace(0, 0.85, len(gammas)))))
    for run in runs.itertuples():
        p = probes[(probes["run_id"] == run.run_id) & (probes["step"] > 0)]
        m = merge[(merge["run_id"] == run.run_id) & (merge["metric"] == "pred_agreement_test")]
        label = f"gamma {run.gamma:g}" if run.seed == runs["seed"].min() else None
        style = dict(color=colours[run.gamma], lw=1.2, alpha=0.8, label=label)
        axes[0].plot(p["step"], p["train_loss"], **style)
        axes[1].plot(p["step"], p["groups_in"], **style)
        axes[2].plot(m["step"], m["value"], marker=".", **style)
    axes[1].axhline(PAPER_GROUPS, color="tab:red", ls="--", lw=1, label="paper: 58")
    axes[2].axhline(PAPER_AGREEMENT, color="tab:red", ls="--", lw=1, label="paper: 98.5%")
    titles = ("training loss (cross-entropy)", f"groups at cosine {TAU} (400 hidden neurons)",
              f"merged net at {TAU}: test predictions kept")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("step (full-batch gradient descent, lr 0.1)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle("784-400-10 ReLU net on 1000 mnist5k digits (configs/embedding_principle.yaml)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="reports/embedding_principle")
    parser.add_argument("--out", default="reports/measured/embedding_principle")
    args = parser.parse_args(argv)
    experiment, out = Path(args.experiment), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = pd.read_csv(experiment / "metrics.csv")
    runs = pd.read_csv(experiment / "runs.csv")
    shutil.copyfile(experiment / "runs.csv", out / "runs.csv")
    keep = (((metrics["component"] == "output") & metrics["metric"].isin(SCORES))
            | ((metrics["metric"] == "n_groups") & (metrics["threshold"] == TAU)
               & metrics["component"].isin(["mlp.in", "mlp.active"])))
    metrics[keep].to_csv(out / "probe_rows.csv", index=False)
    merge = metrics[(metrics["component"] == "all") & (metrics["threshold"] == TAU)]
    merge.to_csv(out / "merge_rows.csv", index=False)
    table = summary(experiment, metrics, runs)
    table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    figure(per_probe(metrics), merge, runs, out / "embedding_principle.png")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        cols = ["gamma", "seed", "point", "step", "train_loss", "acc_test", "groups_with_bias",
                "groups_without_bias", "groups_active", "merged_width", "pred_agreement_train",
                "pred_agreement_test", "acc_test_merged", "chance_with_bias"]
        print(table[cols].round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
