"""How a run fails: one clear paragraph, a ``failure.txt`` in its folder, a non-zero exit.

A single run exits non-zero. In a sweep (``-m``) the failed job records its failure and
returns ``inf`` so the other jobs go on; ``sweeps.SweepSummary`` then ends the sweep with a
non-zero exit that names the failed jobs. The errors themselves are in ``errors.py``.

A distributed run (``distributed.py``) has one ``failure.txt``: what every rank raised alike (an
interrupt, a divergence, a config error) rank 0 records, once, with one resume command; an error of
one rank (a crash, a rank that lost the others) that rank adds as its own line, ``rank 1 of 2: ...``.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import signal
from pathlib import Path
from typing import Any, List, Optional, Tuple

from hydra.types import RunMode

from . import distributed
from .errors import ConfigError, ExperimentError, Interrupted, RunFailed, RunFolderTaken
from .run_files import load_yaml
from .runs import FAILURE_FILE, WEIGHTS_FINAL
from .slurm import is_requeue_signal, requeue_or_fail
from .sweeps import quote_override_value

log = logging.getLogger(__name__)


SAFE_VALUE = re.compile(r"^[\w./:~+@%-]*$")  # a value Hydra's override grammar takes unquoted


def _override(key: str, value: str) -> str:
    """``key=value`` as one shell word that Hydra parses back to ``value``."""
    if not SAFE_VALUE.match(value):
        value = f'"{value}"' if not set(value) & set('"\\') else quote_override_value(value)
    return shlex.quote(f"{key}={value}")


def _original_overrides(hydra_cfg: Any) -> Tuple[List[str], List[str], Optional[Path]]:
    """The command line's task and hydra overrides, and for a sweep its folder. A sweep job's own
    overrides are one point of the grid: the sweep's (``init=normal,xavier``) are in its ``multirun.yaml``."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return list(hydra_cfg.overrides.task), list(hydra_cfg.overrides.hydra), None
    sweep_dir = Path(hydra_cfg.sweep.dir)
    if not sweep_dir.is_absolute():
        sweep_dir = Path(hydra_cfg.runtime.cwd) / sweep_dir
    try:
        overrides = load_yaml(sweep_dir / "multirun.yaml").hydra.overrides
        return list(overrides.task), list(overrides.hydra), sweep_dir
    except Exception:  # no multirun.yaml: this job's own overrides, still a sweep
        return list(hydra_cfg.overrides.task), list(hydra_cfg.overrides.hydra), sweep_dir


def resume_command(run_dir: Path) -> str:
    """The command that continues this run (for a sweep job: the whole sweep, each job from its own
    folder's last checkpoint), built from Hydra's record of the command line (inside a Slurm job
    ``sys.argv`` is submitit's), shell-quoted."""
    from hydra.core.hydra_config import HydraConfig

    script = launcher_command()
    if not HydraConfig.initialized():  # train() called from code
        return f"{script} <the same overrides> {_override('hydra.run.dir', str(run_dir))} trainer.resume=auto"
    task, hydra, sweep_dir = _original_overrides(HydraConfig.get())
    dropped = ("trainer.resume=", "hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=")
    kept = [shlex.quote(o) for o in [*task, *hydra] if not o.lstrip("+~").startswith(dropped)]
    where = _override("hydra.sweep.dir", str(sweep_dir)) if sweep_dir else _override("hydra.run.dir", str(run_dir))
    return " ".join([script, *(["-m"] if sweep_dir else []), *kept, where, "trainer.resume=auto"])


RESUME_ARGUMENTS = ("trainer.resume=", "+trainer.resume=", "++trainer.resume=")


def literal_resume_argument(argv: List[str]) -> List[str]:
    """``argv`` with ``trainer.resume=<path>`` quoted for Hydra's override grammar where the path needs it,
    as :func:`resume_command` prints it.

    A sweep's job folder is named by its overrides (``init=xavier,model=tied``): typed unquoted, Hydra
    stops at the ``=`` ("mismatched input '='") or reads the ``,`` as a sweep ("Ambiguous value"). A value
    Hydra cannot read, or reads as a sweep where a run takes one value, is taken as the path it is. In a
    sweep (``-m``) a comma-separated value stays a sweep unless it names an existing file or folder.
    """
    multirun = bool({"-m", "--multirun", "hydra.mode=MULTIRUN"} & set(argv))
    parser = None
    out = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if arg.startswith(RESUME_ARGUMENTS) and value:
            from hydra.core.override_parser.overrides_parser import OverridesParser

            parser = parser or OverridesParser.create()
            try:
                literal = parser.parse_override(arg).is_sweep_override() and (not multirun or Path(value).exists())
            except Exception:  # Hydra's grammar cannot read it (an '=' in the value)
                literal = True
            if literal:
                arg = f"{key}={quote_override_value(value)}"
        out.append(arg)
    return out


