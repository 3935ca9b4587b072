"""``hydra/launcher=joblib``: Hydra's joblib launcher (hydra-joblib-launcher 1.2) whose sweep stops cleanly
on Ctrl-C or SIGTERM (``_stop``): each running job writes its checkpoint, no job starts any more, no
worker process is left behind, and one command resumes the sweep.

Hydra's own launcher ends such a sweep in a ``KeyboardInterrupt`` traceback, joblib killing its workers
(SIGKILL: no checkpoint); on SIGTERM its workers go on, then wait for ever. :meth:`JoblibLauncher.launch`
is Hydra's, with each job run through :func:`execute_job` (joblib sends it to the workers by name:
this module imports there, as the sweep's callbacks do).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as HydraJoblibLauncher

from ._stop import Board, SweepStop, run_job_unless_stopped

log = logging.getLogger(__name__)


def execute_job(board: Board, idx: int, *args: Any) -> Any:
    """In a worker: Hydra's ``execute_job`` for job ``idx``, unless the sweep has been stopped."""
    from hydra_plugins.hydra_joblib_launcher import _core

    return run_job_unless_stopped(board, idx, lambda: _core.execute_job(idx, *args), own_group=True)


class JoblibLauncher(HydraJoblibLauncher):
    def __init__(self, **kwargs: Any) -> None:
        self.stop_grace_s = float(kwargs.pop("stop_grace_s", 120.0))
        super().__init__(**kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
        from joblib import Parallel, delayed

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        joblib_cfg = self.joblib
        joblib_cfg["backend"] = "loky"  # as Hydra's: the threading backend cannot run Hydra jobs
        process_joblib_cfg(joblib_cfg)
        log.info("Joblib.Parallel(%s) is launching %d jobs", ",".join(f"{k}={v}" for k, v in joblib_cfg.items()),
                 len(job_overrides))
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        singleton_state = Singleton.get_state()
        board = Board.create()
        try:
            with SweepStop(board, self.stop_grace_s) as stop:
                try:
                    runs = Parallel(**joblib_cfg)(
                        delayed(execute_job)(board, initial_job_idx + idx, overrides, self.hydra_context, self.config,
                                             self.task_function, singleton_state)
                        for idx, overrides in enumerate(job_overrides))
                except Exception:  # killed after the grace period: joblib says its workers died
                    if stop.signum is None:
                        raise
                    log.debug("the sweep's workers ended while it stopped", exc_info=True)
                if stop.signum is not None:
                    stop.exit(self, job_overrides, initial_job_idx)
        finally:
            board.remove()
        assert all(isinstance(run, JobReturn) for run in runs)
        return runs
