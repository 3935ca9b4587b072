"""Local sweeps (``hydra/launcher=joblib``, ``submitit_local``) stopped by Ctrl-C or SIGTERM: the real
``python train.py -m ...`` process gets the signal; every running job writes its checkpoint, no worker
process survives it, and the one printed resume command finishes exactly the jobs that were missing,
bit-identical to uninterrupted jobs."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Set

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT, read_events, run_cli
from experiments.checkpoints import load
from experiments.config import compose_config
from experiments.training import train

TIED = ["model=tied", "data.n_val=200", "telemetry.histograms.enabled=false", "telemetry.loss.every=7"]
LONG = 19200  # data.n_train of a long job: 600 steps an epoch


def start_cli(args: List[str], cwd: Path, new_session: bool = False) -> subprocess.Popen:
    """train.py in the background, output merged, with SIGINT's default disposition (a process started
    in the background of a shell without job control inherits SIGINT ignored); ``new_session``: its own
    process group, which a terminal's Ctrl-C signals as a whole."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=new_session,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the sweep never got there"
        time.sleep(0.05)


def descendants(pid: int) -> Set[int]:
    """Every process below ``pid`` now (from /proc)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an ended process whose parent has not reaped it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def assert_none_left(pids: Set[int], timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while any(running(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    left = {p: Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:200] for p in pids if running(p)}
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes of the sweep left running: {left}"


def resume_commands(output: str) -> Set[str]:
    return {line.split("Resume with: ")[1].split("  (")[0] for line in output.splitlines() if "Resume with: " in line}


def job(sweep: Path, n_train: int, seed: int) -> Path:
    (folder,) = sweep.glob(f"data.n_train={n_train},*,trainer.seed={seed}")
    return folder


def seed_of(folder: Path) -> int:
    return int(folder.name.rsplit("trainer.seed=", 1)[1])


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    final = torch.load(run_dir / "weights_final.pt", weights_only=True)["state_dict"]
    expected = torch.load(reference / "weights_final.pt", weights_only=True)["state_dict"]
    assert final.keys() == expected.keys()
    for name in final:
        assert torch.equal(final[name], expected[name]), (run_dir.name, name)  # bit for bit


@pytest.mark.slow
def test_sigterm_stops_a_joblib_sweep_and_its_command_finishes_only_the_missing_jobs(tmp_path):
    """Six jobs on two workers: three short ones finish, two long ones run, one waits. SIGTERM to the
    sweep's process: both running jobs write their checkpoint, the waiting one never starts, the sweep
    exits 143 within seconds naming one resume command, and no worker is left. That command leaves the
    finished jobs as they were, continues the two from their checkpoints and runs the third: all three
    end with an uninterrupted job's weights, bit for bit, and each logged step once."""
    sweep = tmp_path / "sweep"
    grid = [f"data.n_train=160,{LONG}", "trainer.seed=1,2,3", "trainer.epochs=30", *TIED]
    proc = start_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *grid, f"hydra.sweep.dir={sweep}"],
                     tmp_path)
    long_jobs = lambda: [p for p in sweep.glob(f"data.n_train={LONG},*") if list(p.glob("events.out.*"))]  # noqa
    wait_until(lambda: len(long_jobs()) == 2, proc)
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert_none_left(workers)
    assert "Traceback" not in output

    finished = [job(sweep, 160, seed) for seed in (1, 2, 3)]
    stopped = sorted(long_jobs())
    (never,) = {1, 2, 3} - {seed_of(p) for p in stopped}
    assert len(list(sweep.iterdir())) == 6  # 5 job folders and multirun.yaml: the third long job never started
    summary = output[output.index("sweep stopped by SIGTERM: "):]
    assert summary.startswith(f"sweep stopped by SIGTERM: of its 6 job(s) in {sweep}, 2 stopped with a checkpoint "
                              f"(each one's failure.txt says at which step), 3 had finished, 1 never started. "
                              f"Resume with: python train.py -m ")
    (command,) = resume_commands(output)  # one command, however many jobs say it
    for folder in stopped:
        assert "stopped by SIGTERM at step" in (folder / "failure.txt").read_text()
        assert load(folder / "checkpoints" / "last.pt")["step"] < 30 * LONG // 32
    before = {p: (p / "weights_final.pt").read_bytes() for p in finished}
    curves = {p: [(e.step, e.value) for e in read_events(p).Scalars("loss/train")] for p in finished}

    words = shlex.split(command)
    assert words[:3] == ["python", "train.py", "-m"] and words[-1] == "trainer.resume=auto"
    result = run_cli(words[2:], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "sweep finished: 6 job(s)" in said and ": 6 ok" in said
    for folder in stopped:
        assert f"resuming from {folder / 'checkpoints' / 'last.pt'} at step" in said
    for folder in finished:  # nothing trained again
        assert (folder / "weights_final.pt").read_bytes() == before[folder]
        assert [(e.step, e.value) for e in read_events(folder).Scalars("loss/train")] == curves[folder]
    for folder in stopped + [job(sweep, LONG, never)]:
        seed = seed_of(folder)
        reference = tmp_path / f"reference-{seed}"
        train(compose_config([f"data.n_train={LONG}", f"trainer.seed={seed}", "trainer.epochs=30", *TIED]), reference)
        assert_same_weights(folder, reference)
        assert not (folder / "failure.txt").exists()
        resumed, uninterrupted = read_events(folder).Scalars("loss/train"), read_events(reference).Scalars("loss/train")
        assert [(e.step, e.value) for e in resumed] == [(e.step, e.value) for e in uninterrupted]


def assert_stopped_by_ctrl_c(launcher: List[str], tmp_path: Path) -> str:
    """Ctrl-C as a terminal sends it (SIGINT to the sweep's whole process group) while two long jobs
    train: exit 130 within seconds, both checkpointed, nothing left running."""
    sweep = tmp_path / "sweep"
    proc = start_cli(["-m", *launcher, f"data.n_train={LONG}", "trainer.seed=1,2", "trainer.epochs=30", *TIED,
                      f"hydra.sweep.dir={sweep}"], tmp_path, new_session=True)
    wait_until(lambda: len(list(sweep.glob("*/checkpoints/last.pt"))) == 2, proc)
    processes = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, output
    assert_none_left(processes)
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert (f"sweep stopped by SIGINT: of its 2 job(s) in {sweep}, 2 stopped with a checkpoint (each one's "
            f"failure.txt says at which step), 0 had finished, 0 never started. Resume with: ") in output
    (command,) = resume_commands(output)
    assert command.endswith(f"hydra.sweep.dir={sweep} trainer.resume=auto")
    for folder in sweep.glob("data.n_train=*"):
        state = load(folder / "checkpoints" / "last.pt")
        assert 0 < state["step"] < 30 * LONG // 32 and state["batch_in_epoch"] > 0  # mid-epoch: the signal's
        assert "Interrupted: stopped by SIGTERM at step" in (folder / "failure.txt").read_text()
        assert not (folder / ".lock").exists()
    return command


@pytest.mark.slow
def test_ctrl_c_stops_a_joblib_sweep_with_checkpoints(tmp_path):
    command = assert_stopped_by_ctrl_c(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path)
    assert "hydra/launcher=joblib" in command


@pytest.mark.slow
def test_ctrl_c_stops_a_submitit_local_sweep_with_checkpoints(tmp_path):
    command = assert_stopped_by_ctrl_c(["hydra/launcher=submitit_local"], tmp_path)
    assert "hydra/launcher=submitit_local" in command
    assert not list((tmp_path / "sweep").glob(".submitit/%*"))


def test_joblib_and_submitit_local_are_the_launchers_that_stop_cleanly():
    """``hydra/launcher=joblib`` and ``submitit_local`` give this project's launchers (whatever the order
    of the ``hydra_plugins`` folders on the path), with every key of Hydra's own."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        joblib = compose("config", overrides=["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"],
                         return_hydra_config=True).hydra.launcher
        local = compose("config", overrides=["hydra/launcher=submitit_local", "hydra.launcher.stop_grace_s=5"],
                        return_hydra_config=True).hydra.launcher
    assert joblib._target_ == "hydra_plugins.experiments_launcher._joblib.JoblibLauncher"
    assert (joblib.n_jobs, joblib.pre_dispatch, joblib.stop_grace_s) == (3, "2*n_jobs", 120.0)
    assert local._target_ == "hydra_plugins.experiments_launcher._local.LocalLauncher"
    assert (local.timeout_min, local.stop_grace_s) == (60, 5.0)


def test_a_stop_during_set_up_is_held_until_training_starts():
    """A sweep job's process holds a SIGTERM that comes before its training loop: the loop's guard takes
    it over (and stops at its first step) instead of the process dying (or, under submitit, ignoring it)."""
    from experiments.guards import InterruptGuard, hold_interrupts

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        hold_interrupts()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # (Python runs the handler at the next bytecode)
        with InterruptGuard() as guard:
            assert guard.signum == signal.SIGTERM
        with InterruptGuard() as guard:  # taken over once
            assert guard.signum is None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
