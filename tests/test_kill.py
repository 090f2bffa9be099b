"""A kill at any point leaves the previous complete output; the next run completes it.

Two levels:
- the store's primitives (``store.publish.Publish``, ``store.output.replace_folder``,
  ``store.publish.recover``), killed in a forked child at every rename they make (fast);
- ``align`` in a forked child at every rename it makes, the next ``align`` run on what the kill
  left (fast);
- the real CLI in a subprocess (training, ``--checkpoint`` probes, ``measure DIR``, ``align``),
  killed with SIGKILL by a ``sitecustomize`` shim (tests/kill_shim/) at a chosen call: inside
  ``save_pretrained``, inside ``savefig``, or at one of the project's own ``os.replace`` calls.
  The point is chosen from the calls an unbroken run of the same command logged, so it names
  what was being written, not a count that a code change would move.

Each CLI case checks: every visible file (no dot in its path) is complete, never half-written;
once the folder is recovered (what the next command does first) the previous output is byte for
byte as it was (the whole folder, or, for training, whose finished runs are kept one by one, the
reports); and the same command run again completes, with outputs equal to an unbroken run's.
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open

from probes.run import main
from probes.store import REPORT_FILES, Publish, publish_reports, recover, replace_folder
from probes.store import output as store_output
from probes.store.publish import JOURNAL

ROOT = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).with_name("tiny.yaml"))
SHIM = Path(__file__).with_name("kill_shim")
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                    "PYTHONPATH": os.pathsep.join([str(SHIM), str(ROOT)])}


# --- what a folder holds ------------------------------------------------------------------------

def visible(folder: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file under ``folder`` with no hidden part in its path."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(folder).parts)}


def hidden(folder: Path, work: bool = True) -> list[str]:
    """Every entry under ``folder`` (and beside it, of its own name) with a hidden name; with
    ``work`` False, less what is inside a run's work folder (``runs/.<id>.training``, which a
    killed run resumes from)."""
    inside = [str(p.relative_to(folder)) for p in folder.rglob(".*")] if folder.is_dir() else []
    if not work:
        inside = [p for p in inside if not (p.startswith("runs/.") and ".training" in p)]
    beside = [p.name for p in folder.parent.glob(f".{folder.name}.*")]
    return sorted(inside + beside)


PNG_END = b"IEND\xaeB`\x82"


def complete(path: Path) -> None:
    """Assert that the file ``path`` is whole: it parses as its kind, read by an independent
    reader (PNG: signature and final IEND chunk)."""
    data = path.read_bytes()
    kind = path.suffix
    if kind == ".csv":
        assert data.endswith(b"\n"), path
        pd.read_csv(path)
    elif kind == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END), path
    elif kind == ".json":
        json.loads(data)
    elif kind == ".yaml":
        yaml.safe_load(data)
    elif kind == ".npz":
        with np.load(path) as z:
            [z[k] for k in z.files]
    elif kind == ".safetensors":
        with safe_open(str(path), "pt") as f:
            [f.get_tensor(k) for k in f.keys()]
    else:
        raise AssertionError(f"no reader for {path}")


def all_complete(folder: Path) -> None:
    for rel in visible(folder):
        complete(folder / rel)


# --- the store's primitives, killed at every rename ----------------------------------------------

def killed_child(n: int, work, no_exchange: bool = False) -> int:
    """Run ``work()`` in a forked child that SIGKILLs itself at its ``n``-th ``os.replace``
    (no handler or ``finally`` runs: as a kill from outside); returns the child's exit code
    (-9 when killed, 0 when it finished first)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        count, real = [0], os.replace

        def replace(src, dst, **kw):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst, **kw)

        os.replace = replace
        if no_exchange:
            store_output.exchange = lambda a, b: False
        try:
            work()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def report_folder(root: Path) -> None:
    """An experiment-like folder: reports, a run folder and a user's file."""
    (root / "figures").mkdir(parents=True)
    (root / "runs.csv").write_text("run_id\nold\n")
    (root / "metrics.csv").write_text("old metrics\n")
    (root / "directions.csv").write_text("only in the old report\n")
    (root / "figures" / "a.png").write_bytes(b"old png")
    (root / "runs" / "r1").mkdir(parents=True)
    (root / "runs" / "r1" / "run.json").write_text('{"old": 1}')
    (root / "notes.txt").write_text("a user's file")


