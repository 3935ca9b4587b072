"""How a run fails: one clear paragraph, a ``failure.txt`` in its folder, a non-zero exit.

A single run exits non-zero. In a sweep (``-m``) the failed job records its failure and
returns ``inf`` so the other jobs go on; :class:`SweepFailures` (a Hydra callback) then
ends the sweep with a non-zero exit that names the failed jobs.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, List

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

FAILURE_FILE = "failure.txt"


class RunFailed(RuntimeError):
    """A run stopped on purpose (divergence, interruption); the message says why and what to do."""

    exit_code = 1


class Diverged(RunFailed):
    pass


class Interrupted(RunFailed):
    def __init__(self, message: str, signum: int, run_dir: Path):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
        self.run_dir = Path(run_dir)


def resume_command(run_dir: Path) -> str:
    """This command line again, continuing from ``run_dir``'s last checkpoint."""
    args = [a for a in sys.argv[1:] if not a.startswith("trainer.resume=")]
    return " ".join(["python train.py", *args, f"trainer.resume={run_dir}"])


def expected_errors() -> tuple:
    """Errors that are the user's to fix: reported as one paragraph, without a traceback."""
    from .checkpoints import CheckpointError
    from .config import ConfigError

    return (ConfigError, CheckpointError, RunFailed)


def record_failure(run_dir: Path, error: BaseException) -> str:
    """Log ``error`` as one paragraph and write it to ``<run_dir>/failure.txt``."""
    message = f"{type(error).__name__}: {error}"
    log.error(message)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILURE_FILE).write_text(message + "\n")
    return message


def run_and_report(train_fn, cfg: Any, run_dir: Path, choices: dict, multirun: bool) -> float:
    """Call ``train_fn``; on an expected error record it and exit non-zero (or, in a sweep, return inf).

    In a sweep any other exception is recorded too (its traceback goes to the job's log) and the
    job returns inf, so that one job's crash does not stop the others.
    """
    try:
        return train_fn(cfg, run_dir, choices)
    except expected_errors() as error:
        if isinstance(error, Interrupted):
            error.args = (f"{error} Resume with: {resume_command(error.run_dir)}",)
            record_failure(error.run_dir, error)
            raise SystemExit(error.exit_code)  # an interrupt stops a sweep too
        record_failure(run_dir, error)
        if multirun:
            return math.inf
        raise SystemExit(getattr(error, "exit_code", 1))
    except Exception as error:  # unforeseen (a bug, a module that cannot run): a sweep goes on
        if not multirun:
            raise
        log.exception("the job failed with an unexpected error; the sweep goes on")  # traceback in the job's log
        record_failure(run_dir, error)
        return math.inf


class SweepFailures(Callback):
    """At the end of a sweep, exit non-zero if any job left a ``failure.txt``."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed: List[str] = sorted(str(p.parent.relative_to(sweep_dir)) for p in sweep_dir.rglob(FAILURE_FILE))
        if failed:
            reasons = [(sweep_dir / name / FAILURE_FILE).read_text().strip().split(". ")[0] for name in failed]
            log.error("%d job(s) of the sweep in %s failed (see each job's %s):\n%s", len(failed), sweep_dir,
                      FAILURE_FILE, "\n".join(f"  {name}: {why[:200]}" for name, why in zip(failed, reasons)))
            sys.exit(1)
