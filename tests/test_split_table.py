"""probes/report/split_table.py against hand-built report folders with known answers."""

import pandas as pd
import pytest
import yaml

from probes.report import split_table


def _experiment(root, name, runs):
    """A report folder: runs = [(gamma, seed, lr, acc_id, acc34, inferential, symmetric, wq_cos)]."""
    d = root / name
    rows, metrics, offsets = [], [], []
    for gamma, seed, lr, acc_id, acc34, inf, sym, cos in runs:
        run_id = f"paper-g{gamma}-s{seed}-{name}"
        rows.append(dict(run_id=run_id, experiment=name, task="composite", model_family="paper",
                         gamma=gamma, n_layer=2, n_embd=64, lr=lr, weight_decay=0.01, seed=seed,
                         acc_test_id=acc_id, acc_pair34=acc34, ood_inferential=inf,
                         ood_symmetric=sym, ood_other=1 - inf - sym,
                         fitted=acc_id >= 0.95 and acc34 >= 0.95))
        for step, value in ((0, 0.1), (100, cos)):  # only the last probe counts
            metrics.append(dict(run_id=run_id, step=step, layer=0, component="attn.q", head=None,
                                basis="weight", metric="mean_abs_cos", threshold=None, value=value))
            metrics.append(dict(run_id=run_id, step=step, layer=0, component="attn.q", head=None,
                                basis="weight", metric="n_groups", threshold=0.9, value=32 - step / 10))
        metrics.append(dict(run_id=run_id, step=100, layer=1, component="attn.q", head=None,
                            basis="weight", metric="mean_abs_cos", threshold=None, value=0.99))
        offsets += [dict(run_id=run_id, step=100, offset=-10, count=1, share=inf),
                    dict(run_id=run_id, step=100, offset=-6, count=1, share=sym),
                    dict(run_id=run_id, step=0, offset=-50, count=1, share=1.0)]
        (d / "runs" / run_id).mkdir(parents=True)
        (d / "runs" / run_id / "config.yaml").write_text(yaml.safe_dump(
            {"lr": lr, "lr_schedule": "cosine", "steps": 100, "n_train": 20000}))
    pd.DataFrame(rows).to_csv(d / "runs.csv", index=False)
    pd.DataFrame(metrics).to_csv(d / "metrics.csv", index=False)
    pd.DataFrame(offsets).to_csv(d / "ood_offsets.csv", index=False)
    return d


def test_table_means_over_fitted_runs_and_verdict(tmp_path):
    d = _experiment(tmp_path, "a", [
        (0.3, 0, 1e-3, 1.0, 1.0, 0.1, 0.9, 0.2), (0.3, 1, 1e-3, 1.0, 0.97, 0.0, 0.8, 0.2),
        (0.3, 2, 1e-3, 0.99, 1.0, 0.2, 0.7, 0.2), (0.3, 3, 1e-3, 0.5, 0.1, 0.9, 0.0, 0.2),  # unfitted
        (1.0, 0, 1e-3, 1.0, 1.0, 0.9, 0.0, 0.8), (1.0, 1, 1e-3, 1.0, 1.0, 0.8, 0.1, 0.9),
        (1.0, 2, 1e-3, 1.0, 1.0, 0.85, 0.1, 0.7)])
    runs, metrics, offsets = split_table.load([d])
    table = split_table.run_table(runs, metrics, offsets)
    assert len(table) == 7 and table["fitted"].sum() == 6
    first = table.iloc[0]
    assert (first["gamma"], first["seed"]) == (0.3, 0)
    assert first["wq_mean_abs_cos"] == 0.2 and first["wq_groups_0.9"] == 22  # last probe, layer 0
    assert first["top_offsets"] == "-6: 0.90, -10: 0.10"
    means = split_table.gamma_means(table, [])
    lo = means[means["gamma"] == 0.3].iloc[0]
    assert (lo["runs"], lo["fitted"]) == (4, 3)
    assert lo["ood_symmetric"] == pytest.approx(0.8)  # (0.9 + 0.8 + 0.7) / 3: unfitted left out
    hi = means[means["gamma"] == 1.0].iloc[0]
    assert hi["ood_inferential"] == pytest.approx(0.85)
    assert split_table.verdict(means) == "split shown"
    assert split_table.verdict(means, min_seeds=4).startswith("not shown: gamma 0.3: 3 fitted")


def test_verdict_names_each_failed_condition(tmp_path):
    d = _experiment(tmp_path, "b", [(0.3, s, 1e-3, 1.0, 1.0, 0.0, 1.0, 0.2) for s in range(3)]
                    + [(1.0, s, 1e-3, 1.0, 1.0, 0.0, 1.0, 0.9) for s in range(3)])
    text = split_table.report([d])
    assert "not shown: gamma 1: mean ood_inferential 0.000 (need >= 0.8)" in text
    assert "gamma 0.3: mean ood_symmetric" not in text


def test_settings_that_differ_get_columns(tmp_path):
    a = _experiment(tmp_path, "a", [(0.5, 0, 1e-3, 1.0, 1.0, 0.0, 1.0, 0.3)])
    b = _experiment(tmp_path, "b", [(0.5, 0, 3e-4, 1.0, 1.0, 1.0, 0.0, 0.3)])
    runs, metrics, offsets = split_table.load([a, b])
    assert split_table.varying(runs) == ["lr"]  # the experiment's name is not a setting
    assert list(split_table.run_table(runs, metrics, offsets)["lr"]) == [3e-4, 1e-3]  # sorted by setting


