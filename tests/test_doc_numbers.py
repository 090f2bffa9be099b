"""No doc number without a file: every cell of the measured tables of reports/REPRODUCTION.md
(and of docs/embedding_principle.md) that a committed CSV under reports/measured/ holds is
recomputed here from that CSV, to the doc's own rounding (a cell printed with d decimals may
differ from the CSV by 0.5 * 10^-d).

Table-driven: the tables are read from the Markdown by their header (so rows added in the same
format are checked too), one test per row:
- "The authors' width, d_model 400": each run's row against its ``<prefix>_{runs,metrics,
  ood_offsets}.csv`` (the ``files`` column); the per-setting table under it against the same
  runs grouped by (batch, precision, gamma);
- "The authors' regime": each row whose source names a CSV prefix (``same`` repeats the row
  above's) against its ``_runs.csv`` and, where the row quotes offsets, its ``_ood_offsets.csv``.
Rows whose source says their CSVs were not kept are skipped, with that reason.
- docs/embedding_principle.md's summary table (min-max over 3 seeds) against
  ``reports/measured/embedding_principle/summary.csv``, which it cites.

Recomputed independently of the suite's code: pandas on the CSVs, the last probe as the largest
``step``, fitted as acc_test_id >= 0.95 and acc_pair34 >= 0.95 (reports/README.md).
"""

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "reports" / "REPRODUCTION.md"
MEASURED = ROOT / "reports" / "measured"
D400 = MEASURED / "split_d400"
N_TRAIN_D400 = 759_375  # configs/authors_reference.yaml's fixed training set (the doc says so)
PRECISION = {"bf16": "bf16", "float32": "no", "fp16": "fp16"}  # the doc's word -> runs.csv's


# --- reading the doc ----------------------------------------------------------------------------

def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def md_tables(text: str) -> list[tuple[str, list[dict]]]:
    """Every Markdown table of ``text``: (the ``##`` section it is in, its rows as dicts keyed
    by the header's cells)."""
    found, section, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        if (lines[i].startswith("|") and i + 1 < len(lines)
                and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())):
            header, rows, i = cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]))))
                i += 1
            found.append((section, rows))
            continue
        i += 1
    return found


def table(section_start: str, first_column: str) -> list[dict]:
    """The rows of the table in the section starting ``section_start`` whose first header cell
    is ``first_column``."""
    hits = [rows for section, rows in md_tables(DOC.read_text())
            if section.startswith(section_start) and rows and next(iter(rows[0])) == first_column]
    assert len(hits) == 1, (section_start, first_column, len(hits))
    return hits[0]


def number(text: str) -> tuple[float, float]:
    """(value, tolerance) of a doc number: ``10,000``, ``0.042``, ``2.56M``; the tolerance is
    half a unit of its last printed digit."""
    m = re.fullmatch(r"(-?[\d,]*\.?(\d*))(M?)", text.strip())
    assert m, f"not a number: {text!r}"
    scale = 1e6 if m.group(3) else 1.0
    return float(m.group(1).replace(",", "")) * scale, 0.5 * 10.0 ** -len(m.group(2)) * scale


def same(doc: str, value: float, what: str) -> None:
    """Assert that the doc cell ``doc`` shows ``value`` to its rounding."""
    shown, tol = number(doc)
    assert abs(shown - value) <= tol * (1 + 1e-9), f"{what}: doc {doc}, CSV {value!r}"


def offsets_shown(text: str) -> list[tuple[int, str]]:
    """``-16 (0.52), -7 (0.36)`` or ``offset -6: 0.41, -10: 0.37`` -> [(offset, share text)]."""
    pairs = re.findall(r"(-?\d+) \((\d\.\d+)\)", text) or re.findall(r"(-?\d+): (\d\.\d+)", text)
    return [(int(o), s) for o, s in pairs]


# --- what the CSVs say --------------------------------------------------------------------------

