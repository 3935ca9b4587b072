"""``hydra/launcher=submitit_local``: Hydra's submitit_local launcher (hydra-submitit-launcher 1.2) whose sweep
stops cleanly on Ctrl-C or SIGTERM (``_stop``).

submitit starts a controller process per job, which starts the job's process; both are in the sweep's
process group, so a terminal's Ctrl-C reaches them all: the controller sends its job SIGINT again and a
second later SIGKILL (no checkpoint), and the sweep ends in a traceback. On SIGTERM the sweep dies and
its jobs run on without it. Here each controller starts a session of its own (Ctrl-C reaches the sweep
alone) and the sweep stops as ``_stop`` says; the job's process (this launcher, unpickled by submitit)
holds the signal until training starts (submitit's own handler would ignore a SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as HydraLocalLauncher

from ._stop import Board, SweepStop, run_job_unless_stopped


class NewSessions:
    """``subprocess`` as submitit's local executor sees it: each process it starts (a job's controller)
    begins a session of its own, and is remembered."""

    def __init__(self) -> None:
        self.started: List[subprocess.Popen] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 (subprocess's name)
        process = subprocess.Popen(*args, start_new_session=True, **kwargs)
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the controller and its job
                except ProcessLookupError:
                    pass

    def pids(self) -> List[int]:
        return [p.pid for p in self.started if p.poll() is None]


class LocalLauncher(HydraLocalLauncher):
    def __init__(self, **params: Any) -> None:
        self.stop_grace_s = float(params.pop("stop_grace_s", 120.0))
        self.board: Optional[Board] = None  # while a sweep runs; pickled into each job with the launcher
        super().__init__(**params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.local import local

        self.board = Board.create()
        controllers = NewSessions()
        original, local.subprocess = local.subprocess, controllers
        try:
            with SweepStop(self.board, self.stop_grace_s, kill_all=controllers.kill_all) as stop:
                try:
                    runs = super().launch(job_overrides, initial_job_idx)
                except Exception:  # a stopped job has no result: submitit's UncompletedJobError
                    if stop.signum is None:
                        raise
                if stop.signum is not None:
                    stop.wait(controllers.pids)
                    stop.exit(self, job_overrides, initial_job_idx)
            return runs
        finally:
            local.subprocess = original
            self.board.remove()
            self.board = None

    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> Any:
        """In the job's process (submitit's): Hydra's job, unless the sweep has been stopped."""
        run = super().__call__
        return run_job_unless_stopped(self.board, job_num,
                                      lambda: run(sweep_overrides, job_dir_key, job_num, job_id, singleton_state),
                                      own_group=False)
