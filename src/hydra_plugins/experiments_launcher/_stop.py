"""Stopping a local sweep (``hydra/launcher=joblib`` or ``submitit_local``) on Ctrl-C or SIGTERM.

The sweep's own process is the only one that listens: its jobs run in sessions of their own (a
terminal's Ctrl-C reaches the sweep alone), and the sweep then

1. lets no job start any more (a job that was queued finds the stop and returns without running);
2. sends SIGTERM to every running job: its training loop writes ``checkpoints/last.pt`` at the next
   step and records ``failure.txt`` with the resume command (a job still setting up holds the
   signal, ``guards.hold_interrupts``, and stops at its first step);
3. waits for them, at most ``hydra.launcher.stop_grace_s`` seconds (a second Ctrl-C or SIGTERM: not
   at all), then kills those left (they resume from their last checkpoint, or start over);
4. says in one paragraph what became of the jobs and the one command that resumes the sweep
   (``failures.resume_command``: every job from its own checkpoint, the ones that never started from
   scratch), and exits 130 (SIGINT) or 143 (SIGTERM). No process of the sweep is left behind.

The two halves talk through files in a folder of their own (:class:`Board`): the job side records
``running <pid>`` before it looks for the stop, so a job the stop does not see is one the sweep
signals. This module is imported by the sweep (the launchers) and by the jobs' processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

log = logging.getLogger(__name__)

STOP = "stop"
RUNNING, FINISHED, STOPPED, NOT_STARTED = "running", "finished", "stopped", "not started"


class Board:
    """A folder where each job writes how it stands (``<idx>``: running <pid>, finished, stopped, not
    started) and the sweep writes ``stop``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def create(cls) -> "Board":
        return cls(Path(tempfile.mkdtemp(prefix="sweep-stop-")))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ the job's side
    def note(self, idx: int, what: str) -> None:
        tmp = self.folder / f".{idx}.{os.getpid()}"
        tmp.write_text(what)
        os.replace(tmp, self.folder / str(idx))

    def stop_requested(self) -> bool:
        return (self.folder / STOP).exists()

    # ---------------------------------------------------------------- the sweep's side
    def request_stop(self) -> None:
        (self.folder / STOP).touch()

    def states(self) -> Dict[int, str]:
        found = {}
        for path in self.folder.iterdir():
            if path.name.isdigit():
                try:
                    found[int(path.name)] = path.read_text()
                except FileNotFoundError:
                    pass
        return found

    def running_pids(self) -> List[int]:
        return [int(s.split()[1]) for s in self.states().values() if s.startswith(RUNNING + " ")]


def run_job_unless_stopped(board: Board, idx: int, run: Callable[[], Any], own_group: bool) -> Any:
    """In a job's process: the job ``run()``, unless the sweep was stopped before it began (then
    None). A job stopped by the sweep's signal returns None too, after its checkpoint (train.py's
    ``SystemExit``), so that its process stays, for the sweep to end."""
    from experiments.guards import hold_interrupts

    if own_group:  # a terminal's Ctrl-C reaches the sweep alone, which forwards it once
        try:
            os.setsid()
        except OSError:  # already a group leader
            pass
    hold_interrupts()
    board.note(idx, f"{RUNNING} {os.getpid()}")
    if board.stop_requested():
        board.note(idx, NOT_STARTED)
        return None
    try:
        result = run()
    except (SystemExit, KeyboardInterrupt):
        board.note(idx, STOPPED)
        return None
    board.note(idx, FINISHED)
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class SweepStop:
    """The sweep's side: while active (``with``), SIGINT and SIGTERM stop the sweep as the module
    docstring says. ``kill_all`` kills what is left of the jobs."""

    def __init__(self, board: Board, grace_s: float, kill_all: Optional[Callable[[], None]] = None) -> None:
        self.board, self.grace_s = board, float(grace_s)
        self.kill_all = kill_all or self.kill_running
        self.signum: Optional[int] = None
        self.killed = ""  # why the jobs that were left were killed
        self._previous: Dict[int, Any] = {}
        self._timer: Optional[threading.Timer] = None

    def __enter__(self) -> "SweepStop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._timer:
            self._timer.cancel()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self._kill(f"a second {signal.Signals(signum).name} asked to stop at once")
            return
        self.signum = signum
        self.board.request_stop()
        pids = self.board.running_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        log.warning("%s: stopping the sweep. No new job starts; each of the %d running job(s) writes its checkpoint "
                    "(waiting at most hydra.launcher.stop_grace_s=%g s; %s again stops them at once)",
                    self.name, len(pids), self.grace_s, "Ctrl-C" if signum == signal.SIGINT else "SIGTERM")
        self._timer = threading.Timer(self.grace_s, self._kill,
                                      [f"they did not stop within hydra.launcher.stop_grace_s={self.grace_s:g} s"])
        self._timer.daemon = True
        self._timer.start()

    def _kill(self, why: str) -> None:
        if not self.killed:
            self.killed = why
        self.kill_all()

    def kill_running(self) -> None:
        for pid in self.board.running_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, pids: Callable[[], Sequence[int]]) -> None:
        """Until none of ``pids()`` is alive (the timer kills them after the grace period)."""
        deadline = time.monotonic() + self.grace_s + 10
        while any(alive(p) for p in pids()):
            if time.monotonic() > deadline:
                self._kill(f"they did not stop within hydra.launcher.stop_grace_s={self.grace_s:g} s")
            time.sleep(0.1)

    def exit(self, launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        """The closing paragraph, then ``SystemExit(128 + signal)``."""
        from experiments.sweeps import remove_empty_id_templates

        from ._resume import job_dir_and_resume_command

        states = self.board.states()
        count = {s: 0 for s in (FINISHED, STOPPED, NOT_STARTED, "killed")}
        for idx in range(initial_job_idx, initial_job_idx + len(job_overrides)):
            state = states.get(idx, NOT_STARTED)
            count["killed" if state.startswith(RUNNING) else state] += 1
        _, command = job_dir_and_resume_command(launcher, list(job_overrides[0]), initial_job_idx)
        sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
        remove_empty_id_templates(sweep_dir)  # submitit_local's .submitit/%j
        done = [f"{count[STOPPED]} stopped with a checkpoint (each one's failure.txt says at which step)"]
        if count["killed"]:
            done.append(f"{count['killed']} killed because {self.killed} (each continues from its last checkpoint, "
                        f"at the end of an epoch, or starts over)")
        done += [f"{count[FINISHED]} had finished", f"{count[NOT_STARTED]} never started"]
        log.error("sweep stopped by %s: of its %d job(s) in %s, %s. Resume with: %s  (it continues each job from its "
                  "own checkpoint and runs the ones that never started; report: python scripts/report.py %s)",
                  self.name, len(job_overrides), sweep_dir, ", ".join(done), command, sweep_dir)
        raise SystemExit(128 + self.signum)
