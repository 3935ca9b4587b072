"""A training job under Slurm (``hydra/launcher=cluster``, through submitit): requeued at its time
limit, it continues from its checkpoint.

Slurm sends submitit's signal (USR2, or ``SUBMITIT_PREEMPT_SIGNAL``) ``hydra.launcher.signal_delay_s``
seconds before a job's time limit (up to a minute earlier). submitit's own handler would requeue the
job in the middle of a training step, and the requeued job would start from scratch. Instead:

- the training loop's :class:`~experiments.guards.InterruptGuard` also catches that signal
  (:func:`requeue_signals`; only inside a submitit job), so the loop writes ``checkpoints/last.pt``
  at the next step boundary, as for SIGTERM, and stops with :class:`~experiments.errors.Interrupted`;
- :func:`requeue_or_fail` then calls submitit's handler: it requeues the job (``scontrol requeue``)
  and exits without a result (the sweep keeps waiting), or, when ``hydra.launcher.max_num_timeout``
  requeues are used up, it refuses; the run then fails with a message naming the time limit and
  the command that resumes it;
- a requeued job (``SLURM_RESTART_COUNT`` > 0: after submitit's requeue, a preemption or a node
  failure alike) continues from its own folder's ``last.pt`` without ``trainer.resume`` being
  given (:func:`resume_if_requeued`); the resume drops the TensorBoard steps logged after the
  checkpoint, so each step is there once.

Outside a submitit job nothing changes: USR2 keeps its default meaning.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Optional, Tuple

from omegaconf import DictConfig

from .errors import Interrupted, RunFailed

log = logging.getLogger(__name__)


def submitit_signal() -> Optional[signal.Signals]:
    """submitit's time-limit/preemption signal, if this process is a submitit job that handles it."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    sig = getattr(signal, "SIG" + name.upper().removeprefix("SIG"), None)
    if sig is None:
        return None
    handler = signal.getsignal(sig)
    owner = getattr(handler, "__self__", None)  # submitit's SignalHandler.checkpoint_and_try_requeue
    return sig if owner is not None and type(owner).__module__.startswith("submitit") else None


def requeue_signals() -> Tuple[signal.Signals, ...]:
    """The signals the training loop catches besides SIGTERM and SIGINT: submitit's, inside its jobs."""
    sig = submitit_signal()
    return (sig,) if sig is not None else ()


def restart_count() -> int:
    """How many times Slurm has restarted this job (0 outside Slurm and on the first run)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def resume_if_requeued(cfg: DictConfig) -> None:
    """A requeued Slurm job without ``trainer.resume`` continues from its folder's last checkpoint."""
    restarts = restart_count()
    if restarts and cfg.trainer.resume is None:
        cfg.trainer.resume = "auto"
        log.info("Slurm job %s restarted (%d): continuing from this run folder's last checkpoint, if any "
                 "(trainer.resume=auto)", os.environ.get("SLURM_JOB_ID", "?"), restarts)


def launcher_setting(key: str) -> Optional[object]:
    """``hydra.launcher.<key>`` of this job, if Hydra runs it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().launcher.get(key)


def is_requeue_signal(error: Interrupted) -> bool:
    """Whether ``error`` was caused by submitit's signal (whose handler is back in place by now)."""
    sig = submitit_signal()
    return sig is not None and error.exit_code == 128 + sig


def requeue_or_fail(error: Interrupted, resume_command: str) -> RunFailed:
    """After the checkpoint of ``error``, let submitit requeue this job: it raises ``SystemExit``
    (the job is not over: no result, the requeued job continues). If submitit refuses (no requeue
    left), the :class:`RunFailed` to record."""
    sig = submitit_signal()
    log.info("%s Handing over to submitit to requeue the job.", error)
    try:
        signal.getsignal(sig)(sig, None)  # scontrol requeue, then sys.exit(-1); or UncompletedJobError
    except Exception as refused:  # submitit's UncompletedJobError: "timed-out too many times"
        reason = str(refused)
    else:  # submitit only returns on a task of rank > 0, which does not checkpoint
        reason = "submitit did not requeue it"
    timeout, requeues = launcher_setting("timeout_min"), launcher_setting("max_num_timeout")
    limit = f"its time limit (hydra.launcher.timeout_min={timeout})" if timeout is not None else "its time limit"
    left = f"hydra.launcher.max_num_timeout={requeues}; " if requeues is not None else ""
    return RunFailed(f"reached {limit} and has no requeue left ({left}restarts so far: {restart_count()}; submitit: "
                     f"{reason}) {error} Raise hydra.launcher.timeout_min (up to the partition's limit: sinfo -o "
                     f"'%P %l') or hydra.launcher.max_num_timeout. Resume with: {resume_command}")
