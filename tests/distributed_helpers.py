"""Layers for the distributed tests (tests/test_distributed.py), importable by torchrun's processes."""

import torch.distributed as dist
from torch import nn


class RaiseOnRank(nn.Module):
    """The identity, except on rank ``rank`` at its ``at``-th call: a RuntimeError (a rank that crashes)."""

    def __init__(self, rank: int = 1, at: int = 5):
        super().__init__()
        self.rank, self.at, self.calls = rank, at, 0

    def forward(self, x):
        self.calls += 1
        if self.training and dist.is_initialized() and dist.get_rank() == self.rank and self.calls == self.at:
            raise RuntimeError(f"boom on rank {self.rank} at call {self.at}")
        return x


def count_collectives(out: str, overrides) -> None:
    """Under torchrun: train ``overrides`` with every torch.distributed collective counted, and write, per step,
    whether it logged, the collectives of ours and DDP's own (its gradient buckets) to ``out``.rank<r>.json."""
    import functools
    import json
    from pathlib import Path

    import torch.distributed

    from experiments import distributed
    from experiments.config import compose_config
    from experiments.guards import InterruptGuard
    from experiments.training import Run

    calls = {"n": 0, "inside": False}

    def counted(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if calls["inside"]:  # a collective made of others (all_gather_object -> all_gather): one
                return fn(*args, **kwargs)
            calls["n"] += 1
            calls["inside"] = True
            try:
                return fn(*args, **kwargs)
            finally:
                calls["inside"] = False
        return wrapper

    for name in ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list", "barrier",
                 "reduce", "gather", "scatter", "all_to_all", "reduce_scatter", "all_gather_into_tensor",
                 "reduce_scatter_tensor", "monitored_barrier", "all_reduce_coalesced", "gather_object"):
        if hasattr(torch.distributed, name):
            setattr(torch.distributed, name, counted(getattr(torch.distributed, name)))
    cfg = compose_config(list(overrides))
    distributed.start(cfg.trainer.distributed.backend, cfg.trainer.device)
    run = Run(cfg, Path(out + ".run"))
    steps = []
    plain_step = run.train_step

    def watched_step(x, y, signum=None):
        before, buckets = calls["n"], run.flags.buckets
        logs = bool(run.monitor.due(run.step))
        plain_step(x, y, signum)
        steps.append({"step": run.step, "logs": logs, "buckets": run.flags.buckets - buckets,
                      "ours": calls["n"] - before - (run.flags.buckets - buckets)})
    run.train_step = watched_step
    with InterruptGuard() as interrupt:
        while run.epoch <= cfg.trainer.epochs:
            run.train_epoch(interrupt)
    run.monitor.close()
    run.finish()
    run.release()
    Path(f"{out}.rank{distributed.current().rank}.json").write_text(json.dumps(steps))
    distributed.stop()


if __name__ == "__main__":
    import sys

    count_collectives(sys.argv[1], sys.argv[2:])