def last_offsets(path: Path, run_id: str) -> pd.Series:
    """Share of each offset at the run's last probe, largest first."""
    o = pd.read_csv(path)
    o = o[o["run_id"] == run_id]
    last = o[o["step"] == o["step"].max()]
    return last.set_index("offset")["share"].sort_values(ascending=False)


def check_offsets(doc: str, shares: pd.Series, what: str) -> None:
    """The offsets the doc lists are the largest shares at the last probe, in order (ties
    aside), each share to its rounding."""
    listed = offsets_shown(doc)
    assert listed, f"{what}: no offsets in {doc!r}"
    for rank, (offset, share) in enumerate(listed):
        assert offset in shares.index, f"{what}: offset {offset} never answered"
        same(share, shares[offset], f"{what} offset {offset}")
        # the k-th listed is the k-th largest (an equal share may stand in its place)
        assert shares[offset] == pytest.approx(shares.iloc[rank], abs=1e-12), (
            f"{what}: offset {offset} ({shares[offset]}) is not the {rank + 1}-th largest "
            f"({shares.index[rank]}: {shares.iloc[rank]})")


def d400_run(prefix: str) -> dict:
    """One d400 run from its CSVs: the runs row, its batch, max ood_symmetric over probes,
    layer-0 W_Q mean |cos| at the last probe and the offsets at the last probe."""
    runs = pd.read_csv(D400 / f"{prefix}_runs.csv")
    assert len(runs) == 1, prefix
    row = runs.iloc[0].to_dict()
    config = D400 / f"{prefix}_config.yaml"
    # the batch: runs.csv's column, else the run's config, else from epochs = steps * batch / n
    if pd.notna(row.get("batch_size")):
        batch = int(row["batch_size"])
    elif config.is_file():
        batch = int(yaml.safe_load(config.read_text())["batch_size"])
    else:
        batch = round(row["epochs"] * N_TRAIN_D400 / row["steps"])
    if pd.notna(row.get("epochs")):  # every source agrees with the epochs runs.csv holds
        assert abs(row["steps"] * batch / N_TRAIN_D400 - row["epochs"]) <= 5e-4, prefix
    m = pd.read_csv(D400 / f"{prefix}_metrics.csv")
    m = m[m["run_id"] == row["run_id"]]
    last = m["step"].max()
    sym = m[(m["component"] == "output") & (m["metric"] == "ood_symmetric")]
    wq = m[(m["step"] == last) & (m["layer"] == 0) & (m["component"] == "attn.q")
           & m["head"].isna() & (m["basis"] == "weight") & (m["metric"] == "mean_abs_cos")]
    assert len(wq) == 1, prefix
    final = m[(m["step"] == last) & (m["component"] == "output")].set_index("metric")["value"]
    for score in ("acc_test_id", "acc_pair34", "ood_inferential", "ood_symmetric"):
        # runs.csv's scores are the last probe's
        assert final[score] == pytest.approx(row[score], abs=1e-12), (prefix, score)
    return dict(row=row, batch=batch, last=last, max_sym=sym["value"].max(),
                wq=wq["value"].iloc[0],
                offsets=last_offsets(D400 / f"{prefix}_ood_offsets.csv", row["run_id"]))


# --- the authors' width, d_model 400 ------------------------------------------------------------

D400_SECTION = "The authors' width, d_model 400"
D400_ROWS = table(D400_SECTION, "gamma")


def prefix_of(row: dict) -> str:
    m = re.fullmatch(r"`([^`]+)_\*`", row["files"])
    assert m, row["files"]
    return m.group(1)


