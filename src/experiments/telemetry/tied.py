"""The ``tied`` signal: each use's own gradient of a shared parameter, next to their sum.

A parameter is shared when one pass uses it more than once (two names of one Parameter, one
module called several times, a weight read by another module or in the loss): the uses are
found by ``experiments.uses.Uses`` (shared with the ``model.grad_scale`` intervention), which
this signal switches to capture on the steps it logs. Their gradients become tags: the summed
gradient's norm, each use's norm and cosine with the sum, the cancellation, and for a parameter
with an embedding use the fraction of rows each use touches. What reached ``.grad`` through no
use the lens saw is logged as the use ``unattributed``, with a warning that says why it may be.
"""

from __future__ import annotations

import logging
from typing import Dict, List

import torch
from torch import nn

from ..uses import UNATTRIBUTED
from . import tags
from .protos import custom_scalars, text
from .signals import Signal, Watched
from ..use_roles import roles_markdown
from .use_runs import run_layout, use_labels

log = logging.getLogger(__name__)


def use_statistics(name: str, param: nn.Parameter, uses: Dict[str, torch.Tensor], rows: bool = False):
    """Tags and a 1-D device tensor (a value per tag) for one shared parameter.

    ``grad_norm`` is the norm of the summed gradient (``.grad``) and of each use's; ``cos`` is each use's cosine with the summed gradient (``.grad``); ``cancellation`` is
    ||sum of uses|| / sum of ||use|| (1 when the uses agree, near 0 when they cancel); with
    ``rows``, ``rows_touched`` is the fraction of rows (first dimension) a use's gradient is
    non-zero in: an embedding's input use touches only the batch's tokens.
    """
    aliases = list(uses)
    stacked = torch.stack([uses[a].reshape(-1) for a in aliases]).float()
    total = param.grad.reshape(-1).float()
    norms = torch.linalg.vector_norm(stacked, dim=1)
    total_norm = torch.linalg.vector_norm(total)
    cos = (stacked @ total) / norms / total_norm  # one norm at a time: no underflow of their product; 0/0 is NaN
    summed, norm_sum = stacked.sum(0), norms.sum()
    cancellation = torch.linalg.vector_norm(summed) / norm_sum
    names = [tags.use_stat(name, a, "grad_norm") for a in aliases] + [tags.use_stat(name, a, "cos") for a in aliases]
    names += [tags.tied_grad_norm(name), tags.cancellation(name)]
    parts = [norms, cos, total_norm.reshape(1), cancellation.reshape(1)]
    if rows:
        names += [tags.use_stat(name, a, "rows_touched") for a in aliases]
        parts.append(torch.stack([(uses[a].reshape(uses[a].shape[0], -1) != 0).any(dim=1).float().mean()
                                  for a in aliases]))
    return names, torch.cat(parts)  # one value per tag, one tensor


CAUSES = ("a custom autograd function (torch.autograd.Function) that takes the parameter, a compiled graph "
          "(torch.compile), gradients accumulated over several steps without zero_grad, or a hook that edits "
          "gradients")
RECOMPUTED = ("activation checkpointing with use_reentrant=True recomputes the forward inside backward, where uses "
              "cannot be told apart: use torch.utils.checkpoint.checkpoint(..., use_reentrant=False)")


class Tied(Signal):
    """``tied/<param>/...``: the summed gradient of each shared parameter, each use's own gradient
    and its cosine with the sum, and the cancellation."""

    name = "tied"

    @classmethod
    def applies(cls, watched: Watched) -> bool:
        return watched.uses is not None and bool(watched.uses.params)

    def __init__(self, watched: Watched):
        super().__init__(watched)
        self.uses = watched.uses
        embedded = {id(p) for m in watched.model.modules() if isinstance(m, nn.Embedding)
                    for p in m.parameters(recurse=False)}
        self._rows = {name for name, p in self.uses.params.items() if id(p) in embedded}
        self._layout: Dict[str, List[str]] = {}  # what the custom-scalars layout shows
        self._warned: set = set()
        self.last: Dict[str, Dict[str, torch.Tensor]] = {}  # the last logged step's uses

    def before_forward(self, step) -> None:
        self.uses.arm(capture=True)

    def batch_values(self):
        """Each use's gradient captured on this step (this process's rows of the batch), in an order every
        process shares: a distributed run averages them before anything is computed from them."""
        self.uses.end()  # (the lens ends the step itself; a monitor driven by hand may not)
        grads = self.uses.grads
        return [grads[name][use] for name in sorted(grads) for use in sorted(grads[name])], []

    def after_backward(self, step, record) -> None:
        self.uses.end()
        shared, unsplit = self.uses.attribute()
        self.uses.release()  # the uses of parameters used once are freed now; ``last`` keeps the shared ones
        self._warn(shared, unsplit)
        for name, uses in shared.items():
            names, values = use_statistics(name, self.uses.params[name], uses, rows=name in self._rows)
            record.extend(names, values)
        found = {name: list(uses) for name, uses in shared.items()}
        if any(self._layout.get(name) != uses for name, uses in found.items()):
            first = not self._layout
            self._layout.update(found)
            # one run per job, the uses as its tags (use_runs says why, and how to see them in colour)
            self.watched.events.write_summary(custom_scalars(run_layout(self._layout)), step)
            labels = {name: use_labels(self.watched.model, uses) for name, uses in self._layout.items()}
            self.watched.events.write_summary(text(tags.USE_ROLES, roles_markdown(labels)), step)
            if first:
                log.info("shared parameters (found by use): %s", "; ".join(
                    f"{name} ({len(uses)} uses)" for name, uses in self._layout.items()))
        self.last = shared

    def _warn(self, shared: Dict[str, Dict[str, torch.Tensor]], unsplit: Dict[str, str]) -> None:
        why = RECOMPUTED if self.uses.calls.recomputed else CAUSES
        new = {name: f"{UNATTRIBUTED} part logged as the use '{UNATTRIBUTED}'" for name, uses in shared.items()
               if UNATTRIBUTED in uses and name not in self._warned}
        new.update({name: reason for name, reason in unsplit.items() if name not in self._warned})
        if new:
            self._warned |= set(new)
            log.warning("part of the gradient of %s could not be attributed to a use (%s). Likely cause: %s.",
                        ", ".join(f"'{n}'" for n in new), "; ".join(f"{n}: {r}" for n, r in new.items()), why)

    def close(self) -> None:
        self.uses.close()