def launcher_command() -> str:
    """How this run was started, up to its overrides: ``python train.py``, or torchrun's command (a Slurm
    job's tasks come from the sweep's ``hydra.launcher.*`` overrides, which the resume command keeps)."""
    where = distributed.launch()
    if where is None or where.launcher != "torchrun":
        return "python train.py"
    if where.world == where.local_world:  # one machine
        return f"torchrun --standalone --nproc_per_node={where.world} train.py"
    return (f"torchrun --nnodes={where.world // max(where.local_world, 1)} --nproc_per_node={where.local_world} "
            f"<the same rendezvous options> train.py")


def record_failure(run_dir: Path, error: BaseException, rank: Optional[Tuple[int, int]] = None) -> str:
    """Log ``error`` as one paragraph and write it to ``<run_dir>/failure.txt`` (not into a folder
    that holds another run: :class:`RunFolderTaken`). ``rank`` (rank, world): one rank's own failure in a
    distributed run, added as its line to what the run's other ranks wrote since it started."""
    message = f"{type(error).__name__}: {error}"
    if rank is not None:
        message = f"rank {rank[0]} of {rank[1]}: {message}"
    if isinstance(error, RunFolderTaken):
        log.error(message)
        return message
    try:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / FAILURE_FILE
        fresh = rank is not None and path.is_file() and path.stat().st_mtime >= distributed.started_at()
        with open(path, "a" if fresh else "w") as f:  # another rank's line of this run stays
            f.write(message + "\n")
    except OSError as e:  # the disk is full or the folder read-only: the message still goes to the log
        message += f" (It could not be written to {Path(run_dir) / FAILURE_FILE}: {e.strerror}.)"
    log.error(message)
    return message


def stopped_outside_steps(run_dir: Path, record: bool = True) -> str:
    """Ctrl-C where the training loop cannot first write a checkpoint: while the run is set up (imports,
    data, the model), after its last step, or a second Ctrl-C. One paragraph with the command that continues
    it; ``failure.txt`` too, unless the folder holds a finished run (that stays a finished run)."""
    error = Interrupted(
        "stopped by Ctrl-C (SIGINT) outside the training steps (while the run was set up or finished, or by a "
        "second Ctrl-C), so no checkpoint was written for it; what earlier checkpoints hold is kept. Resume with: "
        f"{resume_command(run_dir)} (from the last checkpoint, or from the start if there is none)",
        signal.SIGINT, run_dir)
    if record and not (run_dir / WEIGHTS_FINAL).exists():
        return record_failure(run_dir, error)
    message = f"{type(error).__name__}: {error}"
    log.error(message)
    return message


def run_and_report(train_fn, cfg: Any, run_dir: Path, choices: dict, multirun: bool) -> float:
    """Call ``train_fn``; on an expected error record it and exit non-zero (or, in a sweep, return inf).

    In a sweep any other exception is recorded too (its traceback goes to the job's log) and the
    job returns inf, so that one job's crash does not stop the others.
    """
    where = distributed.launch()  # a distributed run: rank and world (from the environment: the group may be closed)
    rank = (where.rank, where.world) if where else None
    follower = where is not None and where.rank > 0
    try:
        return train_fn(cfg, run_dir, choices)
    except ExperimentError as error:
        # raised by every rank alike (an agreed stop, the same config): rank 0 records it, once
        alike = isinstance(error, (RunFailed, ConfigError, RunFolderTaken)) and not isinstance(error, distributed.PeerFailed)
        try:
            if isinstance(error, Interrupted) and follower:
                raise SystemExit(error.exit_code)  # rank 0 checkpointed, records it and (Slurm) requeues the job
            if isinstance(error, Interrupted) and is_requeue_signal(error):  # a Slurm job at its time limit
                error = requeue_or_fail(error, resume_command(error.run_dir))  # requeued: SystemExit, no result
            elif isinstance(error, Interrupted):
                error.args = (f"{error} Resume with: {resume_command(error.run_dir)}",)
                record_failure(error.run_dir, error)
                raise SystemExit(error.exit_code)  # an interrupt stops a sweep too
            if not (follower and alike):
                record_failure(run_dir, error, None if alike else rank)
            if multirun:
                return math.inf
            raise SystemExit(error.exit_code)
        finally:
            distributed.stop(wait=alike)  # after rank 0 has recorded it (torchrun stops the rest once one exits)
    except KeyboardInterrupt:  # Ctrl-C outside the training steps (set-up, the end, a second Ctrl-C)
        distributed.stop()
        stopped_outside_steps(Path(run_dir), record=not follower)
        if multirun:
            raise  # the sweep's own handling of Ctrl-C (its jobs' checkpoints, its resume command)
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as error:  # unforeseen (a bug, a module that cannot run): a sweep goes on
        distributed.stop()  # this rank alone: the others learn it when their next collective fails
        if rank is not None:
            record_failure(run_dir, error, rank)
        if not multirun:
            raise
        log.exception("the job failed with an unexpected error; the sweep goes on")  # traceback in the job's log
        if rank is None:
            record_failure(run_dir, error)
        return math.inf
