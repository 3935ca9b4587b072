"""The peer in the benchmark: the same model, data and optimizer trained by Lightning, logging the
loss and every parameter's gradient norm at every step, as Lightning users do it
(``self.log`` and ``lightning.pytorch.utilities.grad_norm``). Needs the ``bench`` extra.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from .experiment import build_experiment
from .objective import loss_function
from .outputs import predictions


class Module(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, cfg: DictConfig, task: str):
        super().__init__()
        self.model, self.cfg = model, cfg
        self.task, self.loss_fn = task, loss_function(task)

    def training_step(self, batch, _):
        x, y = batch
        loss = self.loss_fn(predictions(self.model(x), self.task), y)
        self.log("loss/train", loss)
        return loss

    def on_before_optimizer_step(self, optimizer):
        self.log_dict(grad_norm(self.model, norm_type=2))

    def validation_step(self, batch, _):
        x, y = batch
        self.log("loss/val", self.loss_fn(predictions(self.model(x), self.task), y))

    def configure_optimizers(self):
        lr = self.cfg.optim.lr
        params = self.model.parameters()
        return torch.optim.SGD(params, lr=lr) if "SGD" in self.cfg.optim._target_ else torch.optim.Adam(params, lr=lr)


class Clock(pl.Callback):
    """Times the epochs only (Lightning's own set-up before them is not counted, as ours is not)."""

    def on_train_start(self, trainer, module):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def on_train_end(self, trainer, module):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def lightning_loop(cfg: DictConfig):
    exp = build_experiment(cfg)
    data = exp.data
    train = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=cfg.data.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(data.val_x, data.val_y), batch_size=len(data.val_x))
    clock = Clock()
    for name in ("lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as logs, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(max_epochs=cfg.trainer.epochs, accelerator="cpu", devices=1, logger=TensorBoardLogger(logs),
                             log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock])
        trainer.fit(Module(exp.model, cfg, data.task), train, val)
    return trainer.global_step, clock.wall, clock.cpu
