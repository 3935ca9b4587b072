"""Training speed against a plain PyTorch loop (and Lightning), measured in one process.

Every variant trains the same model (the one the config builds) on the same data with the same
optimizer settings for the same number of epochs. Each is set up first, untimed (building the
model, opening files), then its epochs are timed: wall time and CPU time (one thread, so CPU
time is what the loop itself costs, less disturbed by other processes). Variants alternate
within each repeat; the table reports medians and the min-max of the per-repeat ratio to the
plain loop. The logging cost per parameter tensor and the cold start (against a floor script
that imports torch, builds the same model and optimizer and takes one step) are measured too.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import compose_config, telemetry_schema
from .experiment import build_experiment
from .objective import loss_function
from .outputs import predictions
from .benchmark_lens import lens_cost, lens_markdown
from .guards import InterruptGuard
from .telemetry.monitor import Monitor
from .training import Run

WORKLOADS = {
    # the seed's tied network, 4 -> 8 -> 8 -> 8 -> 1, batch 32, SGD 0.03
    "tiny": ["model=tied", "data.batch_size=32", "optim=sgd", "optim.lr=0.03"],
    # a wide tied network that learns: width 512, 64 inputs, batch 256, Xavier + Adam
    "wide": ["model=tied", "model.width=512", "data.true_w=[" + ",".join(["0.1"] * 64) + "]",
             "data.batch_size=256", "init=xavier", "optim=adam", "optim.lr=0.0003"],
    # a tiny Hugging Face GPT-2 (conf/model/hf_gpt2.yaml: 2 layers, 32 dims, built from its config) on token
    # data, batch 64 of 8 tokens, Adam; lm_head.weight is the embedding (needs the transformers extra)
    "hf_gpt2": ["model=hf_gpt2", "data=zipf_text", "data.vocab=256", "data.batch_size=64", "optim=adam",
                "optim.lr=0.001"],
}
LENS_WORKLOAD = "hf_gpt2"  # the lens's cost per step (benchmark_lens) is measured on this one
GRAD_SCALE = {"tied": {"4.weight": 0.5, "4.bias": 0.5},  # the shared layer's second use x0.5
              "hf_gpt2": {"lm_head.weight": 0.5}}  # the tied embedding's output use x0.5
Timing = Tuple[int, float, float]  # steps, wall seconds, CPU seconds


def timed(loop: Callable[[], int]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    steps = loop()
    return steps, time.perf_counter() - wall, time.process_time() - cpu


def plain_loop(cfg: DictConfig) -> Timing:
    """The reference: a hand-written loop over shuffled-tensor slices, with a validation pass per epoch."""
    exp = build_experiment(cfg)
    data, model = exp.data, exp.model
    loss_fn, task = loss_function(data.task), data.task
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr) if "SGD" in cfg.optim._target_ \
        else torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    gen, bs = torch.Generator().manual_seed(1), cfg.data.batch_size

    def loop() -> int:
        steps = 0
        for _ in range(cfg.trainer.epochs):
            perm = torch.randperm(len(data.train_x), generator=gen)
            x_all, y_all = data.train_x[perm], data.train_y[perm]
            for i in range(0, len(x_all), bs):
                loss = loss_fn(predictions(model(x_all[i:i + bs]), task), y_all[i:i + bs])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps += 1
            with torch.no_grad():
                loss_fn(predictions(model(data.val_x), task), data.val_y).item()
        return steps
    return timed(loop)


def every_signal(telemetry: DictConfig) -> None:
    """Every scalar signal on, at every step (histograms keep their cadence)."""
    telemetry.enabled = True
    for key, value in telemetry.items():
        if isinstance(value, DictConfig) and key != "histograms":
            value.enabled, value.every = True, 1


def ours(telemetry: str) -> Callable[[DictConfig], Timing]:
    def run(cfg: DictConfig) -> Timing:
        cfg = cfg.copy()
        if telemetry == "off":
            cfg.telemetry.enabled = False
        elif telemetry == "all":
            every_signal(cfg.telemetry)
        elif telemetry == "grad_scale":  # the intervention: one use of the shared weight x0.5, on every step
            cfg.model.grad_scale = GRAD_SCALE[cfg.model.name]
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Run(cfg, Path(run_dir))  # set-up, untimed

            def loop() -> int:
                with InterruptGuard() as interrupt:
                    while trainer.epoch <= cfg.trainer.epochs:
                        trainer.train_epoch(interrupt)
                trainer.lens.close()
                return trainer.step
            result = timed(loop)
        return result
    return run


def variants() -> Dict[str, Callable[[DictConfig], Timing]]:
    found = {"plain loop": plain_loop, "ours, telemetry off": ours("off"), "ours, default": ours("default"),
             "ours, default + model.grad_scale": ours("grad_scale"), "ours, every signal every step": ours("all")}
    try:
        from .benchmark_lightning import lightning_loop
    except ImportError:  # the bench extra is not installed: no Lightning row
        return found
    return {**found, "Lightning, loss + grad norms every step": lightning_loop}


def available_workloads() -> List[str]:
    """Every workload whose libraries are installed (``hf_gpt2`` needs the transformers extra)."""
    import importlib.util

    return [w for w in WORKLOADS if w != "hf_gpt2" or importlib.util.find_spec("transformers") is not None]


def workload_config(workload: str, epochs: int, n_train: int) -> DictConfig:
    return compose_config([*WORKLOADS[workload], f"data.n_train={n_train}", "data.n_val=512", f"trainer.epochs={epochs}",
                           "trainer.checkpoint_every=0", "trainer.device=cpu", "trainer.progress_every_s=0"])


def measure(workload: str, repeats: int, epochs: int, n_train: int) -> Dict[str, Dict[str, float]]:
    cfg = workload_config(workload, epochs, n_train)
    table = variants()
    warm = cfg.copy()
    warm.trainer.epochs = 1
    for fn in table.values():  # warm-up: one-time imports (torch._dynamo on the first step), caches
        fn(warm)
    wall: Dict[str, List[float]] = {name: [] for name in table}
    cpu: Dict[str, List[float]] = {name: [] for name in table}
    for _ in range(repeats):
        for name, fn in table.items():  # alternate the variants within each repeat
            steps, w, c = fn(cfg)
            wall[name].append(steps / w)
            cpu[name].append(steps / c)
    out = {}
    for name in table:
        ratios = [a / b for a, b in zip(cpu[name], cpu["plain loop"])]
        wall_ratios = [a / b for a, b in zip(wall[name], wall["plain loop"])]
        out[name] = {"steps_per_s": statistics.median(wall[name]), "cpu_steps_per_s": statistics.median(cpu[name]),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "wall_ratio": statistics.median(wall_ratios)}
    return out


def logging_growth(tensor_counts: Sequence[int], repeats: int) -> Dict[int, float]:
    """Microseconds per step that every scalar signal adds (hooks included), for models of this many
    parameter tensors: a watched step's CPU time minus an unwatched one's, medians."""
    out = {}
    x = torch.randn(8, 4)
    for count in tensor_counts:
        model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(count // 2)])
        cfg = OmegaConf.structured(telemetry_schema())
        every_signal(cfg)
        cfg.histograms.enabled = False
        with tempfile.TemporaryDirectory() as run_dir:
            monitor = Monitor(Path(run_dir), model, cfg)

            def step(n: int, watched: bool) -> float:
                t = time.process_time()
                if watched:
                    monitor.before_forward(n)
                loss = model(x).pow(2).mean()
                model.zero_grad(set_to_none=True)
                loss.backward()
                if watched:
                    monitor.after_backward(n)
                    monitor.after_step(n, loss.detach())
                return time.process_time() - t
            plain, watched = [], []
            for n in range(1, repeats + 1):
                plain.append(step(n, False))
                watched.append(step(n, True))
            monitor.close()
        out[count] = max(0.0, statistics.median(watched) - statistics.median(plain)) * 1e6
    return out


FLOOR = ("import torch\n"
         "model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))\n"
         "optimizer = torch.optim.SGD(model.parameters(), lr=0.03, fused=True)\n"
         "torch.nn.functional.mse_loss(model(torch.randn(32, 4)), torch.randn(32, 1)).backward()\n"
         "print('first step', flush=True)\n"
         "optimizer.step()\n")


def cold_start(repeats: int, root: Path) -> Dict[str, float]:
    """Seconds, medians: `import torch`; the floor script (import torch, the default run's model and
    optimizer, one step, exit); `python train.py` (the default run) to its first step and to its exit."""
    def run(cmd, marker):
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = None
        for line in proc.stdout:
            if first is None and marker in line:
                first = time.perf_counter() - t
        proc.wait()
        return first or float("nan"), time.perf_counter() - t

    with tempfile.TemporaryDirectory() as out:
        results = {"import torch": [], "floor to first step": [], "floor to exit": [], "train.py to first step": [],
                   "train.py to exit": []}
        for i in range(repeats):  # alternate, so that a slow moment hits all of them
            results["import torch"].append(run([sys.executable, "-c", "import torch"], "never")[1])
            first, end = run([sys.executable, "-c", FLOOR], "first step")
            results["floor to first step"].append(first)
            results["floor to exit"].append(end)
            first, end = run([sys.executable, "train.py", f"hydra.run.dir={out}/run{i}"], " - training ")
            results["train.py to first step"].append(first)
            results["train.py to exit"].append(end)
    return {name: statistics.median(values) for name, values in results.items()}


def distributed_speed(n_train: int, epochs: int, root: Path, processes: int = 2) -> Dict[str, Dict[str, float]]:
    """The ``wide`` workload in one process and in ``processes`` (torchrun, gloo, one thread each): see
    ``benchmark_distributed``. On a machine with fewer cores than processes the comparison says little."""
    import json
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "src"), os.environ.get("PYTHONPATH")]))}
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for n in (1, processes):
            path = Path(folder) / f"{n}.json"
            launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc_per_node={n}"]
            subprocess.run([*launcher, "-m", "experiments.benchmark_distributed", str(path), str(n_train), str(epochs)],
                           cwd=root, env=env, check=True, capture_output=True, text=True)
            out[f"{n} process{'es' if n > 1 else ''}"] = json.loads(path.read_text())
    return out


def distributed_markdown(rows: Dict[str, Dict[str, float]]) -> List[str]:
    base = next(iter(rows.values()))["steps_per_s"]
    lines = ["", "| wide, data.batch_size global | steps/s (default telemetry) | × one process | steps/s (every signal "
             "every step) | reduction per logged step, ms |", "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        reduce = f"{r['reduce_ms_per_logged_step']:.3f}" if r["processes"] > 1 else "none"
        lines.append(f"| {name} | {r['steps_per_s']:.0f} | {r['steps_per_s'] / base:.2f} | "
                     f"{r['steps_per_s_every_signal']:.0f} | {reduce} |")
    return lines


def markdown(results: Dict, growth: Dict[int, float], start: Dict[str, float], command: str,
             distributed: Optional[Dict[str, Dict[str, float]]] = None, lens: Optional[Dict] = None) -> str:
    lines = [f"Measured with `{command}` (torch {torch.__version__}, 1 thread, medians).", "",
             "| workload | variant | steps/s (wall) | ratio to the plain loop, CPU time (min–max) | wall-time ratio |",
             "|---|---|---:|---|---:|"]
    for workload, table in results.items():
        for name, r in table.items():
            lines.append(f"| {workload} | {name} | {r['steps_per_s']:.0f} | {r['ratio']:.2f} "
                         f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {r['wall_ratio']:.2f} |")
    lines += ["", "| parameter tensors | every scalar signal, µs per step | growth from the row above, µs per added tensor |",
              "|---:|---:|---:|"]
    previous = None
    for n, us in growth.items():
        slope = "" if previous is None else f"{(us - previous[1]) / (n - previous[0]):.1f}"
        lines.append(f"| {n} | {us:.0f} | {slope} |")
        previous = (n, us)
    floor_first, floor_exit = start["floor to first step"], start["floor to exit"]
    lines += ["", "| cold start | seconds | × the floor script (same point) |", "|---|---:|---:|"]
    for name, s in start.items():
        base = floor_first if "first step" in name else floor_exit if "exit" in name else s
        lines.append(f"| {name} | {s:.2f} | {s / base:.2f} |")
    if lens:
        lines += lens_markdown(lens, LENS_WORKLOAD)
    if distributed:
        lines += distributed_markdown(distributed)
    return "\n".join(lines) + "\n"


def run_benchmark(repeats: int, epochs: int, n_train: int, growth_counts: Sequence[int], root: Path,
                  command: str, start_repeats: int = 5, processes: int = 2,
                  workloads: Optional[Sequence[str]] = None) -> Dict:
    """Every table; ``processes`` 0 leaves the distributed one out; ``workloads``: which (default: every one
    installed). With ``hf_gpt2``, the lens's cost per step and memory on it too."""
    torch.set_num_threads(1)
    logging.getLogger("experiments").setLevel(logging.WARNING)
    workloads = list(workloads or available_workloads())
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"no workload named {', '.join(unknown)}; workloads: {', '.join(WORKLOADS)}")
    epochs_of = (lambda w: epochs.get(w, 1)) if isinstance(epochs, dict) else (lambda w: epochs)  # noqa: E731
    results = {w: measure(w, repeats, epochs_of(w), n_train) for w in workloads}
    lens = lens_cost(workload_config(LENS_WORKLOAD, 1, n_train), GRAD_SCALE["hf_gpt2"], repeats=repeats) \
        if LENS_WORKLOAD in workloads else None
    growth = logging_growth(growth_counts, repeats=max(20, 5 * repeats))
    start = cold_start(start_repeats, root)
    ranks = distributed_speed(n_train, epochs_of("wide"), root, processes) if processes > 1 else None
    return {"workloads": results, "lens_cost": lens, "logging_growth_us": growth, "cold_start_s": start,
            "distributed": ranks, "markdown": markdown(results, growth, start, command, ranks, lens)}
