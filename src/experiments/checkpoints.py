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
from typing import Any, Dict

import torch
from torch import nn

from .tying import TieManifest, tie_manifest, verify_ties


class CheckpointError(RuntimeError):
    """A weights or checkpoint file that cannot be read."""


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
    model.load_state_dict(saved["state_dict"])
    manifest = saved.get("tie_manifest", {})
    verify_ties(model, manifest)
    return manifest
