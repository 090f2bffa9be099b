"""The probe batch of the activation basis (``--probe_inputs``): what the model is run on.

- a task name (this project's models): the first rows of the task's ``train`` split, the column
  the model reads (``input_ids``, ``inputs`` or ``pixel_values``); a run folder's
  ``config.yaml`` (next to ``model/``) gives the task's options, else its defaults;
- a text file (language models): one input per non-empty line, tokenized with the checkpoint's
  tokenizer (its special tokens added as the tokenizer does by default), one forward pass each;
- a folder of images or an image file (vision models): preprocessed with the checkpoint's image
  processor, one batch.

At most ``max_samples`` samples (positions) are kept: tokens for text and sequence tasks, pixel
positions spread evenly over the images for convolutions, rows for vector inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import AutoImageProcessor, AutoTokenizer

from probes.checkpoint.discover import CheckpointError
from probes.config import FIELDS, RunConfig, load_yaml
from probes.store import CONFIG, run_of_model
from tasks import TASKS, make_task

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_TOKENS_PER_LINE = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


@dataclass
class ProbeBatch:
    """Forward-pass keyword arguments, one dict per pass; ``max_positions`` caps the positions
    kept per input of a convolution (None: all)."""

    passes: list[dict] = field(default_factory=list)
    max_positions: int | None = None


def input_kind(spec: str) -> str:
    """``task``, ``text`` or ``images`` for a ``--probe_inputs`` value.

    Raises:
        CheckpointError: neither a registered task nor an existing file or folder.
    """
    if spec in TASKS:
        return "task"
    path = Path(spec)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
        return "images"
    if path.is_file():
        return "text"
    raise CheckpointError(f"--probe_inputs {spec!r} is neither a task (accepted: {sorted(TASKS)}) "
                          f"nor an existing text file, image or folder of images")


def _task_options(name: str, folder: Path) -> dict:
    """The task options a run of this project trained with (runs/<id>/config.yaml), if any."""
    run = run_of_model(folder)
    run_config = run / CONFIG if run is not None else None
    if run_config is None or not run_config.is_file():
        return {}
    try:
        raw = load_yaml(run_config.read_text()) or {}
        cfg = RunConfig(**{k: v for k, v in raw.items() if k in FIELDS})
    except (yaml.YAMLError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_config} could not be read for the task options: {e}") from e
    return cfg.task_options() if cfg.task == name else {}


def task_batch(name: str, folder: Path, input_name: str, max_samples: int) -> ProbeBatch:
    """Rows of the task's train split in the model's input column (see module doc)."""
    try:
        split = make_task(name, **_task_options(name, folder)).build()["train"]
    except ValueError as e:
        raise CheckpointError(f"task {name!r} could not be built: {e}") from e
    if input_name not in split.column_names:
        raise CheckpointError(f"task {name!r} has no column {input_name!r} that the model reads: "
                              f"accepted are tasks with it (columns: {split.column_names})")
    x = torch.as_tensor(split[:1][input_name])
    if x.ndim == 4:  # images: spread the positions over up to 64 images
        n = min(len(split), 64)
        return ProbeBatch([{input_name: torch.as_tensor(split[:n][input_name])}],
                          max_positions=math.ceil(max_samples / n))
    per_row = x.shape[1] if x.ndim == 2 and not torch.is_floating_point(x) else 1
    n = min(len(split), math.ceil(max_samples / per_row))
    return ProbeBatch([{input_name: torch.as_tensor(split[:n][input_name])}])


def text_batch(path: Path, tokenizer, max_samples: int) -> ProbeBatch:
    """One pass per non-empty line (at most MAX_TOKENS_PER_LINE tokens each), until
    ``max_samples`` tokens; the captured rows are cut to ``max_samples`` afterwards."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise CheckpointError(f"--probe_inputs {str(path)!r} has no non-empty line: accepted is a "
                              f"text file with one input per line")
    passes, total = [], 0
    for line in lines:
        enc = tokenizer(line, return_tensors="pt", truncation=True, max_length=MAX_TOKENS_PER_LINE)
        passes.append(dict(enc))
        total += enc["input_ids"].shape[1]
        if total >= max_samples:
            break
    if total == 0:
        raise CheckpointError(f"--probe_inputs {str(path)!r} gave no token with this checkpoint's "
                              f"tokenizer: accepted is text that it encodes")
    return ProbeBatch([p for p in passes if p["input_ids"].shape[1]])


def image_batch(path: Path, processor, max_samples: int) -> ProbeBatch:
    """All images of a folder (or one image file), preprocessed as one batch."""
    from PIL import Image  # pillow: only image inputs need it

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"--probe_inputs {str(path)!r} holds no image: accepted suffixes are "
                              f"{sorted(IMAGE_SUFFIXES)}")
    try:
        images = [Image.open(f).convert("RGB") for f in files]
    except OSError as e:
        raise CheckpointError(f"an image of {str(path)!r} could not be read: {e}") from e
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return ProbeBatch([{"pixel_values": pixels}],
                      max_positions=math.ceil(max_samples / len(files)))


def load_tokenizer(folder: Path):
    """The checkpoint's tokenizer. Raises CheckpointError if it has none."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer from the model type alone
        raise CheckpointError(f"checkpoint {str(folder)!r} has no usable tokenizer, which text "
                              f"--probe_inputs need: accepted are checkpoints saved with their "
                              f"tokenizer ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # missing or broken tokenizer files raise many types
        raise CheckpointError(f"checkpoint {str(folder)!r} has no usable tokenizer, which text "
                              f"--probe_inputs need: {str(e).splitlines()[0] if str(e) else e!r}") from e


def load_image_processor(folder: Path):
    """The checkpoint's image processor. Raises CheckpointError if it has none."""
    if not (folder / "preprocessor_config.json").is_file():
        raise CheckpointError(f"checkpoint {str(folder)!r} has no preprocessor_config.json, which "
                              f"image --probe_inputs need: accepted are checkpoints saved with "
                              f"their image processor")
    try:
        return AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # broken processor configs raise many types
        raise CheckpointError(f"the image processor of {str(folder)!r} could not be loaded: "
                              f"{str(e).splitlines()[0] if str(e) else e!r}") from e