def new_set(root: Path) -> None:
    """Stage a new run folder and a new report, and publish them as one set."""
    run = root / "runs" / ".r1.staging-abc"
    run.mkdir()
    (run / "run.json").write_text('{"new": 1}')
    report = root / ".report.staging-xyz"
    (report / "figures").mkdir(parents=True)
    (report / "runs.csv").write_text("run_id\nnew\n")
    (report / "metrics.csv").write_text("new metrics\n")
    (report / "lineage.csv").write_text("only in the new report\n")
    (report / "figures" / "b.png").write_bytes(b"new png")
    with Publish(root) as publish:
        publish.put(run, root / "runs" / "r1")
        publish_reports(report, root, publish)


def test_a_set_killed_at_every_rename_is_rolled_back_whole(tmp_path):
    old_dir = tmp_path / "old"
    report_folder(old_dir)
    old = visible(old_dir)
    done = tmp_path / "done"
    shutil.copytree(old_dir, done)
    new_set(done)
    new = visible(done)
    assert hidden(done) == [] and new["runs/r1/run.json"] == b'{"new": 1}'
    assert "directions.csv" not in new and new["notes.txt"] == b"a user's file"
    n = 1
    while True:
        root = tmp_path / f"k{n}"
        shutil.copytree(old_dir, root)
        code = killed_child(n, lambda root=root: new_set(root))
        if code == 0:  # past the last rename: the set is in place
            assert visible(root) == new and hidden(root) == []
            break
        assert code == -signal.SIGKILL
        # every visible file, mid-way, is an old or a new one, whole
        for rel, data in visible(root).items():
            assert data in (old.get(rel), new.get(rel)), (n, rel)
        recover(root)
        assert visible(root) == old, n
        assert hidden(root) == [], n
        n += 1
    assert n > 10  # every move of the set was a kill point


@pytest.mark.parametrize("no_exchange", [False, True])
def test_a_folder_replaced_and_killed_is_the_old_or_the_new_one(tmp_path, no_exchange):
    def work(root):
        stage = store_output.staging_dir(root / "out")
        (stage / "f").write_text("new")
        replace_folder(stage, root / "out")

    for n in (1, 2, 3):
        root = tmp_path / f"{no_exchange}{n}"
        (root / "out").mkdir(parents=True)
        (root / "out" / "f").write_text("old")
        code = killed_child(n, lambda root=root: work(root), no_exchange)
        if code == 0:
            assert visible(root / "out") == {"f": b"new"}
            break
        # with the exchange the folder is never missing; with two renames it may be, until
        # the next command recovers it
        if not no_exchange:
            assert visible(root / "out") == {"f": b"old"}
        recover(root / "out")
        assert visible(root / "out") == {"f": b"old"} and hidden(root / "out") == []
    else:
        raise AssertionError("replace_folder made more renames than expected")


def test_recover_leaves_a_clean_folder_alone(tmp_path):
    report_folder(tmp_path / "out")
    before = visible(tmp_path / "out")
    user = [".cache.old-x1", ".draft.abc123.tmp", ".thing.staging-2"]  # a user's hidden files
    for name in user:
        (tmp_path / "out" / name).write_text("mine")
    recover(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob(".*")) == sorted(user)
    recover(tmp_path / "missing")
    assert visible(tmp_path / "out") == before and not (tmp_path / "missing").exists()
    assert not (tmp_path / "out" / JOURNAL).exists()


# --- align, killed in a forked child at every rename it makes ------------------------------------

def align_args(out: Path, pair: Path) -> list[str]:
    return ["align", str(pair / "a"), str(pair / "b"), "--output_dir", str(out), "--num_threads",
            "1", "--thresholds", "0.5,0.9"]


@pytest.fixture(scope="module")
def align_pair(tmp_path_factory):
    """Two tiny GPT-2 checkpoints (``a``, ``b``), an earlier align output of another threshold
    (``prior/out``) and an unbroken align output (``ref/out``)."""
    import transformers as T

    root = tmp_path_factory.mktemp("align_kill")
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        T.GPT2LMHeadModel(T.GPT2Config(n_embd=16, n_head=2, n_layer=2, n_inner=32, vocab_size=32,
                                       n_positions=8)).save_pretrained(root / name)
    prior = root / "prior" / "out"
    assert main([*align_args(prior, root)[:-2], "--thresholds", "0.7"]) == 0
    ref = root / "ref" / "out"
    assert main(align_args(ref, root)) == 0
    return root


