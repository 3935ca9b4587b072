"""A run folder is one run: the lock, a new run refused in an occupied folder (before Hydra writes into
it), half-written files cleaned, and a full disk or read-only folder as one paragraph."""

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_cli
from experiments.config import compose_config
from experiments.errors import RunFolderTaken
from experiments.failures import run_and_report
from experiments.run_folder import LOCK, RunLock, remove_temporaries
from experiments.training import train

SHORT = ["trainer.epochs=1", "data.n_train=64", "telemetry.histograms.enabled=false"]
RACE_LR = (0.011, 0.022)
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def write_lock(folder, **holder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"host": socket.gethostname(), "started": None, "slurm_job_id": None,
                                           **holder}))


def test_a_second_process_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog, monkeypatch):
    other = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(tmp_path, pid=other.pid)
        with pytest.raises(RunFolderTaken, match=f"another run is training in this folder \\(process {other.pid} on"):
            RunLock.acquire(tmp_path)
    finally:
        other.kill()
        other.wait()
    with caplog.at_level("WARNING"):
        lock = RunLock.acquire(tmp_path)  # its process is gone: stale
    assert f"taking over the stale lock {tmp_path / LOCK} (left by process {other.pid}" in caplog.text
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK).exists()

    write_lock(tmp_path, pid=1, host="elsewhere")  # another host: cannot be checked, so it is respected
    with pytest.raises(RunFolderTaken, match="process 1 on host elsewhere"):
        RunLock.acquire(tmp_path)
    write_lock(tmp_path, pid=1, host="elsewhere", slurm_job_id="4242")  # ... unless it is this Slurm job, requeued
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    RunLock.acquire(tmp_path).release()


def _contend(folder, ready, go, results, done):
    """One of many processes that try to take the folder at the same moment; it holds what it got (alive,
    so its lock is not stale) until every one has decided."""
    ready.put(os.getpid())
    go.wait()
    try:
        RunLock.acquire(folder)
        results.put(os.getpid())
    except RunFolderTaken:
        results.put(None)
    done.wait(60)


