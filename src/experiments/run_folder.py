"""A run folder is one run: who may write into it, what a new run may find there, and disk
errors that name it.

- :class:`RunLock`: ``<run>/.lock`` holds the host, process id (and its start time) and
  ``SLURM_JOB_ID`` of the process training there. A second process is refused. A lock whose
  process is gone (same host) is stale and taken over, with a log line; a lock with our own
  ``SLURM_JOB_ID`` is ours (a requeued Slurm job keeps its id and may land on another host).
  It appears with its owner written (a hard link of a finished file), and a take-over is decided
  under the folder's ``flock``: of many processes started at once, one holds the folder.
- :func:`previous_run`: what in a folder shows that a run was there (event files, checkpoints,
  weights). A new run (no ``trainer.resume``) refuses such a folder; ``trainer.resume=auto``
  with no checkpoint yet starts over and :func:`discard_events` removes the old events, so each
  step appears once.
- :func:`remove_temporaries`: the ``.last.pt.*.tmp`` a kill in the middle of a write leaves.
- :func:`storage_errors`: a full disk or a read-only folder as one paragraph naming the folder.
- :class:`RunFolderCheck`: a Hydra callback (``conf/config.yaml``) that makes the first checks
  before Hydra writes its ``.hydra/`` into the folder, so a refused command overwrites nothing.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from hydra.experimental.callback import Callback

from .distributed import launch
from .errors import ExperimentError, RunFolderTaken, StorageError
from .runs import CHECKPOINT_DIR, EVENTS, WEIGHTS_FINAL, WEIGHTS_INIT

log = logging.getLogger(__name__)

LOCK = ".lock"
MIN_FREE_BYTES = 1 << 20  # less than this free on the disk: refuse before writing anything

# --- the lock ---------------------------------------------------------------------------------


def _start_time(pid: int) -> Optional[str]:
    """The process's start time (Linux: field 22 of /proc/<pid>/stat), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> Dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _start_time(pid),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _alive(holder: Dict[str, Any]) -> bool:
    """Whether the process that wrote ``holder`` (on this host) is still running."""
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _start_time(int(holder["pid"]))
    return not (holder.get("started") and now and now != holder["started"])  # a reused pid is not it


