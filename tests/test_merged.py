"""``condensation-probes merge CKPT``: the saved model is merge_model's, tensor for tensor; each
site keeps one unit per complete-linkage group (counted here with scipy, per head for the query
rows); the run's config.yaml and the tokenizer come along, so ``align`` reads the merged folder
with the same probe inputs; bad input is one line, exit 2, nothing written."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as T
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from test_align import HEADS, D, build
from test_bad_input import snapshot, tokenizer

from probes.measure.merge import merge_model
from probes.run import main

TAU = 0.9


def run(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*map(str, args), "--num_threads", "1"])
    return code, err.getvalue()


def n_groups(units: np.ndarray) -> int:
    """Complete-linkage groups of the rows at cosine >= TAU (scipy, float64)."""
    if len(units) == 1:
        return 1
    tree = linkage(pdist(units.astype(np.float64), "cosine"), "complete")
    return int(fcluster(tree, 1 - TAU, "distance").max())


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    root = tmp_path_factory.mktemp("merged")
    model = build(0)
    model.save_pretrained(root / "run" / "checkpoint-7")
    tokenizer(root / "run" / "checkpoint-7", 64)
    (root / "run" / "config.yaml").write_text("task: composite\nseed: 3\n")
    out = root / "out"
    code, err = run("merge", f"{root / 'run'}@7", "--threshold", TAU, "--fold_norms", "false",
                    "--output_dir", out)
    assert code == 0, err
    return root, model, out


def test_saved_model_is_merge_models_and_keeps_one_unit_per_group(merged):
    root, model, out = merged
    saved = T.GPT2LMHeadModel.from_pretrained(out / "model").state_dict()
    want = merge_model(model, TAU).model.state_dict()
    assert saved.keys() == want.keys()
    assert all(torch.equal(saved[k], want[k]) for k in want)
    record = json.loads((out / "merge.json").read_text())
    assert (record["step"], record["threshold"], record["fold_norms"]) == (7, TAU, False)
    widths = {(s["layer"], s["component"]): s["merged_width"] for s in record["sites"]}
    for layer, block in enumerate(model.transformer.h):
        fc = torch.cat([block.mlp.c_fc.weight.T, block.mlp.c_fc.bias[:, None]], 1).detach().numpy()
        q = torch.cat([block.attn.c_attn.weight[:, :D].T, block.attn.c_attn.bias[:D, None]],
                      1).detach().numpy()
        heads = sum(n_groups(q[h * D // HEADS:(h + 1) * D // HEADS]) for h in range(HEADS))
        kept = int((saved[f"transformer.h.{layer}.mlp.c_fc.weight"].abs().sum(0) > 0).sum())
        assert widths[(layer, "mlp.in")] == n_groups(fc) == kept
        assert widths[(layer, "attn.q")] == heads
    assert widths[(0, "mlp.in")] == 4 + 16 and widths[(0, "attn.q")] == 1 + 2 + 1 + 8  # planted
    assert (out / "config.yaml").read_text() == (root / "run" / "config.yaml").read_text()


def test_align_reads_the_merged_folder(merged, tmp_path):
    """Against its merged version: attn.v is untouched by the merge, so its groups match fully;
    CKA runs on the same text inputs (the tokenizer came along)."""
    root, _, out = merged
    (tmp_path / "lines.txt").write_text("\n".join(" ".join(f"w{(5 * i + j) % 63}" for j in range(12))
                                                  for i in range(20)) + "\n")
    code, err = run("align", f"{root / 'run'}@7", out / "model", "--probe_inputs",
                    tmp_path / "lines.txt", "--thresholds", TAU, "--output_dir", tmp_path / "a")
    assert code == 0, err
    assert "not steps of one run" not in err  # the merge keeps the units' coordinates
    t = pd.read_csv(tmp_path / "a" / "align.csv")
    whole = t[t["head"].isna()].set_index(["layer", "component", "metric"])["value"]
    for layer in (0, 1):
        if whole[(layer, "attn.v", "n_condensed_a")] > 0:
            assert whole[(layer, "attn.v", "matched_share")] == 1
        assert whole[(layer, "attn.v", "n_condensed_b")] == whole[(layer, "attn.v", "n_condensed_a")]
    # layer 0's planted MLP groups became single units: none is condensed after the merge
    assert whole[(0, "mlp.in", "n_condensed_a")] == 4 and whole[(0, "mlp.in", "n_condensed_b")] == 0
    cka = t[t["metric"] == "cka"]["value"]
    assert len(cka) > 0 and cka.between(-1, 1 + 1e-9).all()


@pytest.mark.parametrize("args, words", [
    (["--threshold", "1.5"], "threshold=1.5 is invalid: accepted is a cosine in (0, 1)"),
    (["--threshold", "x"], "threshold='x' has the wrong type: accepted is a number"),
    ([], "merge needs --threshold TAU: accepted is a cosine in (0, 1)"),
    (["--threshold", "0.9", "--bogus", "1"], "unknown key 'bogus': accepted with merge are"),
])
def test_bad_input_is_one_line_and_writes_nothing(merged, tmp_path, args, words):
    root, _, _ = merged
    out = tmp_path / "out"
    code, err = run("merge", root / "run" / "checkpoint-7", *args, "--output_dir", out)
    lines = [x for x in err.splitlines() if x]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert snapshot(out) is None and not list(tmp_path.glob(".out*"))


def test_a_step_the_series_lacks_is_refused(merged, tmp_path):
    root, _, _ = merged
    code, err = run("merge", f"{root / 'run'}@8", "--threshold", "0.9", "--output_dir", tmp_path / "o")
    assert code == 2 and "has no step 8: accepted are its steps 7" in err


@pytest.mark.parametrize("inside", ["checkpoint-9", "checkpoint-7/sub"])
def test_an_output_inside_the_merged_series_is_refused(merged, inside):
    """A merged model written into its own run would join the series (a fake checkpoint-9) or
    sit inside a saved model: refused before anything is written."""
    root, _, _ = merged
    out = root / "run" / inside
    code, err = run("merge", f"{root / 'run'}@7", "--threshold", "0.9", "--output_dir", out)
    assert code == 2 and "lies inside the checkpoint it merges" in err
    assert not out.exists()


def test_merge_records_whether_gains_were_folded_not_what_was_asked():
    from models import build_for_run
    from probes.config import RunConfig
    from tasks import make_task

    gpt2 = build(0)
    assert merge_model(gpt2, TAU, fold=True).folded is True  # pre-LN: gains folded
    assert merge_model(gpt2, TAU, fold=False).folded is False
    cfg = RunConfig(n_embd=16, n_layer=1)
    paper, _ = build_for_run(cfg, make_task(cfg.task, **cfg.task_options()))
    assert merge_model(paper, TAU, fold=True).folded is False  # post-LN: nothing to fold


def test_align_of_two_merges_of_one_checkpoint_keeps_quiet(merged, tmp_path):
    root, _, out = merged
    code, err = run("merge", f"{root / 'run'}@7", "--threshold", 0.8, "--fold_norms", "false",
                    "--output_dir", tmp_path / "m08")
    assert code == 0, err
    code, err = run("align", out / "model", tmp_path / "m08" / "model", "--thresholds", TAU,
                    "--output_dir", tmp_path / "a")
    assert code == 0, err
    assert "not steps of one run" not in err  # both keep the source's coordinates
