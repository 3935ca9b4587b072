"""Weights and checkpoints on disk: written atomically, read back as data only.

A file is written to a temporary name in the same folder, flushed to disk and then
renamed over the target, so a crash mid-write leaves the previous file intact.
Files are read with ``torch.load(..., weights_only=True)``: a checkpoint is data,
never code.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from .checkpoint_checks import check_layout, check_training_state, check_weights
from .errors import CheckpointError
from .runs import CHECKPOINT_DIR, LAST, checkpoint_dir
from .tying import TieManifest, tie_manifest, verify_ties


def save_atomic(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # serialized first: a full disk is then a plain OSError, not torch's zip writer error
    torch.save(obj, buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
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
    except pickle.UnpicklingError as e:  # it names code to run: torch refused it, and so do we
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise CheckpointError(f"{path}: refused: it names Python code ({found.group(1) if found else 'an object'}) that "
                              f"loading it would run. Weights and checkpoints of this project hold only tensors and "
                              f"plain data, so this file was not written by it or was altered; do not load it "
                              f"unless you know who wrote it and why.") from None
    except Exception as e:  # truncated, corrupted or not a torch file
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}). "
                              f"The file is truncated or corrupted; use an earlier one.") from None


def load_state(model: nn.Module, state_dict: Dict[str, Any], path: Path) -> None:
    """``model.load_state_dict``; a file of another model is a :class:`CheckpointError` naming the keys."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        detail = " ".join(str(e).split()).replace("Error(s) in loading state_dict for ", "").rstrip(".")
        raise CheckpointError(f"{path} does not fit this model: {detail[:600]}. It was saved from another model "
                              f"(model.* settings); use the model it was trained with.") from None


def save_weights(model: nn.Module, path: Path) -> None:
    """The model's ``state_dict`` (tied entries share storage) with its tie manifest."""
    save_atomic({"state_dict": model.state_dict(), "tie_manifest": tie_manifest(model)}, path)


def load_weights(model: nn.Module, path: Path) -> TieManifest:
    """Copy saved weights into ``model`` (ties kept) and check every tie still holds."""
    saved = load(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise CheckpointError(f"{path}: holds no state_dict.")
    check_weights(saved["state_dict"], model, path)  # dtypes, shapes, ties: before anything is copied
    load_state(model, saved["state_dict"], path)
    manifest = saved.get("tie_manifest", {})
    verify_ties(model, manifest)
    return manifest


# --- training checkpoints: everything needed to continue a run exactly -------------------

def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int,
                    epoch: int, batch_in_epoch: int, shuffle_state: torch.Tensor, config_yaml: str,
                    numbered: bool, telemetry: Optional[Dict[str, Any]] = None, processes: int = 1) -> Path:
    """Write ``checkpoints/last.pt`` (and ``step_<step>.pt`` when ``numbered``), atomically.

    ``epoch`` is the epoch in progress, ``batch_in_epoch`` how many of its batches are done and
    ``shuffle_state`` the shuffle generator's state at the start of that epoch. ``processes``: how many
    trained it (a distributed run; it may resume with another number: the global batch is what matters).
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
        "processes": processes,
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


def load_training_state(path: Path) -> Dict[str, Any]:
    """A training checkpoint's content, checked to be one: its entries, their types and ranges
    (``checkpoint_checks.check_layout``)."""
    state = load(path)
    check_layout(state, path)
    return state


def restore_training_state(state: Dict[str, Any], path: Path, model: nn.Module,
                           optimizer: Optional[torch.optim.Optimizer], steps_per_epoch: int) -> None:
    """Load a checkpoint's weights into ``model`` (ties verified) and its state into ``optimizer``
    (None: a new optimizer starts fresh), and restore the global RNG. Everything is checked against
    the model, the optimizer and the epoch's length first (``checkpoint_checks``): a bad entry
    restores nothing."""
    check_training_state(state, path, model, optimizer, steps_per_epoch)
    load_state(model, state["state_dict"], path)
    verify_ties(model, state.get("tie_manifest", {}))
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: its optimizer state does not fit this optimizer ({e}).") from None
    torch.set_rng_state(state["rng"]["torch"])
    cuda = state["rng"].get("cuda") or []
    if cuda and torch.cuda.is_available():  # a GPU run resumed on the CPU has no CUDA generator to restore
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
