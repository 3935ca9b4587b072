"""TensorBoard telemetry for a training run.

The tags are a contract that dashboards are built on:

- ``loss/train`` (mean over the steps since the last point), ``loss/val`` (each epoch);
- ``param_norm/<name>`` and ``grad_norm/<name>`` for every unique parameter, named
  as ``named_parameters()`` names it;
- ``tied/<name>/grad_norm`` for each tied parameter: the norm of the gradient autograd
  summed over its uses; the aliases are in the ``ties`` text summary;
- histograms ``param/<name>`` and ``grad/<name>`` on their own, slower cadence;
- the run's hparams (written into the run's own folder) and its resolved config as text.

All scalars of one step are computed on the device (norms in one fused call), moved
to the host in one transfer and written as one event holding many values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .tying import tie_groups

METRIC_TAGS = ("loss/train", "loss/val")


def fused_norms(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """L2 norms of many tensors in one call (0-d tensors, still on the device)."""
    return list(torch._foreach_norm(tensors)) if tensors else []


class ScalarWriter:
    """Collects a step's scalars as device tensors; writes them as one event."""

    def __init__(self, writer: SummaryWriter):
        self.writer = writer
        self.tags: List[str] = []
        self.values: List[torch.Tensor] = []

    def add(self, tag: str, value: torch.Tensor) -> None:
        self.tags.append(tag)
        self.values.append(value)

    def extend(self, tags: List[str], values: List[torch.Tensor]) -> None:
        self.tags.extend(tags)
        self.values.extend(values)

    def flush(self, step: int) -> Dict[str, float]:
        if not self.tags:
            return {}
        host = torch.stack([v.detach().float().reshape(()) for v in self.values]).tolist()
        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in zip(self.tags, host)])
        self.writer._get_file_writer().add_summary(summary, step)
        written = dict(zip(self.tags, host))
        self.tags, self.values = [], []
        return written


class Monitor:
    """Watches one model during training and writes what it sees to TensorBoard."""

    def __init__(self, run_dir: Path, model: nn.Module, cfg: DictConfig, purge_step: Optional[int] = None):
        self.cfg = cfg
        # purge_step: a resumed run drops what the interrupted one wrote after its checkpoint
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.scalars = ScalarWriter(self.writer)
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.tied = {g.canonical for g in tie_groups(model)}
        self._loss_sum = None
        self._loss_steps = 0

    def due(self, signal: str, step: int) -> bool:
        sig = self.cfg[signal]
        return self.cfg.enabled and sig.enabled and step % sig.every == 0

    def after_backward(self, step: int) -> None:
        """Record what the gradients look like (call before ``optimizer.step()``)."""
        want_norms, want_tied = self.due("grad_norm", step), self.due("tied", step)
        if want_norms or want_tied:
            pairs = [(n, p.grad) for n, p in zip(self.names, self.params) if p.grad is not None]
            norms = fused_norms([g for _, g in pairs])
            for (name, _), norm in zip(pairs, norms):
                if want_norms:
                    self.scalars.add(f"grad_norm/{name}", norm)
                if want_tied and name in self.tied:
                    self.scalars.add(f"tied/{name}/grad_norm", norm)
        if self.due("histograms", step):
            for name, p in zip(self.names, self.params):
                if p.grad is not None:
                    self.writer.add_histogram(f"grad/{name}", p.grad.detach(), step)

    def after_step(self, step: int, loss: torch.Tensor) -> Dict[str, float]:
        """Record the loss and the parameters after ``optimizer.step()``; write the step's event."""
        loss = loss.detach()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_steps += 1
        if self.cfg.loss.enabled and step % self.cfg.loss.every == 0:
            self.scalars.add("loss/train", self._loss_sum / self._loss_steps)
            self._loss_sum, self._loss_steps = None, 0
        if self.due("param_norm", step):
            self.scalars.extend([f"param_norm/{n}" for n in self.names], fused_norms(self.params))
        if self.due("histograms", step):
            for name, p in zip(self.names, self.params):
                self.writer.add_histogram(f"param/{name}", p.detach(), step)
        return self.scalars.flush(step)

    def epoch_end(self, step: int, val_loss: float) -> None:
        self.writer.add_scalar("loss/val", val_loss, step)
        self.writer.flush()

    def text(self, tag: str, markdown: str) -> None:
        self.writer.add_text(tag, markdown, 0)

    def hparams(self, values: Mapping[str, object]) -> None:
        """HParams summaries in the run's own folder; metrics are the ``METRIC_TAGS`` curves."""
        for summary in hparams(dict(values), {tag: 0.0 for tag in METRIC_TAGS}):
            self.writer._get_file_writer().add_summary(summary)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def ties_markdown(manifest: Mapping[str, List[str]]) -> str:
    if not manifest:
        return "No tied parameters."
    rows = [f"| {name} | {', '.join(aliases)} |" for name, aliases in manifest.items()]
    return "\n".join(["| parameter | aliases (state_dict names) |", "|---|---|", *rows])


def flat_hparams(cfg: DictConfig, choices: Mapping[str, str]) -> Dict[str, object]:
    """The chosen config groups plus every scalar setting (lists and layer specs left out)."""
    values: Dict[str, object] = {g: str(c) for g, c in choices.items() if not g.startswith("hydra")}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, (int, float, str, bool)) and not str(key).startswith("_"):
                values[f"{prefix}{key}"] = value
            elif isinstance(value, Mapping) and key not in ("shared", "args", "telemetry"):
                walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return values

