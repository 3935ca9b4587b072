"""A distributed run against one process on the ``wide`` workload: steps/s, and what the reduction of a
logged step costs (the one flat all-reduce of the loss, accuracy, activation sums and each use's gradient).

    python -m experiments.benchmark_distributed OUT.json N_TRAIN EPOCHS            # one process
    torchrun --standalone --nproc_per_node=2 -m experiments.benchmark_distributed OUT.json N_TRAIN EPOCHS

Each process trains with one thread. Two timed passes of the same training: with the default telemetry
(steps/s, what a user gets) and with every scalar signal at every step (every step logs: the time spent in
the reducer, per logged step). ``benchmark.distributed_speed`` starts both and makes the table's rows.
Rank 0 writes ``OUT.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import torch

from . import distributed
from .benchmark import WORKLOADS, every_signal
from .config import compose_config
from .guards import InterruptGuard
from .training import Run


def timed_run(cfg, telemetry_all: bool) -> Dict[str, float]:
    """Seconds of training (set-up untimed), steps, and the seconds and calls of the logged steps' reductions."""
    cfg = cfg.copy()
    if telemetry_all:
        every_signal(cfg.telemetry)
    spent = {"seconds": 0.0, "calls": 0}
    with tempfile.TemporaryDirectory() as run_dir:
        run = Run(cfg, Path(run_dir))
        if run.reducer is not None:
            reduce = run.reducer.reduce_

            def timed_reduce(means, sums=()):
                start = time.perf_counter()
                reduce(means, sums)
                spent["seconds"] += time.perf_counter() - start
                spent["calls"] += 1
            run.reducer.reduce_ = timed_reduce
        if run.group:
            torch.distributed.barrier()  # start together
        start = time.perf_counter()
        with InterruptGuard() as interrupt:
            while run.epoch <= cfg.trainer.epochs:
                run.train_epoch(interrupt)
        seconds = time.perf_counter() - start
        run.lens.close()
        run.release()
    return {"seconds": seconds, "steps": run.step, "reduce_seconds": spent["seconds"], "reduce_calls": spent["calls"]}


def main(out: str, n_train: int, epochs: int) -> None:
    torch.set_num_threads(1)
    logging.getLogger("experiments").setLevel(logging.WARNING)
    cfg = compose_config([*WORKLOADS["wide"], f"data.n_train={n_train}", "data.n_val=512", f"trainer.epochs={epochs}",
                          "trainer.checkpoint_every=0", "trainer.device=cpu", "trainer.progress_every_s=0"])
    group = distributed.start(cfg.trainer.distributed.backend, cfg.trainer.device)
    warm = cfg.copy()
    warm.trainer.epochs = 1
    timed_run(warm, telemetry_all=False)  # one-time imports and caches
    default, every = timed_run(cfg, telemetry_all=False), timed_run(cfg, telemetry_all=True)
    result = {"processes": group.world if group else 1, "steps_per_s": default["steps"] / default["seconds"],
              "steps_per_s_every_signal": every["steps"] / every["seconds"],
              "reduce_ms_per_logged_step": 1e3 * every["reduce_seconds"] / max(every["reduce_calls"], 1),
              "reduce_calls": every["reduce_calls"], "steps": every["steps"]}
    if not group or group.rank == 0:
        Path(out).write_text(json.dumps(result))
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
