"""One option grammar for every command (probes.config.grammar): the same key in either spelling
reads as the same value through each command's own parser, every bad spelling is one error line
(exit 2, nothing written) naming the value and what is accepted, and ``probe`` and its alias
``--checkpoint`` write the same files."""

from pathlib import Path

import pandas as pd
import pytest
from test_checkpoints import tiny_ckpt  # noqa: F401 (a fixture)

from probes.checkpoint import align, cli
from probes.config import RunConfig, expand, load_config, parse_overrides
from probes.run import main
from probes.train import remeasure

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "tiny.yaml")


def read(command: str, argv: list[str]) -> dict:
    """The values each command's own parser reads from ``argv`` (its positionals added)."""
    if command == "train":
        return parse_overrides(argv)[1]
    if command == "measure":
        return remeasure.parse_args(["DIR", *argv])[1]
    opts = cli.parse_args(["DIR", *argv]) if command == "probe" else align.parse_args(["A", "B", *argv])
    return vars(opts) | {"merge": opts.merge_probe}


# (commands, key as the command reads it, spellings that must read alike, the value they read)
SAME = [
    (("train", "measure", "probe", "align"), "thresholds",
     [["--thresholds", "0.9,0.95"], ["--thresholds", "[0.9, 0.95]"], ["--thresholds=[0.9,0.95]"],
      ["--thresholds", "0.9", "--thresholds", "0.95"]], [0.9, 0.95]),
    (("train", "measure", "probe", "align"), "thresholds",
     [["--thresholds", "0.5"], ["--thresholds", "[0.5]"]], [0.5]),
    (("train", "measure", "probe"), "merge_probe",
     [["--merge_probe"], ["--merge_probe", "true"], ["--merge_probe=True"], ["--merge_probe", "yes"],
      ["--merge_probe", "1"]], True),
    (("train", "measure", "probe"), "merge_probe",
     [["--merge_probe", "false"], ["--merge_probe", "NO"], ["--merge_probe=0"]], False),
    (("probe", "align"), "allow_pickle", [["--allow_pickle"], ["--allow_pickle", "true"]], True),
    (("probe", "align"), "fold_norms", [["--fold_norms", "false"], ["--fold_norms", "off"]], False),
    (("train", "measure"), "merge_steps", [["--merge_steps", "0,5"], ["--merge_steps", "[0, 5]"]],
     [0, 5]),
    (("train", "measure", "probe", "align"), "num_threads",
     [["--num_threads", "2"], ["--num_threads=2"]], 2),
    (("probe",), "heatmap_layers", [["--heatmap_layers", "0,1"], ["--heatmap_layers", "[0, 1]"]],
     [0, 1]),
]


@pytest.mark.parametrize("commands, key, spellings, want", SAME,
                         ids=[f"{c[1]}={c[3]}" for c in SAME])
def test_both_spellings_read_alike_on_every_command(commands, key, spellings, want):
    for command in commands:
        for argv in spellings:
            # merge_probe on probe needs probe inputs: given, so that the flag alone is read
            extra = ["--probe_inputs", "x.txt"] if command == "probe" and key == "merge_probe" else []
            got = read(command, [*argv, *extra])[key]
            assert got == want and type(got) is type(want), (command, argv, got)


def test_a_flag_alone_before_another_option_and_last():
    assert parse_overrides(["--overwrite", "--gamma", "1"])[1] == {"overwrite": True, "gamma": 1}
    opts = cli.parse_args(["DIR", "--allow_pickle", "--fold_norms"])
    assert (opts.allow_pickle, opts.fold_norms, opts.checkpoints) == (True, True, ["DIR"])


def test_probe_positional_and_checkpoint_alias_read_alike():
    a = cli.parse_args(["X", "Y", "--thresholds", "0.9"])
    b = cli.parse_args(["--checkpoint", "X", "--checkpoint", "Y", "--thresholds", "[0.9]"])
    c = cli.parse_args(["--checkpoint", "X,Y", "--thresholds=0.9"])
    assert a == b == c and a.checkpoints == ["X", "Y"]


def test_values_keep_their_yaml_types_and_run_ids():
    """The grammar reads as YAML did: 1 stays the integer 1 for a number key (the run id hashes
    it), a string key keeps its commas, null is None."""
    _, got = parse_overrides(["--gamma", "[0.5, 1]", "--lr", "3e-4", "--held_out", "34,43",
                              "--d_ff", "null", "--ood_hops", "2", "--mixed_precision", "no"])
    assert got == {"gamma": [0.5, 1], "lr": 0.0003, "held_out": "34,43", "d_ff": None,
                   "ood_hops": 2, "mixed_precision": "no"}
    assert type(got["gamma"][1]) is int
    cfgs = expand(load_config(TINY, parse_overrides(["--gamma", "[0.5, 1]"])[1]))
    base = load_config(TINY)
    assert [c.run_id for c in cfgs] == [RunConfig(**(base | {"gamma": g})).run_id for g in (0.5, 1)]
    assert cfgs[0].run_id == "paper-g0.5-s0-65aac4af"  # as tests/test_conventions.py pins it


