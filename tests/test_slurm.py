"""Sweeps on a real Slurm (``hydra/launcher=cluster``), marked ``slurm``.

They run where ``sbatch`` answers, e.g. after ``sudo scripts/local_slurm.sh start`` (a single-node test
cluster with accounting), and are skipped otherwise, with the reason. The partition is the cluster's
default one, or ``EXPERIMENTS_SLURM_PARTITION``. The jobs inherit this process's environment (sbatch
exports it), so they import this checkout's ``src/`` as ``run_cli`` sets it.

They are marked ``slow`` too (each takes 10 s to over a minute), so the default run leaves them out:
``python -m pytest -m slurm`` runs them (``.ci/run`` does, after starting the local cluster).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, read_events, run_cli
from experiments.config import compose_config
from experiments.training import train

SCRIPT = ROOT / "scripts" / "local_slurm.sh"
SHORT = ["trainer.epochs=2", "data.n_train=200", "telemetry.histograms.enabled=false"]
GRID = ["init=normal,xavier", "model=mlp,tied"]
JOBS = {f"data.n_train=200,init={i},model={m},telemetry.histograms.enabled=False,trainer.epochs=2"
        for i in ("normal", "xavier") for m in ("mlp", "tied")}


@lru_cache(maxsize=1)
def slurm_partition() -> Optional[str]:
    """The partition to test on, if sbatch answers; None (and the reason in ``_why``) otherwise."""
    global _why
    if not shutil.which("sbatch"):
        _why = "no sbatch on PATH (start a test cluster with: sudo scripts/local_slurm.sh start)"
        return None
    partition = os.environ.get("EXPERIMENTS_SLURM_PARTITION")
    try:
        if not partition:
            out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15)
            if out.returncode != 0:
                _why = f"sinfo fails: {out.stderr.strip()[:300]} (sudo scripts/local_slurm.sh start brings up a test cluster)"
                return None
            defaults = [p.rstrip("*") for p in out.stdout.split() if p.endswith("*")]
            partition = defaults[0] if defaults else (out.stdout.split() or [None])[0]
        if not partition:
            _why = "sinfo lists no partition (is slurmctld running? sudo scripts/local_slurm.sh status)"
            return None
        # --test-only: sbatch asks the controller whether and when the job could run; nothing is queued
        probe = subprocess.run(["sbatch", "--test-only", f"--partition={partition}", "--cpus-per-task=1",
                                "--mem=1G", "--wrap", "true"], capture_output=True, text=True, timeout=15)
    except (subprocess.TimeoutExpired, OSError) as error:
        _why = f"sbatch does not answer: {error}"
        return None
    if probe.returncode != 0:
        _why = f"sbatch does not answer: {(probe.stderr or probe.stdout).strip()[:300]}"
        return None
    return partition


_why = ""


@pytest.fixture
def partition() -> str:
    p = slurm_partition()
    if p is None:
        pytest.skip(_why)
    return p


def cluster(partition: str, *extra: str) -> List[str]:
    """The launcher overrides of a test sweep: one CPU and a little memory per job, squeue every 2 s."""
    return ["hydra/launcher=cluster", f"hydra.launcher.partition={partition}", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10", "hydra.launcher.poll_every_s=2", *extra]


def sweep_folder(outputs: Path) -> Path:
    (folder,) = list((outputs / "multirun").glob("*/*"))
    return folder


def job_dirs(folder: Path) -> dict:
    return {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


# --------------------------------------------------------------------------------------- the script
def test_local_slurm_script_says_how_to_use_it():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "start|stop|status" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run it as another user")
def test_local_slurm_script_refuses_a_user_who_is_not_root(tmp_path):
    result = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(SCRIPT), "start"], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "LOCAL_SLURM_DIR": str(tmp_path / "ls")})
    assert result.returncode == 1 and "needs root" in result.stderr


def start_cli(args: List[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``run_cli`` in the background: train.py with this checkout's src/, output merged. Ctrl-C works in it
    as at a terminal, even where the tests themselves run in the background of a shell without job control
    (which starts them with SIGINT ignored, and Python then installs no KeyboardInterrupt handler)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def slurm_id_of(job_dir: Path) -> str:
    """The Slurm id of a sweep job (``17_1``), as Hydra recorded it in the job's folder."""
    return str(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.id)