def read_lock(folder: Path) -> Optional[Dict[str, Any]]:
    """The lock's content; ``{}`` for a lock that cannot be read (a crash while writing it)."""
    try:
        return json.loads((Path(folder) / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def busy_reason(holder: Optional[Dict[str, Any]]) -> Optional[str]:
    """Why ``holder`` keeps us out (it is another process, alive or unknowable), or None when the
    lock is free, stale or ours."""
    if not holder:
        return None
    me = this_process()
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == me["slurm_job_id"]:
        return None  # this Slurm job before a requeue
    if holder.get("host") != me["host"]:
        return f"process {holder.get('pid')} on host {holder.get('host')} (it cannot be checked from here)"
    if _alive(holder):
        return f"process {holder.get('pid')} on this host ({holder.get('host')})"
    return None


class RunLock:
    """``<folder>/.lock`` while this process trains in ``folder`` (see the module docstring).

    Taking it is atomic: the owner is written to a file of its own first, then hard-linked to
    ``.lock``, which fails if a lock exists; so no process ever sees a lock without its owner. The
    decision to take over a stale lock is made under ``flock`` on the folder, so of several processes
    that find the same stale lock one takes it and the others then find its (live) lock."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.mine = this_process()

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock":
        """Take ``folder`` for this process (it may hold it already: the Hydra callback took it before
        Hydra wrote its files, then the training run asks again)."""
        held = _HELD.get(os.path.realpath(folder))
        if held and held.mine == this_process() and read_lock(folder) == held.mine:
            return held
        lock = cls(folder)
        Path(folder).mkdir(parents=True, exist_ok=True)
        with _deciding(Path(folder)):
            for _ in range(3):
                if lock._create():
                    _HELD[os.path.realpath(folder)] = lock
                    return lock
                holder = read_lock(folder)
                if holder is None:  # released meanwhile
                    continue
                reason = busy_reason(holder)
                if reason:
                    raise RunFolderTaken(
                        f"{folder}: another run is training in this folder ({reason}; see {lock.path}). Two runs "
                        f"in one folder would mix their curves. Wait for it, or choose another folder "
                        f"(hydra.run.dir=...). If no such process is training any more, delete {lock.path}.")
                log.warning("taking over the stale lock %s (left by process %s on %s, which is gone)", lock.path,
                            holder.get("pid", "?"), holder.get("host", "?"))
                lock.path.unlink(missing_ok=True)
        raise RunFolderTaken(f"{folder}: could not take {lock.path}: other processes keep taking it.")

    def _create(self) -> bool:
        """``.lock`` holding this process, in one step; False if there is one already."""
        owner = self.path.with_name(f"{LOCK}.{os.getpid()}.{secrets.token_hex(4)}")  # not ``.tmp``: see remove_temporaries
        try:
            owner.write_text(json.dumps(self.mine))
            os.link(owner, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in NO_HARD_LINKS:
                raise
            return self._create_in_place()
        finally:
            owner.unlink(missing_ok=True)

    def _create_in_place(self) -> bool:
        """Where the file system has no hard links: create, then write (under the folder's ``flock``)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.mine, f)
        return True

    def release(self) -> None:
        if _HELD.get(os.path.realpath(self.path.parent)) is self:
            del _HELD[os.path.realpath(self.path.parent)]
        if read_lock(self.path.parent) == self.mine:
            self.path.unlink(missing_ok=True)


_HELD: Dict[str, RunLock] = {}  # the folders this process holds, by real path
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}
DECIDE_TIMEOUT_S = 10.0  # a process holds the folder's flock for microseconds; this long means it is stuck


@contextmanager
def _deciding(folder: Path) -> Iterator[None]:
    """``flock`` on ``folder`` while a process reads ``.lock`` and decides to take it (the kernel lets go
    when the process ends). A file system without ``flock`` on folders goes without it."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + DECIDE_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunFolderTaken(f"{folder}: another process has been taking {folder / LOCK} for "
                                         f"{DECIDE_TIMEOUT_S:.0f} s; try again.") from None
                time.sleep(0.005)
            except OSError as e:  # no flock here (some network file systems)
                log.debug("no flock on %s (%s): taking the lock without it", folder, e)
                break
        yield
    finally:
        os.close(fd)


# --- what a folder holds ------------------------------------------------------------------------


def event_files(folder: Path) -> List[Path]:
    """The run's event files: in the folder and its sub-runs (a writer per line, e.g. ``uses/4``), not
    in sub-folders that are runs of their own."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != CHECKPOINT_DIR
                   and not os.path.isdir(os.path.join(here, d, ".hydra"))
                   and not os.path.isfile(os.path.join(here, d, WEIGHTS_INIT))]
        found += [Path(here) / f for f in files if f.startswith(EVENTS)]
    return sorted(found)


def previous_run(folder: Path) -> List[str]:
    """What shows that a run was in ``folder``: event files, checkpoints, weights (relative names)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = event_files(folder) + sorted((folder / CHECKPOINT_DIR).glob("*.pt"))
    found += [folder / n for n in (WEIGHTS_INIT, WEIGHTS_FINAL) if (folder / n).is_file()]
    return [str(p.relative_to(folder)) for p in found]


def refuse_previous_run(folder: Path) -> None:
    """A new run (no ``trainer.resume``) does not write into a folder that holds a run."""
    found = previous_run(folder)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise RunFolderTaken(
            f"{folder} already holds a run ({shown}): a run folder is one run. Continue it with trainer.resume=auto "
            f"(from its last checkpoint, or from the start if it has none), or start this run in another "
            f"folder (hydra.run.dir=..., or leave it out for a new time-stamped one).")


def discard_events(folder: Path) -> None:
    """Remove the event files of a run that is started over (it had no checkpoint to resume from)."""
    old = event_files(folder)
    for path in old:
        path.unlink()
    if old:
        log.warning("%s: no checkpoint to resume from; starting over, so the %d event file(s) of the earlier "
                    "attempt were removed (each step appears once)", folder, len(old))


def remove_temporaries(folder: Path) -> None:
    """Half-written weights or checkpoints (``.last.pt.*.tmp``) that a kill mid-write left behind."""
    folder = Path(folder)
    for path in [*folder.glob(".*.tmp"), *(folder / CHECKPOINT_DIR).glob(".*.tmp")]:
        path.unlink(missing_ok=True)
        log.info("removed %s, a file half-written when an earlier process was killed", path)


# --- disk errors ----------------------------------------------------------------------------------

WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "no permission to write there",
                errno.EPERM: "no permission to write there"}


def storage_error(error: OSError, folder: Path) -> Optional[StorageError]:
    """``error`` as a :class:`StorageError` naming ``folder``, if it is a write error there."""
    if error.errno not in WRITE_ERRORS:
        return None
    name = error.filename
    if error.errno in (errno.EACCES, errno.EPERM) and name and not str(Path(name).absolute()).startswith(
            str(Path(folder).absolute())):
        return None  # e.g. a data file that cannot be read: not the run folder's fault
    where = f" ({name})" if name else ""
    return StorageError(f"cannot write into {folder}: {WRITE_ERRORS[error.errno]}{where}. Free space or make the "
                        f"folder writable, then continue with trainer.resume=auto, or run in another folder "
                        f"(hydra.run.dir=..., for a sweep hydra.sweep.dir=...).")


@contextmanager
def storage_errors(folder: Path) -> Iterator[None]:
    """Turn a write error into ``folder`` (disk full, read-only) into one paragraph."""
    try:
        yield
    except OSError as e:
        converted = storage_error(e, folder)
        if converted is None:
            raise
        raise converted from None


def check_writable(folder: Path) -> None:
    """The folder (or the nearest existing folder above it) can be written and its disk has room."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "the file system is read-only" if _read_only_fs(existing) else "no permission to write there"
        raise StorageError(f"cannot write into {folder}: {reason} ({existing}). Make it writable, or run in "
                           f"another folder (hydra.run.dir=..., for a sweep hydra.sweep.dir=...).")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise StorageError(f"cannot write into {folder}: the disk is full ({free} bytes free). Free space, or run "
                           f"in another folder (hydra.run.dir=..., for a sweep hydra.sweep.dir=...).")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# --- before Hydra writes ---------------------------------------------------------------------------


def check_folder(folder: Path, resume: Optional[str]) -> None:
    """What can be checked before anything is written into a run folder."""
    folder = Path(folder)
    check_writable(folder)
    if folder.is_dir():
        reason = busy_reason(read_lock(folder))
        if reason:
            raise RunFolderTaken(f"{folder}: another run is training in this folder ({reason}; see "
                                 f"{folder / LOCK}). Wait for it, or choose another folder (hydra.run.dir=...). "
                                 f"If no such process is training any more, delete {folder / LOCK}.")
        if not resume:
            refuse_previous_run(folder)


class RunFolderCheck(Callback):
    """Checks a run's folder (a sweep's folder) before Hydra writes into it: writable, not in use
    by another process, and, without ``trainer.resume``, holding no earlier run; then claims it
    (:class:`RunLock`) before Hydra writes ``.hydra/`` and opens ``train.log``. Of two commands
    started at once in one folder, the second is refused here, so the folder's config, overrides and
    log are the trained run's own. A sweep's folder is claimed by the sweep's process the same way."""

    def __init__(self) -> None:
        self.lock: Optional[RunLock] = None

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if launch() is not None:  # a distributed run: distributed_run.DistributedRun checks it on rank 0
            return
        folder = Path(str(config.hydra.run.dir))
        self._check(lambda: check_folder(folder, config.trainer.resume))
        self._claim(folder)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(str(config.hydra.sweep.dir))

        def check() -> None:
            check_writable(sweep)
            if sweep.is_dir():
                reason = busy_reason(read_lock(sweep))
                if reason:
                    raise RunFolderTaken(f"{sweep}: another sweep is running in this folder ({reason}; see "
                                         f"{sweep / LOCK}). Wait for it, or choose another hydra.sweep.dir (or leave "
                                         f"it out). If no such process is running any more, delete {sweep / LOCK}.")
            if sweep.is_dir() and not config.trainer.resume:
                taken = sorted(p.name for p in sweep.iterdir() if p.is_dir() and previous_run(p))
                if taken:
                    raise RunFolderTaken(
                        f"the sweep folder {sweep} already holds runs ({', '.join(taken[:3])}"
                        f"{f' and {len(taken) - 3} more' if len(taken) > 3 else ''}): continue them with "
                        f"trainer.resume=auto, or choose another hydra.sweep.dir (or leave it out).")
        self._check(check)
        self._claim(sweep)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._release()

    def _claim(self, folder: Path) -> None:
        self.lock = None
        self._check(lambda: setattr(self, "lock", RunLock.acquire(folder)))
        atexit.register(self._release)  # an exit that skips on_run_end (SystemExit from a failed run)

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @staticmethod
    def _check(check) -> None:
        try:
            check()
        except ExperimentError as error:
            log.error("%s: %s", type(error).__name__, error)
            sys.exit(error.exit_code)
