"""TensorBoard telemetry for a training run.

The tags are a contract that dashboards are built on:

- ``loss/train`` (mean over the steps since the last point), ``loss/val`` (each epoch), and
  for classification ``acc/train`` and ``acc/val``;
- ``param_norm/<name>`` and ``grad_norm/<name>`` for every unique parameter, named
  as ``named_parameters()`` names it;
- ``tied/<name>/grad_norm`` for each tied parameter: the norm of the gradient autograd
  summed over its uses; ``tied/<name>/use/<alias>/grad_norm`` and ``.../cos`` for each use
  (``<alias>`` the state_dict name of that use) and ``tied/<name>/cancellation``; the aliases
  are in the ``ties`` text summary and each parameter has a custom-scalars chart;
- ``act/<layer>/mean|std|dead_frac`` per layer (per use for a tied layer) and
  ``update_ratio/<name>`` (||w_after - w_before|| / ||w_before|| of one optimizer step);
- histograms ``param/<name>`` and ``grad/<name>`` on their own, slower cadence;
- the run's hparams (written into the run's own folder) and its resolved config as text.

All scalars of one step are computed on the device (norms in one fused call), moved
to the host in one transfer and written as one event holding many values.
"""

from __future__ import annotations

from pathlib import Path
import re
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .activations import ActivationStats
from .tied_gradients import UseGradients, mismatch, use_statistics
from .tying import tie_groups

METRIC_TAGS = ("loss/train", "loss/val")


def fused_norms(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """L2 norms of many tensors in one call (0-d tensors, still on the device)."""
    return list(torch._foreach_norm(tensors)) if tensors else []


class ScalarWriter:
    """Collects a step's scalars as device tensors; writes them as one event.

    Checks (an error and its tolerance, as tensors) travel in the same host transfer and are
    verified before anything is written: a failed check raises instead of logging.
    """

    def __init__(self, writer: SummaryWriter):
        self.writer = writer
        self.tags: List[str] = []
        self.values: List[torch.Tensor] = []
        self.checks: List[Tuple[Callable[[float, float], Exception], torch.Tensor, torch.Tensor]] = []

    def add(self, tag: str, value: torch.Tensor) -> None:
        self.tags.append(tag)
        self.values.append(value)

    def extend(self, tags: List[str], values: List[torch.Tensor]) -> None:
        self.tags.extend(tags)
        self.values.extend(values)

    def check(self, error: torch.Tensor, tolerance: torch.Tensor, fail: Callable[[float, float], Exception]) -> None:
        self.checks.append((fail, error, tolerance))

    def flush(self, step: int) -> Dict[str, float]:
        if not self.tags and not self.checks:
            return {}
        tensors = self.values + [t for _, e, tol in self.checks for t in (e, tol)]
        host = torch.stack([v.detach().float().reshape(()) for v in tensors]).tolist()
        values, checks = host[: len(self.tags)], host[len(self.tags):]
        failed = [(fail, e, tol) for (fail, _, _), e, tol in zip(self.checks, checks[::2], checks[1::2])
                  if not e <= tol]
        written = dict(zip(self.tags, values))
        self.tags, self.values, self.checks = [], [], []
        if failed:
            fail, e, tol = failed[0]
            raise fail(e, tol)
        if written:
            summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in written.items()])
            self.writer._get_file_writer().add_summary(summary, step)
        return written