def queued(job_id: str) -> List[str]:
    """The tasks of ``job_id`` that are still pending or running."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "PD,R,CG", "-j", job_id, "-o", "%i"], capture_output=True,
                         text=True)
    return out.stdout.split()


def no_accounting(tmp_path: Path) -> dict:
    """A PATH on which sacct answers as on a cluster without job accounting."""
    folder = tmp_path / "no-accounting"
    folder.mkdir()
    sacct = folder / "sacct"
    sacct.write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    sacct.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


# ----------------------------------------------------------------------------------------- sweeps
@pytest.mark.slurm
@pytest.mark.slow
def test_four_job_sweep_on_slurm(partition, tmp_path):
    """Four Slurm jobs (one array), each with its event file, weights and checkpoints; the report reads them.
    While it waits the sweep says the Slurm job id, where the logs are, and how many jobs pend, run, finished."""
    result = run_cli(["-m", *GRID, *SHORT, *cluster(partition)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout + result.stderr
    slurm_id = re.search(r"submitted 4 job\(s\) as Slurm job (\d+) on partition", said).group(1)
    assert f"squeue -r -j {slurm_id}" in said and f".submitit/{slurm_id}_<task>/{slurm_id}_<task>_0_log.out" in said
    assert re.search(rf"Slurm job {slurm_id}: \d+ pending.*, \d+ running, \d of 4 finished", said), said
    assert f"Slurm job {slurm_id}: all 4 finished" in said
    folder = sweep_folder(tmp_path / "outputs")
    jobs = job_dirs(folder)
    assert set(jobs) == JOBS
    for name, job in jobs.items():
        assert not (job / "failure.txt").exists(), (job / "failure.txt").read_text()
        (events,) = list(job.glob("events.out.tfevents.*"))
        assert events.stat().st_size > 0
        for weights in ("weights_init.pt", "weights_final.pt"):
            assert torch.load(job / weights, weights_only=True)["state_dict"]
        assert (job / "checkpoints" / "last.pt").exists()
        steps = [e.step for e in read_events(job).Scalars("loss/val")]
        assert steps == [7, 14]  # 200 examples, batch 32: 7 steps an epoch, two epochs
    # every job ran under Slurm: submitit's per-task logs, named <array id>_<task>
    logs = sorted(folder.glob(".submitit/*_*/*_log.out"))
    assert len(logs) == 4 and all("Starting with JobEnvironment" in p.read_text() for p in logs)
    report = run_cli([str(folder), "--no-figures"], script="scripts/report.py", timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (folder / "report.md").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_sweep_exits_1(partition, tmp_path):
    """lr=1e4 diverges in its Slurm job: failure.txt there, the other job finishes, the sweep exits 1."""
    result = run_cli(["-m", "optim.lr=0.01,1e4", "trainer.epochs=1", "data.n_train=200", *cluster(partition)],
                     cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    folder = sweep_folder(tmp_path / "outputs")
    jobs = job_dirs(folder)
    assert set(jobs) == {"data.n_train=200,optim.lr=0.01,trainer.epochs=1",
                         "data.n_train=200,optim.lr=10000.0,trainer.epochs=1"}
    ok, bad = jobs["data.n_train=200,optim.lr=0.01,trainer.epochs=1"], jobs["data.n_train=200,optim.lr=10000.0,trainer.epochs=1"]
    assert (ok / "weights_final.pt").exists() and not (ok / "failure.txt").exists()
    assert "diverged" in (bad / "failure.txt").read_text()
    assert bad.name in result.stdout + result.stderr  # the sweep's last words name the failed job



# ------------------------------------------------------------------------------ several tasks per job
@pytest.mark.slurm
@pytest.mark.slow
def test_a_job_of_two_tasks_is_one_distributed_run_equal_to_one_process(partition, tmp_path):
    """hydra.launcher.tasks_per_node=2: Slurm starts two tasks, which form one process group from Slurm's
    environment (no wrapper script) and train one model: one job folder that rank 0 writes, final weights
    those of the same run in one process (to rounding: the gradients are averaged in another order)."""
    args = ["model=tied_lm", "data=zipf_text", "data.n_train=200", "data.n_val=64", "data.batch_size=32",
            "model.width=8", "model.hidden=16", "data.vocab=50", "trainer.epochs=2", "optim=adam", "optim.lr=0.01"]
    one = run_cli([*args, f"hydra.run.dir={tmp_path / 'one'}"], timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    result = run_cli(["-m", *args, *cluster(partition, "hydra.launcher.tasks_per_node=2"),
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = job_dirs(tmp_path / "sweep").values()
    log = (job / "train.log").read_text()
    assert "in 2 processes (gloo, 16 rows of each batch of 32 per process)" in log, log[-3000:]
    assert [p.name for p in (job / ".hydra").iterdir()] and not (job / "failure.txt").exists()
    assert len(list(job.glob("events.out.tfevents.*"))) == 1  # rank 0's
    ranks = sorted(tmp_path.glob("sweep/.submitit/*/*_log.out"))
    assert len(ranks) == 2 and all("Starting with JobEnvironment" in p.read_text() for p in ranks)
    final, expected = (torch.load(d / "weights_final.pt", weights_only=True)["state_dict"] for d in (job, tmp_path / "one"))
    assert final.keys() == expected.keys()
    for name in final:
        assert torch.allclose(final[name], expected[name], rtol=1e-5, atol=1e-6), name
    got, want = ([e.value for e in read_events(d).Scalars("loss/val")] for d in (job, tmp_path / "one"))
    assert got == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------ requeue and resume
class BeginTimeLifter(threading.Thread):
    """A requeued job waits ~2 min (pending reason BeginTime) before Slurm starts it again: start the
    requeued jobs submitted from ``folder`` at once (every 2 s, while the test runs)."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder, self.stop, self.lifted = str(folder), threading.Event(), []

    def run(self) -> None:
        while not self.stop.wait(2):
            out = subprocess.run(["squeue", "-h", "-r", "-t", "PD", "-o", "%i|%r|%Z"], capture_output=True, text=True)
            for line in out.stdout.splitlines():
                job_id, reason, workdir = (line.split("|") + ["", ""])[:3]
                if reason == "BeginTime" and workdir.startswith(self.folder):
                    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
                    self.lifted.append(job_id)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_job_at_its_time_limit_is_requeued_and_continues_from_its_checkpoint(partition, tmp_path, caplog):
    """timeout_min=1, signal_delay_s=20: Slurm sends USR2 10-40 s into each run (it checks every 30 s and
    signals up to 60 s early); the job writes its checkpoint at a step boundary and is requeued; the
    requeued job (SLURM_RESTART_COUNT >= 1) resumes from last.pt by itself. Its final weights equal those
    of an uninterrupted Slurm job with the same settings (run at the same time, on the other CPU) bit for
    bit, and each TensorBoard step is there once with the same values. The training is sized to take
    about 55 s on one CPU of this machine (measured first), so that at least one requeue happens."""
    base = ["data.n_train=20000", "trainer.checkpoint_every=0", "telemetry.histograms.enabled=false", "init=xavier"]
    with caplog.at_level(logging.INFO, logger="experiments.training"):  # an epoch's time, as the loop logs it
        train(compose_config([*base, "trainer.epochs=6"]), tmp_path / "calibration")
    seconds = sorted(float(m.group(1)) for m in map(re.compile(r"epoch \d+/6 .*\((\d+\.\d+)s\)$").match,
                                                      caplog.messages) if m)
    assert len(seconds) == 6, caplog.messages
    epochs = min(800, max(100, math.ceil(55 / max(seconds[3], 1e-3))))
    long = [*base, f"trainer.epochs={epochs}"]
    reference = ["-m", *long, *cluster(partition), f"hydra.sweep.dir={tmp_path / 'reference'}"]
    requeued = ["-m", *long, *cluster(partition, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=20",
                                      "hydra.launcher.max_num_timeout=5"), f"hydra.sweep.dir={tmp_path / 'requeued'}"]
    lifter = BeginTimeLifter(tmp_path)
    lifter.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda args: run_cli(args, cwd=tmp_path, timeout=600), [reference, requeued]))
    finally:
        lifter.stop.set()
    for result in runs:
        assert result.returncode == 0, result.stdout + result.stderr
    (ref,), (job,) = job_dirs(tmp_path / "reference").values(), job_dirs(tmp_path / "requeued").values()
    log = (job / "train.log").read_text()
    assert "stopped by SIGUSR2 at step" in log and "Requeued job" in log, log[-3000:]
    assert "restarted (1): continuing from this run folder's last checkpoint" in log and "resuming from" in log
    assert len(list(job.glob("events.out.tfevents.*"))) >= 2  # one per run
    final, expected = (torch.load(d / "weights_final.pt", weights_only=True)["state_dict"] for d in (job, ref))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    for tag in ("loss/train", "loss/val"):
        got, want = ([(e.step, e.value) for e in read_events(d).Scalars(tag)] for d in (job, ref))
        assert got == want, tag  # each step once, the same values (the checkpoint holds the monitor's state)
    assert not (job / "failure.txt").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_a_job_of_two_tasks_at_its_time_limit_is_requeued_and_continues_exactly(partition, tmp_path):
    """As above, for a distributed job (tasks_per_node=2): Slurm signals both tasks, they stop at the same step,
    rank 0 writes the checkpoint and requeues the job, both tasks of the requeued job resume from it. Final
    weights and curves equal those of the same job run uninterrupted (after it: the node has 2 CPUs). The run
    is sized from its epoch time in a first short job to train for about 55 s."""
    base = ["data.n_train=20000", "trainer.checkpoint_every=0", "telemetry.histograms.enabled=false", "init=xavier",
            "data.batch_size=64"]
    calibration = run_cli(["-m", *base, "trainer.epochs=4", *cluster(partition, "hydra.launcher.tasks_per_node=2"),
                           f"hydra.sweep.dir={tmp_path / 'calibration'}"], cwd=tmp_path, timeout=600)
    assert calibration.returncode == 0, calibration.stdout + calibration.stderr
    (job,) = job_dirs(tmp_path / "calibration").values()
    seconds = sorted(float(m.group(1)) for m in re.finditer(r"epoch \d+/4 .*\((\d+\.\d+)s\)", (job / "train.log").read_text()))
    assert len(seconds) == 4
    epochs = min(800, max(60, math.ceil(55 / max(seconds[2], 1e-3))))
    tasks = "hydra.launcher.tasks_per_node=2"
    requeued = ["-m", *base, f"trainer.epochs={epochs}",
                *cluster(partition, tasks, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=20",
                         "hydra.launcher.max_num_timeout=5"), f"hydra.sweep.dir={tmp_path / 'requeued'}"]
    lifter = BeginTimeLifter(tmp_path)
    lifter.start()
    try:
        result = run_cli(requeued, cwd=tmp_path, timeout=600)
    finally:
        lifter.stop.set()
    assert result.returncode == 0, result.stdout + result.stderr
    reference = run_cli(["-m", *base, f"trainer.epochs={epochs}", *cluster(partition, tasks),
                         f"hydra.sweep.dir={tmp_path / 'reference'}"], cwd=tmp_path, timeout=600)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    (ref,), (job,) = job_dirs(tmp_path / "reference").values(), job_dirs(tmp_path / "requeued").values()
    log = (job / "train.log").read_text()
    assert re.search(r"stopped by SIGUSR2 \(caught by [12] of the 2 processes\) at step", log), log[-3000:]
    assert "Requeued job" in log and "resuming from" in log
    final, expected = (torch.load(d / "weights_final.pt", weights_only=True)["state_dict"] for d in (job, ref))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    for tag in ("loss/train", "loss/val"):
        got, want = ([(e.step, e.value) for e in read_events(d).Scalars(tag)] for d in (job, ref))
        assert got == want, tag
    assert not (job / "failure.txt").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_a_cancelled_job_leaves_a_checkpoint_and_the_command_that_resumes_it(partition, tmp_path):
    """scancel of one running job of a two-job sweep, on a cluster whose sacct fails (no accounting): the
    other job finishes, the sweep exits 1 (no UncompletedJobError, no hang, one sacct warning at most), and
    the cancelled job's failure.txt holds its checkpoint and the command that resumes the sweep (Hydra's
    record of the command line, not submitit's); that command finishes it."""
    args = ["-m", "trainer.epochs=1,15", "data.n_train=20000", "telemetry.histograms.enabled=false",
            *cluster(partition), f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    sweep = start_cli(args, tmp_path, **no_accounting(tmp_path))
    long = tmp_path / "sweep" / "data.n_train=20000,telemetry.histograms.enabled=False,trainer.epochs=15"
    wait_for(long / "checkpoints" / "last.pt", sweep)  # its first epoch is done: it is training
    subprocess.run(["scancel", slurm_id_of(long)], check=True)
    said, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, said
    assert "UncompletedJobError" not in said and said.count("sacct") <= 1, said
    short = tmp_path / "sweep" / "data.n_train=20000,telemetry.histograms.enabled=False,trainer.epochs=1"
    assert (short / "weights_final.pt").exists() and not (short / "failure.txt").exists()
    failure = (long / "failure.txt").read_text()
    assert "stopped by SIGTERM at step" in failure and str(long / "checkpoints" / "last.pt") in failure
    assert "CANCELLED" in failure and long.name in said
    command = shlex.split(failure.split("Resume with: ")[1].split(" (Slurm job")[0])
    assert command[:3] == ["python", "train.py", "-m"] and "trainer.epochs=1,15" in command
    assert command[-2:] == [f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.resume=auto"]
    again = run_cli(command[2:], cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (long / "weights_final.pt").exists() and not (long / "failure.txt").exists()
    steps = [e.step for e in read_events(long).Scalars("loss/val")]
    assert steps == [625 * epoch for epoch in range(1, 16)]  # each epoch's validation once


# ---------------------------------------------------------------------------------- no silent waiting
@pytest.mark.slurm
@pytest.mark.slow
def test_a_request_no_node_can_satisfy_fails_with_the_setting_to_lower(partition, tmp_path):
    """Above every node's CPUs or memory: refused before anything is submitted, naming the setting. A job
    that pends for a reason waiting never clears (here a dependency on a failed job) is cancelled, and
    the sweep stops naming the reason."""
    nodes = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%c %m"], capture_output=True, text=True)
    cpus, memory = (max(int(line.split()[i].rstrip("+")) for line in nodes.stdout.splitlines()) for i in (0, 1))
    for setting in (f"hydra.launcher.cpus_per_task={cpus + 1}", f"hydra.launcher.mem_gb={memory // 1024 + 2}"):
        started = time.time()
        result = run_cli(["-m", "trainer.epochs=1", *cluster(partition, setting)], cwd=tmp_path, timeout=120)
        said = result.stdout + result.stderr
        assert result.returncode == 1 and setting in said and "nothing was submitted" in said, said
        assert "Traceback" not in said and time.time() - started < 30
    failed = subprocess.run(["sbatch", "--parsable", f"--partition={partition}", "--mem=100M", "--output=/dev/null",
                             "--wrap", "false"],
                            capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    while queued(failed):
        time.sleep(0.5)
    depends = f"+hydra.launcher.additional_parameters.dependency='afterok:{failed}'"
    result = run_cli(["-m", "trainer.epochs=1", *cluster(partition), depends], cwd=tmp_path, timeout=120)
    said = result.stdout + result.stderr
    assert result.returncode == 1 and "DependencyNeverSatisfied" in said and "were cancelled" in said, said
    slurm_id = re.search(r"as Slurm job (\d+)", said).group(1)
    assert not queued(slurm_id)


@pytest.mark.slurm
@pytest.mark.slow
def test_ctrl_c_of_the_sweep_cancels_its_jobs(partition, tmp_path):
    """Ctrl-C while the sweep waits: its Slurm jobs are cancelled (not left running), and the running job
    writes its checkpoint and the command that resumes it."""
    args = ["-m", "trainer.epochs=200", "data.n_train=20000", "telemetry.histograms.enabled=false",
            *cluster(partition), f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    sweep = start_cli(args, tmp_path)
    (job,) = [tmp_path / "sweep" / "data.n_train=20000,telemetry.histograms.enabled=False,trainer.epochs=200"]
    wait_for(job / "checkpoints" / "last.pt", sweep)
    sweep.send_signal(signal.SIGINT)
    said, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, said
    slurm_id = slurm_id_of(job)
    assert f"cancelled Slurm job {slurm_id}" in said
    deadline = time.time() + 30
    while queued(slurm_id) and time.time() < deadline:
        time.sleep(0.5)
    assert not queued(slurm_id)
    while not (job / "failure.txt").exists() and time.time() < deadline:  # the job's SIGTERM handler writes it
        time.sleep(0.5)
    assert "stopped by SIGTERM" in (job / "failure.txt").read_text()
