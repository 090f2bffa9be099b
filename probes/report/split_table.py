"""The symmetric / inferential split of composite-task runs as a table (reports/REPRODUCTION.md).

Reads the suite's own reports (``runs.csv``, ``metrics.csv``, ``ood_offsets.csv`` and each run's
``runs/<run_id>/config.yaml``) from one or more experiment folders and prints, in Markdown:

1. one row per run: the settings that differ between the runs, seed, id accuracy, the (3, 4)
   accuracy, fitted or not, the ood shares on the held-out pair (4, 3), its three most common
   answer offsets, and the condensation of the first layer's W_Q (mean |cos| and condensed groups
   at cosine 0.9 / 0.7) at the last probe;
2. per setting and gamma: runs, fitted runs, and the mean ood shares over the fitted runs only;
3. the verdict of the split rule (Zhang et al., NeurIPS 2024, arXiv 2405.05409): at the
   largest-init end (smallest gamma) mean ood_symmetric >= 0.8, at the smallest-init end mean
   ood_inferential >= 0.8, each over at least ``min_seeds`` fitted runs;
4. the relation the suite exists for: Spearman's rho across runs (all, and fitted only) between
   the final weight-basis condensation of each attention and MLP site (mean |cos|, condensed
   groups at cosine 0.9) and ood_inferential / ood_symmetric, with paired bootstrap 95% intervals
   (``probes.report.tables.correlations``); ``--correlations FILE`` writes every such row.

    condensation-probes table reports/split_cpu [more folders] [--out table.md]
        [--correlations relation.csv] [--figure ood_over_training.png]

A source is an experiment output folder, or a prefix P of copies kept under reports/measured
(``P_runs.csv``, ``P_metrics.csv``, ``P_ood_offsets.csv`` and, if kept, ``P_config.yaml``).

A run is fitted when acc_test_id >= 0.95 and acc_pair34 >= 0.95 (the ``fitted`` column of runs.csv).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from probes.config import grammar, load_yaml
from probes.config.grammar import ConfigError
from probes.config.keys import TableKeys
from probes.logs import configure
from probes.report.figures.experiment import ood_over_training
from probes.report.tables import correlations, final_values, interval_text, select
from probes.report.usage import table_help
from probes.store import CONFIG, atomic_write_text, read_csv, run_folder

logger = logging.getLogger(__name__)

# settings worth a column when they differ between the runs compared (run_id and seed excluded);
# training settings only: runs trained alike under two experiment names are one setting
SETTING_KEYS = ["model_family", "n_layer", "n_embd", "n_train", "fresh_samples",
                "split_modulus", "lr", "lr_schedule", "warmup_steps", "weight_decay", "steps",
                "batch_size", "mixed_precision", "dropout", "num_threads"]
SCORES = ["ood_inferential", "ood_symmetric", "ood_other"]


def load(dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Runs (with each run's resolved settings), metrics and offsets of the experiment folders.

    Args:
        dirs: experiment output folders, each with runs.csv, metrics.csv, ood_offsets.csv and
            runs/<run_id>/config.yaml.

    Returns:
        (runs, metrics, offsets) frames; runs has one row per run and a column per SETTING_KEYS.

    Raises:
        FileNotFoundError: a folder without runs.csv.
        ValueError: a runs.csv whose task is not composite (no held-out pair to split on); a run
            in more than one source (a folder and its kept copy, or a folder given twice).
    """
    runs, metrics, offsets = [], [], []
    for d in map(Path, dirs):
        files = _files(d)
        if not files["runs"].is_file():
            raise FileNotFoundError(f"{d}: no runs.csv (accepted: an experiment output folder, or "
                                    f"a prefix P of P_runs.csv, P_metrics.csv, P_ood_offsets.csv)")
        r = read_csv(files["runs"])
        if not {"ood_inferential", "ood_symmetric"} <= set(r.columns):
            raise ValueError(f"{d}: runs.csv has no ood_inferential / ood_symmetric columns "
                             f"(accepted: composite-task experiments)")
        settings = []
        for run_id in r["run_id"]:
            cfg_path = files["config"] or run_folder(d, run_id) / CONFIG
            cfg = load_yaml(cfg_path.read_text()) if cfg_path.is_file() else {}
            settings.append({k: cfg.get(k) for k in SETTING_KEYS if k not in r.columns})
        runs.append(pd.concat([r, pd.DataFrame(settings, index=r.index)], axis=1))
        metrics.append(read_csv(files["metrics"]))
        offsets.append(read_csv(files["ood_offsets"]))
    runs = pd.concat(runs, ignore_index=True)
    twice = runs["run_id"][runs["run_id"].duplicated()].unique()
    if len(twice):  # its rows would count twice in every mean and correlation
        raise ValueError(f"run {twice[0]!r} is in more than one source ({len(twice)} run(s) so): "
                         f"accepted are sources that hold different runs")
    return runs, pd.concat(metrics, ignore_index=True), pd.concat(offsets, ignore_index=True)


