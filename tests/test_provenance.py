"""Provenance: every runs.csv row names the code that made it (suite version, git commit and
dirty flag, library versions), and a finished run made by another code version is reused with a
note, keeping its own commit."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import accelerate
import numpy
import pandas as pd
import pytest
import torch
import transformers

from probes.run import main
from probes.store import PROVENANCE_COLUMNS, RUNS_TAIL, provenance
from probes.store.provenance import SOURCE_ROOT, git_state

TINY = str(Path(__file__).with_name("tiny.yaml"))
ARGS = ["--config", TINY, "--steps", "4", "--n_probes", "2", "--num_threads", "1",
        "--save_checkpoints", "final"]
OLD = "deadbeef" * 5
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True, env=env).stdout


@pytest.fixture
def repo(tmp_path):
    """A new git repository with one commit of one file."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "code.py").write_text("x = 1\n")
    git(root, "add", "code.py")
    git(root, "commit", "-q", "-m", "one")
    return root


@needs_git
def test_git_state_reads_the_commit_and_the_dirty_flag(repo, tmp_path):
    # the commit as git stores it: the branch's ref file (no packed refs in a new repository)
    head = (repo / ".git" / "HEAD").read_text().split("ref: ")[1].strip()
    commit = (repo / ".git" / head).read_text().strip()
    assert len(commit) == 40
    assert git_state(repo) == {"git_commit": commit, "git_dirty": False}
    (repo / "notes.txt").write_text("untracked")  # outputs and notes beside the code do not count
    assert git_state(repo) == {"git_commit": commit, "git_dirty": False}
    (repo / "code.py").write_text("x = 2\n")
    assert git_state(repo) == {"git_commit": commit, "git_dirty": True}


@needs_git
def test_git_state_is_empty_outside_the_top_of_a_checkout(repo, tmp_path, monkeypatch):
    (repo / "pkg").mkdir()
    assert git_state(repo / "pkg") == {}  # installed inside another repository: not its commit
    (tmp_path / "plain").mkdir()
    assert git_state(tmp_path / "plain") == {}
    monkeypatch.setenv("PATH", str(tmp_path / "plain"))  # no git at all: blank, not an error
    assert git_state(repo) == {}


def test_provenance_has_every_column_and_the_installed_versions():
    p = provenance()
    assert list(p) == PROVENANCE_COLUMNS
    assert list(RUNS_TAIL[-len(PROVENANCE_COLUMNS):]) == PROVENANCE_COLUMNS
    # each library's own idea of its version (its module attribute, not its metadata)
    assert (p["torch_version"], p["transformers_version"], p["accelerate_version"],
            p["numpy_version"]) == (torch.__version__, transformers.__version__,
                                    accelerate.__version__, numpy.__version__)
    if GIT and (SOURCE_ROOT / ".git").exists():
        assert p["git_commit"] == git(SOURCE_ROOT, "log", "-1", "--format=%H").strip()
        assert p["git_dirty"] in (True, False)
    else:
        assert p["git_commit"] == "" and p["git_dirty"] == ""


def test_a_run_of_another_commit_is_reused_with_a_note_and_keeps_its_commit(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*ARGS, "--gamma", "1.0", "--output_dir", str(out)]) == 0
    (folder,) = (out / "runs").iterdir()
    row = json.loads((folder / "run.json").read_text())
    assert {k: row[k] for k in PROVENANCE_COLUMNS} == provenance()
    row["git_commit"] = OLD  # as if an earlier commit had trained it
    (folder / "run.json").write_text(json.dumps(row))
    model = (folder / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*ARGS, "--gamma", "[1.0, 0.5]", "--output_dir", str(out)]) == 0
    said = capsys.readouterr()
    notes = [line for line in (said.out + said.err).splitlines() if "another code version" in line]
    assert notes == [f"note: 1 finished run(s) were made by another code version (commit "
                     f"{OLD[:12]}): pass --overwrite true to retrain them: {folder.name}"]
    assert (folder / "model" / "model.safetensors").read_bytes() == model  # reused, not retrained
    runs = pd.read_csv(out / "runs.csv", dtype={"git_commit": str}).set_index("run_id")
    assert runs.loc[folder.name, "git_commit"] == OLD
    (new,) = [r for r in runs.index if r != folder.name]
    now = provenance()["git_commit"]
    assert runs.loc[new, "git_commit"] == now if now else pd.isna(runs.loc[new, "git_commit"])
    for column in ("package_version", "torch_version", "numpy_version"):
        assert runs[column].astype(str).tolist() == [provenance()[column]] * 2
    # a checkpoint probe's rows name the code that probed
    probe = tmp_path / "probe"
    assert main(["--checkpoint", str(folder / "model"), "--output_dir", str(probe),
                 "--num_threads", "1"]) == 0
    ck = pd.read_csv(probe / "runs.csv", dtype=str, keep_default_na=False)
    assert ck[PROVENANCE_COLUMNS].iloc[0].tolist() == [str(v) for v in provenance().values()]
