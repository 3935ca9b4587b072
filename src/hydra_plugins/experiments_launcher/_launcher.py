"""``ClusterLauncher``: Hydra's Slurm launcher (hydra-submitit-launcher 1.2) that says what Slurm says.

It submits the sweep as its plugin does (one job array), then, instead of waiting silently:

- before submitting, checks the request against the partition's nodes (``_preflight``) and turns an
  sbatch refusal into one paragraph naming the setting;
- while waiting, logs the Slurm job id, where each job's stdout/stderr is, and a line with how many
  jobs pend (and why), run and have finished, whenever that changes and every ``progress_every_s``;
- stops the sweep (cancelling its jobs) on a pending reason that never clears (``_queue.stuck_reason``);
- records a job that ends without a result (cancelled, killed, out of memory, node failure, time
  limit without requeue) as a failed job: ``failure.txt`` in its folder with the command that
  resumes it, and ``inf`` for the sweeper, so the other jobs' results still count;
- warns once where sacct does not answer (``_sacct``);
- cancels its jobs when the sweep is interrupted (Ctrl-C);
- runs a job of several tasks (``hydra.launcher.tasks_per_node`` x ``nodes``) as one distributed run: every
  task trains the job's one model (``experiments.distributed`` starts the process group from Slurm's
  environment), rank 0 writes the job's folder (the others get ``distributed_run.quiet_rank``), and the
  job's result is rank 0's.

The instance is also what each job runs (submitit pickles it), so this module must import in the
jobs: the project's ``src/`` is installed (``pip install .`` or ``-e .``) or on ``PYTHONPATH``.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

from ._preflight import check_request
from ._queue import TERMINAL, QueueError, progress_line, read_queue, stuck_reason
from ._resume import job_dir_and_resume_command

log = logging.getLogger(__name__)

# Over in squeue without a result file this long: lost. A completed job's result file may take a while to show
# on a network file system; a preempted job or one whose node failed is often requeued by Slurm (JobRequeue).
LOST_AFTER_S = {"COMPLETED": 15.0, "PREEMPTED": 120.0, "NODE_FAIL": 120.0}
LOST_AFTER_DEFAULT_S = 5.0
GONE_AFTER_S = 60.0  # not listed by a squeue that answers, without a result file: lost

ENDED = {  # Slurm's end state of a job without a result -> why, in words
    "CANCELLED": "it was cancelled (scancel, or an administrator)",
    "TIMEOUT": "it reached its time limit (hydra.launcher.timeout_min={timeout_min}) and was not requeued "
               "(hydra.launcher.max_num_timeout={max_num_timeout})",
    "OUT_OF_MEMORY": "it ran out of memory: raise hydra.launcher.mem_gb (now {mem_gb})",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node failed to boot",
    "PREEMPTED": "it was preempted and not requeued",
    "DEADLINE": "it reached its deadline",
    "FAILED": "its process ended with an error before reporting a result (see its stderr)",
}
SBATCH_SAYS = {  # sbatch's refusal -> the setting it is about
    "More processors requested": "cpus_per_task", "Memory specification": "mem_gb", "time limit": "timeout_min",
    "Invalid partition": "partition", "node count": "nodes", "Invalid generic resource": "gpus_per_node",
    "Invalid account": "account", "Invalid qos": "qos", "Requested node configuration is not available":
    "cpus_per_task, mem_gb or gpus_per_node",
}


def log_files(folder: Path, slurm_id: str, array: bool) -> str:
    """Where submitit puts a job's stdout/stderr: ``<sweep>/.submitit/<id>_<task>/<id>_<task>_0_log.out|err``."""
    name = f"{slurm_id}_<task>" if array else slurm_id
    return f"{folder / name / name}_0_log.out (and .err)"


def stop_sweep(message: str) -> None:
    """The sweep cannot go on: one paragraph, exit 1."""
    log.error(message)
    raise SystemExit(1)


