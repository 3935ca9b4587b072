"""The Slurm launcher's parts that need no Slurm: the resume command a sweep job prints, the pending
reasons that never clear, the sinfo pre-flight, the quiet sacct watcher, the progress line, the
launcher as Hydra instantiates it, and a job's side of a requeue (submitit's signal caught at a
step boundary, no requeue left, a requeued job resuming). The Slurm round trips are in test_slurm.py."""

from __future__ import annotations

import logging
import math
import os
import pickle
import shlex
import signal

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from conftest import CONF, read_events
from experiments.errors import Interrupted
from experiments.failures import resume_command, run_and_report
from experiments.guards import InterruptGuard
from experiments.slurm import requeue_or_fail, requeue_signals
from experiments.training import train
from hydra_plugins.experiments_launcher._preflight import (check_request, count_gpus, parse_sinfo, parse_time_limit,
                                                          request_problems)
from hydra_plugins.experiments_launcher._queue import parse_squeue, progress_line, stuck_reason

submitit = pytest.importorskip("submitit")
PARAMS = {"partition": "debug", "cpus_per_task": 4, "tasks_per_node": 1, "mem_gb": 16, "gpus_per_node": 0,
          "nodes": 1, "timeout_min": 60, "max_num_timeout": 3}


def hydra_config(overrides, sweep_dir, cwd):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
        cfg.hydra.runtime.cwd = str(cwd)
        cfg.hydra.runtime.output_dir = str(sweep_dir / "job")
    return cfg


# --------------------------------------------------------------------------------- the resume command
@pytest.mark.parametrize("folder", ["sweep", "my sweeps/a,b=c"])
def test_a_sweep_job_resumes_with_the_sweep_command_from_hydras_record(tmp_path, folder):
    """Inside a Slurm job sys.argv is submitit's: the command comes from the sweep's multirun.yaml,
    with the sweep's own overrides (not the job's point of the grid), its folder, trainer.resume=auto."""
    sweep = tmp_path / folder
    sweep.mkdir(parents=True)
    sweep_cfg = hydra_config(["init=normal"], sweep, tmp_path)
    with open_dict(sweep_cfg):
        sweep_cfg.hydra.overrides.task = ["init=normal,xavier", "optim.lr=0.1", "trainer.resume=auto"]
        sweep_cfg.hydra.overrides.hydra = ["hydra/launcher=cluster", "hydra.launcher.partition=debug",
                                           f"hydra.sweep.dir={sweep}"]
    OmegaConf.save(sweep_cfg, sweep / "multirun.yaml")
    job_cfg = hydra_config(["init=xavier", "optim.lr=0.1"], sweep, tmp_path)
    HydraConfig.instance().set_config(job_cfg)
    try:
        words = shlex.split(resume_command(sweep / "init=xavier,optim.lr=0.1"))
    finally:
        HydraConfig.instance().cfg = None
    assert words[:3] == ["python", "train.py", "-m"]
    assert words[3:-2] == ["init=normal,xavier", "optim.lr=0.1", "hydra/launcher=cluster",
                           "hydra.launcher.partition=debug"]
    assert words[-1] == "trainer.resume=auto"
    where = OverridesParser.create().parse_override(words[-2])  # Hydra reads the folder back as it is
    assert (where.key_or_group, where.value()) == ("hydra.sweep.dir", str(sweep))


# ------------------------------------------------------------------------------------ pending reasons
@pytest.mark.parametrize("reason, names", [
    ("PartitionConfig", ["hydra.launcher.cpus_per_task=4", "hydra.launcher.mem_gb=16"]),
    ("PartitionTimeLimit", ["hydra.launcher.timeout_min=60"]),
    ("ReqNodeNotAvail, UnavailableNodes:vm", ["sinfo -R", "hydra.launcher.partition"]),
    ("Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions", ["sinfo -R"]),
    ("QOSMaxCpuPerJobLimit", ["hydra.launcher.cpus_per_task (now 4)"]),
    ("AssocMaxWallDurationPerJobLimit", ["hydra.launcher.timeout_min (now 60)"]),
    ("DependencyNeverSatisfied", ["depends on"]),
])
def test_a_reason_that_never_clears_names_the_setting(reason, names):
    advice = stuck_reason(reason, PARAMS)
    assert advice and all(n in advice for n in names), advice


