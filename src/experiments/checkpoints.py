"""Weights and checkpoints on disk: written atomically, read back as data only.

A file is written to a temporary name in the same folder, flushed to disk and then
renamed over the target, so a crash mid-write leaves the previous file intact.
Files are read with ``torch.load(..., weights_only=True)``: a checkpoint is data,
never code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from .errors import CheckpointError
from .runs import CHECKPOINT_DIR, LAST, checkpoint_dir
from .tying import TieManifest, tie_manifest, verify_ties


def save_atomic(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted or not a torch file
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}). "
                              f"The file is truncated or corrupted; use an earlier one.") from None


def save_weights(model: nn.Module, path: Path) -> None:
    """The model's ``state_dict`` (tied entries share storage) with its tie manifest."""
    save_atomic({"state_dict": model.state_dict(), "tie_manifest": tie_manifest(model)}, path)


def load_weights(model: nn.Module, path: Path) -> TieManifest:
    """Copy saved weights into ``model`` (ties kept) and check every tie still holds."""
    saved = load(path)
    if "state_dict" not in saved:
        raise CheckpointError(f"{path}: holds no state_dict.")
    model.load_state_dict(saved["state_dict"])
    manifest = saved.get("tie_manifest", {})
    verify_ties(model, manifest)
    return manifest


# --- training checkpoints: everything needed to continue a run exactly -------------------

def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int,
                    epoch: int, batch_in_epoch: int, shuffle_state: torch.Tensor, config_yaml: str,
                    numbered: bool, telemetry: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``checkpoints/last.pt`` (and ``step_<step>.pt`` when ``numbered``), atomically.

    ``epoch`` is the epoch in progress, ``batch_in_epoch`` how many of its batches are done and
    ``shuffle_state`` the shuffle generator's state at the start of that epoch.
    """
    state = {
        "state_dict": model.state_dict(),
        "tie_manifest": tie_manifest(model),
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle_state,
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []},
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "config": config_yaml,
        "telemetry": telemetry or {},  # the monitor's running state (the loss since the last point, ...)
    }
    folder = checkpoint_dir(run_dir)
    if numbered:
        save_atomic(state, folder / f"step_{step:08d}.pt")
    save_atomic(state, folder / LAST)
    return folder / LAST


def find_checkpoint(resume: str, run_dir: Path) -> Optional[Path]:
    """``auto``: ``<run_dir>/checkpoints/last.pt`` if it exists, else None (start fresh).
    A folder: its ``checkpoints/last.pt``. A file: that file."""
    if resume == "auto":
        last = checkpoint_dir(run_dir) / LAST
        return last if last.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = checkpoint_dir(path) / LAST
    if not path.is_file():
        raise CheckpointError(f"trainer.resume={resume}: no checkpoint at {path}. Give a run folder that "
                              f"has {CHECKPOINT_DIR}/{LAST}, a checkpoint file, or 'auto'.")
    return path


def run_dir_of(checkpoint: Path) -> Path:
    return Path(checkpoint).parent.parent


def restore_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """Load a checkpoint into ``model`` and ``optimizer``, restore the global RNG; ties verified."""
    state = load(path)
    missing = {"state_dict", "optimizer", "rng", "step", "epoch", "batch_in_epoch"} - set(state)
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(sorted(missing))}).")
    model.load_state_dict(state["state_dict"])
    verify_ties(model, state.get("tie_manifest", {}))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state