@pytest.mark.parametrize("row", D400_ROWS, ids=[prefix_of(r) for r in D400_ROWS])
def test_d400_run_rows_are_their_csvs(row):
    p = prefix_of(row)
    run = d400_run(p)
    r = run["row"]
    same(row["gamma"], r["gamma"], f"{p} gamma")
    same(row["seed"], r["seed"], f"{p} seed")
    assert PRECISION[row["precision"]] == r["mixed_precision"], p
    same(row["batch"], run["batch"], f"{p} batch")
    same(row["steps"], r["steps"], f"{p} steps")
    assert r["steps"] == run["last"], p  # the end is the last probe
    same(row["samples"], r["steps"] * run["batch"], f"{p} samples")
    for score in ("acc_test_id", "acc_pair34", "ood_inferential", "ood_symmetric"):
        same(row[score], r[score], f"{p} {score}")
    fitted = r["acc_test_id"] >= 0.95 and r["acc_pair34"] >= 0.95
    assert bool(r["fitted"]) == fitted and row["fitted"] == ("yes" if fitted else "no"), p
    same(row["max sym"], run["max_sym"], f"{p} max sym")
    check_offsets(row["top offsets (share)"], run["offsets"], p)
    same(row["layer-0 W_Q mean abs cos"], run["wq"], f"{p} W_Q")
    same(row["wall (min)"], r["wall_s"] / 60, f"{p} wall")


SETTINGS = table(D400_SECTION, "setting")


SETTING = re.compile(r"batch (\d+), (\w+)(?:, ([\d,]+) steps)?")


def setting_runs(setting: str, gamma: float) -> list[dict]:
    """The runs of the d400 table with this setting (``batch B, precision`` and, when a length is
    its own setting, ``, N steps``) and gamma. Without a length, the runs of the lengths that other
    rows of the same batch and precision name are left out."""
    m = SETTING.fullmatch(setting)
    assert m, setting
    others = (SETTING.fullmatch(r["setting"]) for r in SETTINGS)
    named = {int(o.group(3).replace(",", "")) for o in others
             if o and o.group(3) and o.group(1, 2) == m.group(1, 2)}
    runs = [d400_run(prefix_of(r)) for r in D400_ROWS]
    return [r["row"] for r in runs if r["batch"] == int(m.group(1))
            and r["row"]["mixed_precision"] == PRECISION[m.group(2)] and r["row"]["gamma"] == gamma
            and (r["row"]["steps"] == int(m.group(3).replace(",", "")) if m.group(3)
                 else r["row"]["steps"] not in named)]


@pytest.mark.parametrize("row", SETTINGS, ids=[f"{r['setting']} g{r['gamma']}" for r in SETTINGS])
def test_d400_settings_are_their_runs(row):
    what = f"{row['setting']} gamma {row['gamma']}"
    runs = pd.DataFrame(setting_runs(row["setting"], number(row["gamma"])[0]))
    assert len(runs) == int(row["runs"]), what
    fitted = runs[(runs["acc_test_id"] >= 0.95) & (runs["acc_pair34"] >= 0.95)]
    assert len(fitted) == int(row["fitted"]), what
    for score in ("ood_inferential", "ood_symmetric"):
        same(row[f"mean {score} (all)"], runs[score].mean(), f"{what} {score} (all)")
        cell = row[f"mean {score} (fitted)"]
        if fitted.empty:
            assert cell == "-", what
        else:
            same(cell, fitted[score].mean(), f"{what} {score} (fitted)")


# --- the authors' regime ------------------------------------------------------------------------

def regime_rows() -> list[tuple[dict, Path | None]]:
    """Each row of the authors' regime table with the CSV prefix its source names (``same``:
    the row above's; a bare name: in the folder of the last full path), or None."""
    out, prefix, folder = [], None, MEASURED
    for row in table("The authors' regime", "n_embd"):
        named = re.search(r"`([^`]+)_\*`", row["source"])
        if named:
            path = Path(named.group(1))
            if len(path.parts) > 1:
                folder = ROOT / path.parent
            prefix = folder / path.name
        elif not row["source"].startswith("same"):
            prefix = None
        out.append((row, prefix))
    return out


REGIME = regime_rows()


