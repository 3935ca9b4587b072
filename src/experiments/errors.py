"""Every error a user can meet, in one place, each saying what it means.

They are *expected* failures: a run that raises one of them is reported as one paragraph
(no traceback), the paragraph is written to the run folder's ``failure.txt``, and the process
exits non-zero (``exit_code``). Anything else is a bug and keeps its traceback.

This module imports nothing from the package: every other module may raise these.
"""

from __future__ import annotations

from pathlib import Path


class ExperimentError(Exception):
    """Base class: a failure that is the user's to fix, with a message that says how."""

    exit_code = 1


class ConfigError(ExperimentError, ValueError):
    """A config value that cannot work. The message names the config key and its value."""


class DataError(ExperimentError, ValueError):
    """Data that cannot be used: a file's content, a checksum, a download. The message names
    the file (and row and column where there is one)."""


class CheckpointError(ExperimentError):
    """A weights or checkpoint file that cannot be read, or does not fit the model."""


class BrokenTieError(ExperimentError):
    """Parameters that should be one shared tensor are not (any more): after loading with
    ``assign=True``, a device move, or a model that does not declare the tie."""


class RunFailed(ExperimentError):
    """A run that stopped on purpose while training; the message says why and what to do."""


class Diverged(RunFailed):
    """The loss, a gradient or the weights stopped being finite numbers."""


class UseNotFound(ConfigError):
    """A ``model.grad_scale`` entry named a use that did not occur in a training step: the scale
    would silently do nothing."""

    def __init__(self, missing, occurred):
        occurred = ", ".join(occurred) or "none (no parameter was read while the lens watched)"
        super().__init__(
            f"model.grad_scale: {', '.join(repr(m) for m in missing)} matched no use of a parameter in this "
            f"training step, so its scale would do nothing. A use is named after where it happened: "
            f"<module>.<parameter> for a module reading its own parameter (<module>#k at its k-th call beyond "
            f"its names), <parameter>@<module> for a module reading another's, <parameter>@outside in the loss; "
            f"keys may be globs (* and ?). The uses in this step: {occurred}.")


class Interrupted(RunFailed):
    """SIGTERM or Ctrl-C: a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int, run_dir: Path):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
        self.run_dir = Path(run_dir)


class RunFolderTaken(ExperimentError):
    """The run folder already holds another run, or another process is training in it. Nothing is
    written into it, not even ``failure.txt`` (that would mark the other run failed)."""


class OutOfMemory(ExperimentError):
    """An allocation failed although the sizes passed the estimate made before (``memory.py``); the message
    gives torch's own words and what is free."""


class StorageError(ExperimentError):
    """A folder that cannot be written: the disk is full, the folder is read-only or not ours.
    The message names the folder."""


class UnreadableFile(ExperimentError):
    """A file of a run folder that is not read: not a regular file (a FIFO, a device), a symbolic link out of
    the folder, larger than a reader takes, a YAML file whose aliases would expand it without bound, or
    damaged. The message names the file and why, in one line."""
