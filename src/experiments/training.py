"""The training loop: one function from a composed config to a trained, logged run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .checkpoints import find_checkpoint, restore_checkpoint, run_dir_of, save_checkpoint, save_weights
from .data import Dataset
from .experiment import build_experiment
from .failures import FAILURE_FILE, Interrupted
from .guards import InterruptGuard, check_finite, check_validation
from .monitoring import Monitor, cadences, flat_hparams, ties_markdown
from .summary import summary_markdown

log = logging.getLogger(__name__)


def loss_function(task: str):
    return F.cross_entropy if task == "classification" else F.mse_loss


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, chunk: int = 4096) -> Dict[str, float]:
    """Mean loss (and accuracy, for classification) over the validation set."""
    loss_fn = loss_function(data.task)
    total = torch.zeros((), device=data.val_x.device)
    correct = torch.zeros((), device=data.val_x.device)
    n = data.val_x.shape[0]
    for start in range(0, n, chunk):
        x, y = data.val_x[start:start + chunk], data.val_y[start:start + chunk]
        out = model(x)
        total += loss_fn(out, y, reduction="sum")
        if data.task == "classification":
            correct += (out.argmax(-1) == y).sum()
    if data.task == "classification":
        return {"loss/val": float(total) / n, "acc/val": float(correct) / n}
    return {"loss/val": float(total) / (n * data.val_y[0].numel())}  # MSE sums every output


def train(cfg: DictConfig, run_dir: Path, choices: Optional[Mapping[str, str]] = None) -> float:
    """Build, initialize, train and log the experiment ``cfg`` into ``run_dir``.

    With ``trainer.resume`` it continues a run from its checkpoint instead (in that run's
    folder). Returns the final validation loss, the number a sweeper minimises.
    """
    run_dir = Path(run_dir)
    exp = build_experiment(cfg)  # every config check happens here, before anything is written
    cadences(cfg.telemetry)  # a bad telemetry cadence too
    model, data = exp.model, exp.data
    optimizer = instantiate(cfg.optim)(model.parameters())
    loss_fn = loss_function(data.task)
    shuffle = torch.Generator().manual_seed(cfg.trainer.seed + 1)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)

    step, epoch, skip = 0, 1, 0
    checkpoint = find_checkpoint(cfg.trainer.resume, run_dir) if cfg.trainer.resume else None
    if checkpoint:
        run_dir = run_dir_of(checkpoint)
        state = restore_checkpoint(checkpoint, model, optimizer)
        step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
        shuffle.set_state(state["rng"]["shuffle"])
        log.info("resuming from %s at step %d (epoch %d, %d batches done)", checkpoint, step, epoch, skip)
    else:
        save_weights(model, run_dir / "weights_init.pt")

    classification = data.task == "classification"
    monitor = Monitor(run_dir, model, cfg.telemetry, purge_step=step + 1 if checkpoint else None,
                      classification=classification)
    if not checkpoint:
        monitor.text("config", "    " + config_yaml.replace("\n", "\n    "))
        monitor.text("ties", ties_markdown(exp.manifest))
        monitor.text("summary", summary_markdown(model, exp.init_rules))
        monitor.hparams(flat_hparams(cfg, choices or {}))

    epochs, val_loss = cfg.trainer.epochs, float("nan")
    every = cfg.trainer.checkpoint_every
    log.info("training %s (%d parameters, %d tied) on %s: %d epochs of %d steps; run folder %s",
             cfg.model.name, sum(p.numel() for p in model.parameters()), len(exp.manifest),
             exp.device, epochs, data.steps_per_epoch(), run_dir)
    with InterruptGuard() as interrupt:
        try:
            while epoch <= epochs:
                started, epoch_start = time.perf_counter(), shuffle.get_state()
                epoch_loss, done_here = 0.0, 0
                model.train()
                for x, y in data.batches(shuffle, skip):
                    step, skip, done_here = step + 1, skip + 1, done_here + 1
                    monitor.before_forward(step)
                    out = model(x)
                    loss = loss_fn(out, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    loss_value = check_finite(step, loss, monitor.names, monitor.params)
                    monitor.after_backward(step)
                    optimizer.step()
                    monitor.after_step(step, loss_value, out, y)
                    epoch_loss += loss_value
                    if interrupt.signum:
                        path = save_checkpoint(run_dir, model, optimizer, step=step, epoch=epoch, batch_in_epoch=skip,
                                               shuffle_state=epoch_start, config_yaml=config_yaml, numbered=False)
                        raise Interrupted(f"stopped by {interrupt.name} at step {step}; checkpoint written to {path}.",
                                          interrupt.signum, run_dir)
                model.eval()
                metrics = evaluate(model, data)
                val_loss = metrics["loss/val"]
                check_validation(step, val_loss, monitor.names, monitor.params)
                monitor.epoch_end(step, metrics)
                log.info("epoch %d/%d  step %d  loss/train %.6f  %s  (%.2fs)", epoch, epochs, step,
                         epoch_loss / max(done_here, 1),
                         "  ".join(f"{k} {v:.6f}" for k, v in metrics.items()), time.perf_counter() - started)
                epoch, skip = epoch + 1, 0
                save_checkpoint(run_dir, model, optimizer, step=step, epoch=epoch, batch_in_epoch=0,
                                shuffle_state=shuffle.get_state(), config_yaml=config_yaml,
                                numbered=every > 0 and (epoch - 1) % every == 0)
        finally:
            monitor.close()
    if val_loss != val_loss:  # resumed a run that had already finished its epochs
        val_loss = evaluate(model.eval(), data)["loss/val"]
    save_weights(model, run_dir / "weights_final.pt")
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)  # a resumed run that finishes is no longer a failure
    log.info("done: loss/val %.6f; see it with: tensorboard --logdir %s", val_loss, run_dir)
    return val_loss