def _files(source: Path) -> dict:
    """The report files of an experiment folder, or of a prefix P of kept copies (P_runs.csv...);
    ``config`` is one config.yaml for every run of a prefix (None: each run's own)."""
    if source.is_dir():
        return {k: source / f"{k}.csv" for k in ("runs", "metrics", "ood_offsets")} | {"config": None}
    files = {k: source.parent / f"{source.name}_{k}.csv" for k in ("runs", "metrics", "ood_offsets")}
    return files | {"config": source.parent / f"{source.name}_config.yaml"}


def varying(runs: pd.DataFrame) -> list[str]:
    """The SETTING_KEYS whose value differs between runs (gamma and seed have their own columns)."""
    return [k for k in SETTING_KEYS if k in runs and runs[k].astype(str).nunique() > 1]


def run_table(runs: pd.DataFrame, metrics: pd.DataFrame, offsets: pd.DataFrame) -> pd.DataFrame:
    """One row per run: settings, gamma, seed, scores, top offsets, first-layer W_Q condensation.

    Returns:
        frame with columns [varying settings..., gamma, seed, acc_test_id, acc_pair34, fitted,
        ood_inferential, ood_symmetric, ood_other, top_offsets, wq_mean_abs_cos, wq_init_mean_abs_cos,
        wq_groups_0.9, wq_groups_0.7]; W_Q values are NaN for runs without a layer-0 attn.q probe.
        ``wq_init_mean_abs_cos`` is the same layer at its first probe (step 0: initialization), the
        chance level of this very layer.
    """
    wq = select(metrics[metrics["basis"] == "weight"], component="attn.q", layer=0)
    final, first = final_values(wq), wq[wq["step"] == wq.groupby("run_id")["step"].transform("min")]
    rows = []
    for _, r in runs.iterrows():
        q = final[final["run_id"] == r["run_id"]]
        o = offsets[offsets["run_id"] == r["run_id"]]
        o = o[o["step"] == o["step"].max()].nlargest(3, "share")
        rows.append({
            **{k: r[k] for k in varying(runs)},
            "gamma": r["gamma"], "seed": r["seed"], "acc_test_id": r["acc_test_id"],
            "acc_pair34": r["acc_pair34"], "fitted": bool(r["fitted"]),
            **{s: r[s] for s in SCORES},
            "top_offsets": ", ".join(f"{int(x.offset):+d}: {x.share:.2f}" for x in o.itertuples()),
            "wq_mean_abs_cos": _value(q, "mean_abs_cos"),
            "wq_init_mean_abs_cos": _value(first[first["run_id"] == r["run_id"]], "mean_abs_cos"),
            "wq_groups_0.9": _value(q, "n_groups", 0.9),
            "wq_groups_0.7": _value(q, "n_groups", 0.7),
        })
    table = pd.DataFrame(rows)
    return table.sort_values([*varying(runs), "gamma", "seed"], kind="stable", ignore_index=True)