# (command line, words the one error line holds)
BAD = [
    (["--config", TINY, "--gamma", "0.5,1.0"],
     "gamma='0.5,1.0' has the wrong type: accepted is a number; a list of values for a grid is "
     "written [0.5, 1.0]"),
    (["--config", TINY, "--chance_draws", "1,2"],
     "chance_draws='1,2' has the wrong type: accepted is an integer (one value"),
    (["--config", TINY, "--thresholds", "0.9,x"],
     "thresholds='0.9,x' has the wrong type: accepted is a list of numbers (a,b or [a, b])"),
    (["--config", TINY, "--merge_probe", "maybe"],
     "merge_probe='maybe' has the wrong type: accepted is true or false"),
    (["--config", TINY, "--gama", "1"], "unknown key 'gama' (did you mean 'gamma'?): accepted"),
    (["--config", TINY, "--n_eval", "[1, 2]"], "n_eval='[1, 2]' is a list: accepted is one value"),
    (["--config", TINY, "--steps"], "--steps needs a value: accepted is an integer"),
    (["measure", "DIR", "--thresholds", "[0.9, abc]"], "thresholds='[0.9, abc]' has the wrong type"),
    (["measure", "DIR", "--gamma", "0.5,1"], "gamma='0.5,1' has the wrong type: accepted is a number"),
    (["measure", "DIR", "--chance_nulls", "none"],
     "chance_nulls='none' is unknown: accepted are both, isotropic, covariance"),
    (["measure", "A", "B"], "measure takes one folder DIR, not 2"),
    (["probe", "DIR", "--merge_probe", "maybe"], "merge_probe='maybe' has the wrong type"),
    (["--checkpoint", "DIR", "--probe_samples", "1,2"],
     "probe_samples='1,2' has the wrong type: accepted is an integer (one value"),
    (["probe", "DIR", "--treshold", "0.9"], "unknown key 'treshold' (did you mean 'thresholds'?)"),
    (["probe", "DIR", "--heatmap_layers", "0.5"],
     "heatmap_layers='0.5' has the wrong type: accepted is a list of integers"),
    (["probe"], "probe needs a checkpoint: accepted are"),
    (["align", "A", "B", "--fold_norms", "maybe"], "fold_norms='maybe' has the wrong type"),
    (["align", "A", "B", "--merge_probe"], "unknown key 'merge_probe'"),
    (["table", "DIR", "--min_seeds", "x"], "min_seeds='x' has the wrong type: accepted is an integer"),
    (["table"], "table needs a folder: accepted are"),
    (["convert", "a.gguf", "OUT", "--foo", "1"], "unknown key 'foo'"),
    (["convert", "a.gguf"], "convert takes SRC OUT_DIR, not 1"),
]


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(b[0][:4]) for b in BAD])
def test_each_bad_spelling_is_one_error_line(tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)  # relative DIR, OUT, reports/...: nothing may appear here
    assert main([*argv, "--output_dir", str(tmp_path / "out")] if argv[0] not in ("table", "convert")
                else argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert words in lines[0] and "accepted" in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_probe_and_its_checkpoint_alias_write_the_same_files(tiny_ckpt, tmp_path):  # noqa: F811
    outs = [tmp_path / "probe", tmp_path / "alias"]
    assert main(["probe", str(tiny_ckpt), "--output_dir", str(outs[0]), "--num_threads", "1",
                 "--thresholds", "0.8,0.9", "--fold_norms"]) == 0
    assert main(["--checkpoint", str(tiny_ckpt), "--output_dir", str(outs[1]), "--num_threads",
                 "1", "--thresholds", "[0.8, 0.9]", "--fold_norms", "true"]) == 0
    assert (outs[0] / "metrics.csv").read_bytes() == (outs[1] / "metrics.csv").read_bytes()
    runs = [pd.read_csv(o / "runs.csv").drop(columns="wall_s") for o in outs]
    pd.testing.assert_frame_equal(*runs)
    metrics = pd.read_csv(outs[0] / "metrics.csv")
    assert sorted(metrics["threshold"].dropna().unique()) == [0.8, 0.9]
    assert sorted(p.name for p in (outs[0] / "figures").iterdir()) == \
        sorted(p.name for p in (outs[1] / "figures").iterdir())