@pytest.mark.parametrize("reason", ["Resources", "Priority", "BeginTime", "None", "JobArrayTaskLimit",
                                    "QOSMaxJobsPerUserLimit", "ReqNodeNotAvail, Reserved for maintenance", ""])
def test_a_reason_that_clears_by_waiting_is_no_error(reason):
    assert stuck_reason(reason, PARAMS) is None


def test_the_progress_line_counts_what_squeue_says():
    queue = parse_squeue("17_0|RUNNING|None\n17_1|PENDING|Resources\n17_2|PENDING|Resources\n17_3|PENDING|BeginTime\n"
                         "17_4|CANCELLED|None\n")
    assert queue["17_1"] == ("PENDING", "Resources")
    assert progress_line("17", queue, 2, 7) == ("Slurm job 17: 3 pending (BeginTime 1, Resources 2), 1 running, "
                                                "1 cancelled, 2 of 7 finished")


# ----------------------------------------------------------------------------------------- pre-flight
SINFO = "vm1|2|21695|(null)|1-00:00:00|idle\nvm2|8|64000|gpu:a100:2(S:0-1),gpu:v100:1|1-00:00:00|mix\n"


def test_sinfo_is_read_per_node():
    small, big = parse_sinfo(SINFO)
    assert (small.cpus, small.memory_mb, small.gpus, small.time_limit_min) == (2, 21695, 0, 1440)
    assert (big.cpus, big.gpus, big.usable) == (8, 3, True)
    assert [parse_time_limit(t) for t in ("infinite", "30:00", "2:00:00", "1-12:00:00", "45")] == [None, 30, 120,
                                                                                                   2160, 45]
    assert count_gpus("gpu:4") == 4 and count_gpus("(null)") == 0 and count_gpus("gpu:a100:2(S:0-1),mps:100") == 2


def test_a_request_above_every_node_names_the_setting_and_what_there_is():
    nodes = parse_sinfo(SINFO)
    assert request_problems(PARAMS, nodes) == []
    problems = request_problems({**PARAMS, "cpus_per_task": 16, "mem_gb": 100, "gpus_per_node": 4, "nodes": 3,
                                 "timeout_min": 2000}, nodes)
    assert [p.split(":")[0] for p in problems] == [
        "hydra.launcher.cpus_per_task=16 (x tasks_per_node=1)", "hydra.launcher.mem_gb=100",
        "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=3", "hydra.launcher.timeout_min=2000"]
    assert "at most 8 CPUs" in problems[0] and "at most 64000 MB" in problems[1]
    assert "at most 1440 minutes" in problems[4]
    drained = parse_sinfo("vm|2|21695|(null)|infinite|drain\n")
    assert "down or drained" in request_problems({**PARAMS, "cpus_per_task": 1, "mem_gb": 1}, drained)[0]


def commands(folder, **scripts):
    """A PATH holding only these shell scripts (sinfo, sbatch, ...)."""
    folder.mkdir()
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_no_slurm_here_is_said_before_anything_is_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", commands(tmp_path / "none"))
    assert "sbatch and sinfo are not on PATH" in check_request(PARAMS)
    down = "echo 'sinfo: error: Unable to contact slurm controller (connect failure)' >&2; exit 1"
    monkeypatch.setenv("PATH", commands(tmp_path / "down", sinfo=down, sbatch="exit 1"))
    message = check_request(PARAMS)
    assert "Slurm does not answer here (sinfo: sinfo: error: Unable to contact slurm controller" in message
    listing = "case \"$*\" in *-N*) ;; *) echo 'debug*'; echo gpu;; esac"  # -N -p nope: no node; -o %P: two
    monkeypatch.setenv("PATH", commands(tmp_path / "up", sinfo=listing, sbatch="exit 1"))
    assert check_request(PARAMS) == ("hydra.launcher.partition=debug: no such partition on this cluster "
                                     "(sinfo lists: debug, gpu).")


