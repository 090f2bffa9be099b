"""The relation between condensation and out-of-distribution reasoning, across runs.

The papers show it only as pictures side by side (arXiv 2405.05409); here it is a number: for every
(layer, component, head, basis, metric, threshold), the Spearman rank correlation across runs
between the final condensation value and each ood score, with a paired bootstrap 95% interval.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

KEYS = ["layer", "component", "head", "basis", "metric", "threshold"]
CORRELATION_COLUMNS = [*KEYS, "score", "subset", "n_runs", "spearman_rho", "ci_low", "ci_high",
                       "p_value", "boot_undefined"]
# Above this share of resamples with an undefined rho (a constant side: common when most runs
# score 0), the percentile interval would describe only the lucky resamples; it is left empty.
MAX_UNDEFINED = 0.05


def spearman_rho(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along ``axis`` (vectorized for the bootstrap): Pearson correlation of the
    average ranks; NaN where either side is constant."""
    rx, ry = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis) / np.sqrt((rx**2).sum(axis) * (ry**2).sum(axis))


def correlate(x: np.ndarray, y: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Spearman rho of paired samples with a percentile bootstrap 95% interval.

    Args:
        x, y: (n_runs,) floats.

    Returns:
        {n_runs, spearman_rho, ci_low, ci_high, p_value, boot_undefined}; NaN where undefined
        (fewer than 3 runs, or a constant side). ``boot_undefined`` is the share of resamples
        whose rho is undefined (a constant side); above MAX_UNDEFINED the interval is left NaN,
        since a percentile interval over the remaining resamples would be biased.
    """
    n = len(x)
    out = {"n_runs": n, "spearman_rho": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "p_value": np.nan, "boot_undefined": np.nan}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = stats.spearmanr(x, y)
    with warnings.catch_warnings():  # constant resamples are expected with few runs; see below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        boot = stats.bootstrap((x, y), spearman_rho, paired=True, vectorized=True,
                               n_resamples=n_resamples, method="percentile",
                               rng=np.random.default_rng(seed))
    dist = boot.bootstrap_distribution
    undefined = float(np.mean(~np.isfinite(dist)))
    low, high = np.nanpercentile(dist, [2.5, 97.5]) if undefined <= MAX_UNDEFINED else (np.nan,) * 2
    out.update(spearman_rho=float(res.statistic), ci_low=float(low), ci_high=float(high),
               p_value=float(res.pvalue), boot_undefined=undefined)
    return out


def interval_text(row) -> str:
    """A correlations.csv row's rho and interval for people: "-0.40 [-0.90, 0.71]", or why the
    interval is missing."""
    text = f"{row['spearman_rho']:.2f} "
    if np.isfinite(row["ci_low"]):
        return text + f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return text + f"(no interval: {row['boot_undefined']:.0%} of resamples degenerate)"


def final_values(metrics: pd.DataFrame) -> pd.DataFrame:
    """Condensation rows (basis set) at each run's last probed step."""
    cond = metrics[metrics["basis"].notna()]
    last = cond.groupby("run_id")["step"].transform("max")
    return cond[cond["step"] == last]


def correlations(runs: pd.DataFrame, metrics: pd.DataFrame, scores: tuple[str, ...],
                 n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation across runs of each final condensation value with each ood score.

    Args:
        runs: runs.csv frame (run_id, the score columns, fitted, diverged).
        metrics: metrics.csv frame.
        scores: the ood score columns of ``runs`` (e.g. ood_inferential, ood_symmetric).

    Returns:
        correlations.csv frame (CORRELATION_COLUMNS); ``subset`` is "all" (every run that did not
        diverge) or "fitted" (only fitted runs).
    """
    ok = runs[~runs["diverged"].astype(bool)]
    subsets = {"all": ok, "fitted": ok[ok["fitted"].astype(bool)]}
    final = final_values(metrics)
    out = []
    for key, group in final.groupby(KEYS, dropna=False, sort=True):
        per_run = group.set_index("run_id")["value"]
        for subset, chosen in subsets.items():
            joined = chosen.set_index("run_id")[list(scores)].join(per_run, how="inner")
            for score in scores:
                pair = joined[[score, "value"]].dropna()
                stats_ = correlate(pair["value"].to_numpy(float), pair[score].to_numpy(float),
                                   n_resamples, seed)
                out.append(dict(zip(KEYS, key)) | {"score": score, "subset": subset} | stats_)
    df = pd.DataFrame(out, columns=CORRELATION_COLUMNS)
    for col in ("layer", "head", "n_runs"):
        df[col] = pd.to_numeric(df[col]).astype("Int64")
    return df


def best_over(runs: pd.DataFrame, over: str = "lr", select: str = "acc_test_id",
              keep: tuple[str, ...] = ("gamma", "n_layer", "seed")) -> pd.DataFrame:
    """The paper's protocol for a phase-diagram cell (arXiv 2405.05409, Sec. 4): among the runs
    that differ only in ``over`` (several learning rates), keep the one with the highest
    ``select`` for each combination of ``keep``. Diverged runs are never kept if another exists;
    ties keep the first in grid order."""
    ranked = runs.assign(_score=runs[select].fillna(-np.inf))
    idx = ranked.groupby(list(keep), sort=False)["_score"].idxmax()
    return runs.loc[idx.sort_values()]


def phase_table(runs: pd.DataFrame, metrics: pd.DataFrame, x: str = "gamma", y: str = "n_layer",
                scores: tuple[str, ...] = ("acc_test_id", "ood_inferential", "ood_symmetric")
                ) -> pd.DataFrame:
    """One row per (x, y) cell of a phase diagram, after ``best_over`` the learning rates.

    Returns:
        columns x, y, n_runs, n_fitted, each score as the mean over the cell's runs (``<score>``)
        and over its fitted runs only (``<score>_fitted``, NaN when none fitted), and
        ``wq_mean_abs_cos``: the final mean |cos| of layer-0 W_Q rows, mean over the cell's runs.
    """
    best = best_over(runs, keep=(x, y, "seed"))
    final = final_values(metrics)
    wq = final[(final["layer"] == 0) & (final["component"] == "attn.q") & final["head"].isna()
               & (final["metric"] == "mean_abs_cos")].set_index("run_id")["value"]
    best = best.assign(wq_mean_abs_cos=best["run_id"].map(wq), fitted=best["fitted"].astype(bool))
    rows = []
    for (xv, yv), cell in best.groupby([x, y]):
        fitted = cell[cell["fitted"]]
        row = {x: xv, y: yv, "n_runs": len(cell), "n_fitted": len(fitted)}
        for s in scores:
            row[s] = cell[s].mean()
            row[f"{s}_fitted"] = fitted[s].mean() if len(fitted) else np.nan
        row["wq_mean_abs_cos"] = cell["wq_mean_abs_cos"].mean()
        rows.append(row)
    return pd.DataFrame(rows)
