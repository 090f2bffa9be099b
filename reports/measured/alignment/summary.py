"""summary.csv of the align tables in this folder (``make.sh``): one row per pair and unit set,
thresholded metrics at cosine 0.9 beside the set's CKA.

Each ``<kind>_<pair>_<step>.csv`` is one ``align.csv`` (columns in reports/README.md); kind is
``seeds`` (two seeds at one gamma), ``gamma`` (two gammas at one seed) or ``original-merged`` (a
run against itself merged at 0.9 by ``condensation-probes merge``). Columns: pair_kind, a_run,
b_run, step, layer, component, head, n_condensed_a, n_condensed_b (condensed groups, >= 2 units,
at 0.9; metrics.csv's n_groups counts singletons too), matched_share, mean_matched_cos (0.9), cka.

usage: python reports/measured/alignment/summary.py reports/measured/alignment
"""

import sys
from pathlib import Path

import pandas as pd

TAU = 0.9
KINDS = {"seeds": "seeds", "gamma": "gamma", "original-merged": "merged"}
COLUMNS = ["pair_kind", "a_run", "b_run", "step", "layer", "component", "head", "n_condensed_a",
           "n_condensed_b", "matched_share", "mean_matched_cos", "cka"]


def summarize(folder: Path) -> pd.DataFrame:
    """The summary rows of every align table in ``folder`` (COLUMNS), pairs in file-name order."""
    out = []
    for path in sorted(folder.glob("*_*.csv")):
        kind = path.name.split("_")[0]
        if kind not in KINDS:
            continue
        t = pd.read_csv(path)
        t = t[t["threshold"].isna() | (t["threshold"] == TAU)].fillna({"head": -1})
        wide = t.pivot_table(index=["a_run", "b_run", "layer", "component", "head"],
                             columns="metric", values="value", dropna=False).reset_index()
        wide["head"] = wide["head"].where(wide["head"] >= 0)  # -1 stood for the whole layer
        wide = wide.dropna(subset=["n_condensed_a", "cka"], how="all")
        wide.insert(0, "pair_kind", KINDS[kind])
        wide.insert(3, "step", wide["a_run"].str.rsplit("@", n=1).str[1].astype(int))
        out.append(wide.reindex(columns=COLUMNS))
    return pd.concat(out, ignore_index=True)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    summarize(folder).to_csv(folder / "summary.csv", index=False, float_format="%.6g")
