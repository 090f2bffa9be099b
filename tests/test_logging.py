"""Messages through the logging module: --log_level and --progress on every entry path, warnings
as ``warning:`` lines on stderr, the results on stdout, and a launcher that adds nothing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from probes import logs
from probes.config import grammar
from probes.config.keys import LOG_LEVELS, LogKeys
from probes.run import main

ROOT = Path(__file__).resolve().parent.parent
TINY = str(Path(__file__).with_name("tiny.yaml"))


@pytest.mark.parametrize("argv, rest, shown", [
    ([], [], {}),
    (["--gamma", "1", "--log_level", "debug", "--seed", "2"], ["--gamma", "1", "--seed", "2"],
     {"log_level": "debug"}),
    (["measure", "d", "--log_level=WARNING", "--progress", "false"], ["measure", "d"],
     {"log_level": "warning", "progress": False}),
    (["--progress=True", "--checkpoint", "c"], ["--checkpoint", "c"], {"progress": True}),
    (["--progress", "--checkpoint", "c", "--progress", "no"], ["--checkpoint", "c"], {"progress": False}),
    (["probe", "c", "--progress"], ["probe", "c"], {"progress": True}),
])
def test_options_are_taken_off_the_command_line(argv, rest, shown):
    assert grammar.take(argv, LogKeys, command="every command") == (rest, shown)


@pytest.mark.parametrize("head", [[], ["--checkpoint", "nowhere"], ["measure", "nowhere"]])
@pytest.mark.parametrize("option, words", [
    (["--log_level", "loud"], "log_level='loud' is unknown: accepted are debug, info, warning, error"),
    (["--progress", "maybe"], "progress='maybe' has the wrong type: accepted is true or false or null"),
    (["--log_level"], "--log_level needs a value: accepted is a string"),
])
def test_bad_option_is_one_error_line_on_every_path(head, option, words, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*head, "--output_dir", str(out), *option]) == 2
    said = capsys.readouterr()
    lines = said.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {words}") and said.out == ""
    assert not out.exists()


def test_log_levels_are_the_ones_logs_shows():
    assert LOG_LEVELS == tuple(logs.LOG_LEVELS)


def report_only(level: str, tmp_path: Path, capsys) -> tuple[str, str]:
    """stdout and stderr of an experiment that trains nothing (report_only) at ``level``, with
    warmup_steps (5 in tiny.yaml) above steps: one warning."""
    argv = ["--config", TINY, "--gamma", "1.0", "--steps", "2", "--report_only", "true",
            "--output_dir", str(tmp_path / level), "--log_level", level]
    capsys.readouterr()
    assert main(argv) == 0
    said = capsys.readouterr()
    return said.out, said.err


def test_log_level_chooses_the_lines_on_stderr(tmp_path, capsys):
    from probes.store import provenance

    lines = {level: report_only(level, tmp_path, capsys) for level in logs.LOG_LEVELS}
    warning = ("warning: warmup_steps=5 >= steps=2: the learning rate never reaches lr=0.001 "
               "(runs.csv: lr_peak)")
    plan = re.compile(r"^1 run\(s\) -> .* on 1 process\(es\)")
    code = "debug: code: " + ", ".join(f"{k}={v}" for k, v in provenance().items())
    for level, (out, err) in lines.items():
        err = err.splitlines()
        assert out.strip() == "no finished runs yet"  # the result, on stdout, at every level
        assert (warning in err) == (level != "error"), level
        assert any(plan.match(x) for x in err) == (level in ("debug", "info")), level
        assert any(x.startswith("reports written to") for x in err) == (level in ("debug", "info"))
        assert (code in err) == (level == "debug"), level
    assert len(lines["warning"][1].splitlines()) == 1
    assert lines["error"][1] == ""


@pytest.mark.parametrize("progress, shown", [(None, False), ("false", False), ("true", True)])
def test_progress_bar_only_on_a_terminal_or_when_asked(progress, shown, tmp_path, capsys):
    argv = ["--config", TINY, "--gamma", "1.0", "--steps", "2", "--n_probes", "2", "--num_threads",
            "1", "--save_checkpoints", "none", "--warmup_steps", "0",
            "--output_dir", str(tmp_path / "out")]
    assert main(argv + (["--progress", progress] if progress else [])) == 0
    err = capsys.readouterr().err
    assert ("2/2 [" in err) is shown, err  # tqdm's counter; capsys is not a terminal
    assert "Writing model shards" not in err and "Loading" not in err


def test_bar_disabled_follows_the_process_and_the_option():
    try:
        for progress, expected in ((None, None), (True, False), (False, True)):
            logs.configure("info", progress)
            assert logs.bar_disabled(True) is expected and logs.bar_disabled(False) is True
    finally:
        logs.configure()


def test_configure_twice_shows_each_line_once(capsys):
    import logging

    logs.configure("info")
    logs.configure("info")
    logging.getLogger("probes.some.module").warning("once")
    logging.getLogger("probes.some.module").info("plain")
    assert capsys.readouterr().err.splitlines() == ["warning: once", "plain"]
    with pytest.raises(ValueError, match="'loud' is unknown"):
        logs.configure("loud")


def test_makefile_launch_shows_no_launcher_warning():
    """The launch flags of ``make run`` leave accelerate nothing to default: bad input shows the
    child's error line alone."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = next(line for line in makefile.splitlines()
                  if line.startswith("\t") and "accelerate launch" in line)
    launch = next(line for line in makefile.splitlines() if line.startswith("LAUNCH :="))
    flags = recipe.split("accelerate launch", 1)[1].split("probes/run.py")[0]
    flags = flags.replace("$(LAUNCH)", launch.split(":=", 1)[1]).split()
    assert {"--num_processes", "--num_machines", "--mixed_precision", "--dynamo_backend"} <= set(flags)
    launcher = str(Path(sys.executable).parent / "accelerate")
    proc = subprocess.run([launcher, "launch", *flags, "probes/run.py", "--gamma", "0"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert [x for x in proc.stderr.splitlines() if x.strip()] == [
        "error: gamma=0 is invalid: accepted is a number in (0, 3]"]


def test_main_process_logger_speaks_on_the_main_process_only(capsys, monkeypatch):
    from accelerate import PartialState

    from probes.runtime import _MainProcessAdapter, main_process_logger

    PartialState()
    logs.configure("info")
    log = main_process_logger("probes.test")
    log.warning("from the main process")  # no "[RANK 0]" prefix: the one-line form stays
    monkeypatch.setattr(_MainProcessAdapter, "_should_log", staticmethod(lambda only: not only))
    log.warning("from another process")  # as a process other than the main one sees it
    log.warning("from every process", main_process_only=False)
    assert capsys.readouterr().err.splitlines() == ["warning: from the main process",
                                                   "warning: from every process"]