# ------------------------------------------------------------------------------------ quiet sacct
def test_a_failing_sacct_is_reported_once_and_prints_nothing_itself(capfd, caplog):
    from hydra_plugins.experiments_launcher._sacct import QuietSlurmInfoWatcher

    class NoAccounting(QuietSlurmInfoWatcher):  # sacct as on a cluster without accounting: stderr, exit 1
        def _make_command(self):
            return ["sh", "-c", "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1"]

    QuietSlurmInfoWatcher.warned = False
    watcher = NoAccounting(delay_s=600)
    watcher.register_job("17_0")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            watcher.update()
    assert watcher.num_calls == 3
    warnings = [r.getMessage() for r in caplog.records if "sacct" in r.getMessage()]
    assert len(warnings) == 1 and "accounting storage is disabled" in warnings[0]
    assert watcher.get_state("17_0", mode="cache") == "UNKNOWN"
    out, err = capfd.readouterr()
    assert "sacct" not in out + err  # sacct's own lines do not reach the terminal


# --------------------------------------------------------------------------------- the launcher itself
def test_hydra_instantiates_the_cluster_launcher_and_it_pickles(tmp_path):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=cluster", "hydra.launcher.partition=debug",
                                           "hydra.launcher.progress_every_s=5"], return_hydra_config=True)
    launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "ClusterLauncher"
    assert launcher.progress_every_s == 5 and "progress_every_s" not in launcher.params  # not passed to submitit
    assert launcher.params["max_num_timeout"] == 3  # requeued at the time limit
    assert pickle.loads(pickle.dumps(launcher)).params == launcher.params  # each job unpickles it


# -------------------------------------------------------------------------- a job's side of a requeue
@pytest.fixture
def submitit_handler(monkeypatch):
    """submitit's own USR2 handler as a Slurm job has it: its first run, max_num_timeout=0."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission
    from submitit.slurm.slurm import SlurmJobEnvironment

    monkeypatch.setenv("SLURM_JOB_ID", "17")
    delayed = DelayedSubmission(print)
    delayed.set_timeout(1, 0)
    handler = SignalHandler(SlurmJobEnvironment(), None, delayed)
    previous = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    yield handler
    signal.signal(signal.SIGUSR2, previous)


def test_outside_submitit_usr2_is_left_alone():
    assert requeue_signals() == ()


def test_the_loop_catches_submitits_signal_and_gives_it_back(submitit_handler):
    assert requeue_signals() == (signal.SIGUSR2,)
    with InterruptGuard() as interrupt:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert interrupt.signum == signal.SIGUSR2 and interrupt.name == "SIGUSR2"  # a flag, checked at a step
    assert signal.getsignal(signal.SIGUSR2) == submitit_handler.checkpoint_and_try_requeue


def test_no_requeue_left_fails_naming_the_time_limit_and_the_resume_command(submitit_handler, tmp_path):
    def stopped(cfg, run_dir, choices):
        raise Interrupted(f"stopped by SIGUSR2 at step 40; checkpoint written to {run_dir}/checkpoints/last.pt.",
                          signal.SIGUSR2, run_dir)

    assert run_and_report(stopped, None, tmp_path, {}, multirun=True) == math.inf  # the sweep goes on
    failure = (tmp_path / "failure.txt").read_text()
    assert failure.startswith("RunFailed: reached its time limit") and "timed-out too many times" in failure
    assert "stopped by SIGUSR2 at step 40" in failure and "hydra.launcher.timeout_min" in failure
    assert "Resume with: python train.py" in failure and "trainer.resume=" in failure
    assert "RunFailed" in type(requeue_or_fail(Interrupted("x.", signal.SIGUSR2, tmp_path), "cmd")).__name__


def test_a_requeued_job_continues_from_its_checkpoint_by_itself(make_cfg, tmp_path, monkeypatch):
    """SLURM_RESTART_COUNT=1 and no trainer.resume: the run folder's last.pt is used, weights_init.pt is
    kept, and the events after the checkpoint are not doubled."""
    first = make_cfg(["data.n_train=64", "trainer.epochs=1", "telemetry.loss.every=1"])
    train(first, tmp_path)
    init = (tmp_path / "weights_init.pt").read_bytes()
    init_written = (tmp_path / "weights_init.pt").stat().st_mtime_ns  # same seed, same bytes: the time tells
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    again = make_cfg(["data.n_train=64", "trainer.epochs=2", "telemetry.loss.every=1"])
    train(again, tmp_path)
    assert again.trainer.resume == "auto" and (tmp_path / "weights_init.pt").read_bytes() == init
    assert (tmp_path / "weights_init.pt").stat().st_mtime_ns == init_written  # kept, not written again
    assert [e.step for e in read_events(tmp_path).Scalars("loss/train")] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
