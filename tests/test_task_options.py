"""A task's options have one home, its dataclass in tasks/: the command line knows their names and
types (``probes.config.keys``), and a run config takes their defaults from the dataclass, records
a key its task does not read as null and says so."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from probes.config import RunConfig, expand, load_config
from probes.config.keys import TASK_OPTION_KEYS
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


def test_a_key_the_task_does_not_read_is_recorded_null_and_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="probes"):
        (cfg,) = expand(load_config(TINY, {"task": "chain_search_authors", "vocab_size": 201, "gamma": 0.5,
                                           "seq_len": 40}))
    assert cfg.seq_len is None
    (without,) = expand(load_config(TINY, {"task": "chain_search_authors", "vocab_size": 201,
                                             "gamma": 0.5}))
    assert cfg == without and cfg.run_id == without.run_id
    lines = [r.getMessage() for r in caplog.records if "is not read by task" in r.getMessage()]
    assert lines == ["seq_len=40 is not read by task 'chain_search_authors': ignored (recorded as "
                     "null); its options are chain_nodes, hops, n_ood, n_test_id, n_train"]


def test_a_grid_over_tasks_warns_only_for_keys_no_task_reads(caplog):
    with caplog.at_level(logging.WARNING, logger="probes"):
        runs = expand(load_config(TINY, {"task": ["composite", "chain_search_authors"],
                                         "vocab_size": 201, "seq_len": 9, "gamma": 0.5}))
    assert {r.task: r.seq_len for r in runs} == {"composite": 9, "chain_search_authors": None}
    assert not [r for r in caplog.records if "is not read by task" in r.getMessage()]


def test_task_sizes_are_checked_by_the_task():
    with pytest.raises(ValueError, match=r"n_train=0 is invalid: accepted is an integer >= 1"):
        TASKS["composite"](n_train=0)
    with pytest.raises(ValueError, match=r"n_ood=-1 is invalid: accepted is an integer >= 0"):
        TASKS["chain_search_authors"](n_ood=-1)
