"""The model's side of a distributed run (``distributed.py``): ``DistributedDataParallel``, the stop flags
that ride in its gradient all-reduce, each rank's rows of a batch, and the layers that cannot be split.

- :class:`StopFlags`: a rank's request to stop (the signal it caught) rides in DDP's own gradient
  all-reduce, so every rank learns of it after the same step without a collective of ours.
- :func:`wrap`: the model in DDP with that comm hook; :func:`check_model` refuses BatchNorm and dropout.
- :func:`shard`: this rank's rows of a global batch (``data.batch_size`` is the global batch).
"""

from __future__ import annotations

import inspect
import signal
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError


class StopFlags:
    """Which signal each rank caught, summed across ranks inside DDP's own gradient all-reduce: a comm hook
    appends the counts to the first bucket (DDP keeps it small, 1 MB), so after every backward each rank
    knows how many ranks caught SIGTERM, SIGINT or submitit's signal, without a collective of its own.

    On the CPU the counts are read after the step that carried them; on CUDA they are read one step later
    (copied to the host behind that step), so no step waits for the GPU. Every rank reads the same counts
    at the same step, so all stop there together."""

    SLOTS = 65  # signal numbers 1..64

    def __init__(self, world: int, device: torch.device):
        self.world = world
        self.local = torch.zeros(self.SLOTS, device=device)  # one-hot: the signal this rank caught
        self.counts = torch.zeros(self.SLOTS, device=device)  # after the step: ranks that caught each signal
        self.buckets = 0  # DDP's own all-reduces (one per bucket and step), for tests
        self._posted = 0
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._host = torch.zeros(self.SLOTS, pin_memory=True)
            self._copied: Optional[torch.cuda.Event] = None

    def post(self, signum: Optional[int]) -> None:
        """Before backward: the signal this rank has caught (0/None: none)."""
        signum = int(signum or 0)
        if signum != self._posted:
            self.local.zero_()
            if signum:
                self.local[signum] = 1.0
            self._posted = signum

    def hook(self, state, bucket):  # (no annotations: DDP checks them, and this module postpones them)
        """DDP's comm hook: average the bucket, as DDP's default does; bucket 0 carries the counts."""
        self.buckets += 1
        buffer = bucket.buffer()
        if bucket.index() != 0:
            buffer.div_(self.world)
            return dist.all_reduce(buffer, async_op=True).get_future().then(lambda f: f.value()[0])
        joined = torch.cat([buffer.div_(self.world), self.local.to(buffer.dtype)])
        n = buffer.numel()

        def split(future: torch.futures.Future) -> torch.Tensor:
            reduced = future.value()[0]
            self.counts.copy_(reduced[n:])
            return reduced[:n]
        return dist.all_reduce(joined, async_op=True).get_future().then(split)

    def agreed(self) -> Tuple[int, int]:
        """After a step: the signal to stop for (0: none) and how many ranks caught it. Submitit's time-limit
        signal comes first (the job is requeued), then SIGTERM, then SIGINT."""
        if self._cuda:
            counts = torch.zeros(self.SLOTS)
            if self._copied is not None:  # the previous step's counts, copied behind it
                self._copied.synchronize()
                counts = self._host.clone()
            self._host.copy_(self.counts, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:
            counts = self.counts
        caught = [s for s in range(1, self.SLOTS) if counts[s] > 0] if bool(counts.any()) else []
        if not caught:
            return 0, 0
        order = {signal.SIGTERM: 1, signal.SIGINT: 2}
        signum = min(caught, key=lambda s: (order.get(s, 0), s))  # any other (USR2: submitit's) first
        return signum, int(counts[signum])


NOT_PER_ROW = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def check_model(model: nn.Module, world: int) -> None:
    """Refuse a model whose training depends on how the batch is split: BatchNorm normalizes by each rank's
    rows, dropout draws each rank's masks from the same random state."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and not module.p:
            continue
        if isinstance(module, NOT_PER_ROW):
            why = ("it normalizes by each process's rows of the batch" if isinstance(module, nn.modules.batchnorm._BatchNorm)
                   else "every process would draw the same random masks for different rows")
            raise ConfigError(
                f"model: layer '{name}' ({type(module).__name__}) cannot train in {world} processes the model one "
                f"process trains: {why}. Train it in one process (python train.py ...), or use a layer that does not "
                f"depend on how the batch is split (LayerNorm instead of BatchNorm; dropout with p=0).")


def wrap(model: nn.Module, device: torch.device, flags: StopFlags) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (the model itself stays what is saved and logged)."""
    from torch.nn.parallel import DistributedDataParallel

    # buffers are not synced on every forward (a collective per step): a layer whose buffers depend on the
    # batch (BatchNorm) is refused by check_model; others stay the same on every rank
    quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel.__init__).parameters else {"broadcast_buffers": False}
    try:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **quiet)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ConfigError(f"model: DistributedDataParallel refuses this model ({' '.join(str(e).split())[:400]}). "
                          f"Train it in one process (python train.py ...).") from None
    wrapped.register_comm_hook(None, flags.hook)
    return wrapped


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> Tuple[torch.Tensor, torch.Tensor, Optional[float]]:
    """This rank's rows of a global batch, and ``scale``: None when every rank has the same number of rows
    (plain means are right); else what turns a sum over this rank's targets into its part of the global
    mean (world / the global number of targets), e.g. for an epoch's last, smaller batch."""
    rows = x.shape[0]
    lo, hi = rank * rows // world, (rank + 1) * rows // world
    scale = None if rows % world == 0 else world / (rows * y.shape[1:].numel())
    return x[lo:hi], y[lo:hi], scale
