"""submitit's sacct polling, quiet: a cluster without accounting gets one warning, not three a minute.

submitit asks ``sacct`` for job states (``SlurmJob.watcher``, shared by all jobs). Where sacct
fails (no accounting, slurmdbd down) it lets sacct's own error lines through to the terminal and
logs "Bypassing sacct error" on every poll, through two handlers of its own and the root logger.
:class:`QuietSlurmInfoWatcher` runs sacct with its output captured and warns once per process; the
launcher takes job states from squeue and the result files anyway.
"""

from __future__ import annotations

import logging
import subprocess
import time

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

log = logging.getLogger(__name__)


class QuietSlurmInfoWatcher(SlurmInfoWatcher):
    warned = False  # per process: one warning for every watcher and poll

    def update(self) -> None:  # submitit's InfoWatcher.update with sacct's stderr captured
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            result = subprocess.run(command, capture_output=True, timeout=60)
            failure = None if result.returncode == 0 else result.stderr.decode(errors="replace").strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            result, failure = None, str(error)
        if failure is None:
            self._info_dict.update(self.read_info(result.stdout))
        elif not QuietSlurmInfoWatcher.warned:
            QuietSlurmInfoWatcher.warned = True
            lines = failure.splitlines()
            log.warning("sacct does not answer (%s): this cluster may have no job accounting. Job states come from "
                        "squeue and the jobs' result files instead. (Shown once.)",
                        lines[-1] if lines else f"exit {result.returncode}")
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


def install() -> None:
    """Make every ``SlurmJob`` of this process poll through a :class:`QuietSlurmInfoWatcher`."""
    if not isinstance(SlurmJob.watcher, QuietSlurmInfoWatcher):
        SlurmJob.watcher = QuietSlurmInfoWatcher(delay_s=600)