def _value(probe: pd.DataFrame, metric: str, threshold: float | None = None) -> float:
    """One metric of one run's last W_Q probe; NaN when absent."""
    rows = probe[probe["metric"] == metric]
    if threshold is not None:
        rows = rows[rows["threshold"] == threshold]
    return rows["value"].mean() if len(rows) else np.nan


def gamma_means(table: pd.DataFrame, settings: list[str]) -> pd.DataFrame:
    """Per setting and gamma: runs, fitted runs, and ood shares averaged over fitted runs only
    (NaN where none is fitted: unfitted runs are counted, never averaged)."""
    keys = [*settings, "gamma"]
    out = []
    for key, cell in table.groupby(keys, sort=True):
        fitted = cell[cell["fitted"]]
        out.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                    "runs": len(cell), "fitted": len(fitted),
                    **{s: fitted[s].mean() if len(fitted) else np.nan for s in SCORES},
                    "wq_mean_abs_cos": cell["wq_mean_abs_cos"].mean()})
    return pd.DataFrame(out)


def verdict(means: pd.DataFrame, min_seeds: int = 3, threshold: float = 0.8) -> str:
    """The split rule on one setting's per-gamma means: 'split shown' or why not.

    Args:
        means: gamma_means rows of ONE setting (columns gamma, fitted, ood_symmetric, ood_inferential).
        min_seeds: fitted runs needed at each end.
        threshold: the mean share needed at each end.
    """
    if means["gamma"].nunique() < 2:
        return "one gamma only: no split to judge"
    lo, hi = means.loc[means["gamma"].idxmin()], means.loc[means["gamma"].idxmax()]
    checks = [
        (lo["fitted"] >= min_seeds, f"gamma {lo['gamma']:g}: {int(lo['fitted'])} fitted (need {min_seeds})"),
        (hi["fitted"] >= min_seeds, f"gamma {hi['gamma']:g}: {int(hi['fitted'])} fitted (need {min_seeds})"),
        (lo["ood_symmetric"] >= threshold, f"gamma {lo['gamma']:g}: mean ood_symmetric "
                                           f"{lo['ood_symmetric']:.3f} (need >= {threshold})"),
        (hi["ood_inferential"] >= threshold, f"gamma {hi['gamma']:g}: mean ood_inferential "
                                             f"{hi['ood_inferential']:.3f} (need >= {threshold})"),
    ]
    # a mean over no fitted run is NaN: its count already says why
    failed = [why for ok, why in checks if not ok and "nan" not in why]
    return "split shown" if not failed else "not shown: " + "; ".join(failed)


# the sites and metrics of the relation table (every other row goes to --correlations only)
RELATION_SITES = ("attn.q", "attn.k", "attn.v", "mlp.in")
RELATION_METRICS = (("mean_abs_cos", None), ("n_groups", 0.9))


def relation(runs: pd.DataFrame, metrics: pd.DataFrame, n_resamples: int = 2000) -> pd.DataFrame:
    """Spearman rho (bootstrap 95% interval) across runs of each site's final weight-basis
    condensation with ood_inferential and ood_symmetric (arXiv 2405.05409 shows it as pictures).

    Args:
        runs: ``load``'s runs frame (needs ``diverged``; absent means none diverged).
        metrics: metrics.csv rows of the same runs.
        n_resamples: bootstrap resamples.

    Returns:
        the full correlations frame (``probes.report.tables.CORRELATION_COLUMNS``): every final
        condensation row of every site, subsets ``all`` and ``fitted``.
    """
    runs = runs.assign(diverged=runs["diverged"] if "diverged" in runs else False)
    return correlations(runs, metrics, ("ood_inferential", "ood_symmetric"), n_resamples)