@pytest.mark.parametrize("no_exchange", [False, True])
def test_a_killed_align_is_rolled_back_by_the_next(tmp_path, align_pair, no_exchange):
    """align killed at each of its renames (align.csv staged; with two renames, the old folder
    moved aside and the new one moved in): the output folder is whole (the old one, or, between
    the two renames, none), recovering it gives the old one back, and the next align itself
    rolls the leftovers back and writes what an unbroken one writes."""
    old = visible(align_pair / "prior" / "out")
    new = visible(align_pair / "ref" / "out")
    assert old and new and old != new
    n = 1
    while True:
        out = tmp_path / f"k{n}" / "out"
        shutil.copytree(align_pair / "prior" / "out", out)
        args = align_args(out, align_pair)
        code = killed_child(n, lambda args=args: main(args), no_exchange)
        if code == 0:
            assert visible(out) == new and hidden(out) == []
            break
        assert code == -signal.SIGKILL
        all_complete(out)
        assert visible(out) in ([old, {}] if no_exchange else [old]), n
        assert hidden(out), n  # the kill left working names for the next command
        copy = tmp_path / f"c{n}" / "out"
        shutil.copytree(out.parent, copy.parent, symlinks=True)
        recover(copy)
        assert visible(copy) == old and hidden(copy) == [], n
        assert main(args) == 0  # the next align, on the folder as the kill left it
        assert visible(out) == new and hidden(out) == [], n
        n += 1
    assert n == (4 if no_exchange else 2)  # every rename of align was a kill point


# --- the real CLI, killed with SIGKILL -----------------------------------------------------------

def cli(args: list[str], **env) -> subprocess.CompletedProcess:
    """``python probes/run.py args`` in a subprocess with the kill shim."""
    return subprocess.run([sys.executable, "probes/run.py", *args], cwd=ROOT,
                          env=ENV | env, capture_output=True, text=True)


def logged(args: list[str], out: Path, log: Path) -> list[tuple[str, str]]:
    """Run ``args`` unbroken, logging the shim's calls; (kind, path relative to ``out``'s
    parent) in call order."""
    proc = cli(args, KILL_LOG=str(log))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    return [(kind, os.path.relpath(path, out.parent)) for kind, path in rows]


def kill_point(events, kind: str, where) -> str:
    """``kind:N``: the first call of ``kind`` whose path satisfies ``where``."""
    of_kind = [path for k, path in events if k == kind]
    n = next(i for i, path in enumerate(of_kind, 1) if where(path))
    return f"{kind}:{n}"


TRAIN = ["--config", TINY, "--num_threads", "1"]


def train_args(out: Path) -> list[str]:
    return [*TRAIN, "--output_dir", str(out), "--overwrite", "true"]


def probe_args(out: Path, ckpt: Path) -> list[str]:
    return ["--checkpoint", str(ckpt), "--output_dir", str(out), "--num_threads", "1"]


def measure_args(out: Path) -> list[str]:
    return ["measure", str(out), "--thresholds", "[0.5, 0.9]", "--num_threads", "1"]


def align_cli_args(out: Path, ckpt: Path) -> list[str]:
    """align of a run's step-0 checkpoint against its final model."""
    return ["align", str(ckpt.parent / "checkpoint-0"), str(ckpt), "--output_dir", str(out),
            "--num_threads", "1"]


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """Per command: the previous output (a folder ``work/out`` to copy), the command as a
    function of the output folder, the calls an unbroken run of it logged, and its output."""
    base = tmp_path_factory.mktemp("kill")
    experiment = base / "experiment" / "out"
    assert main([*TRAIN, "--output_dir", str(experiment)]) == 0
    ckpt = next((experiment / "runs").iterdir()) / "model"
    probed = base / "probed" / "out"
    assert main([*probe_args(probed, ckpt), "--thresholds", "0.5,0.9"]) == 0
    aligned = base / "aligned" / "out"
    assert main([*align_cli_args(aligned, ckpt), "--thresholds", "0.7"]) == 0
    found = {}
    for name, prior, args in (("train", experiment, train_args),
                              ("probe", probed, lambda out: probe_args(out, ckpt)),
                              ("measure", experiment, measure_args),
                              ("align", aligned, lambda out: align_cli_args(out, ckpt))):
        ref = base / f"ref_{name}" / "out"
        shutil.copytree(prior.parent, ref.parent)
        events = logged(args(ref), ref, base / f"{name}.log")
        found[name] = dict(prior=prior, args=args, events=events, ref=ref)
    return found