def test_cli_bad_folder_one_line_exit_2(tmp_path, capsys):
    assert split_table.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no runs.csv" in err
    out = tmp_path / "t.md"
    d = _experiment(tmp_path, "c", [(0.5, 0, 1e-3, 1.0, 1.0, 0.0, 1.0, 0.3)])
    assert split_table.main([str(d), "--out", str(out)]) == 0
    assert out.read_text().startswith("### Runs")


def test_relation_rows_equal_scipy_spearman(tmp_path):
    """The relation section: rho of the final W_Q mean |cos| against each ood share equals
    scipy's spearmanr on the same runs; the fitted subset drops the unfitted run; the step-0
    value is the init column."""
    from scipy import stats
    runs_spec = [(0.3, 0, 1e-3, 1.0, 1.0, 0.1, 0.9, 0.2), (0.3, 1, 1e-3, 1.0, 0.97, 0.0, 0.8, 0.25),
                 (0.3, 2, 1e-3, 0.5, 0.1, 0.9, 0.0, 0.5),  # unfitted
                 (1.0, 0, 1e-3, 1.0, 1.0, 0.9, 0.0, 0.8), (1.0, 1, 1e-3, 1.0, 1.0, 0.8, 0.1, 0.95),
                 (1.0, 2, 1e-3, 1.0, 1.0, 0.85, 0.1, 0.7)]
    d = _experiment(tmp_path, "r", runs_spec)
    out = tmp_path / "corr.csv"
    text = split_table.report([d], correlations_out=out)
    corr = pd.read_csv(out)
    row = corr[(corr["layer"] == 0) & (corr["component"] == "attn.q") & (corr["metric"] == "mean_abs_cos")]
    cos = [r[7] for r in runs_spec]
    for score, col in (("ood_inferential", 5), ("ood_symmetric", 6)):
        got = row[(row["score"] == score) & (row["subset"] == "all")].iloc[0]
        expected = stats.spearmanr(cos, [r[col] for r in runs_spec]).statistic
        assert got["spearman_rho"] == pytest.approx(expected)
        fitted = [r for r in runs_spec if r[3] >= 0.95 and r[4] >= 0.95]
        got = row[(row["score"] == score) & (row["subset"] == "fitted")].iloc[0]
        assert got["n_runs"] == 5
        assert got["spearman_rho"] == pytest.approx(
            stats.spearmanr([r[7] for r in fitted], [r[col] for r in fitted]).statistic)
    assert "### Condensation against the ood shares" in text
    runs, metrics, offsets = split_table.load([d])
    assert (split_table.run_table(runs, metrics, offsets)["wq_init_mean_abs_cos"] == 0.1).all()


def test_prefix_of_kept_copies_reads_like_the_folder(tmp_path):
    """P_runs.csv / P_metrics.csv / P_ood_offsets.csv (+ P_config.yaml) give the same table as
    the experiment folder they were copied from; --figure writes a PNG."""
    d = _experiment(tmp_path, "p", [(0.5, 0, 1e-3, 1.0, 1.0, 0.0, 1.0, 0.3),
                                    (1.0, 0, 1e-3, 1.0, 1.0, 0.9, 0.0, 0.9)])
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("runs", "metrics", "ood_offsets"):
        (kept / f"p_{name}.csv").write_bytes((d / f"{name}.csv").read_bytes())
    run_id = pd.read_csv(d / "runs.csv")["run_id"][0]
    (kept / "p_config.yaml").write_bytes((d / "runs" / run_id / "config.yaml").read_bytes())
    a = split_table.run_table(*split_table.load([d]))
    b = split_table.run_table(*split_table.load([kept / "p"]))
    pd.testing.assert_frame_equal(a, b)
    figure = tmp_path / "f.png"
    assert split_table.main([str(kept / "p"), "--figure", str(figure), "--out", str(tmp_path / "t.md")]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_table_command_results_to_stdout_messages_to_stderr(tmp_path, capsys):
    """``condensation-probes table``: the Markdown on stdout; with --out the file, and the note
    that says so through logging on stderr (nothing on stdout)."""
    from probes.run import main

    d = _experiment(tmp_path, "c", [(0.5, 0, 1e-3, 1.0, 1.0, 0.0, 1.0, 0.3)])
    assert main(["table", str(d), "--min_seeds", "1"]) == 0
    shown = capsys.readouterr()
    assert shown.out == split_table.report([d], 1) and shown.err == ""
    out = tmp_path / "t.md"
    assert main(["table", str(d), "--out", str(out), "--min_seeds=1"]) == 0
    shown = capsys.readouterr()
    assert shown.out == "" and out.read_text() == split_table.report([d], 1)
    assert shown.err == f"split table of 1 folder(s) -> {out}\n"
    assert main(["table", str(d), "--out", str(out), "--log_level", "warning"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("extra, words", [
    (["SAME"], "is in more than one source"),
    (["--min_seeds", "0"], "min_seeds=0 is invalid: accepted is an integer >= 1"),
    (["--figure", "f.pdf"], "is not a .png path"),
])
def test_table_refuses_what_would_mislead(tmp_path, capsys, extra, words):
    """A run given twice would count twice in every mean and rho; min_seeds < 1 would let the
    split rule pass on no fitted run; a .pdf name would hold PNG bytes: one error line, exit 2,
    nothing written."""
    d = _experiment(tmp_path, "m", [(0.5, 0, 1e-3, 1.0, 1.0, 0.0, 1.0, 0.3),
                                    (1.0, 0, 1e-3, 0.5, 0.1, 0.9, 0.0, 0.9)])
    extra = [str(d) if e == "SAME" else str(tmp_path / e) if e.endswith(".pdf") else e for e in extra]
    out = tmp_path / "t.md"
    assert split_table.main([str(d), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and words in err
    assert not out.exists() and not (tmp_path / "f.pdf").exists()
