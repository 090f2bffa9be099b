"""A task's options have one home, its dataclass in tasks/: the command line knows their names and
types (``probes.config.keys``), and a run config takes their defaults from the dataclass, records
a key its task does not read as null and says so."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from probes.config import RunConfig, expand, load_config, unread_options
from probes.config.keys import TASK_OPTION_KEYS
from probes.run import main
from tasks import TASKS

TINY = str(Path(__file__).with_name("tiny.yaml"))


def own_fields(task: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TASKS[task]) if f.name != "seed"}


def test_every_option_of_every_task_is_a_key_and_every_key_an_option():
    read = set()
    for name in TASKS:
        fields = set(own_fields(name))
        # in_dim is the mlp model's input width too, so it is a task-section key with its own default
        assert fields - {"in_dim"} <= set(TASK_OPTION_KEYS), name
        read |= fields
    assert set(TASK_OPTION_KEYS) <= read  # no key that no task reads


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_run_config_takes_the_task_defaults_and_nulls_the_rest(task):
    cfg = RunConfig(task=task)
    own = own_fields(task)
    for key in TASK_OPTION_KEYS:
        if key in own:
            default = own[key].default
            assert getattr(cfg, key) == default, (task, key)
        else:
            assert getattr(cfg, key) is None, (task, key)
    # what the generator is given is what the config records
    options = cfg.task_options()
    assert {k: v for k, v in options.items() if k != "seed"} == \
        {k: getattr(cfg, k) for k in own}
    assert options.get("seed", cfg.data_seed) == cfg.data_seed


def test_a_value_given_wins_and_enters_the_run_id():
    cfg = RunConfig(task="composite", seq_len=12)
    assert cfg.seq_len == 12 and cfg.task_options()["seq_len"] == 12
    assert cfg.run_id != RunConfig(task="composite").run_id


def test_a_key_the_task_does_not_read_is_recorded_null_and_warned():
    raw = load_config(TINY, {"task": "chain_search_authors", "vocab_size": 201, "gamma": 0.5,
                             "seq_len": 40})
    (cfg,) = expand(raw)
    assert cfg.seq_len is None
    (without,) = expand(load_config(TINY, {"task": "chain_search_authors", "vocab_size": 201,
                                           "gamma": 0.5}))
    assert cfg == without and cfg.run_id == without.run_id
    assert unread_options(raw) == ("seq_len=40 is not read by task 'chain_search_authors': "
                                   "ignored (recorded as null); its options are chain_nodes, "
                                   "hops, n_ood, n_test_id, n_train")


def test_in_dim_is_recorded_only_for_a_task_with_an_input_dimension():
    """in_dim is the net's input width, checked against the task's; a token task has none, so
    its runs record null whatever was given (same run id), and a given value is warned about."""
    assert RunConfig(task="composite").in_dim is None
    raw = load_config(TINY, {"in_dim": 5})
    (cfg,) = expand(raw)[:1]
    assert cfg.in_dim is None and cfg.run_id == expand(load_config(TINY, {}))[0].run_id
    assert unread_options(raw).startswith("in_dim=5 is not read by task 'composite': ignored")
    assert RunConfig(task="sin_sum", model_family="mlp", in_dim=3).in_dim == 3  # its option
    assert RunConfig(task="four_points", model_family="mlp").in_dim == 1  # checked: fixed at 1
    assert unread_options(load_config("mlp_initial", {"task": "four_points", "in_dim": 1,
                                                      "n_train": None})) is None


def test_a_grid_over_tasks_warns_only_for_keys_no_task_reads():
    one = {"activation": "tanh", "gamma": 2.0, "seed": 0}
    raw = load_config("mlp_initial", {**one, "task": ["four_points", "sin_sum"]})
    runs = expand(raw)
    assert {r.task: r.n_train for r in runs} == {"four_points": None, "sin_sum": 80}
    assert unread_options(raw) is None  # sin_sum reads n_train
    assert unread_options(load_config("mlp_initial", {**one, "task": "four_points"})) == (
        "n_train=80 is not read by task 'four_points': ignored (recorded as null); its options "
        "are n_test_id")


def test_a_grid_over_reasoning_tasks_is_refused(tmp_path, capsys):
    # their correlations, summary and figures read one task's scores
    assert main(["--config", TINY, "--task", "[composite, identity]", "--output_dir",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: task=['composite', 'identity'] is a grid over tasks: accepted is one "
                   "reasoning task per experiment, since its correlations, summary and figures "
                   "read that task's scores (run each task with its own --output_dir)")


def test_the_command_line_warns_once_on_the_main_process_and_never_beside_an_error(tmp_path,
                                                                                   capsys):
    args = ["--config", TINY, "--gamma", "0.5", "--task", "identity", "--ood_scoring", "pooled",
            "--steps", "5", "--num_threads", "1", "--output_dir", str(tmp_path / "out")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("warning: ood_scoring='pooled' is not read by task 'identity'") == 1
    assert main([*args, "--lr", "-1"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: lr=-1")


def test_task_sizes_are_checked_by_the_task():
    with pytest.raises(ValueError, match=r"n_train=0 is invalid: accepted is an integer >= 1"):
        TASKS["composite"](n_train=0)
    with pytest.raises(ValueError, match=r"n_ood=-1 is invalid: accepted is an integer >= 0"):
        TASKS["chain_search_authors"](n_ood=-1)


def test_a_default_is_a_value_so_one_model_has_one_id():
    # chain_search_authors once took None for "2 hops, 7 nodes": three ids for one trained model
    cfg = RunConfig(task="chain_search_authors", vocab_size=201)
    assert (cfg.hops, cfg.chain_nodes) == (2, 7)
    assert cfg.run_id == RunConfig(task="chain_search_authors", vocab_size=201, hops=2,
                                   chain_nodes=7).run_id


@pytest.mark.parametrize("args, words", [
    (["--config", "resnet_digits", "--test_fraction", "0.001"],
     "test_fraction=0.001 leaves 2 test and 1795 training images of 1797: accepted is a share "
     "that leaves at least 10 (one per class) on each side"),
    (["--config", "resnet_digits", "--test_fraction", "0.999"], "leaves 1796 test and 1 training"),
    (["--config", "mlp_phase", "--n_test_id", "0"], "n_test_id=0 is invalid: accepted is an integer >= 1"),
    (["--config", "mlp_initial", "--n_test_id", "0"], "n_test_id=0 is invalid: accepted is an integer >= 1"),
])
def test_sizes_a_task_cannot_train_with_are_one_error_line(args, words, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*args, "--output_dir", str(out), "--num_threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and words in err, err
    assert not out.exists()


def test_a_grid_point_that_changes_nothing_is_named_in_the_error(tmp_path, capsys):
    args = ["--config", "mlp_initial", "--activation", "tanh", "--gamma", "2.0", "--seed", "0",
            "--task", "[four_points, sin_sum]", "--n_train", "[80, 90]", "--output_dir",
            str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the grid gives run 'mlp-g2-s0-") and "\n" not in err, err
    assert "(n_train=80 and 90): task 'four_points' with model_family 'mlp' does not read n_train" in err
    assert main(["--config", TINY, "--seed", "[1, 1]", "--output_dir", str(tmp_path / "o")]) == 2
    assert "a value is listed twice" in capsys.readouterr().err