class Monitor:
    """Watches one model during training and writes what it sees to TensorBoard.

    The loop calls ``before_forward``, ``after_backward`` (before ``optimizer.step()``) and
    ``after_step`` each step; each signal does work only on the steps it is due.
    """

    def __init__(self, run_dir: Path, model: nn.Module, cfg: DictConfig, purge_step: Optional[int] = None,
                 classification: bool = False):
        self.cfg = cfg
        self.classification = classification
        # purge_step: a resumed run drops what the interrupted one wrote after its checkpoint
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self.scalars = ScalarWriter(self.writer)
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.groups = tie_groups(model)
        self.tied = {g.canonical for g in self.groups}
        on = lambda signal: cfg.enabled and cfg[signal].enabled  # noqa: E731
        self.uses = UseGradients(model, self.groups) if on("tied") and self.groups else None
        self.acts = ActivationStats(model) if on("activations") else None
        self._before: Optional[List[torch.Tensor]] = None
        self._loss_sum = self._acc_sum = None
        self._loss_steps = 0
        if self.uses:
            self.writer.add_custom_scalars(tied_layout(self.groups))

    def due(self, signal: str, step: int) -> bool:
        sig = self.cfg[signal]
        return self.cfg.enabled and sig.enabled and step % sig.every == 0

    def before_forward(self, step: int) -> None:
        if self.uses and self.due("tied", step):
            self.uses.start()
        if self.acts and self.due("activations", step):
            self.acts.start()

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
        if self.uses and self.uses.active:
            self.uses.stop()
            for group in self.groups:
                uses = self.uses.ordered(group)
                if uses and group.param.grad is not None:
                    tags, values, (error, tolerance) = use_statistics(group.canonical, group.param, uses)
                    self.scalars.extend(tags, values)
                    self.scalars.check(error, tolerance, partial(mismatch, group.canonical, list(uses)))
        if self.due("update_ratio", step):
            self._before = [p.detach().clone() for p in self.params]
        if self.due("histograms", step):
            for name, p in zip(self.names, self.params):
                if p.grad is not None:
                    self.writer.add_histogram(f"grad/{name}", p.grad.detach(), step)

    def after_step(self, step: int, loss: torch.Tensor, output: Optional[torch.Tensor] = None,
                   target: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """Record the loss (and accuracy) and the parameters after ``optimizer.step()``; write the step's event."""
        loss = loss.detach()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        if self.classification and output is not None:
            acc = (output.detach().argmax(-1) == target).float().mean()
            self._acc_sum = acc if self._acc_sum is None else self._acc_sum + acc
        self._loss_steps += 1
        if self.cfg.loss.enabled and step % self.cfg.loss.every == 0:
            self.scalars.add("loss/train", self._loss_sum / self._loss_steps)
            if self._acc_sum is not None:
                self.scalars.add("acc/train", self._acc_sum / self._loss_steps)
            self._loss_sum, self._acc_sum, self._loss_steps = None, None, 0
        if self.due("param_norm", step):
            self.scalars.extend([f"param_norm/{n}" for n in self.names], fused_norms(self.params))
        if self._before is not None:
            deltas = torch._foreach_sub([p.detach() for p in self.params], self._before)
            ratios = torch.stack(fused_norms(deltas)) / torch.stack(fused_norms(self._before)).clamp_min(1e-30)
            self.scalars.extend([f"update_ratio/{n}" for n in self.names], list(ratios.unbind()))
            self._before = None
        if self.acts and self.acts.active:
            for tag, value in self.acts.collect():
                self.scalars.add(tag, value)
        if self.due("histograms", step):
            for name, p in zip(self.names, self.params):
                self.writer.add_histogram(f"param/{name}", p.detach(), step)
        return self.scalars.flush(step)

    def epoch_end(self, step: int, metrics: Mapping[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def text(self, tag: str, markdown: str) -> None:
        self.writer.add_text(tag, markdown, 0)

    def hparams(self, values: Mapping[str, object]) -> None:
        """HParams summaries in the run's own folder; metrics are the ``METRIC_TAGS`` curves."""
        tags = METRIC_TAGS + (("acc/train", "acc/val") if self.classification else ())
        for summary in hparams(dict(values), {tag: 0.0 for tag in tags}):
            self.writer._get_file_writer().add_summary(summary)

    def close(self) -> None:
        for hooks in (self.uses, self.acts):
            if hooks:
                hooks.close()
        self.writer.flush()
        self.writer.close()


def tied_layout(groups) -> Dict[str, Dict[str, list]]:
    """Custom-scalars layout: one chart per tied parameter with its uses and their sum."""
    charts = {}
    for g in groups:
        tags = [f"tied/{g.canonical}/grad_norm"] + [f"tied/{g.canonical}/use/{a}/grad_norm" for a in g.aliases]
        charts[f"{g.canonical}: gradient norm of each use and their sum"] = ["Multiline", [re.escape(t) for t in tags]]
    return {"tied parameters": charts}


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

