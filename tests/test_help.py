"""--help is fast: each command's help is read without importing torch, transformers, accelerate
or the tasks, and every key's help is its RunKeys field's, whole."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from probes.config import RunConfig
from probes.config import keys as config_keys

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "accelerate", "tasks", "models", "pandas", "datasets")
# runs probes/run.py as the script it is, then says which heavy modules it had imported
WRAPPER = """
import json, runpy, sys
sys.argv = ["probes/run.py", *sys.argv[1:]]
try:
    runpy.run_path("probes/run.py", run_name="__main__")
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": [m for m in HEAVY if m in sys.modules]}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


@pytest.mark.parametrize("argv, first", [
    (["--help"], "usage: condensation-probes [COMMAND]"),
    (["train", "--help"], "usage: accelerate launch probes/run.py [train] [--config FILE]"),
    (["--config", "x", "-h"], "usage: condensation-probes [COMMAND]"),
    (["probe", "--help"], "usage: accelerate launch probes/run.py probe DIR"),
    (["--checkpoint", "x", "--help"], "usage: accelerate launch probes/run.py probe DIR"),
    (["measure", "--help"], "usage: condensation-probes measure DIR"),
    (["measure", "somewhere", "-h", "--log_level", "debug"], "usage: condensation-probes measure DIR"),
    (["align", "--help"], "usage: condensation-probes align A B"),
    (["table", "--help"], "usage: condensation-probes table DIR"),
    (["convert", "--help"], "usage: condensation-probes convert SRC OUT_DIR"),
])
def test_help_imports_neither_torch_nor_the_tasks(argv, first):
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=ROOT, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, proc.stderr
    assert proc.stdout.startswith(first)
    assert "--log_level LEVEL" in proc.stdout and "--progress BOOL" in proc.stdout


def test_each_key_help_is_its_field_whole(capsys):
    from probes.run import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    sections = {f.metadata["section"] for f in dataclasses.fields(RunConfig)}
    headers = [line.strip()[:-1] for line in text.split("Keys (type, default, meaning):")[1].splitlines()
               if line.startswith("  ") and not line.startswith("    ")]
    assert headers == list(dict.fromkeys(f.metadata["section"] for f in dataclasses.fields(RunConfig)))
    assert set(headers) == sections  # no help line taken for a section header
    for f in dataclasses.fields(RunConfig):
        line = next(x for x in text.splitlines() if x.startswith(f"    --{f.name} "))
        assert line.endswith("  " + f.metadata["help"]), f.name
    ref = config_keys.RunKeys.__dataclass_fields__["reference_trajectories"].metadata["help"]
    assert ref.endswith("a relative path is found beside the file first")


def test_key_groups_come_from_the_sections():
    from probes.config import ANALYSIS_KEYS, EXPERIMENT_KEYS

    # the keys shared with probe (ThreadKeys, AnalysisKeys) are fields of bases: listed first
    # (num_threads) and last (merge_probe ... chance_nulls) in their sections
    assert ANALYSIS_KEYS == ("n_probes", "n_eval", "merge_steps", "merge_probe", "thresholds",
                             "chance_draws", "chance_nulls")
    assert EXPERIMENT_KEYS == ("num_threads", "experiment", "output_dir", "overwrite",
                               "save_checkpoints", "save_every", "report_only", "log_every",
                               "reference_trajectories", "trajectory_axis")


def test_main_help_lists_every_command_in_one_line_each(capsys):
    from probes.run import COMMANDS, main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    listed = text.split("Commands (COMMAND --help lists its keys):\n")[1].split("\n\n")[0]
    assert [line.split()[0] for line in listed.splitlines()] == list(COMMANDS) == \
        ["train", "probe", "measure", "align", "merge", "table", "convert"]


@pytest.mark.parametrize("argv, cls, names", [
    (["probe", "--help"], "ProbeKeys", "PROBE_KEYS"),
    (["align", "--help"], "ProbeKeys", "ALIGN_KEYS"),
    (["merge", "--help"], "ProbeKeys", "MERGE_KEYS"),
    (["measure", "--help"], "RunKeys", "MEASURE_KEYS"),
    (["table", "--help"], "TableKeys", None),
])
def test_each_command_lists_its_keys_from_field_metadata(capsys, argv, cls, names):
    from probes.run import main

    assert main(argv) == 0
    text = capsys.readouterr().out.split("Keys (type, default, meaning):")[1]
    keys = getattr(config_keys, cls)
    fields = {f.name: f for f in dataclasses.fields(keys)}
    wanted = getattr(config_keys, names) if names else list(fields)
    listed = [line.split()[0][2:] for line in text.splitlines() if line.startswith("    --")]
    assert listed == list(wanted)
    for name in wanted:
        line = next(x for x in text.splitlines() if x.startswith(f"    --{name} "))
        assert line.endswith("  " + fields[name].metadata["help"]) and str(fields[name].type) in line


def test_shared_keys_are_one_field_in_both_dataclasses():
    """thresholds, merge_probe, chance_*, num_threads: the same type, default and help for train,
    measure, probe and align, because both dataclasses inherit the one field."""
    run = {f.name: f for f in dataclasses.fields(config_keys.RunKeys)}
    probe = {f.name: f for f in dataclasses.fields(config_keys.ProbeKeys)}
    shared = [f.name for f in dataclasses.fields(config_keys.AnalysisKeys)] + ["num_threads"]
    assert set(shared) <= set(config_keys.PROBE_KEYS) and set(shared) <= set(config_keys.MEASURE_KEYS)
    for name in shared:
        assert run[name].type == probe[name].type and run[name].metadata == probe[name].metadata
        assert run[name].default == probe[name].default
    assert run["thresholds"].default_factory() == probe["thresholds"].default_factory() == \
        [0.7, 0.9, 0.95, 0.99]
    from probes.checkpoint.activations import ACTIVATION_POINTS
    from probes.measure.metrics import THRESHOLDS

    assert list(THRESHOLDS) == config_keys.THRESHOLDS
    assert ACTIVATION_POINTS == config_keys.ACTIVATION_POINTS