def relation_table(corr: pd.DataFrame) -> pd.DataFrame:
    """The relation rows people read: RELATION_SITES x RELATION_METRICS, weight basis, whole
    layers, one column per (score, subset) with "rho [low, high]" and the run count."""
    corr = corr[(corr["basis"] == "weight") & corr["head"].isna()
                & corr["component"].isin(RELATION_SITES)]
    rows = []
    for metric, tau in RELATION_METRICS:
        chosen = corr[corr["metric"] == metric]
        chosen = chosen[chosen["threshold"].isna() if tau is None else np.isclose(chosen["threshold"], tau)]
        for (layer, component), cell in chosen.groupby(["layer", "component"], sort=True):
            row = {"layer": layer, "site": component,
                   "metric": metric if tau is None else f"{metric} at {tau:g}"}
            for r in cell.itertuples(index=False):
                row[f"{r.score} ({r.subset}, n={r.n_runs})"] = (
                    interval_text(r._asdict())
                    + (f", p {r.p_value:.2g}" if np.isfinite(r.spearman_rho) else ""))
            rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """A pipe table; floats to 3 decimals, NaN as an empty cell."""
    def cell(v):
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.3f}".rstrip("0").rstrip(".")
        return str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def report(dirs: list[Path], min_seeds: int = 3, correlations_out: Path | None = None,
           figure: Path | None = None) -> str:
    """The four parts (runs, per-gamma means, verdict per setting, relation) as one Markdown
    text; with ``correlations_out``, every relation row is also written there (atomically); with
    ``figure``, the runs' ood shares over training (``ood_over_training``: against samples seen
    when every run records its batch_size, else against the step)."""
    if min_seeds < 1:
        raise ValueError(f"min_seeds={min_seeds} is invalid: accepted is an integer >= 1")
    if figure is not None and Path(figure).suffix.lower() != ".png":
        raise ValueError(f"figure={str(figure)!r} is not a .png path: accepted is a PNG file name")
    runs, metrics, offsets = load(dirs)
    if figure is not None:
        axis = "samples" if "batch_size" in runs and runs["batch_size"].notna().all() else "step"
        ood_over_training(runs, metrics, figure, tuple(SCORES[:2]), axis=axis)
    table = run_table(runs, metrics, offsets)
    settings = varying(runs)
    means = gamma_means(table, settings)
    parts = ["### Runs", markdown(table), "", "### Per gamma (means over fitted runs)",
             markdown(means), "", "### Split rule"]
    groups = means.groupby(settings) if settings else [((), means)]
    for key, cell in groups:
        label = ", ".join(f"{k}={v}" for k, v in zip(settings, key if isinstance(key, tuple) else (key,)))
        parts.append(f"- {label or 'all runs'}: {verdict(cell.reset_index(drop=True), min_seeds)}")
    corr = relation(runs, metrics)
    if correlations_out is not None:
        atomic_write_text(correlations_out, corr.to_csv(index=False))
    parts += ["", "### Condensation against the ood shares (Spearman rho, bootstrap 95% interval)",
              markdown(relation_table(corr))]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``condensation-probes table DIR [DIR ...] [--out FILE] [--min_seeds N] [--correlations FILE]
    [--figure FILE]`` (the one grammar, ``TableKeys``): the Markdown to stdout, or to ``--out``
    with a note on stderr; returns the exit code (2 on bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(table_help())
        return 0
    try:
        dirs, v = grammar.parse(argv, TableKeys, command="table")
        if not dirs:
            raise ConfigError("table needs a folder: accepted are one or more experiment output "
                              "folders DIR [DIR ...]")
        text = report([Path(d) for d in dirs], v.get("min_seeds", 3),
                      *(Path(v[k]) if v.get(k) else None for k in ("correlations", "figure")))
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if v.get("out"):
        atomic_write_text(Path(v["out"]), text)
        logger.info(f"split table of {len(dirs)} folder(s) -> {v['out']}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    configure()
    sys.exit(main())
