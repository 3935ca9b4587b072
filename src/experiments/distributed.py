"""One model trained by several processes: the process group, and what the ranks must agree on.

A run is distributed when several processes start it together: ``torchrun`` (or ``python -m
torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
(``MASTER_ADDR``/``MASTER_PORT``); a Slurm job step of several tasks (``srun``, which
``hydra/launcher=cluster`` with ``hydra.launcher.tasks_per_node``/``nodes`` uses) sets
``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and ``SLURM_JOB_NODELIST``, whose first host is
the rendezvous. One process: nothing here is used.

- :func:`start` opens the process group once per process (``trainer.distributed.backend``: ``auto`` is
  gloo on the CPU and nccl on CUDA); :func:`current` is it, :func:`stop` closes it.
- :class:`Reducer`: the values of a logged step that depend on each rank's own rows (loss, accuracy,
  activation sums, each use's gradient) averaged across ranks as ONE flat float64 tensor, in place.
- :func:`agree_on_failure`: after a part each rank does alone, all go on or all stop.

The model's side (DistributedDataParallel, the stop flags in its all-reduce, the batch split) is ``ddp.py``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist

from .errors import ConfigError, ExperimentError

BACKENDS = ("auto", "gloo", "nccl")


class PeerFailed(ExperimentError):
    """Another rank of this run failed or was killed: this rank stops too (that rank's own line in
    ``failure.txt``, or its log, says why)."""


@dataclass(frozen=True)
class Launch:
    """How this process was started: its rank among ``world`` processes, and where they meet."""

    rank: int
    world: int
    local_rank: int  # its index on its node: the GPU it takes
    init_method: str  # env:// (torchrun sets MASTER_ADDR/PORT) or tcp://<first Slurm host>:<port>
    launcher: str  # torchrun | slurm
    local_world: int = 1  # processes on this node


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``node[03-05,9],gpu1`` -> ``node03``."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip())
    prefix, ranges, suffix = match.groups() if match else (nodelist, None, "")
    if ranges:
        return prefix + ranges.split(",")[0].split("-")[0] + suffix
    return prefix + suffix


def launch(environ: Optional[Mapping[str, str]] = None) -> Optional[Launch]:
    """This process's place in a distributed run, from torchrun's or Slurm's environment; None for one
    process (also for a world of one)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, python -m torch.distributed.run, or env:// by hand
        world = int(env["WORLD_SIZE"])
        if world < 2:
            return None
        return Launch(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")), "env://",
                      "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env",
                      int(env.get("LOCAL_WORLD_SIZE", "1")))
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and tasks and int(tasks) > 1:  # a task of an srun step
        host = first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost")
        port = int(env.get("MASTER_PORT") or 10000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return Launch(int(env["SLURM_PROCID"]), int(tasks), int(env.get("SLURM_LOCALID", "0")),
                      f"tcp://{host}:{port}", "slurm",
                      int((env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or "1").split("(")[0]))
    return None


def device_type(device: str) -> str:
    """``trainer.device`` -> cpu or cuda, as ``experiment.resolve_device`` will choose."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(device).startswith("cuda") else "cpu"


def choose_backend(backend: str, device: str) -> str:
    """``trainer.distributed.backend`` for ``trainer.device``: auto is nccl on CUDA, gloo on the CPU."""
    if backend not in BACKENDS:
        raise ConfigError(f"trainer.distributed.backend={backend!r}: unknown backend; use auto (gloo on the CPU, "
                          f"nccl on CUDA), gloo or nccl.")
    kind = device_type(device)
    if backend == "auto":
        return "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("trainer.distributed.backend=nccl: this machine has no CUDA device, and nccl reduces "
                          "only CUDA tensors. Use trainer.distributed.backend=auto (gloo here) or gloo.")
    if backend == "nccl" and kind != "cuda":
        raise ConfigError(f"trainer.distributed.backend=nccl with trainer.device={device}: nccl reduces only CUDA "
                          f"tensors. Use trainer.device=cuda (or auto), or trainer.distributed.backend=gloo.")
    return backend


@dataclass
class Group:
    """The process group of this run."""

    rank: int
    world: int
    local_rank: int
    backend: str
    launcher: str
    local_world: int

    @property
    def writes(self) -> bool:
        """Rank 0 writes the run folder (config, events, checkpoints, weights); the others only their failures."""
        return self.rank == 0


_GROUP: Optional[Group] = None
_STARTED = time.time()  # when this process began: a failure.txt written since is this run's


def check_device(device: str, where: Launch) -> None:
    if where.world > 1 and re.fullmatch(r"cuda:\d+", str(device)):
        raise ConfigError(f"trainer.device={device}: pins every one of the {where.world} processes to one GPU. Use "
                          f"trainer.device=cuda (or auto): each process takes the GPU of its local rank.")
    if device_type(device) == "cuda" and torch.cuda.is_available() and where.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={device}: local rank {where.local_rank} has no GPU of its own (this node "
                          f"has {torch.cuda.device_count()}). Start at most that many processes per node, or use "
                          f"trainer.device=cpu.")


def start(backend: str = "auto", device: str = "auto", timeout_s: float = 600.0) -> Optional[Group]:
    """Open this process's group (once; later calls return it); None when the run is one process."""
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    where = launch()
    if where is None:
        return None
    chosen = choose_backend(backend, device)
    check_device(device, where)
    if device_type(device) == "cuda" and torch.cuda.is_available():
        torch.cuda.set_device(where.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(chosen, init_method=where.init_method, rank=where.rank, world_size=where.world,
                                timeout=timedelta(seconds=timeout_s))
    _GROUP = Group(where.rank, where.world, where.local_rank, chosen, where.launcher, where.local_world)
    return _GROUP


def current() -> Optional[Group]:
    return _GROUP


def started_at() -> float:
    """When this process began (its ranks' failure lines written since then belong together)."""
    return _STARTED


def stop(wait: bool = False) -> None:
    """Close the process group (at the end of the run, failed or not). ``wait``: first wait for the other
    ranks (after a failure every rank raised alike, so that rank 0 has written failure.txt before any rank
    exits: torchrun stops the others as soon as one exits non-zero); a rank that is gone ends the wait."""
    global _GROUP
    if _GROUP is not None and dist.is_initialized():
        if wait:
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001  (another rank is gone: nothing to wait for)
                pass
        dist.destroy_process_group()
        # gloo's worker thread lets go of the last collective's tensors just after wait() returns, and that
        # takes the GIL: were the interpreter already shutting down then (a rank with nothing left to do exits
        # in a few ms), the thread would abort the process ("terminate called without an active exception",
        # SIGABRT; about 1 run in 10 here). Giving the GIL away for a moment lets it finish first.
        time.sleep(0.2)
    _GROUP = None


def check_batch(batch_size: int, world: int) -> None:
    """``data.batch_size`` is the global batch: every process takes an equal share of it."""
    if batch_size % world:
        lower, higher = batch_size // world * world, -(-batch_size // world) * world
        raise ConfigError(f"data.batch_size={batch_size} cannot be split evenly across the {world} processes of this "
                          f"run: data.batch_size is the global batch (the same model trains as in one process), and each "
                          f"process takes batch_size / {world} rows of it. Use a multiple of {world} (e.g. "
                          f"data.batch_size={lower or higher} or {higher}), or another number of processes.")


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank is gone (or hung)."""
    text = str(error)
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and (
        "/gloo/" in text or "Connection closed by peer" in text or "NCCL" in text or "ProcessGroup" in text))


# --- what the ranks exchange -------------------------------------------------------------------


class Reducer:
    """Averages batch-dependent values across ranks: the tensors of one call travel as ONE flat float64
    tensor (one collective), and are overwritten in place with the average. A rank's values must be
    scaled so that their mean over ranks is the global value (a loss is the mean over this rank's share
    of the global batch; sums and counts are ``sums``: added, not averaged)."""

    def __init__(self, world: int):
        self.world = world
        self.calls = 0  # collectives made, for tests and the benchmark

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Each tensor becomes its mean over the ranks (in place, one collective for all of them)."""
        self.reduce_(tensors)

    def reduce_(self, means: Sequence[torch.Tensor], sums: Sequence[torch.Tensor] = ()) -> None:
        """``means`` become their mean over the ranks, ``sums`` their sum: one collective for all."""
        tensors = [*means, *sums]
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        dist.all_reduce(flat)
        self.calls += 1
        n_means = sum(t.numel() for t in means)
        if n_means:
            flat[:n_means].div_(self.world)
        position = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[position:position + t.numel()].reshape(t.shape))
                position += t.numel()

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (small picklable values), in rank order."""
        found: List[Any] = [None] * self.world
        dist.all_gather_object(found, obj)
        self.calls += 1
        return found


def agree_on_failure(error: Optional[BaseException], rank: int, world: int, doing: str = "setting the run up") -> None:
    """After a part every rank does on its own (setting the run up, rank 0 writing a checkpoint): each says
    whether it failed; if any did, every rank raises: the failed one its own error, the others
    :class:`PeerFailed` naming it."""
    said: List[Any] = [None] * world
    dist.all_gather_object(said, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, text) for r, text in enumerate(said) if text is not None]
    if failed:
        r, text = failed[0]
        raise PeerFailed(f"rank {r} of {world} failed while {doing} ({text})")


def together(build: Callable[[], Any], group: Optional[Group], undo: Callable[[Any], None] = lambda made: None,
             doing: str = "setting the run up") -> Any:
    """``build()`` on every rank: all go on with what it made, or, if it failed on any rank, all stop (the
    others through :func:`agree_on_failure`, after ``undo`` of what they made), so none waits in vain."""
    if group is None:
        return build()
    made, error = None, None
    try:
        made = build()
    except Exception as e:  # noqa: BLE001  (told to every rank, then raised)
        error = e
    try:
        agree_on_failure(error, group.rank, group.world, doing)
    except BaseException:
        if made is not None:
            undo(made)
        raise
    return made


def peer_failure(error: BaseException, group: Optional[Group], step: int) -> Optional[PeerFailed]:
    """``error`` as :class:`PeerFailed` if it is a collective that failed because another rank is gone."""
    if group is None or not is_collective_failure(error):
        return None
    return PeerFailed(f"rank {group.rank} of {group.world} stopped at step {step}: another process of this run "
                      f"failed or was killed (its line in failure.txt, or its log, says why). "
                      f"{' '.join(str(error).split())[:300]}")