class ClusterLauncher(SlurmLauncher):
    def __init__(self, **params: Any) -> None:
        self.progress_every_s = float(params.pop("progress_every_s", 60.0))
        self.poll_every_s = float(params.pop("poll_every_s", 5.0))
        super().__init__(**params)

    # ------------------------------------------------------------------------------- in the job
    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> JobReturn:
        """One task of a job: submitit_slurm's, except that a task of rank > 0 of a distributed job writes no
        ``.hydra/`` and no log file into the job's folder (rank 0 does)."""
        import submitit

        from experiments.distributed import launch
        from experiments.distributed_run import quiet_rank

        Singleton.set_state(singleton_state)
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id
            sweep_config.hydra.job.num = job_num
        where = launch()
        if where is not None and where.rank > 0:
            quiet_rank(sweep_config, where.rank)
        return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                       job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")

    # ---------------------------------------------------------------------------------- submitting
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        from ._sacct import install as quiet_sacct

        assert self.config is not None and len(job_overrides) > 0
        quiet_sacct()
        problem = check_request(self.params)
        if problem:
            stop_sweep(problem)
        executor = self.executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # hydra.sweep.mode, as submitit's own launcher honours it
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        job_params: List[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        submitted = time.time()
        try:
            jobs = executor.map_array(self, *zip(*job_params))
        except submitit.core.utils.FailedJobError as error:
            stop_sweep(self.refusal(str(error)))
        slurm_id = jobs[0].job_id.split("_")[0]
        log.info("submitted %d job(s) as Slurm job %s on partition %s; follow them with: squeue -r -j %s. Each "
                 "job's stdout/stderr: %s", len(jobs), slurm_id, self.params.get("partition"), slurm_id,
                 log_files(jobs[0].paths.stdout.parent.parent, slurm_id, len(jobs) > 1))
        try:
            lost = self.wait(jobs, slurm_id)
        except KeyboardInterrupt:
            subprocess.run(["scancel", slurm_id], capture_output=True)
            log.error("interrupted: cancelled Slurm job %s (scancel %s); each job that had started writes a "
                      "checkpoint, and its failure.txt says how to resume", slurm_id, slurm_id)
            raise SystemExit(130) from None
        return [self.collect(job, list(overrides), idx, lost.get(job.job_id), submitted)
                for idx, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx)]

    def executor(self):
        """submitit's executor with the launcher settings, as the plugin builds it."""
        import submitit

        params = dict(self.params)  # without progress_every_s and poll_every_s (ours: __init__)
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
        return executor

    def refusal(self, error: str) -> str:
        said = " ".join(error.split())
        keys = [key for text, key in SBATCH_SAYS.items() if text.lower() in said.lower()]
        asked = ", ".join(f"{k}={self.params.get(k)}" for k in ("partition", "cpus_per_task", "mem_gb",
                                                                   "gpus_per_node", "nodes", "timeout_min"))
        what = (f"change hydra.launcher.{keys[0]}" if keys else
                "change the hydra.launcher.* setting sbatch's words are about")
        return (f"Slurm refused the sweep's jobs: {said[-400:]}. Asked for: {asked}; {what} (sinfo -o '%P %c %m %G "
                f"%l' lists what each partition offers).")

    # ------------------------------------------------------------------------------------ waiting
    def wait(self, jobs: list, slurm_id: str) -> Dict[str, str]:
        """Until every job has a result or is over without one; returns the latter: job id -> Slurm state."""
        lost: Dict[str, str] = {}
        over_since: Dict[str, float] = {}
        said, said_at, next_poll, queue_failed = "", 0.0, 0.0, ""
        while True:
            open_jobs = [j for j in jobs if j.job_id not in lost and not j.paths.result_pickle.exists()]
            if not open_jobs:
                break
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + self.poll_every_s
                try:
                    queue, queue_failed = read_queue(slurm_id), ""
                except QueueError as error:
                    if not queue_failed:
                        log.warning("squeue does not answer (%s); still waiting for the jobs' results", error)
                    queue, queue_failed = None, str(error)
                for job in open_jobs:
                    state = self.end_state(job, queue)
                    if state is None:
                        over_since.pop(job.job_id, None)
                    elif now - over_since.setdefault(job.job_id, now) >= (
                            GONE_AFTER_S if state == "" else LOST_AFTER_S.get(state, LOST_AFTER_DEFAULT_S)):
                        lost[job.job_id] = state or job.watcher.get_state(job.job_id, mode="force")
                        log.warning("Slurm job %s ended without a result (%s)", job.job_id, lost[job.job_id])
                if queue:
                    self.stop_if_stuck(slurm_id, queue)
                    states = {j.job_id: queue[j.job_id] for j in open_jobs if j.job_id in queue}
                    line = progress_line(slurm_id, states, len(jobs) - len(open_jobs), len(jobs))
                    if line != said or now - said_at >= self.progress_every_s:
                        log.info(line)
                        said, said_at = line, now
            time.sleep(min(1.0, self.poll_every_s) if len(open_jobs) <= 100 else self.poll_every_s)  # file checks
        log.info("Slurm job %s: all %d finished%s", slurm_id, len(jobs),
                 f" ({len(lost)} without a result: " + ", ".join(f"{k} {v}" for k, v in lost.items()) + ")"
                 if lost else "")
        return lost

    @staticmethod
    def end_state(job, queue: Optional[Dict[str, Tuple[str, str]]]) -> Optional[str]:
        """A job over without a result: its Slurm state ("" if squeue no longer lists it); else None."""
        if queue is None:  # no squeue: sacct, if there is accounting
            return job.watcher.get_state(job.job_id) if job.watcher.is_done(job.job_id) else None
        if job.job_id not in queue:
            return ""
        state = queue[job.job_id][0]
        return state if state in TERMINAL else None

    def stop_if_stuck(self, slurm_id: str, queue: Dict[str, Tuple[str, str]]) -> None:
        for job_id, (state, reason) in sorted(queue.items()):
            advice = stuck_reason(reason, self.params) if state.startswith("PENDING") else None
            if advice:
                subprocess.run(["scancel", slurm_id], capture_output=True)
                stop_sweep(f"Slurm job {job_id} cannot start: it pends with reason '{reason}', which waiting does not "
                           f"clear: {advice}. The sweep's jobs were cancelled (Slurm job {slurm_id}).")

    # ----------------------------------------------------------------------------------- results
    def collect(self, job, overrides: List[str], idx: int, lost: Optional[str], submitted: float) -> JobReturn:
        """The job's own result; for a job without one, a failed job (failure.txt) with ``inf``."""
        import submitit

        if lost is not None and job.paths.result_pickle.exists():  # it came after all (a slow file system)
            lost = None
        if lost is None:
            try:
                return job.task(0).results()[0]  # a distributed job's result is rank 0's
            except submitit.core.utils.UncompletedJobError as error:  # FailedJobError: it raised outside train.py
                lost, why = "FAILED", f"it raised before or after train.py's own error handling: {last_error(error)}"
        else:
            why = ENDED.get(lost, "Slurm no longer lists it" if lost in ("", "UNKNOWN") else f"state {lost}")
            why = why.format(**{k: self.params.get(k) for k in ("timeout_min", "max_num_timeout", "mem_gb")})
        job_dir, command = self.job_dir_and_resume_command(overrides, idx)
        record_lost_job(job_dir, f"Slurm job {job.job_id} ended without a result: {why} (state {lost or 'gone'}). "
                        f"Its stdout/stderr: {job.paths.stdout} and {job.paths.stderr}. Resume with: {command}",
                        job.job_id, lost or "gone", submitted)
        ret = JobReturn(overrides=overrides, working_dir=str(job_dir), task_name=str(self.config.hydra.job.name),
                        status=JobStatus.COMPLETED)
        ret.return_value = math.inf  # a failed job, as train.py's own failures return to the sweeper
        return ret

    def job_dir_and_resume_command(self, overrides: List[str], idx: int) -> Tuple[Path, str]:
        """The job's folder and the command that resumes it, from the job's config as the job composes it."""
        return job_dir_and_resume_command(self, overrides, idx)


def record_lost_job(job_dir: Path, message: str, job_id: str, state: str, submitted: float) -> None:
    """``failure.txt`` for a job that ended without a result. Where the job wrote its own during this
    sweep (SIGTERM: its checkpoint and the resume command), that one is kept, with Slurm's state added."""
    from experiments.runs import FAILURE_FILE

    failure = job_dir / FAILURE_FILE
    job_dir.mkdir(parents=True, exist_ok=True)
    if failure.is_file() and failure.stat().st_mtime >= submitted:
        failure.write_text(failure.read_text().rstrip("\n") + f" (Slurm job {job_id}: {state}.)\n")
        message = failure.read_text().strip()
    else:
        failure.write_text(message + "\n")
    log.error("%s: %s", job_dir.name, message)


def last_error(error: Exception) -> str:
    """The exception line of the trace submitit puts into a FailedJobError."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    dashes = [i for i, line in enumerate(lines) if set(line.strip()) == {"-"}]
    trace = lines[dashes[0] + 1:dashes[1]] if len(dashes) >= 2 else lines
    return trace[-1].strip() if trace else str(error)[:300]