def training_run(path: str) -> bool:
    return ".training/.checkpoint-" in path


def run_stage(run: int):
    return lambda path: f"/.paper-g{(0.5, 1)[run]:g}-s0-" in path and ".staging-" in path


CASES = [
    # (id, command, shim kind, the call to die at, what must be old once recovered)
    ("train: checkpoint being written", "train", "save_pretrained", training_run, "all"),
    ("train: a run's final model being written", "train", "save_pretrained", run_stage(0), "all"),
    ("train: second run's model, the first run replaced", "train", "save_pretrained",
     run_stage(1), "reports"),
    ("train: a figure being drawn", "train", "savefig", lambda p: True, "reports"),
    ("train: reports being published", "train", "replace",
     lambda p: p == "out/metrics.csv", "reports"),
    ("probe: a figure being drawn", "probe", "savefig", lambda p: True, "all"),
    ("probe: metrics.csv being staged", "probe", "replace",
     lambda p: p.endswith("metrics.csv"), "all"),
    ("measure: a run folder written", "measure", "replace", run_stage(0), "all"),
    ("measure: the second run put in place", "measure", "replace",
     lambda p: p == "out/runs/paper-g1-s0-a6220600", "all"),
    ("measure: a figure being drawn", "measure", "savefig", lambda p: True, "all"),
    ("measure: reports being published", "measure", "replace",
     lambda p: p == "out/runs.csv", "all"),
    ("align: align.csv being staged", "align", "replace", lambda p: p.endswith("/align.csv"),
     "all"),
]


def same_outputs(ref: Path, out: Path) -> None:
    """Every visible file of ``out`` equals the unbroken run's in ``ref``, byte for byte once
    the folder's own path is written alike (config.yaml and runs.csv name it), wall time aside."""
    a, b = visible(ref), visible(out)
    assert sorted(a) == sorted(b)
    for rel in a:
        x, y = a[rel].replace(os.fsencode(ref), os.fsencode(out)), b[rel]
        if Path(rel).name == "run.json":  # wall_s differs between runs
            assert {**json.loads(x), "wall_s": 0} == {**json.loads(y), "wall_s": 0}, rel
        elif Path(rel).name == "runs.csv":
            x, y = (pd.read_csv(io.BytesIO(d)).drop(columns=["wall_s"]) for d in (x, y))
            pd.testing.assert_frame_equal(x, y, obj=rel)
        else:
            assert x == y, rel


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_killed_command_leaves_the_previous_output_and_the_next_completes(
        tmp_path, commands, case):
    _, name, kind, where, must_stay = case
    c = commands[name]
    out = tmp_path / "work" / "out"
    shutil.copytree(c["prior"].parent, out.parent)
    before = visible(out)
    at = kill_point(c["events"], kind, where)
    proc = cli(c["args"](out), KILL_AT=at)
    assert proc.returncode == -signal.SIGKILL, (at, proc.stderr[-3000:])
    all_complete(out)  # nothing half-written where the outputs live, even before recovery
    # recovered (a copy, as the next command would see it): the previous output
    copy = tmp_path / "copy" / "out"
    shutil.copytree(out.parent, copy.parent, symlinks=True)
    recover(copy)
    now = visible(copy)
    if must_stay == "all":
        assert now == before, at
    else:  # training keeps each finished run as it comes: the reports stay as they were
        report = {k: v for k, v in before.items() if Path(k).parts[0] in REPORT_FILES}
        assert {k: v for k, v in now.items() if Path(k).parts[0] in REPORT_FILES} == report, at
        for run in (copy / "runs").glob("[!.]*"):
            assert (run / "run.json").is_file()
    assert hidden(copy, work=False) == [], at
    # the same command again completes, as an unbroken run
    assert main(c["args"](out)) == 0
    same_outputs(c["ref"], out)
    assert hidden(out) == []
