"""Training speed against a plain PyTorch loop, measured in one process.

Each variant trains the same model on the same data with the same optimizer. Steps per second
come from two runs of different length (``(steps_b - steps_a) / (time_b - time_a)``), so set-up
cost cancels and what remains is the loop with its per-epoch work. Variants alternate and
repeat; medians are reported with the ratio to the plain loop of the same repeat.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import compose_config, telemetry_schema
from .data import load_data
from .experiment import build_experiment
from .telemetry.monitor import Monitor
from .training import train

WORKLOADS = {
    # the seed's tied network, 4 -> 8 -> 8 -> 8 -> 1, batch 32, SGD 0.03
    "tiny": ["model=tied", "data.batch_size=32", "optim=sgd", "optim.lr=0.03"],
    # a wide tied network that learns: width 512, 64 inputs, batch 256, Xavier + Adam
    "wide": ["model=tied", "model.width=512", "data.true_w=[" + ",".join(["0.1"] * 64) + "]",
             "data.batch_size=256", "init=xavier", "optim=adam", "optim.lr=0.0003"],
}


def plain_loop(cfg: DictConfig, epochs: int) -> int:
    """The reference: a hand-written loop over shuffled-tensor slices, same model, data, optimizer.
    The model is the one the config builds (after the first forward pass, plain torch.nn modules)."""
    exp = build_experiment(cfg)
    data, model = exp.data, exp.model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr) if "SGD" in cfg.optim._target_ \
        else torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    gen, steps, bs = torch.Generator().manual_seed(1), 0, cfg.data.batch_size
    for _ in range(epochs):
        perm = torch.randperm(len(data.train_x), generator=gen)
        x_all, y_all = data.train_x[perm], data.train_y[perm]
        for i in range(0, len(x_all), bs):
            loss = F.mse_loss(model(x_all[i:i + bs]), y_all[i:i + bs])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        with torch.no_grad():
            F.mse_loss(model(data.val_x), data.val_y).item()
    return steps


def every_signal(telemetry: DictConfig) -> None:
    """Every Signal of the telemetry config on, at every step (histograms keep their own cadence)."""
    telemetry.enabled = True
    for key, value in telemetry.items():
        if isinstance(value, DictConfig) and set(value) == {"enabled", "every"}:
            value.enabled = True
            if key != "histograms":
                value.every = 1


def ours(telemetry: str) -> Callable[[DictConfig, int], int]:
    def run(cfg: DictConfig, epochs: int) -> int:
        cfg = cfg.copy()
        cfg.trainer.epochs = epochs
        if telemetry == "off":
            cfg.telemetry.enabled = False
        elif telemetry == "all":
            every_signal(cfg.telemetry)
        with tempfile.TemporaryDirectory() as run_dir:
            train(cfg, Path(run_dir))
        return epochs * load_data(cfg.data, cfg.trainer.seed).steps_per_epoch()
    return run


VARIANTS = {"plain loop": plain_loop, "ours, telemetry off": ours("off"),
            "ours, default": ours("default"), "ours, every signal every step": ours("all")}


def steps_per_second(fn, cfg: DictConfig, short: int, long: int) -> float:
    t0 = time.perf_counter()
    a = fn(cfg, short)
    t1 = time.perf_counter()
    b = fn(cfg, long)
    t2 = time.perf_counter()
    return (b - a) / ((t2 - t1) - (t1 - t0))


def measure(workload: str, repeats: int, short: int, long: int, n_train: int) -> Dict[str, Dict[str, float]]:
    cfg = compose_config([*WORKLOADS[workload], f"data.n_train={n_train}", "data.n_val=512",
                          "trainer.checkpoint_every=0", "trainer.device=cpu"])
    rates: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    ratios: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    for fn in VARIANTS.values():  # warm-up: one-time imports (torch._dynamo on the first step) and caches
        fn(cfg, short)
    for _ in range(repeats):
        plain = None
        for name, fn in VARIANTS.items():  # alternate variants within each repeat
            rate = steps_per_second(fn, cfg, short, long)
            plain = rate if plain is None else plain
            rates[name].append(rate)
            ratios[name].append(rate / plain)
    return {name: {"steps_per_s": statistics.median(rates[name]), "ratio": statistics.median(ratios[name]),
                   "ratio_min": min(ratios[name]), "ratio_max": max(ratios[name])} for name in VARIANTS}


def logging_growth(tensor_counts: Sequence[int], repeats: int) -> Dict[int, float]:
    """Microseconds per step that every scalar signal costs, for models with this many parameter tensors."""
    out = {}
    for count in tensor_counts:
        model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(count // 2)])
        cfg = OmegaConf.structured(telemetry_schema())
        every_signal(cfg)
        cfg.histograms.enabled = False
        with tempfile.TemporaryDirectory() as run_dir:
            monitor = Monitor(Path(run_dir), model, cfg)
            x = torch.randn(8, 4)
            times = []
            for step in range(1, repeats + 1):
                monitor.before_forward(step)
                loss = model(x).pow(2).mean()
                loss.backward()
                t = time.perf_counter()
                monitor.after_backward(step)
                monitor.after_step(step, loss.item())
                times.append(time.perf_counter() - t)
                model.zero_grad()
            monitor.close()
        out[count] = statistics.median(times) * 1e6
    return out


def cold_start(repeats: int, root: Path) -> Dict[str, float]:
    """Seconds for `python -c "import torch"` and `python train.py` (to the first step and to exit)."""
    def timed(cmd, marker=None):
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = None
        for line in proc.stdout:
            if first is None and marker and marker in line:
                first = time.perf_counter() - t
        proc.wait()
        return first, time.perf_counter() - t

    with tempfile.TemporaryDirectory() as out:
        torch_s = [timed([sys.executable, "-c", "import torch"])[1] for _ in range(repeats)]
        # The floor for anything that trains: torch's Optimizer.step imports torch._dynamo (~1-2 s) on first use.
        step_s = [timed([sys.executable, "-c", ONE_STEP])[1] for _ in range(repeats)]
        runs = [timed([sys.executable, "train.py", f"hydra.run.dir={out}/run"], " - training ") for _ in range(repeats)]
    return {"import torch": statistics.median(torch_s), "import torch + one SGD step": statistics.median(step_s),
            "train.py to first step": statistics.median(r[0] for r in runs),
            "train.py to exit": statistics.median(r[1] for r in runs)}


ONE_STEP = ("import torch; m = torch.nn.Linear(4, 1); o = torch.optim.SGD(m.parameters(), lr=0.1); "
            "m(torch.randn(2, 4)).sum().backward(); o.step()")


def markdown(results: Dict, growth: Dict[int, float], start: Dict[str, float], command: str) -> str:
    lines = [f"Measured with `{command}` (torch {torch.__version__}, 1 thread, medians).", "",
             "| workload | variant | steps/s | ratio to plain loop (min–max) |", "|---|---|---:|---|"]
    for workload, variants in results.items():
        for name, r in variants.items():
            lines.append(f"| {workload} | {name} | {r['steps_per_s']:.0f} | {r['ratio']:.2f} "
                         f"({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) |")
    lines += ["", "| parameter tensors | every scalar signal, µs per step | µs per tensor |", "|---:|---:|---:|"]
    lines += [f"| {n} | {us:.0f} | {us / n:.1f} |" for n, us in growth.items()]
    ts = start["import torch"]
    lines += ["", "| cold start | seconds | × `import torch` |", "|---|---:|---:|"]
    lines += [f"| {name} | {s:.2f} | {s / ts:.2f} |" for name, s in start.items()]
    return "\n".join(lines) + "\n"


def run_benchmark(repeats: int, short: int, long: int, n_train: int, growth_counts: Sequence[int],
                  root: Path, command: str) -> Dict:
    torch.set_num_threads(1)
    logging.getLogger("experiments").setLevel(logging.WARNING)
    results = {w: measure(w, repeats, short, long, n_train) for w in WORKLOADS}
    growth = logging_growth(growth_counts, repeats=max(20, 5 * repeats))
    start = cold_start(max(1, min(repeats, 5)), root)
    return {"workloads": results, "logging_growth_us": growth, "cold_start_s": start,
            "markdown": markdown(results, growth, start, command)}
