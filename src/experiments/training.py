"""The training loop: one function from a composed config to a trained, logged run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .checkpoints import save_weights
from .data import Dataset
from .experiment import build_experiment
from .monitoring import Monitor, flat_hparams, ties_markdown

log = logging.getLogger(__name__)


def loss_function(task: str):
    return F.cross_entropy if task == "classification" else F.mse_loss


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, chunk: int = 4096) -> float:
    """Mean loss over the validation set."""
    loss_fn = loss_function(data.task)
    total = torch.zeros((), device=data.val_x.device)
    n = data.val_x.shape[0]
    for start in range(0, n, chunk):
        x, y = data.val_x[start:start + chunk], data.val_y[start:start + chunk]
        total += loss_fn(model(x), y, reduction="sum")
    per_row = 1 if data.task == "classification" else data.val_y[0].numel()  # MSE sums every output
    return float(total) / (n * per_row)


def train(cfg: DictConfig, run_dir: Path, choices: Optional[Mapping[str, str]] = None) -> float:
    """Build, initialize, train and log the experiment ``cfg`` into ``run_dir``.

    Returns the final validation loss, the number a sweeper minimises.
    """
    run_dir = Path(run_dir)
    exp = build_experiment(cfg)
    model, data = exp.model, exp.data
    save_weights(model, run_dir / "weights_init.pt")

    optimizer = instantiate(cfg.optim)(model.parameters())
    loss_fn = loss_function(data.task)
    shuffle = torch.Generator().manual_seed(cfg.trainer.seed + 1)

    monitor = Monitor(run_dir, model, cfg.telemetry)
    monitor.text("config", "    " + OmegaConf.to_yaml(cfg, resolve=True).replace("\n", "\n    "))
    monitor.text("ties", ties_markdown(exp.manifest))
    monitor.hparams(flat_hparams(cfg, choices or {}))

    epochs, step, val_loss = cfg.trainer.epochs, 0, float("nan")
    log.info("training %s (%d parameters, %d tied groups) on %s for %d epochs of %d steps",
             cfg.model.name, sum(p.numel() for p in model.parameters()), len(exp.manifest),
             exp.device, epochs, data.steps_per_epoch())
    try:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            epoch_loss = torch.zeros((), device=exp.device)
            model.train()
            for x, y in data.batches(shuffle):
                step += 1
                loss = loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                monitor.after_backward(step)
                optimizer.step()
                monitor.after_step(step, loss)
                epoch_loss += loss.detach()
            model.eval()
            val_loss = evaluate(model, data)
            monitor.epoch_end(step, val_loss)
            log.info("epoch %d/%d  step %d  loss/train %.6f  loss/val %.6f  (%.2fs)", epoch, epochs, step,
                     float(epoch_loss) / data.steps_per_epoch(), val_loss, time.perf_counter() - started)
    finally:
        monitor.close()
    save_weights(model, run_dir / "weights_final.pt")
    log.info("done: loss/val %.6f; TensorBoard: tensorboard --logdir %s", val_loss, run_dir)
    return val_loss
