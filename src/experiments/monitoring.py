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
from .config import ConfigError
from .tied_gradients import UseGradients, mismatch, use_statistics
from .tying import tie_groups

METRIC_TAGS = ("loss/train", "loss/val")


def use_fast_event_checksums() -> bool:
    """Checksum TensorBoard's event records in C when google-crc32c is installed.

    TensorBoard's writer computes each record's CRC-32C in pure Python: about 300 µs for a
    2 KB event, more than a whole step of a small network. google-crc32c computes the same
    standard checksum in C (under a microsecond), so the files are byte-for-byte the same.
    """
    try:
        import google_crc32c
    except ImportError:
        return False
    from tensorboard.summary.writer import record_writer

    def masked_crc32c(data: bytes) -> int:  # the record format's masking, as tensorboard does it
        x = google_crc32c.value(bytes(data))
        return (((x >> 15) | ((x << 17) & 0xFFFFFFFF)) + 0xA282EAD8) & 0xFFFFFFFF

    record_writer.masked_crc32c = masked_crc32c
    return True


FAST_CHECKSUMS = use_fast_event_checksums()


def fused_norms(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """L2 norms of many tensors in one call (0-d tensors, still on the device)."""
    return list(torch._foreach_norm(tensors)) if tensors else []


class ScalarWriter:
    """Collects a step's scalars as device tensors; writes them as one event.

    Values come as 0-d tensors (``add``) or as blocks, one 1-D tensor for many tags
    (``extend``); a flush joins them with one ``stack`` and one ``cat``, whatever the number
    of tags, and moves them to the host in one transfer. Checks (an error and its tolerance,
    as tensors) travel in the same transfer and are verified before anything is written: a
    failed check raises instead of logging.
    """

    def __init__(self, writer: SummaryWriter):
        self.writer = writer
        self._single_tags: List[str] = []
        self._singles: List[torch.Tensor] = []
        self._block_tags: List[str] = []
        self._blocks: List[torch.Tensor] = []
        self._checks: List[Callable[[float, float], Exception]] = []
        self._check_values: List[torch.Tensor] = []  # error, tolerance of each check

    def add(self, tag: str, value: torch.Tensor) -> None:
        self._single_tags.append(tag)
        self._singles.append(value.reshape(()) if value.dim() else value)

    def extend(self, tags: List[str], values) -> None:
        """Many tags at once: a list of 0-d tensors, or one tensor holding a value per tag."""
        if isinstance(values, torch.Tensor):
            if values.numel() != len(tags):
                raise ValueError(f"{len(tags)} tags but {values.numel()} values")
            self._block_tags.extend(tags)
            self._blocks.append(values.reshape(-1))
        else:
            for tag, value in zip(tags, values):
                self.add(tag, value)

    def check(self, error: torch.Tensor, tolerance: torch.Tensor, fail: Callable[[float, float], Exception]) -> None:
        self._checks.append(fail)
        self._check_values += [error.reshape(()), tolerance.reshape(())]

    def flush(self, step: int) -> Dict[str, float]:
        tags = self._single_tags + self._block_tags
        if not tags and not self._checks:
            return {}
        parts = [torch.stack(self._singles)] if self._singles else []
        parts += self._blocks
        if self._check_values:
            parts.append(torch.stack(self._check_values))
        host = torch.cat(parts).detach().float().tolist()
        values, checks = host[:len(tags)], host[len(tags):]
        failed = [(fail, e, tol) for fail, e, tol in zip(self._checks, checks[::2], checks[1::2]) if not e <= tol]
        written = dict(zip(tags, values))
        self._single_tags, self._singles, self._block_tags, self._blocks = [], [], [], []
        self._checks, self._check_values = [], []
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
        self._every = cadences(cfg)
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
        self._loss_sum, self._acc_sum, self._loss_steps = 0.0, None, 0
        if self.uses:
            self.writer.add_custom_scalars(tied_layout(self.groups))

    def due(self, signal: str, step: int) -> bool:
        every = self._every[signal]  # each signal logs the first step (the initial state), then every N
        return every > 0 and (step % every == 0 or step == 1)

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
            if want_norms and norms:
                self.scalars.extend([f"grad_norm/{name}" for name, _ in pairs], torch.stack(norms))
            if want_tied:
                for (name, _), norm in zip(pairs, norms):
                    if name in self.tied:
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
            self._before = torch._foreach_mul([p.detach() for p in self.params], 1.0)  # copies, one call
        if self.due("histograms", step):
            for name, p in zip(self.names, self.params):
                if p.grad is not None:
                    self.writer.add_histogram(f"grad/{name}", p.grad.detach(), step)

    def after_step(self, step: int, loss: float, output: Optional[torch.Tensor] = None,
                   target: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """Record the loss (a float: the loop already has it on the host), the accuracy and the
        parameters after ``optimizer.step()``; write the step's event. Steps that log nothing
        run no tensor operation here."""
        self._loss_sum += loss
        if self.classification and output is not None:
            acc = (output.detach().argmax(-1) == target).float().mean()
            self._acc_sum = acc if self._acc_sum is None else self._acc_sum + acc
        self._loss_steps += 1
        if self.due("loss", step):
            self.scalars.add("loss/train", torch.tensor(self._loss_sum / self._loss_steps))
            if self._acc_sum is not None:
                self.scalars.add("acc/train", self._acc_sum / self._loss_steps)
            self._loss_sum, self._acc_sum, self._loss_steps = 0.0, None, 0
        if self.due("param_norm", step):
            self.scalars.extend([f"param_norm/{n}" for n in self.names], torch.stack(fused_norms(self.params)))
        if self._before is not None:
            deltas = torch._foreach_sub([p.detach() for p in self.params], self._before)
            ratios = torch.stack(fused_norms(deltas)) / torch.stack(fused_norms(self._before)).clamp_min(1e-30)
            self.scalars.extend([f"update_ratio/{n}" for n in self.names], ratios)
            self._before = None
        if self.acts and self.acts.active:
            tags, values = self.acts.collect()
            if tags:
                self.scalars.extend(tags, values)
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


def cadences(cfg: DictConfig) -> Dict[str, int]:
    """Each signal's cadence as a plain int, 0 when off (read once: a DictConfig lookup per step
    costs microseconds). ``telemetry.enabled=false`` leaves only the loss on."""
    every = {}
    for name, sig in cfg.items():
        if isinstance(sig, DictConfig):
            if sig.every < 1:
                raise ConfigError(f"telemetry.{name}.every={sig.every}: must be at least 1 (a number of "
                                  f"steps); switch a signal off with telemetry.{name}.enabled=false.")
            every[name] = sig.every if sig.enabled and (cfg.enabled or name == "loss") else 0
    return every


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