@pytest.mark.parametrize("row, prefix", REGIME,
                         ids=[f"d{r['n_embd']} g{r['gamma']} s{r['seed']} {r['steps']}"
                              for r, _ in REGIME])
def test_authors_regime_rows_are_their_csvs(row, prefix):
    if prefix is None:
        pytest.skip(f"no committed CSV: {row['source']}")
    what = f"{prefix.name} gamma {row['gamma']} seed {row['seed']}"
    runs = pd.read_csv(f"{prefix}_runs.csv")
    hit = runs[(runs["gamma"] == number(row["gamma"])[0]) & (runs["seed"] == int(row["seed"]))
               & (runs["n_embd"] == int(row["n_embd"]))]
    assert len(hit) == 1, what
    r = hit.iloc[0]
    same(row["steps"], r["steps"], f"{what} steps")
    for score in ("acc_test_id", "acc_pair34", "ood_inferential", "ood_symmetric"):
        same(row[score], r[score], f"{what} {score}")
    fitted = r["acc_test_id"] >= 0.95 and r["acc_pair34"] >= 0.95
    assert bool(r["fitted"]) == fitted and row["fitted"] == ("yes" if fitted else "no"), what
    quoted = re.search(r"\(offset ([^)]*)\)", row["source"])
    if quoted:
        check_offsets(quoted.group(1), last_offsets(Path(f"{prefix}_ood_offsets.csv"),
                                                    r["run_id"]), what)


# --- docs/embedding_principle.md: min-max over seeds, from summary.csv ---------------------------

EMBEDDING = ROOT / "docs" / "embedding_principle.md"
SUMMARY = MEASURED / "embedding_principle" / "summary.csv"
# the doc's column -> summary.csv's column (and a factor: percentages)
EMBEDDING_COLUMNS = {"step": ("step", 1), "train loss": ("train_loss", 1),
                     "test acc": ("acc_test", 1), "groups at 0.9": ("groups_with_bias", 1),
                     "merged net keeps: train": ("pred_agreement_train", 100),
                     "test": ("pred_agreement_test", 100)}


def embedding_rows() -> list[dict]:
    """The rows of the summary table (the one citing summary.csv), the paper's row left out."""
    hits = [rows for _, rows in md_tables(EMBEDDING.read_text())
            if rows and next(iter(rows[0])) == "gamma (s)"]
    assert len(hits) == 1
    return [r for r in hits[0] if r["gamma (s)"] != "paper"]


EMBEDDING_ROWS = embedding_rows()


@pytest.mark.parametrize("row", EMBEDDING_ROWS,
                         ids=[f"g{r['gamma (s)'].split()[0]} {r['point']}" for r in EMBEDDING_ROWS])
def test_embedding_principle_rows_are_the_summary(row):
    """A cell ``a-b`` is the min and max over the 3 seeds, ``a`` both; ``%`` cells are shares."""
    gamma = float(row["gamma (s)"].split()[0])
    s = pd.read_csv(SUMMARY)
    s = s[(s["gamma"] == gamma) & (s["point"] == row["point"])]
    assert len(s) == 3, row
    for cell, (column, factor) in EMBEDDING_COLUMNS.items():
        text = row[cell].removesuffix("%")
        low, _, high = text.partition("-")
        what = f"gamma {gamma} {row['point']} {cell}"
        same(low, s[column].min() * factor, f"{what} (min)")
        same(high or low, s[column].max() * factor, f"{what} (max)")


def test_every_cited_prefix_has_its_files():
    """Each prefix the tables cite has the CSVs the checks read (a renamed file fails here, not
    as a skipped row)."""
    for row in D400_ROWS:
        for kind in ("runs", "metrics", "ood_offsets"):
            assert (D400 / f"{prefix_of(row)}_{kind}.csv").is_file(), (prefix_of(row), kind)
    cited = [p for _, p in REGIME if p is not None]
    assert cited and all(Path(f"{p}_runs.csv").is_file() for p in cited)
