"""Tables computed from an experiment's CSVs (nothing is measured here).

The condensation / reasoning relation (the papers show it only as pictures side by side,
arXiv 2405.05409; here it is a number): for every (layer, component, head, basis, metric,
threshold), the Spearman rank correlation across runs between the final condensation value and
each ood score, with a paired bootstrap 95% interval (``correlations``), and the phase diagram
over gamma and depth (``phase_table``).

The baseline families (``mlp``, ``resnet``):
- ``rd_slopes``: the slope S_w of log max-RD of the hidden layer's input weights against log
  width, per (gamma, gamma', activation, dropout), as in the phase diagram of Luo, Xu, Ma, Zhang
  (JMLR 2021): S_w < 0 linear regime, ~ 0 critical, > 0 condensed;
- ``final_condensation``: each run's final groups per stage (ResNet: stem, stage0..3,
  classifier; mlp: ``mlp.in``) and threshold, the convolutions of a stage pooled;
- ``directions`` (mlp with 1-D input): the condensed directions and lines at the last probe and
  at the end of the initial stage (``initial_stage``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from probes.measure.chance import NULL_ONLY
from probes.measure.family_units import resnet_stage
from probes.measure.neurons import INITIAL_LOSS_RATIO, loss_fell

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
    interval (or rho itself) is missing."""
    if not np.isfinite(row["spearman_rho"]):
        return "undefined (fewer than 3 runs or a constant side)"
    text = f"{row['spearman_rho']:.2f} "
    if np.isfinite(row["ci_low"]):
        return text + f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return text + f"(no interval: {row['boot_undefined']:.0%} of resamples degenerate)"


def select(metrics: pd.DataFrame, metric: str | None = None, *, component: str | None = None,
           layer: int | None = None, threshold: float | None = None,
           whole_layer: bool = True) -> pd.DataFrame:
    """Rows of a metrics.csv frame: one metric of one component and layer, at one threshold.

    Args:
        metrics: metrics.csv frame.
        metric, component, layer: kept values (None: any).
        threshold: kept threshold, compared with np.isclose (None: any).
        whole_layer: keep only whole-layer rows (``head`` empty).

    Returns:
        the matching rows, in their order.
    """
    keep = pd.Series(True, index=metrics.index)
    if metric is not None:
        keep &= metrics["metric"] == metric
    if component is not None:
        keep &= metrics["component"] == component
    if layer is not None:
        keep &= metrics["layer"] == layer
    if threshold is not None:
        keep &= np.isclose(metrics["threshold"].astype(float), threshold)
    if whole_layer:
        keep &= metrics["head"].isna()
    return metrics[keep.fillna(False).astype(bool)]


