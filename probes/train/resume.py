"""Mid-run training state, so that a killed experiment resumes where each run left off.

A run's state lives in ``runs/<run_id>/state/``: ``model.safetensors`` (weights) and
``trainer.pt`` (optimizer, scheduler, step, torch RNG, the report rows so far), loaded with
``torch.load(weights_only=True)`` so that no pickled code ever runs. A state folder is written
whole into a temp folder and renamed into place; the previous one is removed only after.

Each process writes the state of the runs it trains (runs are split between processes, so no two
processes share a state folder); the experiment's reports are still written by the main process
alone.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from probes.store import STATE, state_dir


def save_state(folder: Path, model, optimizer, scheduler, extra: dict) -> None:
    """Write the state of a run at a step boundary into ``folder/state`` atomically.

    Args:
        folder: the run folder.
        model, optimizer, scheduler: the training objects.
        extra: plain data (numbers, strings, lists, dicts, tensors) to keep with them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".state."))
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), **extra}, tmp / "trainer.pt")
    final, old = state_dir(folder), folder / f".{STATE}.old"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path, model, optimizer, scheduler) -> dict | None:
    """Restore a run's saved state into the training objects, if there is one.

    Returns:
        the ``extra`` data saved with it, or None when the run has no saved state.
    """
    for name in (STATE, f".{STATE}.old"):  # .old survives a kill between the two renames
        path = folder / name
        if (path / "trainer.pt").is_file() and (path / "model.safetensors").is_file():
            load_model(model, str(path / "model.safetensors"))
            saved = torch.load(path / "trainer.pt", weights_only=True)
            optimizer.load_state_dict(saved.pop("optimizer"))
            scheduler.load_state_dict(saved.pop("scheduler"))
            torch.set_rng_state(saved.pop("torch_rng"))
            return saved
    return None

