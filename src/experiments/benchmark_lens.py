"""What the per-use lens costs on one model (``scripts/bench.py`` runs it on the ``hf_gpt2`` workload): a step
the lens logs, capturing every use of every parameter, against an unwatched step (issue 21's target: at most
2x), and the memory of the captured gradients.

Each variant is a copy of the same model (same weights) trained on the same batch with its own optimizer;
a variant's steps run in blocks, the blocks alternate, and each step's CPU and wall time is taken from the
forward pass to the end of ``optimizer.step()`` (the lens's ``step`` and ``finish`` included). Medians.

Memory: on a logged step, what the lens holds once backward is done (each use's gradient: one gradient per
use of every parameter, so about the size of ``.grad`` plus one more gradient per extra use of a shared
parameter), and what it still holds after the step (the shared parameters' uses, which ``lens.uses()``
returns) and after a quiet step that follows.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
from omegaconf import DictConfig

from .experiment import build_experiment
from .lens import Lens, watch
from .objective import loss_function
from .outputs import predictions

VARIANTS = {  # name -> watch() arguments (None: not watched)
    "unwatched step": None,
    "quiet step (lens attached, nothing due)": dict(every=10 ** 9),
    "quiet step, model.grad_scale on one use": dict(every=10 ** 9, grad_scale="scale"),
    "logged step: every use captured (tied)": dict(every=1, signals=["tied"]),
    "logged step: every default signal": dict(every=1),
}


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _held(lens: Lens) -> int:
    """Bytes of the per-use gradients the lens holds now."""
    captured = [g for uses in lens.uses_of.grads.values() for g in uses.values()]
    kept = [g for uses in lens.uses().values() for g in uses.values()]
    return _bytes(captured + kept)


class Setup:
    """The model, one batch and the loss of ``cfg``'s experiment."""

    def __init__(self, cfg: DictConfig):
        exp = build_experiment(cfg)
        self.model, self.lr = exp.model, cfg.optim.lr
        self.task, self.loss_fn = exp.data.task, loss_function(exp.data.task)
        self.x, self.y = exp.data.train_x[:cfg.data.batch_size], exp.data.train_y[:cfg.data.batch_size]

    def trainer(self, lens_args: Optional[dict], log_dir: Path, scale: Dict[str, float]):
        """A fresh copy of the model, its optimizer and lens: ``step(n)`` trains one step, returns (cpu, wall) s."""
        model = copy.deepcopy(self.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        lens = None
        if lens_args is not None:
            args = dict(lens_args)
            if args.get("grad_scale") == "scale":
                args["grad_scale"] = scale
            lens = watch(model, log_dir, **args)

        def step(n: int):
            cpu, wall = time.process_time(), time.perf_counter()
            loss = self.loss_fn(predictions(model(self.x), self.task), self.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if lens is not None:
                lens.step(n, loss.detach())
            optimizer.step()
            if lens is not None:
                lens.finish()
            return time.process_time() - cpu, time.perf_counter() - wall
        return step, lens


def lens_cost(cfg: DictConfig, scale: Dict[str, float], repeats: int = 5, block: int = 20) -> Dict:
    """Per-step CPU and wall time of every variant (``block`` steps a block, ``repeats`` alternating blocks,
    after one warm-up block each) and the memory of a logged step's per-use gradients."""
    setup = Setup(cfg)
    out: Dict = {"steps": {}, "memory": {}}
    with tempfile.TemporaryDirectory() as folder:
        runs: Dict[str, tuple] = {}
        for i, (name, args) in enumerate(VARIANTS.items()):
            runs[name] = setup.trainer(args, Path(folder) / str(i), scale)
        times: Dict[str, List[tuple]] = {name: [] for name in VARIANTS}
        counter = {name: 0 for name in VARIANTS}
        for r in range(repeats + 1):
            for name, (step, _) in runs.items():
                for _ in range(block):
                    counter[name] += 1
                    t = step(counter[name])
                    if r and counter[name] > 1:  # (the first block warms up; step 1 of a lens logs everything)
                        times[name].append(t)
        for _, lens in runs.values():
            if lens is not None:
                lens.close()
        base_cpu = statistics.median(t[0] for t in times["unwatched step"])
        base_wall = statistics.median(t[1] for t in times["unwatched step"])
        for name, ts in times.items():
            cpu, wall = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
            out["steps"][name] = {"cpu_ms": cpu * 1e3, "wall_ms": wall * 1e3, "ratio": cpu / base_cpu,
                                  "wall_ratio": wall / base_wall}
        out["memory"] = memory(setup, Path(folder) / "memory")
    return out


def memory(setup: Setup, log_dir: Path) -> Dict[str, float]:
    """Bytes of per-use gradients a lens (logging every 2nd step, the tied signal) holds: after backward on a
    logged step, after that step, after the quiet step that follows; and what one gradient per use would be."""
    model = copy.deepcopy(setup.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=setup.lr)
    lens = watch(model, log_dir, every=2, signals=["tied"])
    held: Dict[str, float] = {}

    def step(n: int, probe: Optional[Callable[[], None]] = None):
        loss = setup.loss_fn(predictions(model(setup.x), setup.task), setup.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if probe is not None:
            probe()
        lens.step(n, loss.detach())
        optimizer.step()
        lens.finish()

    def during():
        uses = lens.uses_of.order
        held["uses"] = sum(len(u) for u in uses.values())
        held["one gradient per use"] = sum(len(u) * model.get_parameter(p).grad.nbytes for p, u in uses.items())
        held["gradients (.grad)"] = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        held["held after backward on a logged step"] = _held(lens)

    step(1)
    step(2, during)
    held["held after the logged step"] = _held(lens)
    step(3)
    held["held after the quiet step that follows"] = _held(lens)
    lens.close()
    return held


def lens_markdown(result: Dict, workload: str) -> List[str]:
    lines = ["", f"| {workload}: one training step | CPU ms | × unwatched (CPU) | wall ms | × unwatched (wall) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in result["steps"].items():
        lines.append(f"| {name} | {r['cpu_ms']:.2f} | {r['ratio']:.2f} | {r['wall_ms']:.2f} | {r['wall_ratio']:.2f} |")
    mem = result["memory"]
    lines += ["", f"| {workload}: per-use gradients | bytes |", "|---|---:|"]
    for name, value in mem.items():
        lines.append(f"| {name} | {value:.0f} |")
    return lines
