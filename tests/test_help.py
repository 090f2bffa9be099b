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
    (["--help"], "usage: accelerate launch probes/run.py [--config FILE]"),
    (["--checkpoint", "x", "--help"], "usage: accelerate launch probes/run.py --checkpoint DIR"),
    (["measure", "--help"], "usage: condensation-probes measure DIR"),
    (["measure", "somewhere", "-h", "--log_level", "debug"], "usage: condensation-probes measure DIR"),
    (["align", "--help"], "usage: condensation-probes align A B"),
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

    assert ANALYSIS_KEYS == ("n_probes", "n_eval", "merge_probe", "merge_steps", "thresholds",
                             "chance_draws", "chance_nulls")
    assert EXPERIMENT_KEYS == ("experiment", "output_dir", "overwrite", "num_threads",
                               "save_checkpoints", "save_every", "report_only", "log_every",
                               "reference_trajectories", "trajectory_axis")