def shown_thresholds(metrics: pd.DataFrame, preferred: tuple[float, ...]) -> tuple[float, ...]:
    """The thresholds a table or figure shows: ``preferred`` when every one was measured (a
    ``threshold`` in ``metrics``), else the lowest and the highest measured (one when a single
    one was; none when none was), so that an experiment measured at other thresholds is shown
    at its own rather than as empty panels."""
    measured = sorted(float(t) for t in metrics["threshold"].dropna().unique())
    if all(any(np.isclose(t, m) for m in measured) for t in preferred):
        return tuple(preferred)
    return tuple(dict.fromkeys([measured[0], measured[-1]])) if measured else ()


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
        diverge) or "fitted" (only fitted runs). The chance rows that describe a null alone
        (``chance.NULL_ONLY``: its draws, mean and sd) are left out; their p and z stay in.
    """
    ok = runs[~runs["diverged"].astype(bool)]
    subsets = {"all": ok, "fitted": ok[ok["fitted"].astype(bool)]}
    final = final_values(metrics)
    final = final[~final["metric"].isin(NULL_ONLY)]
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


def best_over(runs: pd.DataFrame, select: str = "acc_test_id",
              keep: tuple[str, ...] = ("gamma", "n_layer", "seed")) -> pd.DataFrame:
    """The paper's protocol for a phase-diagram cell (arXiv 2405.05409, Sec. 4): among the runs
    that share the ``keep`` settings (and differ in the rest, e.g. several learning rates), keep
    the one with the highest ``select``. Diverged runs (``select`` NaN) are never kept if another
    exists; ties keep the first in grid order.

    Returns:
        the kept rows of ``runs``, in grid order.
    """
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
    wq = select(final, "mean_abs_cos", component="attn.q", layer=0).set_index("run_id")["value"]
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


# --- the baseline families -------------------------------------------------------------------

SLOPE_GROUPS = ("gamma", "gamma_prime", "activation", "dropout")
# settings that split the slope fits further when they vary in the grid
SLOPE_SPLITS = ("task", "lr", "optimizer", "lr_scaling", "weight_decay", "steps", "in_dim")
SLOPE_COLUMNS = [*SLOPE_GROUPS, "n_runs", "widths", "slope", "stderr", "intercept", "r_value"]
FINAL_COLUMNS = ["run_id", "model_family", "gamma", "dropout", "width", "activation", "stage",
                 "threshold", "n_sets", "n_units", "n_groups", "group_ratio", "effective_ratio",
                 "mean_abs_cos"]


def _whole(metrics: pd.DataFrame) -> pd.DataFrame:
    """Weight-basis rows of whole layers (no per-head rows)."""
    return metrics[metrics["basis"].notna() & metrics["head"].isna()]


def rd_max(metrics: pd.DataFrame, component: str = "mlp.in", layer: int = 0) -> pd.Series:
    """run_id -> the largest RD of (layer, component) over the run's probe steps.

    RD = ||theta_w(t) - theta_w(0)||_F / ||theta_w(0)||_F of the input weights with biases
    (Luo et al., JMLR 2021); "max" is over the probed steps (log-spaced, the last step included).
    """
    m = select(metrics, "rd", component=component, layer=layer)
    return m[m["basis"].notna()].groupby("run_id")["value"].max()


def rd_slopes(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """S_w per (gamma, gamma', activation, dropout): least-squares slope of log max-RD against
    log width (scipy.stats.linregress over every run of the group, seeds included; the slope
    equals the one through the per-width means of log RD when each width has as many seeds).

    Args:
        runs: runs.csv frame of mlp runs (columns width, gamma, gamma_prime, activation, dropout,
            diverged).
        metrics: metrics.csv frame.

    Returns:
        SLOPE_COLUMNS frame (plus a column per SLOPE_SPLITS setting that varies in ``runs``: a
        fit never pools runs that differ in it), one row per group with >= 2 distinct widths
        (diverged runs and runs with RD = 0 left out); ``widths`` lists the widths used.
    """
    ok = runs[~runs["diverged"].astype(bool)].copy()
    ok["rd_max"] = ok["run_id"].map(rd_max(metrics))
    ok = ok[ok["rd_max"] > 0]
    splits = [c for c in SLOPE_SPLITS if c in runs and runs[c].nunique() > 1]
    keys = [*SLOPE_GROUPS, *splits]
    rows = []
    for key, g in ok.groupby(keys, sort=True):
        if g["width"].nunique() < 2:
            continue
        fit = stats.linregress(np.log(g["width"].astype(float)), np.log(g["rd_max"]))
        rows.append(dict(zip(keys, key)) | {
            "n_runs": len(g), "widths": " ".join(str(int(w)) for w in sorted(g["width"].unique())),
            "slope": fit.slope, "stderr": fit.stderr, "intercept": fit.intercept,
            "r_value": fit.rvalue})
    return pd.DataFrame(rows, columns=[*keys, *SLOPE_COLUMNS[len(SLOPE_GROUPS):]])


def stage_of(family: str, layer, component: str) -> str:
    """The stage a unit set is pooled into: ResNet stages (``resnet_stage``), else the component."""
    if family == "resnet":
        return resnet_stage(int(layer))
    return component


def final_condensation(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each run's condensation at its last probe, pooled per stage and threshold.

    n_groups and n_units are summed over the stage's unit sets (a stage's convolutions have
    different input sizes, so their units are never compared with each other);
    group_ratio = n_groups / n_units; effective_ratio = n_groups / width (mlp: the dropout
    paper's effective ratio when the stage is ``mlp.active``; empty for resnet);
    mean_abs_cos is the mean over the stage's sets.

    Returns:
        FINAL_COLUMNS frame.
    """
    m = _whole(metrics)
    last = m.groupby("run_id")["step"].transform("max")
    m = m[m["step"] == last]
    info = runs.set_index("run_id")
    rows = []
    for run_id, r in m.groupby("run_id", sort=False):
        family = info.loc[run_id, "model_family"]
        r = r.assign(stage=[stage_of(family, lay, comp) for lay, comp in zip(r["layer"], r["component"])])
        for stage, s in r.groupby("stage", sort=False):
            cos = s[s["metric"] == "mean_abs_cos"]["value"].mean()
            groups = s[s["metric"] == "n_groups"]
            for tau, t in groups.groupby("threshold"):
                units = t["n_units"].sum()
                width = info.get("width", {}).get(run_id)
                rows.append({
                    "run_id": run_id, "model_family": family, "gamma": info.loc[run_id, "gamma"],
                    "dropout": info.loc[run_id, "dropout"], "width": width,
                    "activation": info.get("activation", {}).get(run_id), "stage": stage,
                    "threshold": tau, "n_sets": len(t), "n_units": units,
                    "n_groups": t["value"].sum(), "group_ratio": t["value"].sum() / units,
                    "effective_ratio": t["value"].sum() / width if pd.notna(width) else np.nan,
                    "mean_abs_cos": cos})
    return pd.DataFrame(rows, columns=FINAL_COLUMNS)


def initial_stage(metrics: pd.DataFrame, loss_ratio: float = INITIAL_LOSS_RATIO) -> pd.Series:
    """run_id -> the last probe step of the initial stage: the probe before the training loss
    first falls below ``loss_ratio`` times its value at step 0 (the last probe when it never
    does).

    The rule is ``measure.neurons.loss_fell``, the one the training loop applies when it keeps
    the neurons of that step (Zhou et al., NeurIPS 2022, arXiv 2105.11686).

    Args:
        metrics: metrics.csv frame with ``train_loss`` rows (component ``output``).
        loss_ratio: in (0, 1].

    Returns:
        Series of int steps, one per run with a ``train_loss`` at step 0.
    """
    loss = metrics[(metrics["metric"] == "train_loss") & (metrics["component"] == "output")]
    steps = {}
    for run_id, r in loss.groupby("run_id"):
        r = r.sort_values("step")
        if r["step"].iloc[0] != 0:
            continue
        fallen = loss_fell(r["value"].to_numpy(float), r["value"].iloc[0], loss_ratio)
        k = int(np.argmax(fallen)) - 1 if fallen.any() else len(r) - 1
        steps[run_id] = int(r["step"].iloc[k])
    return pd.Series(steps, dtype=int)


def directions(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """n_directions, n_lines and direction_share of each 1-D mlp run (probes.measure.neurons) at its last
    probe, and the same at the end of the initial stage (``initial_stage``) as
    initial_step, initial_n_directions, initial_n_lines, initial_direction_share."""
    names = ["n_directions", "n_lines", "direction_share"]
    m = metrics[metrics["metric"].isin(names)]
    if m.empty:
        return pd.DataFrame(columns=["run_id", "step", *names])
    table = m.pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
    last = table[table["step"] == table.groupby("run_id")["step"].transform("max")]
    first = initial_stage(metrics)
    early = table[table["step"] == table["run_id"].map(first)]
    early = early.rename(columns={c: f"initial_{c}" for c in ("step", *names)})
    keep = [c for c in ("task", "activation", "gamma", "width", "dropout", "seed") if c in runs]
    out = runs[["run_id", *keep]].merge(last, on="run_id").merge(early, on="run_id", how="left")
    cols = [c for c in names if c in table]
    return out[["run_id", *keep, "step", *cols, "initial_step", *[f"initial_{c}" for c in cols]]]
