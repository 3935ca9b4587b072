"""How a run fails: one clear paragraph, a ``failure.txt`` in its folder, a non-zero exit.

A single run exits non-zero. In a sweep (``-m``) the failed job records its failure and
returns ``inf`` so the other jobs go on; ``sweeps.SweepSummary`` then ends the sweep with a
non-zero exit that names the failed jobs. The errors themselves are in ``errors.py``.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

from .errors import ExperimentError, Interrupted
from .runs import FAILURE_FILE

log = logging.getLogger(__name__)


def resume_command(run_dir: Path) -> str:
    """This command line again, continuing from ``run_dir``'s last checkpoint."""
    args = [a for a in sys.argv[1:] if not a.startswith("trainer.resume=")]
    return " ".join(["python train.py", *args, f"trainer.resume={run_dir}"])


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
    except ExperimentError as error:
        if isinstance(error, Interrupted):
            error.args = (f"{error} Resume with: {resume_command(error.run_dir)}",)
            record_failure(error.run_dir, error)
            raise SystemExit(error.exit_code)  # an interrupt stops a sweep too
        record_failure(run_dir, error)
        if multirun:
            return math.inf
        raise SystemExit(error.exit_code)
    except Exception as error:  # unforeseen (a bug, a module that cannot run): a sweep goes on
        if not multirun:
            raise
        log.exception("the job failed with an unexpected error; the sweep goes on")  # traceback in the job's log
        record_failure(run_dir, error)
        return math.inf
