"""What a run optimizes and how it is scored: the loss for the data's task, the validation
metrics, and the optimizer (fused where it can be, so that the divergence guard runs on the device).
"""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from .data import Dataset
from .outputs import predictions
from .telemetry import tags

CLASSES = ("classification", "next_token")  # tasks that predict a class (a token is a class): cross-entropy
FUSED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)  # can skip a step on the device (found_inf)


def make_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    """``cfg`` (the ``optim`` node) for ``params``. SGD, Adam and AdamW are made fused unless the
    config says otherwise (``optim.fused``, ``optim.foreach``): a fused optimizer skips a non-finite
    step on the device, so the divergence guard needs no host transfer per step."""
    factory = instantiate(cfg)
    cls = getattr(factory, "func", None)
    fused = cfg.get("fused")
    if fused is None and cls in FUSED and cfg.get("foreach") is None and all(
            p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params):
        return factory(params, fused=True)
    return factory(params)


def loss_function(task: str):
    return F.cross_entropy if task in CLASSES else F.mse_loss


EVAL_CHUNK = 4096  # validation examples per forward pass


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, chunk: int = EVAL_CHUNK) -> Dict[str, float]:
    """Mean loss over the validation set; accuracy for classes; perplexity for next tokens."""
    loss_fn = loss_function(data.task)
    total = torch.zeros((), device=data.val_x.device)
    correct = torch.zeros((), device=data.val_x.device)
    n = data.val_x.shape[0]
    for start in range(0, n, chunk):
        x, y = data.val_x[start:start + chunk], data.val_y[start:start + chunk]
        out = predictions(model(x), data.task)  # the logits the task scores (outputs.py)
        total += loss_fn(out, y, reduction="sum")
        if data.task in CLASSES:
            correct += (out.argmax(-1) == y).sum()
    if data.task not in CLASSES:
        return {tags.LOSS_VAL: float(total) / (n * data.val_y[0].numel())}  # MSE sums every output
    metrics = {tags.LOSS_VAL: float(total) / n, tags.ACC_VAL: float(correct) / n}
    if data.task == "next_token":
        metrics[tags.PPL_VAL] = math.exp(min(metrics[tags.LOSS_VAL], 700.0))
    return metrics