@pytest.mark.parametrize("stale", [False, True], ids=["new", "stale"])
def test_of_many_processes_started_at_once_exactly_one_holds_the_folder(tmp_path, stale):
    """A real race: 12 processes released together on an empty folder, or on one whose lock was left by
    a dead process. Each round exactly one takes it, and .lock names that one (no process ever reads a
    lock before its owner is written, nor deletes another's fresh lock as stale)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for round in range(4):
        folder = tmp_path / f"round{round}"
        if stale:
            gone = subprocess.Popen(["true"])
            gone.wait()
            write_lock(folder, pid=gone.pid)
        ready, go, results, done = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Event()
        contenders = [ctx.Process(target=_contend, args=(folder, ready, go, results, done)) for _ in range(12)]
        for p in contenders:
            p.start()
        for _ in contenders:
            ready.get(timeout=60)
        go.set()
        got = [results.get(timeout=60) for _ in contenders]
        done.set()
        for p in contenders:
            p.join(timeout=60)
        winners = [pid for pid in got if pid is not None]
        assert len(winners) == 1, f"round {round}: {len(winners)} processes hold {folder}"
        assert json.loads((folder / LOCK).read_text())["pid"] == winners[0]
        assert sorted(p.name for p in folder.iterdir()) == [LOCK]  # no owner files left behind


def test_a_new_run_in_an_occupied_folder_is_refused_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(SHORT), run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(SystemExit):
        run_and_report(train, compose_config(SHORT), run_dir, {}, multirun=False)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before  # no failure.txt, no new events
    with pytest.raises(RunFolderTaken, match="already holds a run .*trainer.resume=auto"):
        train(compose_config(SHORT), run_dir)


def test_half_written_checkpoints_are_removed_when_the_run_starts_again(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / "checkpoints" / ".last.pt.x1y2.tmp", tmp_path / ".weights_init.pt.abc.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    keep = tmp_path / "checkpoints" / "last.pt"
    keep.write_bytes(b"whole")
    remove_temporaries(tmp_path)
    assert not any(p.exists() for p in leftovers) and keep.exists()


@pytest.fixture(scope="module")
def cli_cases(tmp_path_factory):
    """Three commands refused before or while writing, run side by side."""
    root = tmp_path_factory.mktemp("folders")
    occupied = root / "occupied"
    train(compose_config(SHORT), occupied)
    (occupied / ".hydra").mkdir()
    (occupied / ".hydra" / "config.yaml").write_text("the: original\n")
    cases = {"occupied": [*SHORT, f"hydra.run.dir={occupied}"]}
    for lr in RACE_LR:  # two new runs started at once in one folder
        cases[f"race {lr}"] = ["trainer.epochs=1", "data.n_train=256", f"optim.lr={lr}", f"hydra.run.dir={root / 'race'}"]
    mounts = []
    if os.geteuid() == 0:
        for name, options in (("full", "size=1200k"), ("readonly", "ro,size=64k")):
            (root / name).mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root / name)], check=True)
            mounts.append(root / name)
        # weights_init.pt (0.7 MB) fits on the 1.2 MB disk; the events and the first checkpoint do not
        cases["full"] = ["model.width=300", "model.depth=3", "trainer.epochs=2", "data.n_train=2000",
                         f"hydra.run.dir={root / 'full' / 'run'}"]
        cases["readonly"] = [*SHORT, f"hydra.run.dir={root / 'readonly' / 'run'}"]
    try:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:  # all at once
            results = dict(zip(cases, pool.map(lambda args: run_cli(args, timeout=90), cases.values())))
        yield root, results
    finally:
        for mount in mounts:
            for _ in range(20):  # a just-finished process may still hold it for a moment
                if subprocess.run(["umount", str(mount)]).returncode == 0:
                    break
                time.sleep(0.1)


def test_a_command_in_an_occupied_folder_is_refused_before_hydra_writes(cli_cases):
    root, results = cli_cases
    result = results["occupied"]
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "already holds a run" in output and "trainer.resume=auto" in output, output
    assert "Traceback" not in output
    assert (root / "occupied" / ".hydra" / "config.yaml").read_text() == "the: original\n"  # Hydra did not overwrite it
    assert not (root / "occupied" / "failure.txt").exists()


def test_of_two_runs_started_at_once_in_one_folder_the_folder_records_the_trained_one(cli_cases):
    """The second command is refused before Hydra writes: the folder's .hydra/config.yaml, overrides.yaml
    and train.log are the trained run's own (its optim.lr, no line of the refused command)."""
    from omegaconf import OmegaConf

    from experiments.checkpoints import load

    root, results = cli_cases
    race = root / "race"
    codes = {lr: results[f"race {lr}"].returncode for lr in RACE_LR}
    assert sorted(codes.values()) == [0, 1], {lr: results[f"race {lr}"].stderr[-2000:] for lr in RACE_LR}
    trained = next(lr for lr, code in codes.items() if code == 0)
    refused = results[f"race {next(lr for lr in RACE_LR if lr != trained)}"]
    output = refused.stdout + refused.stderr
    assert "RunFolderTaken: " in output and "Traceback" not in output, output
    assert "another run is training in this folder" in output or "already holds a run" in output, output
    assert OmegaConf.load(race / ".hydra" / "config.yaml").optim.lr == trained
    assert f"optim.lr={trained}" in list(OmegaConf.load(race / ".hydra" / "overrides.yaml"))
    assert f"optim.lr={trained}" in OmegaConf.load(race / ".hydra" / "hydra.yaml").hydra.overrides.task
    assert OmegaConf.create(load(race / "checkpoints" / "last.pt")["config"]).optim.lr == trained
    log = (race / "train.log").read_text()
    assert "RunFolderTaken" not in log and "done: loss/train" in log and log.count("training mlp") == 1, log
    assert not (race / "failure.txt").exists() and not (race / LOCK).exists()


@ROOT_ONLY
def test_a_full_disk_is_one_paragraph_naming_the_folder(cli_cases):
    root, results = cli_cases
    result = results["full"]
    output = result.stdout + result.stderr
    run_dir = root / "full" / "run"
    assert result.returncode == 1, output
    assert f"StorageError: cannot write into {run_dir}: the disk is full" in output
    assert "Traceback" not in output and "Exception in thread" not in output
    assert not list(run_dir.rglob("*.tmp"))  # no half-written checkpoint left


@ROOT_ONLY
def test_a_read_only_folder_is_one_paragraph_naming_it(cli_cases):
    root, results = cli_cases
    result = results["readonly"]
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"cannot write into {root / 'readonly' / 'run'}: the file system is read-only" in output
    assert "Traceback" not in output
